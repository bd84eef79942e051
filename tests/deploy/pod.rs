//! The pod: hardened, sized, probed, and the image this crate builds.

use serde_json::Value;

use crate::command::read;
use crate::render::{BASE, all_renders};
use crate::rendering::leader_election_of;
use crate::schemas::labels_of;
use crate::sharding::{container_args, flag_value, shards_of};
use crate::yaml::{kind, yaml};

/// The fixed non-root UID of the image (distroless "nonroot") and the pod.
pub(crate) const UID: i64 = 65532;
pub(crate) const PORT: i64 = 9964;

#[test]
fn the_pod_is_hardened_sized_and_probed() {
    for render in all_renders() {
        let what = &render.what;
        let deployment = render.workload();
        // A Deployment: exactly one replica; a StatefulSet: one per shard (checked in
        // sharded_statefulsets_run_one_pod_per_shard).
        match kind(deployment) {
            "Deployment" => {
                // More than one only as standbys for the leader-elected prober.
                if leader_election_of(render, deployment).is_some() {
                    assert!(
                        deployment["spec"]["replicas"]
                            .as_u64()
                            .is_some_and(|r| r >= 1),
                        "{what}: replicas"
                    );
                } else {
                    assert_eq!(deployment["spec"]["replicas"], 1, "{what}: one replica");
                }
                let args = container_args(deployment);
                assert!(
                    flag_value(&args, "--shard").is_none()
                        && flag_value(&args, "--total-shards").is_none(),
                    "{what}: an unsharded Deployment passes no shard flags: {args:?}"
                );
            }
            _ => assert!(shards_of(render, deployment).is_some(), "{what}"),
        }
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["automountServiceAccountToken"], true,
            "{what}: it needs the API"
        );
        assert_eq!(
            pod["enableServiceLinks"], false,
            "{what}: service links would inject SELFHEAL_EXPORTER_* variables, which the \
             daemon reads as (unknown, fatal) config keys"
        );
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        assert!(grace >= 10, "{what}: terminationGracePeriodSeconds {grace}");
        let pod_security = &pod["securityContext"];
        assert_eq!(pod_security["runAsNonRoot"], true, "{what}");
        assert_eq!(pod_security["runAsUser"], UID, "{what}");
        assert_eq!(
            pod_security["seccompProfile"]["type"], "RuntimeDefault",
            "{what}"
        );
        assert_eq!(pod["hostNetwork"], Value::Null, "{what}");
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{what}");
        let container = &containers[0];
        let security = &container["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{what}");
        assert_eq!(security["runAsUser"], UID, "{what}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
        assert_eq!(
            security["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{what}"
        );
        assert_eq!(security["capabilities"].get("add"), None, "{what}");
        assert_ne!(security["privileged"], true, "{what}");

        // The image: this crate's version, never `latest`.
        let image = container["image"].as_str().expect("image");
        assert!(
            image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
            "{what}: image {image} is tagged with the crate version"
        );
        // Probes on the endpoints the daemon serves.
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{what}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{what}"
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["port"], "metrics",
                "{what}: {probe}"
            );
        }
        assert_eq!(container["ports"][0]["containerPort"], PORT, "{what}");
        // Resources from the benchmark: peak RSS 43.6 MiB at 10,000 pods.
        let resources = &container["resources"];
        assert_eq!(resources["requests"]["memory"], "64Mi", "{what}");
        assert_eq!(resources["requests"]["cpu"], "50m", "{what}");
        assert_eq!(resources["limits"]["memory"], "128Mi", "{what}");
        // The Service exposes the port by name.
        let service = render.metrics_service();
        let port = &service["spec"]["ports"][0];
        assert_eq!(port["name"], "metrics", "{what}");
        assert_eq!(port["port"], PORT, "{what}");
        let selector = labels_of(service, "/spec/selector");
        let pod_labels = labels_of(deployment, "/spec/template/metadata/labels");
        assert!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{what}: the Service selects the pod"
        );
    }
}

#[test]
fn the_base_uses_the_crate_version_as_image_tag() {
    // Without kubectl: the kustomization's images entry.
    let kustomization = yaml(
        &read(&format!("{BASE}/kustomization.yaml")),
        "kustomization",
    );
    assert_eq!(kustomization["images"][0]["name"], "selfheal-exporter");
    assert_eq!(
        kustomization["images"][0]["newTag"],
        env!("CARGO_PKG_VERSION"),
        "{BASE}/kustomization.yaml images[0].newTag is the crate's version: bump both"
    );
}
