//! The cluster's images, built here as OCI archives (a hand-written OCI layout: one
//! uncompressed layer, a config, a manifest, an index) and imported into containerd's
//! `k8s.io` namespace with `ctr images import`: our own static pause, Debian's
//! busybox-static as `selfheal-lab/busybox:1`, the grade API (this very binary with its
//! shared libraries) under the experiment's image name, and the exporter's image from a
//! selfheal-exporter binary under the name `deploy/` uses.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::error::{ClusterError, Result};
use super::exec;
use super::layout::Layout;
use super::tar::Tar;

/// The sandbox (pause) image, pinned in containerd's config.
pub const PAUSE_IMAGE: &str = "docker.io/selfheal-lab/pause:1";
/// Debian's busybox-static with every applet linked.
pub const BUSYBOX_IMAGE: &str = "docker.io/selfheal-lab/busybox:1";
/// The experiment's grade API, served by `selfheal-lab grade-api` on port 3000.
pub const GRADE_API_IMAGE: &str =
    "docker.io/rslim087/kubernetes-course-grade-submission-api:stateful";

const PAUSE_C: &str = include_str!("pause.c");
const BUSYBOX: &str = "/bin/busybox";

/// One filesystem entry of a layer.
pub enum Entry {
    Dir(String),
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// What an image holds and how it starts.
pub struct ImageSpec {
    /// Fully qualified name (`docker.io/…:tag`).
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub entries: Vec<Entry>,
}

fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Renders `spec` as an OCI image-layout tar archive.
pub fn oci_archive(spec: &ImageSpec) -> Result<Vec<u8>> {
    let mut layer = Tar::new();
    for e in &spec.entries {
        match e {
            Entry::Dir(p) => layer.dir(p, 0o755)?,
            Entry::File { path, mode, data } => layer.file(path, *mode, data)?,
            Entry::Symlink { path, target } => layer.symlink(path, target)?,
        }
    }
    let layer = layer.finish();
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let mut config = json!({
        "Entrypoint": spec.entrypoint,
        "Env": spec.env,
    });
    if !spec.cmd.is_empty() {
        config["Cmd"] = json!(spec.cmd);
    }
    if let Some(u) = &spec.user {
        config["User"] = json!(u);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "selfheal-lab cluster images"}],
    }))
    .map_err(|e| ClusterError::Setup(format!("image config: {e}")))?;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    }))
    .map_err(|e| ClusterError::Setup(format!("image manifest: {e}")))?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let tag = spec
        .name
        .rsplit_once(':')
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": spec.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .map_err(|e| ClusterError::Setup(format!("image index: {e}")))?;
    let mut out = Tar::new();
    out.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    out.file("index.json", 0o644, &index)?;
    out.dir("blobs", 0o755)?;
    out.dir("blobs/sha256", 0o755)?;
    for (digest, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        out.file(&format!("blobs/sha256/{hex}"), 0o644, data)?;
    }
    Ok(out.finish())
}

/// Our pause: `pause.c` compiled statically with the host's gcc.
pub fn pause_spec(work: &Path) -> Result<ImageSpec> {
    let src = work.join("pause.c");
    let bin = work.join("pause");
    std::fs::write(&src, PAUSE_C).map_err(ClusterError::io("writing", &src))?;
    exec::run(
        "gcc",
        [
            "-Os".as_ref(),
            "-Wall".as_ref(),
            "-Werror".as_ref(),
            "-static".as_ref(),
            "-o".as_ref(),
            bin.as_os_str(),
            src.as_os_str(),
        ],
    )?;
    let data = std::fs::read(&bin).map_err(ClusterError::io("reading", &bin))?;
    Ok(ImageSpec {
        name: PAUSE_IMAGE.into(),
        entrypoint: vec!["/pause".into()],
        cmd: vec![],
        env: vec![],
        user: None,
        entries: vec![Entry::File {
            path: "pause".into(),
            mode: 0o755,
            data,
        }],
    })
}

/// Debian's busybox-static at /bin/busybox with a symlink per applet.
pub fn busybox_spec() -> Result<ImageSpec> {
    let path = Path::new(BUSYBOX);
    let data = std::fs::read(path).map_err(ClusterError::io(
        "reading (apt-get install busybox-static)",
        path,
    ))?;
    let list = exec::run(BUSYBOX, ["--list-full"])?;
    let mut entries = vec![
        Entry::Dir("bin".into()),
        Entry::Dir("sbin".into()),
        Entry::Dir("usr".into()),
        Entry::Dir("usr/bin".into()),
        Entry::Dir("usr/sbin".into()),
        Entry::Dir("tmp".into()),
        Entry::Dir("etc".into()),
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data,
        },
    ];
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        entries.push(Entry::Symlink {
            path: applet.into(),
            target: "/bin/busybox".into(),
        });
    }
    Ok(ImageSpec {
        name: BUSYBOX_IMAGE.into(),
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        user: None,
        entries,
    })
}

