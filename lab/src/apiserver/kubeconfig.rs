//! kubeconfig files pointing kubectl and kube-rs at a lab API server: one
//! cluster (plain HTTP, no TLS), one user without credentials, one context
//! `selfheal-lab` set as current.

use std::io;
use std::path::Path;

/// Name of the cluster, user and context written into lab kubeconfigs.
pub const CONTEXT: &str = "selfheal-lab";

/// kubeconfig YAML for a server at `url` (e.g. `http://127.0.0.1:8080`).
pub fn render(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT}
  cluster:
    server: {url}
contexts:
- name: {CONTEXT}
  context:
    cluster: {CONTEXT}
    user: {CONTEXT}
    namespace: default
current-context: {CONTEXT}
users:
- name: {CONTEXT}
  user: {{}}
preferences: {{}}
"
    )
}

/// Writes [`render`]`(url)` to `path` (creating parent directories).
pub fn write(url: &str, path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(url))
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_server() {
        let k = super::render("http://127.0.0.1:1234");
        assert!(k.contains("server: http://127.0.0.1:1234\n"));
        assert!(k.contains("current-context: selfheal-lab\n"));
    }
}
