//! Entry points for the fuzz targets (`fuzz/`, `cargo fuzz`): each takes raw bytes as
//! input reaches the daemon and must never panic. Public only with the `fuzzing`
//! feature, so the crate's API stays closed otherwise; the unit tests replay every file
//! of `fuzz/seeds/<target>/` through them (the seeds, and each crash fuzzing found, kept
//! there as a regression test).

use std::net::{IpAddr, Ipv4Addr};

use jiff::Timestamp;

use crate::config::{FlagOverrides, Settings};
use crate::k8s::names::check_label_selector;
use crate::k8s::quantity::parse_bytes;
use crate::k8s::types::{SlimEvent, SlimPod, SlimService};
use crate::observe::{Observer, ObserverConfig};
use crate::probe::discovery::{ServiceAddress, target_from_service};

/// The slim decoders on one object's bytes, as a watch delivers it.
pub fn decode(data: &[u8]) {
    let _ = serde_json::from_slice::<SlimPod>(data);
    let _ = serde_json::from_slice::<SlimEvent>(data);
    let _ = serde_json::from_slice::<SlimService>(data);
}

/// The observer on a stream of objects, one JSON object a line: a pod, or (a line
/// starting with `E`) a kubelet Event; the first lines up to an empty one are the
/// initial list. Each line advances the clock by one second; every fourth ticks.
pub fn observe(data: &[u8]) {
    let mut observer = Observer::new(ObserverConfig::default(), 1);
    let mut out = Vec::new();
    let start = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut listing = true;
    observer.begin_relist(0);
    for (n, line) in data.split(|b| *b == b'\n').enumerate() {
        let now = start + jiff::SignedDuration::from_secs(i64::try_from(n).unwrap_or(0));
        if listing && line.is_empty() {
            observer.end_relist(0, now, &mut out);
            listing = false;
            continue;
        }
        if let Some(event) = line.strip_prefix(b"E") {
            if let Ok(event) = serde_json::from_slice::<SlimEvent>(event) {
                observer.apply_event(&event, now, &mut out);
            }
        } else if let Ok(pod) = serde_json::from_slice::<SlimPod>(line) {
            if line.starts_with(b"{\"deleted") {
                observer.delete_pod(&pod, now, &mut out);
            } else {
                observer.apply_pod(0, &pod, now, &mut out);
            }
        }
        if n % 4 == 3 {
            observer.tick(now, &mut out);
        }
        out.clear();
    }
}

/// Quantities and label selectors, as written in specs and the config.
pub fn text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = parse_bytes(&text);
    let _ = check_label_selector(&text);
}

/// A Service's probe annotations: the bytes are the Service's JSON.
pub fn annotations(data: &[u8]) {
    if let Ok(service) = serde_json::from_slice::<SlimService>(data) {
        for address in [
            ServiceAddress::Dns,
            ServiceAddress::ClusterIp,
            ServiceAddress::NodePort,
        ] {
            let _ = target_from_service(&service, address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
    }
}

/// A config file: the bytes as TOML (`toml` true) or YAML, through the whole loader.
pub fn config(data: &[u8], toml: bool) {
    let extension = if toml { "toml" } else { "yaml" };
    let path =
        std::env::temp_dir().join(format!("selfheal-fuzz-{}.{extension}", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = Settings::load(Some(&path), &FlagOverrides::default());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file of `fuzz/seeds/<target>/` through `entry`.
    fn replay(target: &str, entry: impl Fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        let mut replayed = 0;
        for file in std::fs::read_dir(&dir).expect("the target's seeds") {
            let path = file.expect("a seed").path();
            entry(&std::fs::read(&path).expect("a readable seed"));
            replayed += 1;
        }
        assert!(replayed > 0, "{} has no seeds", dir.display());
    }

    #[test]
    fn every_seed_and_every_crash_found_replays_without_panic() {
        replay("decode", super::decode);
        replay("observe", super::observe);
        replay("text", super::text);
        replay("annotations", super::annotations);
        replay("config_toml", |data| super::config(data, true));
        replay("config_yaml", |data| super::config(data, false));
    }
}
