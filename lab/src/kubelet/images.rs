//! The lab's "image registry": which images exist and what process each one runs.
//!
//! | image | process |
//! |---|---|
//! | `rslim087/kubernetes-course-grade-submission-api:stateful` | `<lab binary> grade-api --listen <podIP>:<first containerPort or 3000>` (then the container's `args`) |
//! | `selfheal-lab/shell[:any tag]` | the container's `command` + `args`, as given |
//! | anything else | not found: `ErrImagePull` / `ImagePullBackOff` |
//!
//! A `docker.io/` or `docker.io/library/` prefix and a `@sha256:` digest are ignored.

use std::net::IpAddr;
use std::path::Path;

use super::spec::ContainerSpec;

/// The experiment's grade-submission API image.
pub const GRADE_API_IMAGE: &str = "rslim087/kubernetes-course-grade-submission-api:stateful";
/// The generic image: runs `command` + `args`.
pub const SHELL_IMAGE: &str = "selfheal-lab/shell";

/// What the image resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Run this program with these arguments.
    Run {
        /// Program.
        program: String,
        /// Arguments.
        args: Vec<String>,
    },
    /// The image does not exist in the lab (message for `ErrImagePull`).
    NotFound(String),
    /// The container cannot be created (message for `CreateContainerError`).
    Invalid(String),
}

fn normalize(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    image
        .strip_prefix("docker.io/library/")
        .or_else(|| image.strip_prefix("docker.io/"))
        .unwrap_or(image)
}

/// A stable fake digest for `imageID`.
pub fn image_id(image: &str) -> String {
    use std::hash::{Hash, Hasher};
    let name = normalize(image);
    let mut hex = String::new();
    for salt in 0u8..4 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (salt, name).hash(&mut h);
        hex.push_str(&format!("{:016x}", h.finish()));
    }
    let repo = name.split(':').next().unwrap_or(name);
    let repo = if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{repo}@sha256:{hex}")
}

/// Resolves `c`'s image for a pod at `pod_ip`.
pub fn resolve(c: &ContainerSpec, lab_binary: &Path, pod_ip: IpAddr) -> Resolved {
    let image = normalize(&c.image);
    if image.is_empty() {
        return Resolved::Invalid("spec.containers[].image: Required value".into());
    }
    if image == GRADE_API_IMAGE {
        let port = c.ports.first().map_or(3000, |p| p.port);
        let mut args = vec![
            "grade-api".to_string(),
            "--listen".to_string(),
            format!("{pod_ip}:{port}"),
        ];
        args.extend(c.args.iter().cloned());
        return Resolved::Run {
            program: lab_binary.display().to_string(),
            args,
        };
    }
    let repo = image.split(':').next().unwrap_or(image);
    if repo == SHELL_IMAGE {
        let mut argv = c.command.iter().chain(c.args.iter()).cloned();
        return match argv.next() {
            Some(program) => Resolved::Run {
                program,
                args: argv.collect(),
            },
            None => Resolved::Invalid(
                "failed to create containerd task: no command specified (selfheal-lab/shell has no entrypoint)"
                    .into(),
            ),
        };
    }
    Resolved::NotFound(format!(
        "failed to pull and unpack image \"{}\": failed to resolve reference \"{}\": not found in the lab (known images: {GRADE_API_IMAGE}, {SHELL_IMAGE}[:tag])",
        c.image, c.image
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::spec::PortSpec;

    fn container(image: &str, command: &[&str]) -> ContainerSpec {
        ContainerSpec {
            name: "c".into(),
            image: image.into(),
            command: command.iter().map(ToString::to_string).collect(),
            args: vec![],
            env: vec![],
            ports: vec![],
            memory_limit: Ok(None),
            readiness: None,
            liveness: None,
            startup: None,
        }
    }

    #[test]
    fn mapping() {
        let ip: IpAddr = "127.0.1.2".parse().unwrap();
        let bin = Path::new("/lab");
        let mut g = container(GRADE_API_IMAGE, &[]);
        assert_eq!(
            resolve(&g, bin, ip),
            Resolved::Run {
                program: "/lab".into(),
                args: vec![
                    "grade-api".into(),
                    "--listen".into(),
                    "127.0.1.2:3000".into()
                ]
            }
        );
        g.image = format!("docker.io/{GRADE_API_IMAGE}");
        g.ports = vec![PortSpec {
            name: None,
            port: 8080,
        }];
        assert!(
            matches!(resolve(&g, bin, ip), Resolved::Run { args, .. } if args[2] == "127.0.1.2:8080")
        );
        let s = container("selfheal-lab/shell:1", &["sh", "-c", "exit 1"]);
        assert_eq!(
            resolve(&s, bin, ip),
            Resolved::Run {
                program: "sh".into(),
                args: vec!["-c".into(), "exit 1".into()]
            }
        );
        assert!(matches!(
            resolve(&container(SHELL_IMAGE, &[]), bin, ip),
            Resolved::Invalid(_)
        ));
        assert!(
            matches!(resolve(&container("nginx", &[]), bin, ip), Resolved::NotFound(m) if m.contains("\"nginx\""))
        );
        assert!(matches!(
            resolve(&container("", &[]), bin, ip),
            Resolved::Invalid(_)
        ));
        assert!(image_id("nginx:1").starts_with("docker.io/library/nginx@sha256:"));
        assert_eq!(image_id("a/b:1").len(), "docker.io/a/b@sha256:".len() + 64);
    }
}
