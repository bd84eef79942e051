//! The snippets of deploy/README.md marked `<!-- tested: NAME -->`, applied as documented.

use std::process::Command;

use crate::command::{path, read, run, write_temp};
use crate::copies::{REFRESH_HINT, RULES_SOURCE, with_threshold};
use crate::render::{OPERATOR, Render, SHARDED, kustomization, render_from};
use crate::sharding::shards_of;
use crate::yaml::{first_difference, numbers_as_floats, yaml};

/// The ```yaml block after `<!-- tested: NAME -->` in deploy/README.md, unindented.
fn readme_snippet(marker_name: &str) -> String {
    let readme = read("deploy/README.md");
    let marker = format!("<!-- tested: {marker_name} -->");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("deploy/README.md has the tested snippet {marker}"));
    let rest = &readme[at..];
    let fence = rest
        .find("```yaml")
        .expect("a ```yaml block after the marker");
    let line_start = rest[..fence].rfind('\n').map_or(0, |i| i + 1);
    let indent = fence - line_start;
    let body_start = fence + rest[fence..].find('\n').expect("fence line") + 1;
    let body_end = body_start + rest[body_start..].find("```").expect("closing fence");
    rest[body_start..body_end]
        .lines()
        .map(|line| line.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Renders a kustomization of deploy/README.md that uses `documented` (a path relative to
/// a checkout next to the user's overlay) as a resource, pointed at `overlay` here.
fn render_readme_kustomization(
    snippet: &str,
    documented: &str,
    overlay: &str,
    what: &str,
) -> Render {
    assert!(
        snippet.contains(documented),
        "the snippet uses {documented}:\n{snippet}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // Kustomize wants a relative path to the overlay.
    let ups = dir.path().components().count() - 1;
    let relative = format!(
        "{}{}",
        "../".repeat(ups),
        path(overlay)
            .to_str()
            .expect("utf-8")
            .trim_start_matches('/')
    );
    write_temp(
        &dir,
        "kustomization.yaml",
        &snippet.replace(documented, &relative),
    );
    let mut command = Command::new("kubectl");
    command.arg("kustomize").arg(dir.path());
    render_from(what.into(), run(command))
}

#[test]
fn the_documented_threshold_patch_applies() {
    // deploy/README.md shows how to override an alert threshold in an overlay; that very
    // snippet, pointed at this repository's overlay, must render and change that rule.
    let snippet = readme_snippet("threshold-patch");
    if !path(RULES_SOURCE).exists() {
        return;
    }
    let Some(_) = kustomization(OPERATOR) else {
        return;
    };
    let render = render_readme_kustomization(
        &snippet,
        "../selfheal-exporter/deploy/kustomize/overlays/prometheus-operator",
        OPERATOR,
        "the threshold patch of deploy/README.md",
    );
    let rule = render.one("PrometheusRule");
    let expected = with_threshold(
        &numbers_as_floats(&yaml(&read(RULES_SOURCE), RULES_SOURCE)["groups"]),
        "oom_kills_1h",
        "vector(5)",
    );
    if let Some(difference) = first_difference(
        &numbers_as_floats(&rule["spec"]["groups"]),
        &expected,
        "groups",
    ) {
        panic!(
            "the README's patch must change exactly selfheal:threshold:oom_kills_1h to \
             vector(5) ({difference}); if the overlay's copy is stale: {REFRESH_HINT}"
        );
    }
}

#[test]
fn the_documented_shard_count_patch_applies() {
    // deploy/README.md shows how to change the shard count of the sharded overlay; that
    // snippet must render, with replicas and --total-shards changed together.
    let snippet = readme_snippet("shard-count-patch");
    let Some(original) = kustomization(SHARDED) else {
        return;
    };
    let render = render_readme_kustomization(
        &snippet,
        "../selfheal-exporter/deploy/kustomize/overlays/sharded",
        SHARDED,
        "the shard-count patch of deploy/README.md",
    );
    let statefulset = render.workload();
    let (total, _) = shards_of(&render, statefulset).expect("a StatefulSet");
    assert_eq!(total, 4, "the README's patch makes 4 shards");
    // Nothing else changes.
    let mut expected = original.workload().clone();
    expected["spec"]["replicas"] = serde_json::json!(4);
    expected["spec"]["template"]["spec"]["containers"][0]["args"][5] = serde_json::json!("4");
    if let Some(difference) = first_difference(statefulset, &expected, "StatefulSet") {
        panic!("the README's shard-count patch changes more than the count: {difference}");
    }
}
