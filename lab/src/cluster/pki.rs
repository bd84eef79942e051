//! The cluster's certificates, made with `openssl`: one CA, the API server's serving cert,
//! a client cert per identity (admin, controller-manager, scheduler, kubelet, the API
//! server's kubelet client) and the service-account signing key pair.

use std::path::{Path, PathBuf};

use super::error::{ClusterError, Result};
use super::exec;

/// The IP the kubelet registers and serves on (on the pod bridge, never on eth0).
pub const NODE_IP: &str = "10.88.0.1";
/// First address of the service range: the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/24";
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// One client identity: the certificate's CN and optional O (group).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// File stem and kubeconfig name.
    pub name: &'static str,
    pub common_name: &'static str,
    pub organization: Option<&'static str>,
}

/// Every client identity the cluster uses.
pub const CLIENTS: &[Identity] = &[
    Identity {
        name: "admin",
        common_name: "admin",
        organization: Some("system:masters"),
    },
    Identity {
        name: "kube-controller-manager",
        common_name: "system:kube-controller-manager",
        organization: None,
    },
    Identity {
        name: "kube-scheduler",
        common_name: "system:kube-scheduler",
        organization: None,
    },
    Identity {
        name: "kubelet",
        // Must be system:node:<node name> for the Node authorizer and NodeRestriction.
        common_name: "system:node:lab-node",
        organization: Some("system:nodes"),
    },
    // Bound to the system:node-proxier ClusterRole by the default RBAC policy.
    Identity {
        name: "kube-proxy",
        common_name: "system:kube-proxy",
        organization: None,
    },
    Identity {
        name: "apiserver-kubelet-client",
        common_name: "kube-apiserver",
        organization: None,
    },
];

/// Paths of the generated material.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: PathBuf) -> Self {
        Pki { dir }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    /// Creates the CA, every certificate and the service-account keys (overwriting any).
    pub fn generate(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(ClusterError::io("creating", &self.dir))?;
        exec::run(
            "openssl",
            [
                "req".as_ref(),
                "-x509".as_ref(),
                "-newkey".as_ref(),
                "rsa:2048".as_ref(),
                "-nodes".as_ref(),
                "-days".as_ref(),
                "365".as_ref(),
                "-subj".as_ref(),
                "/CN=selfheal-lab-ca".as_ref(),
                "-addext".as_ref(),
                "basicConstraints=critical,CA:TRUE".as_ref(),
                "-addext".as_ref(),
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature".as_ref(),
                "-keyout".as_ref(),
                self.ca_key().as_os_str(),
                "-out".as_ref(),
                self.ca_cert().as_os_str(),
            ],
        )?;
        let mut sans = format!(
            "IP:127.0.0.1,IP:{NODE_IP},IP:{KUBERNETES_SERVICE_IP},DNS:localhost,DNS:kubernetes,"
        );
        sans.push_str(
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
        );
        self.leaf(
            "kube-apiserver",
            "/CN=kube-apiserver",
            "serverAuth",
            Some(&sans),
        )?;
        for id in CLIENTS {
            let subject = match id.organization {
                Some(o) => format!("/O={o}/CN={}", id.common_name),
                None => format!("/CN={}", id.common_name),
            };
            self.leaf(id.name, &subject, "clientAuth", None)?;
        }
        exec::run(
            "openssl",
            [
                "genrsa".as_ref(),
                "-out".as_ref(),
                self.sa_key().as_os_str(),
                "2048".as_ref(),
            ],
        )?;
        exec::run(
            "openssl",
            [
                "rsa".as_ref(),
                "-in".as_ref(),
                self.sa_key().as_os_str(),
                "-pubout".as_ref(),
                "-out".as_ref(),
                self.sa_pub().as_os_str(),
            ],
        )?;
        Ok(())
    }

    /// A key and a CA-signed certificate for `subject`.
    fn leaf(&self, name: &str, subject: &str, usage: &str, sans: Option<&str>) -> Result<()> {
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        let mut ext_text = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
        );
        if let Some(sans) = sans {
            ext_text.push_str(&format!("subjectAltName={sans}\n"));
        }
        write(&ext, &ext_text)?;
        exec::run(
            "openssl",
            [
                "req".as_ref(),
                "-new".as_ref(),
                "-newkey".as_ref(),
                "rsa:2048".as_ref(),
                "-nodes".as_ref(),
                "-subj".as_ref(),
                subject.as_ref(),
                "-keyout".as_ref(),
                self.key(name).as_os_str(),
                "-out".as_ref(),
                csr.as_os_str(),
            ],
        )?;
        exec::run(
            "openssl",
            [
                "x509".as_ref(),
                "-req".as_ref(),
                "-in".as_ref(),
                csr.as_os_str(),
                "-CA".as_ref(),
                self.ca_cert().as_os_str(),
                "-CAkey".as_ref(),
                self.ca_key().as_os_str(),
                "-CAcreateserial".as_ref(),
                "-days".as_ref(),
                "365".as_ref(),
                "-extfile".as_ref(),
                ext.as_os_str(),
                "-out".as_ref(),
                self.cert(name).as_os_str(),
            ],
        )?;
        Ok(())
    }
}

/// Writes `text` to `path`, creating parent directories.
pub fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(ClusterError::io("creating", parent))?;
    }
    std::fs::write(path, text).map_err(ClusterError::io("writing", path))
}

/// A kubeconfig for `identity` against the API server at `server`, referring to the files.
pub fn kubeconfig(pki: &Pki, identity: &Identity, server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: selfheal-lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: selfheal-lab\n  context:\n    cluster: selfheal-lab\n    user: {user}\ncurrent-context: selfheal-lab\n",
        ca = pki.ca_cert().display(),
        user = identity.name,
        cert = pki.cert(identity.name).display(),
        key = pki.key(identity.name).display(),
    )
}
