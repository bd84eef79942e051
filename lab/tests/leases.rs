//! Leases and server-side apply through the real clients: kube-rs' `Patch::Apply` (conflicts,
//! force, ownership in `managedFields`) and kube-lease-manager, which elects a leader with
//! exactly those requests.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use selfheal_lab::apiserver::{ApiServer, ApiServerConfig, LEASES};
use serde_json::json;

async fn lab() -> ApiServer {
    ApiServer::start(ApiServerConfig::default())
        .await
        .expect("start lab")
}

fn client(lab: &ApiServer) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(lab.url().parse().expect("url"));
    config.default_namespace = "default".into();
    kube::Client::try_from(config).expect("client")
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

fn managers(lease: &Lease) -> Vec<(String, String)> {
    lease
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn config(holder: &str) -> serde_json::Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
}

#[tokio::test]
async fn server_side_apply_creates_conflicts_and_forces() {
    let lab = lab().await;
    let leases: Api<Lease> = Api::namespaced(client(&lab), "default");
    let as_a = PatchParams::apply("manager-a");
    let created = leases
        .patch("l", &as_a, &Patch::Apply(config("a")))
        .await
        .expect("apply creates");
    assert_eq!(holder(&created).as_deref(), Some("a"));
    assert_eq!(managers(&created), [("manager-a".into(), "Apply".into())]);
    let fields = created.metadata.managed_fields.as_ref().unwrap()[0]
        .fields_v1
        .as_ref()
        .unwrap();
    assert_eq!(
        fields.0,
        json!({"f:spec": {"f:holderIdentity": {}, "f:leaseDurationSeconds": {}}})
    );

    // Another manager changing the holder: 409 Conflict naming the field and the owner.
    let as_b = PatchParams::apply("manager-b");
    let error = leases
        .patch("l", &as_b, &Patch::Apply(config("b")))
        .await
        .expect_err("conflict");
    let kube::Error::Api(status) = error else {
        panic!("an API error: {error}");
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"manager-a\": .spec.holderIdentity"
    );
    assert_eq!(
        holder(&leases.get("l").await.unwrap()).as_deref(),
        Some("a")
    );

    // A strategic merge patch (an Update) with a fieldManager takes the field over, so
    // a later apply by its first owner conflicts in turn, until forced.
    let update = PatchParams {
        field_manager: Some("manager-c".into()),
        ..Default::default()
    };
    let updated = leases
        .patch(
            "l",
            &update,
            &Patch::Strategic(json!({"spec": {"holderIdentity": "c"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        managers(&updated),
        [
            ("manager-a".into(), "Apply".into()),
            ("manager-c".into(), "Update".into())
        ]
    );
    let error = leases
        .patch("l", &as_a, &Patch::Apply(config("a")))
        .await
        .expect_err("conflict with the updater");
    assert!(
        error
            .to_string()
            .contains("conflict with \"manager-c\" using coordination.k8s.io/v1"),
        "{error}"
    );
    let forced = leases
        .patch("l", &as_a.clone().force(), &Patch::Apply(config("a")))
        .await
        .expect("forced apply");
    assert_eq!(holder(&forced).as_deref(), Some("a"));
    assert_eq!(managers(&forced), [("manager-a".into(), "Apply".into())]);

    // The same in the store: one Lease, its managedFields in the real shape.
    let stored = lab.store().get(&LEASES, "default", "l").unwrap();
    assert_eq!(
        stored["metadata"]["managedFields"][0]["fieldsType"],
        "FieldsV1"
    );
    // Apply needs a fieldManager; force is for applies only.
    let error = leases
        .patch("l", &PatchParams::default(), &Patch::Apply(config("a")))
        .await
        .expect_err("no field manager");
    assert!(error.to_string().contains("fieldManager"), "{error}");
    lab.shutdown().await;
}

#[tokio::test]
async fn kube_lease_manager_elects_one_leader_and_hands_over_on_release() {
    let lab = lab().await;
    let build = |identity: &str| {
        LeaseManagerBuilder::new(client(&lab), "prober")
            .with_namespace("default")
            .with_parameters(LeaseParams::new(identity, 2, 1))
            .build()
    };
    let a = build("a").await.expect("manager a");
    let b = build("b").await.expect("manager b");
    assert!(a.changed().await.expect("a locks"), "a is the leader");
    let leases: Api<Lease> = Api::namespaced(client(&lab), "default");
    let lease = leases.get("prober").await.unwrap();
    assert_eq!(holder(&lease).as_deref(), Some("a"));
    assert_eq!(lease.spec.as_ref().unwrap().lease_transitions, Some(1));

    // b cannot lock while a holds and renews the lease.
    let b_wins = tokio::select! {
        won = b.changed() => won.expect("b"),
        _ = async { loop { let _ = a.changed().await; } } => unreachable!(),
        _ = tokio::time::sleep(Duration::from_secs(3)) => false,
    };
    assert!(!b_wins, "b never locks a lease a renews");

    // a releases: b takes it (its next look at the lease finds it free).
    a.release().await.expect("release");
    assert!(holder(&leases.get("prober").await.unwrap()).is_none());
    let b_wins = tokio::time::timeout(Duration::from_secs(10), b.changed())
        .await
        .expect("b locks within the lease duration")
        .expect("b");
    assert!(b_wins);
    let lease = leases.get("prober").await.unwrap();
    assert_eq!(holder(&lease).as_deref(), Some("b"));
    assert_eq!(lease.spec.as_ref().unwrap().lease_transitions, Some(2));

    // Two managers racing for a free lease: the apply of one conflicts, one wins.
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "race"}, "spec": {}})).unwrap(),
        )
        .await
        .unwrap();
    let race = |identity: &str| {
        LeaseManagerBuilder::new(client(&lab), "race")
            .with_namespace("default")
            .with_parameters(LeaseParams::new(identity, 5, 2))
            .build()
    };
    let (x, y) = (race("x").await.unwrap(), race("y").await.unwrap());
    let (x_won, y_won) = tokio::select! {
        won = x.changed() => (won.unwrap(), false),
        won = y.changed() => (false, won.unwrap()),
    };
    assert!(x_won != y_won);
    let winner = if x_won { "x" } else { "y" };
    assert_eq!(
        holder(&leases.get("race").await.unwrap()).as_deref(),
        Some(winner)
    );
    lab.shutdown().await;
}
