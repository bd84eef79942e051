//! kubectl against the lab API server (fails without kubectl, unless
//! `SKIP_MISSING_TOOLS=1` asks it to skip: `selfheal_lab::testkit::tools`).

use std::process::Command;

use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, PODS};
use selfheal_lab::testkit::tools::KUBECTL;
use serde_json::json;

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_smoke() {
    if !KUBECTL.require("talk to the lab API server as a user would") {
        return;
    }
    let lab = ApiServer::start(ApiServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    lab.write_kubeconfig(&kc).unwrap();
    lab.store()
        .create_with_status(
            &PODS,
            "kube-system",
            json!({"metadata": {"name": "coredns"}, "spec": {"containers": [{"name": "c", "image": "coredns:1"}]},
                   "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 2,
                       "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                       "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "2020-01-01T00:00:00Z"}}}]}}),
        )
        .unwrap();
    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: grade-submission-api\n  labels:\n    app: grade\nspec:\n  containers:\n  - name: api\n    image: rslim087/kubernetes-course-grade-submission-api:stateful\n    resources:\n      limits:\n        memory: 64Mi\n",
    )
    .unwrap();

    let kc2 = kc.clone();
    let m2 = manifest.clone();
    tokio::task::spawn_blocking(move || {
        let (ok, out, err) = kubectl(
            &kc2,
            &["apply", "--validate=false", "-f", m2.to_str().unwrap()],
        );
        assert!(ok, "apply failed: {out}{err}");
        assert!(out.contains("pod/grade-submission-api created"), "{out}");

        let (ok, out, err) = kubectl(&kc2, &["get", "pods", "-A"]);
        assert!(ok, "get -A failed: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE"), "{out}");
        assert!(
            out.contains("kube-system   coredns") && out.contains("CrashLoopBackOff"),
            "{out}"
        );
        assert!(out.contains("default       grade-submission-api"), "{out}");

        let (ok, out, err) = kubectl(&kc2, &["get", "pod", "grade-submission-api", "-o", "yaml"]);
        assert!(ok, "{err}");
        assert!(
            out.contains("restartPolicy: Always") && out.contains("resourceVersion:"),
            "{out}"
        );

        // re-apply with a change goes through PATCH (strategic merge)
        let changed = std::fs::read_to_string(&m2)
            .unwrap()
            .replace("64Mi", "48Mi");
        std::fs::write(&m2, changed).unwrap();
        let (ok, out, err) = kubectl(
            &kc2,
            &["apply", "--validate=false", "-f", m2.to_str().unwrap()],
        );
        assert!(ok && out.contains("configured"), "{out}{err}");
        let (ok, out, _) = kubectl(
            &kc2,
            &[
                "get",
                "pod",
                "grade-submission-api",
                "-o",
                "jsonpath={.spec.containers[0].resources.limits.memory}",
            ],
        );
        assert!(ok);
        assert_eq!(out, "48Mi");

        let (ok, out, err) = kubectl(&kc2, &["get", "pods", "-l", "app=grade", "-o", "name"]);
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "pod/grade-submission-api");

        let (ok, out, err) = kubectl(&kc2, &["delete", "pod", "grade-submission-api"]);
        assert!(ok, "delete failed: {out}{err}");
        let (ok, _, err) = kubectl(&kc2, &["get", "pod", "grade-submission-api"]);
        assert!(!ok && err.contains("NotFound"), "{err}");
    })
    .await
    .unwrap();
    lab.shutdown().await;
}
