//! The lab API server driven through the real kube-rs client and watcher.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch as KubePatch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, NAMESPACES, PODS, Patch};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

async fn lab() -> ApiServer {
    ApiServer::start(ApiServerConfig {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await
    .expect("start lab")
}

fn client_with(lab: &ApiServer, retry: bool) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(lab.url().parse().expect("url"));
    config.default_namespace = "default".into();
    config.default_retry = retry;
    kube::Client::try_from(config).expect("client")
}

fn client(lab: &ApiServer) -> kube::Client {
    client_with(lab, true)
}

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "img:1"}]}
    }))
    .expect("pod")
}

fn name_of(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

type Events = mpsc::UnboundedReceiver<Result<watcher::Event<Pod>, watcher::Error>>;

fn spawn_watcher(api: Api<Pod>, cfg: watcher::Config) -> Events {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = s.next().await {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    rx
}

/// Next event satisfying `pred`, skipping others; panics after WAIT.
async fn expect_event(
    rx: &mut Events,
    what: &str,
    mut pred: impl FnMut(&watcher::Event<Pod>) -> bool,
) -> watcher::Event<Pod> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("watcher ended");
        if let Ok(ev) = ev
            && pred(&ev)
        {
            return ev;
        }
    }
}

fn is_apply(name: &str) -> impl FnMut(&watcher::Event<Pod>) -> bool + '_ {
    move |e| matches!(e, watcher::Event::Apply(p) if name_of(p) == name)
}

