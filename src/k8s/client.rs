//! Connection to the Kubernetes API server: an explicit kubeconfig (flag or `KUBECONFIG`,
//! optionally with `--context`), else the in-cluster service account when running in a
//! pod, else the default kubeconfig. Plain `http://` servers work (the lab uses them).

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("--kubeconfig {paths}: {source}")]
    Kubeconfig {
        paths: String,
        #[source]
        source: KubeconfigError,
    },
    #[error("--context {context:?}: {source}")]
    Context {
        context: String,
        #[source]
        source: KubeconfigError,
    },
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error(
        "no Kubernetes configuration found: not running in a pod, and no kubeconfig \
         (--kubeconfig, KUBECONFIG or ~/.kube/config): {0}"
    )]
    NoConfig(#[source] KubeconfigError),
}

/// Builds the client configuration. `kubeconfig` may list several files separated by
/// the platform's path separator, as `KUBECONFIG` does.
pub async fn kube_config(
    kubeconfig: Option<&str>,
    context: Option<&str>,
) -> Result<kube::Config, ClientError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let context_error = |source| ClientError::Context {
        context: context.unwrap_or_default().to_owned(),
        source,
    };
    if let Some(paths) = kubeconfig.filter(|paths| !paths.trim().is_empty()) {
        let merged = read_kubeconfigs(paths).map_err(|source| ClientError::Kubeconfig {
            paths: paths.to_owned(),
            source,
        })?;
        return kube::Config::from_custom_kubeconfig(merged, &options)
            .await
            .map_err(|source| match context {
                Some(_) => context_error(source),
                None => ClientError::Kubeconfig {
                    paths: paths.to_owned(),
                    source,
                },
            });
    }
    if context.is_none() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Ok(kube::Config::incluster()?);
    }
    kube::Config::from_kubeconfig(&options)
        .await
        .map_err(|source| match context {
            Some(_) => context_error(source),
            None => ClientError::NoConfig(source),
        })
}

fn read_kubeconfigs(paths: &str) -> Result<Kubeconfig, KubeconfigError> {
    std::env::split_paths(paths)
        .filter(|path| !path.as_os_str().is_empty())
        .collect::<Vec<PathBuf>>()
        .iter()
        .try_fold(Kubeconfig::default(), |merged, path| {
            merged.merge(Kubeconfig::read_from(path)?)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "http://127.0.0.1:6443"}
- name: other
  cluster: {server: "http://127.0.0.2:6443"}
users:
- name: nobody
  user: {}
contexts:
- name: lab
  context: {cluster: lab, user: nobody}
- name: other
  context: {cluster: other, user: nobody}
current-context: lab
"#;

    #[tokio::test]
    async fn reads_an_explicit_kubeconfig_and_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, KUBECONFIG).expect("write");
        let path = path.to_str().expect("utf-8 path");

        let config = kube_config(Some(path), None).await.expect("config");
        assert_eq!(config.cluster_url.to_string(), "http://127.0.0.1:6443/");
        let config = kube_config(Some(path), Some("other"))
            .await
            .expect("config");
        assert_eq!(config.cluster_url.to_string(), "http://127.0.0.2:6443/");

        let error = kube_config(Some(path), Some("nope"))
            .await
            .expect_err("no such context");
        assert!(error.to_string().contains("--context \"nope\""), "{error}");
        let error = kube_config(Some("/nonexistent/kubeconfig"), None)
            .await
            .expect_err("missing file");
        assert!(
            error.to_string().contains("/nonexistent/kubeconfig"),
            "{error}"
        );
    }
}
