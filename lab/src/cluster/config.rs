//! The configuration files of containerd (config version 3), the kubelet
//! (KubeletConfiguration v1beta1) and kube-proxy (KubeProxyConfiguration v1alpha1),
//! rendered from the [`Layout`].

use super::images::PAUSE_IMAGE;
use super::layout::Layout;
use super::pki::Pki;

/// containerd's config: our state dirs, the overlay snapshotter, our pause image pinned as
/// the sandbox image, runc with cgroupfs, CNI from Debian's plugins and our conflist, and
/// network namespaces and runc's state under our run dir so `down` finds them.
pub fn containerd_toml(layout: &Layout) -> String {
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{sock}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{pause}"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # This host's bounding set lacks CAP_SYS_RESOURCE, so a negative oom_score_adj (the pause
  # container's -998, a Guaranteed pod's -997) makes runc fail ("can't get final child's PID
  # from pipe: EOF"). Clamp scores at containerd's own (0) instead.
  restrict_oom_score_adj = true

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "/usr/sbin/runc"
  Root = "{runc_root}"

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "{cni}"
"#,
        root = layout.containerd_root().display(),
        state = layout.containerd_state().display(),
        sock = layout.containerd_socket().display(),
        pause = PAUSE_IMAGE,
        cni = layout.cni_conf_dir().display(),
        runc_root = layout.run.join("runc").display(),
    )
}

/// The kubelet's config for this cgroup v1, systemd-less, swapless host.
pub fn kubelet_yaml(layout: &Layout, pki: &Pki, node_ip: &str) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{sock}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: {node_ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
evictionHard:
  memory.available: 100Mi
  nodefs.available: 2%
  imagefs.available: 2%
  nodefs.inodesFree: 2%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
podLogsDir: {pod_logs}
"#,
        sock = layout.containerd_socket().display(),
        ca = pki.ca_cert().display(),
        pod_logs = layout.state.join("pod-logs").display(),
    )
}

/// kube-proxy's config: iptables mode, NodePorts only on the node IP (never on the host's
/// other interfaces, never on 127.0.0.1, which would need `route_localnet`), its health
/// and metrics ports on loopback, and every conntrack setting 0 so that it changes no
/// sysctl of the host (0 means "leave as is"). Its masquerade rule rewrites only the
/// source of Service traffic that it marked, all of which stays on this host: with IP
/// forwarding off nothing is routed off the machine.
pub fn kube_proxy_yaml(layout: &Layout) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {node}
mode: iptables
clusterCIDR: {pod_cidr}
detectLocalMode: ClusterCIDR
nodePortAddresses: ["{node_ip}/32"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  localhostNodePorts: false
  masqueradeAll: false
  syncPeriod: 30s
  minSyncPeriod: 0s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kubeconfig = layout.kubeconfig("kube-proxy").display(),
        node = super::layout::NODE_NAME,
        pod_cidr = super::cni::POD_CIDR,
        node_ip = super::pki::NODE_IP,
    )
}