/// The shared libraries `ldd` resolves for `binary` (absolute paths, the loader included).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = exec::run("ldd", [binary])?;
    let mut libs = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// A dynamically linked `binary` at `path` in the image, with the shared libraries `ldd`
/// resolves for it at their absolute paths (the loader included) and their directories.
fn binary_with_libraries(binary: &Path, path: &str) -> Result<Vec<Entry>> {
    let data = std::fs::read(binary).map_err(ClusterError::io("reading", binary))?;
    let mut entries = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    let mut add_parents = |rel: &str, entries: &mut Vec<Entry>| {
        let mut acc = String::new();
        if let Some((parent, _)) = rel.rsplit_once('/') {
            for part in parent.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                if !dirs.contains(&acc) {
                    dirs.push(acc.clone());
                    entries.push(Entry::Dir(acc.clone()));
                }
            }
        }
    };
    add_parents(path, &mut entries);
    entries.push(Entry::File {
        path: path.into(),
        mode: 0o755,
        data,
    });
    for lib in shared_libraries(binary)? {
        let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
        add_parents(&rel, &mut entries);
        let bytes = std::fs::read(&lib).map_err(ClusterError::io("reading", &lib))?;
        entries.push(Entry::File {
            path: rel,
            mode: 0o755,
            data: bytes,
        });
    }
    Ok(entries)
}

/// Where Debian keeps the libraries [`binary_with_libraries`] copies.
const LIBRARY_PATH: &str = "LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu";

/// The grade API: `lab_binary grade-api` listening on 0.0.0.0:3000, with its libraries.
pub fn grade_api_spec(lab_binary: &Path) -> Result<ImageSpec> {
    let mut entries = binary_with_libraries(lab_binary, "selfheal-lab")?;
    entries.push(Entry::Dir("tmp".into()));
    Ok(ImageSpec {
        name: GRADE_API_IMAGE.into(),
        entrypoint: vec!["/selfheal-lab".into(), "grade-api".into()],
        cmd: vec![],
        env: vec!["GRADE_API_LISTEN=0.0.0.0:3000".into(), LIBRARY_PATH.into()],
        user: None,
        entries,
    })
}

/// The exporter's image under the name `deploy/` uses (`selfheal-exporter:<version>`, the
/// kustomize base's `images:` and the chart's default), as the repository's Dockerfile
/// builds it: the binary at /usr/local/bin/selfheal-exporter, its runtime libraries,
/// user 65532:65532 (distroless' nonroot), the binary as entrypoint. So `kubectl apply
/// -k deploy/kustomize/base` runs it unchanged.
pub fn exporter_spec(exporter_binary: &Path) -> Result<ImageSpec> {
    Ok(ImageSpec {
        name: exporter_image(),
        entrypoint: vec!["/usr/local/bin/selfheal-exporter".into()],
        cmd: vec![],
        env: vec![LIBRARY_PATH.into()],
        user: Some("65532:65532".into()),
        entries: binary_with_libraries(exporter_binary, "usr/local/bin/selfheal-exporter")?,
    })
}

/// `docker.io/library/selfheal-exporter:<this crate's version>`, the workspace's version.
pub fn exporter_image() -> String {
    format!(
        "docker.io/library/selfheal-exporter:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Writes `spec`'s archive under the images dir and imports it into containerd.
pub fn import(layout: &Layout, spec: &ImageSpec) -> Result<()> {
    let dir = layout.images_dir();
    std::fs::create_dir_all(&dir).map_err(ClusterError::io("creating", &dir))?;
    let file_name: String = spec
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let archive = dir.join(format!("{file_name}.tar"));
    let bytes = oci_archive(spec)?;
    std::fs::write(&archive, bytes).map_err(ClusterError::io("writing", &archive))?;
    exec::run(
        layout.binary("ctr"),
        [
            "--address".as_ref(),
            layout.containerd_socket().as_os_str(),
            "-n".as_ref(),
            "k8s.io".as_ref(),
            "images".as_ref(),
            "import".as_ref(),
            "--platform".as_ref(),
            "linux/amd64".as_ref(),
            archive.as_os_str(),
        ],
    )?;
    Ok(())
}

/// Builds and imports every image; `lab_binary` is this program (for the grade API),
/// `exporter_binary` the daemon (for its image), if there is one.
pub fn import_all(
    layout: &Layout,
    lab_binary: &Path,
    exporter_binary: Option<&Path>,
) -> Result<Vec<String>> {
    let work = layout.images_dir();
    std::fs::create_dir_all(&work).map_err(ClusterError::io("creating", &work))?;
    let mut specs = vec![
        pause_spec(&work)?,
        busybox_spec()?,
        grade_api_spec(lab_binary)?,
    ];
    if let Some(binary) = exporter_binary {
        specs.push(exporter_spec(binary)?);
    }
    let mut names = Vec::new();
    for spec in &specs {
        import(layout, spec)?;
        names.push(spec.name.clone());
    }
    Ok(names)
}
