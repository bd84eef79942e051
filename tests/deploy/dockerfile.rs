//! The Dockerfile (no Docker engine here: checked structurally) and its build context.

use std::collections::BTreeSet;
use std::process::Command;

use crate::command::{copy_tree, path, read, run};
use crate::pod::{PORT, UID};

#[test]
fn dockerfile_is_multi_stage_non_root_and_pinned() {
    let dockerfile = read("Dockerfile");
    // Instructions, with continuation lines joined and comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(start) => {
                current.push_str(start);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let from: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(from.len() >= 2, "multi-stage: {from:?}");
    for line in &from {
        let image = line.split_whitespace().nth(1).expect("FROM image");
        let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
        assert!(
            image.contains('@') || (!tag.is_empty() && !tag.contains('/')),
            "{line}: every base image has an explicit tag or digest"
        );
        assert!(!tag.starts_with("latest"), "{line}: never latest");
    }
    let build = from[0];
    assert!(
        build.starts_with("FROM rust:"),
        "{build}: the official Rust image"
    );
    // The build image's Rust is at least the crate's rust-version.
    let toml: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let needed = toml["workspace"]["package"]["rust-version"]
        .as_str()
        .expect("rust-version");
    let minor = |version: &str| -> u32 {
        version
            .split('.')
            .nth(1)
            .and_then(|m| m.split('-').next()?.parse().ok())
            .unwrap_or(0)
    };
    let build_version = build
        .split_whitespace()
        .nth(1)
        .expect("image")
        .trim_start_matches("rust:");
    assert!(
        minor(build_version) >= minor(needed),
        "{build}: the crate needs Rust {needed}"
    );
    assert!(
        instructions
            .iter()
            .any(|i| i.contains("cargo build --release --locked -p selfheal-exporter")),
        "the build stage runs cargo build --release --locked -p selfheal-exporter"
    );
    // The final stage: distroless nonroot (glibc) or scratch, non-root, the binary.
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("FROM");
    let final_stage = &instructions[last_from..];
    let final_image = final_stage[0].split_whitespace().nth(1).expect("image");
    assert!(
        final_image.starts_with("gcr.io/distroless/cc-debian12:nonroot")
            || final_image == "scratch",
        "final stage: {final_image}"
    );
    // A binary built against a newer glibc does not start on an older one.
    if final_image != "scratch" {
        let debian = [("bookworm", "debian12"), ("trixie", "debian13")];
        let matched = debian
            .iter()
            .any(|(build_os, run_os)| build.contains(build_os) && final_image.contains(run_os));
        assert!(
            matched,
            "{build} and {final_image}: the same Debian release"
        );
    }
    let user = final_stage
        .iter()
        .rfind(|i| i.starts_with("USER "))
        .expect("the final stage sets USER");
    let uid = user[5..].split(':').next().expect("uid").trim();
    assert_eq!(
        uid,
        UID.to_string(),
        "{user}: numeric, so runAsNonRoot can verify it"
    );
    assert!(
        final_stage.iter().any(|i| i == &format!("EXPOSE {PORT}")),
        "EXPOSE {PORT}"
    );
    let entrypoint = final_stage
        .iter()
        .find(|i| i.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entrypoint["ENTRYPOINT ".len()..])
        .expect("ENTRYPOINT in exec form (a JSON array): no shell in distroless");
    assert!(argv[0].ends_with("/selfheal-exporter"), "{entrypoint}");
    let copied = final_stage
        .iter()
        .find(|i| i.starts_with("COPY --from="))
        .expect("the final stage copies the binary from the build stage");
    assert!(copied.contains(&argv[0]), "{copied}: installs {}", argv[0]);

    // .dockerignore: an allowlist with what the workspace build reads, without target/.
    let dockerignore = read(".dockerignore");
    let ignore: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        ignore.first(),
        Some(&"*"),
        ".dockerignore excludes everything first"
    );
    let allowed: BTreeSet<&str> = ignore
        .iter()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let members = toml["workspace"]["members"].as_array().expect("members");
    let mut needed: Vec<String> = vec!["Cargo.toml".into(), "Cargo.lock".into(), "src".into()];
    needed.extend(
        members
            .iter()
            .filter_map(|m| m.as_str())
            .filter(|m| *m != ".")
            .map(String::from),
    );
    if toml.contains_key("bench") {
        needed.push("benches".into());
    }
    for entry in &needed {
        assert!(
            allowed.contains(entry.as_str()),
            ".dockerignore must let {entry} in"
        );
    }
    assert!(!allowed.contains("target"), ".dockerignore lets target/ in");
}

#[test]
fn the_docker_build_context_is_a_complete_workspace() {
    // What `COPY . .` sees (the allowlist of .dockerignore) is a workspace cargo can load:
    // every member and every declared target present, Cargo.lock up to date.
    let context = tempfile::tempdir().expect("tempdir");
    let allowed: Vec<String> = read(".dockerignore")
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    for entry in &allowed {
        copy_tree(&path(entry), &context.path().join(entry));
    }
    // `cargo fetch` loads the whole workspace as `cargo build` does (members, declared
    // targets such as benches, Cargo.lock) without compiling; offline, for this platform.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut command = Command::new(cargo);
    command
        .args(["fetch", "--locked", "--offline", "--target", &host])
        .current_dir(context.path());
    let ran = run(command);
    assert!(
        ran.status.success(),
        "cargo cannot load the Docker build context (.dockerignore lets in {allowed:?}):\n{}",
        ran.stderr
    );
}
