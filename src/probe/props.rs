//! Property tests of the probe's user input: a Service's `selfheal.io/probe-*`
//! annotations with any values, and expected-status lists. Invariants: no panic; a target
//! accepted from annotations probes the Service itself (its DNS name and one of its
//! ports), whatever the path or port says; a refused one names its annotation.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use serde_json::json;

use super::discovery::{
    EXPECT_STATUS, INTERVAL, PATH, PORT, PROBE, ServiceAddress, TIMEOUT, target_from_service,
};
use super::target::StatusSet;
use crate::k8s::types::SlimService;

/// Values a user might write, and some no user should.
fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        "/[a-z@:/.%?#\\\\]{0,16}",
        "[0-9]{1,6}(ms|s|m|h)?",
        "[0-9x, -]{0,12}",
        Just("//evil.example:80/x".to_owned()),
        Just("/@evil.example/".to_owned()),
        Just("http://evil.example/".to_owned()),
        Just("http".to_owned()),
        Just("3000".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn annotations_never_point_a_probe_anywhere_but_the_service(
        path in prop::option::of(annotation_value()),
        port in prop::option::of(annotation_value()),
        interval in prop::option::of(annotation_value()),
        timeout in prop::option::of(annotation_value()),
        expect in prop::option::of(annotation_value()),
    ) {
        let mut annotations = json!({PROBE: "true"});
        for (key, value) in [(PATH, &path), (PORT, &port), (INTERVAL, &interval), (TIMEOUT, &timeout), (EXPECT_STATUS, &expect)] {
            if let Some(value) = value {
                annotations[key] = json!(value);
            }
        }
        let service: SlimService = serde_json::from_value(json!({
            "metadata": {"name": "api", "namespace": "ns", "annotations": annotations},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.7",
                     "ports": [{"name": "http", "port": 3000}, {"name": "admin", "port": 9000}]}
        }))
        .unwrap_or_default();
        match target_from_service(&service, ServiceAddress::Dns, IpAddr::V4(Ipv4Addr::LOCALHOST)) {
            Ok(Some(spec)) => {
                prop_assert_eq!(spec.url.host_str(), Some("api.ns.svc"), "{}", spec.url);
                prop_assert!(matches!(spec.url.port(), Some(3000 | 9000)), "{}", spec.url);
                prop_assert_eq!(spec.url.scheme(), "http");
            }
            Ok(None) => prop_assert!(false, "an annotated Service is a target or an error"),
            Err(error) => {
                let message = error.to_string();
                prop_assert!(message.contains("selfheal.io/probe"), "{}", message);
            }
        }
    }

    #[test]
    fn expected_status_lists_never_panic(text in ".{0,24}") {
        if let Ok(set) = StatusSet::parse(&text) {
            for status in [100u16, 200, 204, 301, 404, 500, 599] {
                let _ = set.accepts(status);
            }
        }
    }
}