#[tokio::test]
async fn crud_with_typed_pods() {
    let lab = lab().await;
    let pods: Api<Pod> = Api::namespaced(client(&lab), "default");

    let created = pods
        .create(&PostParams::default(), &pod("api", json!({"app": "grade"})))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.spec.as_ref().unwrap().restart_policy.as_deref(),
        Some("Always")
    );
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );

    let err = pods
        .create(&PostParams::default(), &pod("api", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(409));

    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert_eq!(list_rv, lab.store().resource_version());

    let patched = pods
        .patch_status(
            "api",
            &PatchParams::default(),
            &KubePatch::Merge(json!({"status": {"phase": "Running", "podIP": "10.1.0.5"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    assert!(patched.metadata.resource_version > created.metadata.resource_version);

    // replace_status with the typed object
    let mut st = patched.clone();
    st.status.as_mut().unwrap().pod_ip = Some("10.1.0.6".into());
    let replaced = pods
        .replace_status("api", &PostParams::default(), &st)
        .await
        .unwrap();
    assert_eq!(replaced.status.unwrap().pod_ip.as_deref(), Some("10.1.0.6"));

    // stale resourceVersion → 409 Conflict
    let mut stale = created.clone();
    stale.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    let err = pods
        .replace("api", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match &err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
        }
        other => panic!("unexpected {other:?}"),
    }
    // fresh one works; .status in a main-resource update is ignored
    let mut fresh = pods.get("api").await.unwrap();
    fresh.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    fresh.status.as_mut().unwrap().phase = Some("Failed".into());
    let updated = pods
        .replace("api", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(updated.status.unwrap().phase.as_deref(), Some("Running"));

    // JSON patch and strategic merge patch
    let p = pods
        .patch(
            "api",
            &PatchParams::default(),
            &KubePatch::<()>::Json(
                serde_json::from_value(
                    json!([{"op": "add", "path": "/metadata/labels/j", "value": "1"}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["j"], "1");
    let p = pods
        .patch(
            "api",
            &PatchParams::default(),
            &KubePatch::Strategic(
                json!({"spec": {"containers": [{"name": "app", "image": "img:2"}]}}),
            ),
        )
        .await
        .unwrap();
    let c = &p.spec.unwrap().containers[0];
    assert_eq!(
        (c.image.as_deref(), c.image_pull_policy.as_deref()),
        (Some("img:2"), Some("IfNotPresent"))
    );

    let deleted = pods.delete("api", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_left());
    assert_eq!(api_code(&pods.get("api").await.unwrap_err()), Some(404));
    let err = pods
        .create(&PostParams::default(), &pod("x", json!({})))
        .await;
    assert!(err.is_ok());
    let nowhere: Api<Pod> = Api::namespaced(client(&lab), "missing");
    let err = nowhere
        .create(&PostParams::default(), &pod("x", json!({})))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(404));
    lab.shutdown().await;
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let lab = lab().await;
    let pods: Api<Pod> = Api::namespaced(client(&lab), "default");
    lab.store()
        .create(
            &PODS,
            "default",
            serde_json::to_value(pod("before", json!({}))).unwrap(),
        )
        .unwrap();
    let mut rx = spawn_watcher(pods.clone(), watcher::Config::default());
    expect_event(&mut rx, "Init", |e| matches!(e, watcher::Event::Init)).await;
    expect_event(
        &mut rx,
        "InitApply",
        |e| matches!(e, watcher::Event::InitApply(p) if name_of(p) == "before"),
    )
    .await;
    expect_event(&mut rx, "InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;

    pods.create(&PostParams::default(), &pod("w", json!({})))
        .await
        .unwrap();
    expect_event(&mut rx, "ADDED w", is_apply("w")).await;
    lab.store()
        .merge_status(&PODS, "default", "w", json!({"phase": "Running"}))
        .unwrap();
    expect_event(&mut rx, "MODIFIED w", |e| {
        matches!(e, watcher::Event::Apply(p) if name_of(p) == "w"
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    pods.delete("w", &DeleteParams::default()).await.unwrap();
    expect_event(
        &mut rx,
        "DELETED w",
        |e| matches!(e, watcher::Event::Delete(p) if name_of(p) == "w"),
    )
    .await;
    lab.shutdown().await;
}

#[tokio::test]
async fn watch_resumes_after_drop_without_losing_events() {
    let lab = lab().await;
    let pods: Api<Pod> = Api::namespaced(client(&lab), "default");
    let mut rx = spawn_watcher(pods.clone(), watcher::Config::default());
    expect_event(&mut rx, "InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    assert!(lab.wait_for_watches(1, WAIT).await);
    let store = lab.store();
    store
        .create(
            &PODS,
            "default",
            serde_json::to_value(pod("p0", json!({}))).unwrap(),
        )
        .unwrap();
    expect_event(&mut rx, "p0", is_apply("p0")).await;

    for round in 1..=3 {
        lab.faults().drop_watches();
        // written while the watch is down / reconnecting
        for i in 0..5 {
            let name = format!("p{round}-{i}");
            store
                .create(
                    &PODS,
                    "default",
                    serde_json::to_value(pod(&name, json!({}))).unwrap(),
                )
                .unwrap();
        }
        let mut seen = BTreeSet::new();
        while seen.len() < 5 {
            let ev = expect_event(&mut rx, "resumed events", |e| {
                matches!(e, watcher::Event::Apply(_) | watcher::Event::Init)
            })
            .await;
            match ev {
                watcher::Event::Apply(p) => {
                    seen.insert(name_of(&p));
                }
                _ => panic!("watcher relisted instead of resuming"),
            }
        }
        assert!(lab.wait_for_watches(1, WAIT).await);
    }
    lab.shutdown().await;
}

#[tokio::test]
async fn compaction_forces_relist_and_reflector_forgets_deleted_pod() {
    let lab = lab().await;
    let pods: Api<Pod> = Api::namespaced(client(&lab), "default");
    let store = lab.store();
    for n in ["a", "b"] {
        store
            .create(
                &PODS,
                "default",
                serde_json::to_value(pod(n, json!({}))).unwrap(),
            )
            .unwrap();
    }
    let (reader, writer) = reflector::store::<Pod>();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut s = reflector(writer, watcher(pods, watcher::Config::default()))
            .default_backoff()
            .boxed();
        while let Some(ev) = s.next().await {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    expect_event(&mut rx, "InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    assert!(lab.wait_for_watches(1, WAIT).await);
    assert_eq!(reader.state().len(), 2);

    lab.faults().compact();
    store.delete(&PODS, "default", "a").unwrap();
    lab.faults().drop_watches();

    expect_event(&mut rx, "relist Init", |e| {
        matches!(e, watcher::Event::Init)
    })
    .await;
    expect_event(&mut rx, "relist InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    let names: Vec<String> = reader.state().iter().map(|p| name_of(p)).collect();
    assert_eq!(names, ["b"]);

    // and it keeps watching afterwards
    store
        .create(
            &PODS,
            "default",
            serde_json::to_value(pod("c", json!({}))).unwrap(),
        )
        .unwrap();
    expect_event(&mut rx, "c after relist", is_apply("c")).await;
    lab.shutdown().await;
}

#[tokio::test]
async fn raw_watch_too_old_resource_version_is_410_in_stream() {
    let lab = lab().await;
    let pods: Api<Pod> = Api::namespaced(client(&lab), "default");
    lab.store()
        .create(
            &PODS,
            "default",
            serde_json::to_value(pod("a", json!({}))).unwrap(),
        )
        .unwrap();
    lab.faults().compact();
    let mut stream = pods
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
            assert!(
                e.message.starts_with("too old resource version: 1 ("),
                "{}",
                e.message
            );
        }
        other => panic!("expected 410 ERROR event, got {other:?}"),
    }
    // a fresh watch from the current RV gets live events and bookmarks
    let rv = lab.store().resource_version().to_string();
    let mut stream = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    lab.store()
        .merge_status(&PODS, "default", "a", json!({"phase": "Running"}))
        .unwrap();
    match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Modified(p))) => assert_eq!(name_of(&p), "a"),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert_eq!(
                b.metadata.resource_version,
                lab.store().resource_version().to_string()
            );
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    // timeoutSeconds ends the stream cleanly
    let mut stream = pods
        .watch(&WatchParams::default().timeout(1).disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    let started = Instant::now();
    while let Some(ev) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        assert!(ev.is_ok());
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    lab.shutdown().await;
}

#[tokio::test]
async fn streaming_list_watcher() {
    let lab = lab().await;
    let pods: Api<Pod> = Api::namespaced(client(&lab), "default");
    lab.store()
        .create(
            &PODS,
            "default",
            serde_json::to_value(pod("s", json!({}))).unwrap(),
        )
        .unwrap();
    let mut rx = spawn_watcher(pods, watcher::Config::default().streaming_lists());
    expect_event(
        &mut rx,
        "InitApply s",
        |e| matches!(e, watcher::Event::InitApply(p) if name_of(p) == "s"),
    )
    .await;
    expect_event(&mut rx, "InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    lab.store()
        .create(
            &PODS,
            "default",
            serde_json::to_value(pod("t", json!({}))).unwrap(),
        )
        .unwrap();
    expect_event(&mut rx, "t", is_apply("t")).await;
    lab.shutdown().await;
}

#[tokio::test]
async fn pagination_limit_two_over_five_pods() {
    let lab = lab().await;
    let c = client(&lab);
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "paging"}})).unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(c, "paging");
    for n in ["e", "c", "a", "d", "b"] {
        pods.create(&PostParams::default(), &pod(n, json!({})))
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    let mut first_rv = None;
    loop {
        let mut lp = ListParams::default().limit(2);
        if let Some(t) = token.take() {
            lp = lp.continue_token(&t);
        }
        let page = pods.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        let rv = page.metadata.resource_version.clone();
        if first_rv.is_none() {
            first_rv = rv.clone();
            // a write between pages must not leak into later pages
            pods.create(&PostParams::default(), &pod("bb", json!({})))
                .await
                .unwrap();
            pods.delete("e", &DeleteParams::default()).await.unwrap();
        }
        assert_eq!(rv, first_rv, "every page is served at the first page's RV");
        names.extend(page.items.iter().map(name_of));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    assert_eq!(pages, 3);

    // a continue token older than the history is 410 Expired
    let page = pods.list(&ListParams::default().limit(2)).await.unwrap();
    pods.create(&PostParams::default(), &pod("zz", json!({})))
        .await
        .unwrap();
    lab.faults().compact();
    let err = pods
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(&page.metadata.continue_.unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(410));
    lab.shutdown().await;
}

#[tokio::test]
async fn label_and_field_selectors() {
    let lab = lab().await;
    let pods: Api<Pod> = Api::namespaced(client(&lab), "default");
    let all: Api<Pod> = Api::all(client(&lab));
    let store = lab.store();
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": "other"}}))
        .unwrap();
    for (ns, name, labels) in [
        ("default", "web-1", json!({"app": "web", "tier": "fe"})),
        ("default", "web-2", json!({"app": "web"})),
        ("default", "db-1", json!({"app": "db", "tier": "be"})),
        ("other", "web-3", json!({"app": "web", "tier": "fe"})),
    ] {
        store
            .create(&PODS, ns, serde_json::to_value(pod(name, labels)).unwrap())
            .unwrap();
    }
    store
        .patch(
            &PODS,
            "default",
            "web-1",
            &Patch::Merge(json!({"spec": {"nodeName": "node-a"}})),
        )
        .unwrap();
    store
        .merge_status(&PODS, "default", "db-1", json!({"phase": "Running"}))
        .unwrap();

    async fn names(api: &Api<Pod>, lp: ListParams) -> Vec<String> {
        api.list(&lp)
            .await
            .unwrap()
            .items
            .iter()
            .map(name_of)
            .collect()
    }
    assert_eq!(
        names(&pods, ListParams::default().labels("app=web")).await,
        ["web-1", "web-2"]
    );
    assert_eq!(
        names(&pods, ListParams::default().labels("app==web,tier=fe")).await,
        ["web-1"]
    );
    assert_eq!(
        names(&pods, ListParams::default().labels("app!=web")).await,
        ["db-1"]
    );
    assert_eq!(
        names(&pods, ListParams::default().labels("tier in (fe,be)")).await,
        ["db-1", "web-1"]
    );
    assert_eq!(
        names(&pods, ListParams::default().labels("tier notin (fe)")).await,
        ["db-1", "web-2"]
    );
    assert_eq!(
        names(&pods, ListParams::default().labels("!tier")).await,
        ["web-2"]
    );
    assert_eq!(
        names(&pods, ListParams::default().labels("tier")).await,
        ["db-1", "web-1"]
    );
    assert_eq!(
        names(&all, ListParams::default().labels("app=web")).await,
        ["web-1", "web-2", "web-3"]
    );
    assert_eq!(
        names(
            &all,
            ListParams::default().fields("metadata.namespace=other")
        )
        .await,
        ["web-3"]
    );
    assert_eq!(
        names(&pods, ListParams::default().fields("metadata.name=web-2")).await,
        ["web-2"]
    );
    assert_eq!(
        names(&pods, ListParams::default().fields("spec.nodeName=node-a")).await,
        ["web-1"]
    );
    assert_eq!(
        names(&pods, ListParams::default().fields("status.phase=Running")).await,
        ["db-1"]
    );
    assert_eq!(
        names(
            &pods,
            ListParams::default().fields("status.phase!=Running,metadata.name!=web-1")
        )
        .await,
        ["web-2"]
    );
    let err = pods
        .list(&ListParams::default().fields("spec.containers=x"))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(400));
    let err = pods
        .list(&ListParams::default().labels("app in web"))
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(400));

    // watch with a selector: leaving the selection is a DELETED, entering an ADDED
    let mut rx = spawn_watcher(pods.clone(), watcher::Config::default().labels("app=web"));
    expect_event(&mut rx, "InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    store
        .patch(
            &PODS,
            "default",
            "web-2",
            &Patch::Merge(json!({"metadata": {"labels": {"app": "gone"}}})),
        )
        .unwrap();
    expect_event(
        &mut rx,
        "web-2 leaves",
        |e| matches!(e, watcher::Event::Delete(p) if name_of(p) == "web-2"),
    )
    .await;
    store
        .patch(
            &PODS,
            "default",
            "db-1",
            &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
        )
        .unwrap();
    expect_event(&mut rx, "db-1 enters", is_apply("db-1")).await;
    lab.shutdown().await;
}

#[tokio::test]
async fn injected_failures_then_recovery() {
    let lab = lab().await;
    let pods: Api<Pod> = Api::namespaced(client_with(&lab, false), "default");
    lab.faults().fail_next(2, 500);
    for _ in 0..2 {
        let err = pods.list(&ListParams::default()).await.unwrap_err();
        match &err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 500);
                assert_eq!(s.reason, "InternalError");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pods.list(&ListParams::default()).await.is_ok());

    lab.faults().fail_next(1, 429);
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    match &err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests")),
        other => panic!("unexpected {other:?}"),
    }

    // kube's default client honours Retry-After: 1 and succeeds
    let retrying: Api<Pod> = Api::namespaced(client(&lab), "default");
    lab.faults().fail_next(1, 429);
    let started = Instant::now();
    assert!(retrying.list(&ListParams::default()).await.is_ok());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was not honoured"
    );
    assert_eq!(lab.faults().pending_failures(), 0);

    // a watcher survives failures during its relist
    let mut rx = spawn_watcher(pods.clone(), watcher::Config::default());
    expect_event(&mut rx, "InitDone", |e| {
        matches!(e, watcher::Event::InitDone)
    })
    .await;
    lab.faults().compact();
    // (kube's watcher backs off 0.8 s, 1.6 s, ... between errors: keep this short)
    lab.faults().fail_next(1, 500);
    lab.faults().drop_watches();
    lab.store()
        .create(
            &PODS,
            "default",
            serde_json::to_value(pod("after", json!({}))).unwrap(),
        )
        .unwrap();
    expect_event(&mut rx, "after", |e| {
        matches!(e, watcher::Event::Apply(p) | watcher::Event::InitApply(p) if name_of(p) == "after")
    })
    .await;
    lab.shutdown().await;
}

#[tokio::test]
async fn lab_http_endpoints_and_discovery() {
    let lab = lab().await;
    let c = client(&lab);
    let v = c.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "32"));
    assert_eq!(v.git_version, "v1.32.0-selfheal-lab");
    let groups = c.list_api_groups().await.unwrap();
    assert!(
        groups
            .groups
            .iter()
            .any(|g| g.name == "coordination.k8s.io")
    );
    let core = c.list_core_api_resources("v1").await.unwrap();
    assert!(
        core.resources
            .iter()
            .any(|r| r.name == "pods" && r.short_names.as_deref() == Some(&["po".to_string()][..]))
    );

    let addr = lab.addr();
    let (code, body) = http_request(addr, "POST", "/lab/faults/fail?count=1&status=429").await;
    assert_eq!(code, 200, "{body}");
    let (code, head) = http_request_head(lab.addr(), "GET", "/api/v1/pods").await;
    assert_eq!(code, 429);
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let (code, _) = http_request(addr, "POST", "/lab/faults/fail?status=418").await;
    assert_eq!(code, 400);
    let (code, _) = http_request(addr, "POST", "/lab/faults/compact").await;
    assert_eq!(code, 200);
    let (code, body) = http_request(addr, "POST", "/lab/faults/history?size=5").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_request(lab.addr(), "GET", "/lab/state").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"historyLen\":0"), "{body}");
    let (code, body) = http_request(lab.addr(), "GET", "/api/v1/namespaces/default/widgets").await;
    assert_eq!(code, 404);
    assert!(body.contains("\"kind\":\"Status\""), "{body}");

    // kubectl get -w: watch events carry one-row Tables when asked for
    lab.store()
        .create(
            &PODS,
            "default",
            serde_json::to_value(pod("t", json!({}))).unwrap(),
        )
        .unwrap();
    let accept = "Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json\r\n";
    let (code, text) = http_request_with(
        addr,
        "GET",
        "/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1",
        accept,
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        text.contains("\"type\":\"ADDED\",\"object\":{\"apiVersion\":\"meta.k8s.io/v1\""),
        "{text}"
    );
    assert!(
        text.contains("\"cells\":[\"t\",\"0/1\",\"Pending\",\"0\""),
        "{text}"
    );
    lab.shutdown().await;
}

async fn http_request_head(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_request_with(addr, method, path, "").await
}

async fn http_request_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

async fn http_request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let (code, text) = http_request_head(addr, method, path).await;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn bulk_status_updates_stream_to_one_watcher() {
    const PODS_N: usize = 2_000;
    const UPDATES: usize = 20_000;
    let lab = ApiServer::start(ApiServerConfig {
        history: UPDATES + PODS_N,
        ..Default::default()
    })
    .await
    .unwrap();
    let store = lab.store().clone();
    let started = Instant::now();
    for i in 0..PODS_N {
        store
            .create_with_status(
                &PODS,
                "default",
                json!({"metadata": {"name": format!("pod-{i}")}, "spec": {"containers": [{"name": "c", "image": "i:1"}]},
                       "status": {"phase": "Running", "containerStatuses": [{"name": "c", "restartCount": 0, "ready": true,
                                  "image": "i:1", "imageID": "", "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]}}),
            )
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client(&lab), "default");
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    tokio::spawn(async move {
        let mut s = watcher(pods, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut applied = 0u64;
        while let Some(ev) = s.next().await {
            match ev {
                Ok(watcher::Event::Apply(_)) => {
                    applied += 1;
                    if tx.send(applied).is_err() {
                        break;
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let _ = tx.send(0);
                }
                _ => {}
            }
        }
    });
    assert_eq!(
        tokio::time::timeout(WAIT, rx.recv()).await.unwrap(),
        Some(0)
    );
    assert!(lab.wait_for_watches(1, WAIT).await);
    let writes = tokio::task::spawn_blocking(move || {
        for u in 0..UPDATES {
            let name = format!("pod-{}", u % PODS_N);
            store
                .merge_status(&PODS, "default", &name, json!({"containerStatuses": [{"name": "c", "restartCount": u / PODS_N + 1,
                    "ready": true, "image": "i:1", "imageID": "", "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]}))
                .unwrap();
        }
    });
    writes.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = 0;
    while last < UPDATES as u64 {
        last = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("watcher too slow")
            .unwrap();
    }
    eprintln!(
        "{PODS_N} pods + {UPDATES} status updates streamed in {:?}",
        started.elapsed()
    );
    lab.shutdown().await;
}

/// Direct store throughput (run with `--ignored --nocapture`, ideally `--release`).
#[tokio::test]
#[ignore = "benchmark"]
async fn bench_store_direct_10k_pods_100k_status_updates() {
    let lab = ApiServer::start(ApiServerConfig::default()).await.unwrap();
    let store = lab.store();
    let started = Instant::now();
    for i in 0..10_000 {
        store
            .create(&PODS, "default", json!({"metadata": {"name": format!("pod-{i}")}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}))
            .unwrap();
    }
    let created = started.elapsed();
    for u in 0..100_000usize {
        store
            .merge_status(
                &PODS,
                "default",
                &format!("pod-{}", u % 10_000),
                json!({"containerStatuses": [{"name": "c", "restartCount": u}]}),
            )
            .unwrap();
    }
    eprintln!(
        "10k creates in {created:?}, +100k status updates in {:?}",
        started.elapsed() - created
    );
    lab.shutdown().await;
}
