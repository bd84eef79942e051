//! The cardinality guard: a cap on the number of series per metric family.
//!
//! A label explosion (a controller creating pods with random names, a misconfigured
//! probe discovery) must not take the exporter's memory, or Prometheus', with it. Beyond
//! the cap, new series are dropped and counted in `selfheal_series_dropped_total{family}`,
//! with a warning logged once per family; series that already exist keep being updated.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::registry::{Metric, Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: String,
}

/// The prefix of every metric name (the daemon's registry is made with it).
pub const PREFIX: &str = "selfheal";

/// Shared by every guarded family of the process.
#[derive(Clone, Debug)]
pub struct CardinalityGuard {
    max_series: usize,
    dropped: Family<FamilyLabels, Counter>,
    warned: Arc<Mutex<HashSet<String>>>,
}

impl CardinalityGuard {
    pub fn register(registry: &mut Registry, max_series: usize) -> Self {
        let guard = CardinalityGuard {
            max_series: max_series.max(1),
            dropped: Family::default(),
            warned: Arc::default(),
        };
        registry.register(
            "series_dropped",
            "New series not created because their family reached metrics.max_series_per_family",
            guard.dropped.clone(),
        );
        guard
    }

    /// Whether a family of `len` series may create another one.
    fn admit(&self, family: &str, len: usize) -> bool {
        if len < self.max_series {
            return true;
        }
        self.dropped
            .get_or_create_owned(&FamilyLabels {
                family: family.to_owned(),
            })
            .inc();
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.insert(family.to_owned()) {
            tracing::warn!(
                family,
                max_series = self.max_series,
                "metric family at its series cap: new series are dropped and counted in selfheal_series_dropped_total"
            );
        }
        false
    }
}

/// A metric family whose new series pass the [`CardinalityGuard`].
pub struct GuardedFamily<S, M, C = fn() -> M> {
    family: Family<S, M, C>,
    /// Series in the family (prometheus-client does not expose the count).
    len: AtomicUsize,
    constructor: C,
    /// The exported name (`selfheal_…`, with its unit), as reported in `{family}`.
    name: String,
    guard: CardinalityGuard,
}

/// How a family is exported: its name in the registry (without the prefix, the unit
/// and `_total`), its help and its unit. Written once per family, for the registry and for
/// the guard's `{family}` label alike.
#[derive(Clone, Debug)]
pub struct Export {
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<Unit>,
}

impl Export {
    /// A family without a unit.
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Export {
            name,
            help,
            unit: None,
        }
    }

    /// A family in seconds (`…_seconds`).
    pub const fn seconds(name: &'static str, help: &'static str) -> Self {
        Export {
            name,
            help,
            unit: Some(Unit::Seconds),
        }
    }

    /// A family in bytes (`…_bytes`).
    pub const fn bytes(name: &'static str, help: &'static str) -> Self {
        Export {
            name,
            help,
            unit: Some(Unit::Bytes),
        }
    }

    /// The name as exported, without `_total`: `selfheal_probe_duration_seconds`.
    fn exported_name(&self) -> String {
        match &self.unit {
            Some(unit) => format!("{PREFIX}_{}_{}", self.name, unit.as_str()),
            None => format!("{PREFIX}_{}", self.name),
        }
    }
}

impl<S, M> GuardedFamily<S, M, fn() -> M>
where
    S: Clone + Hash + Eq,
    M: Default + Clone,
    Family<S, M, fn() -> M>: Metric,
{
    /// A family of default-made metrics, registered in `registry` as `export` says.
    pub fn register(registry: &mut Registry, guard: &CardinalityGuard, export: Export) -> Self {
        Self::register_with_constructor(registry, guard, export, M::default as fn() -> M)
    }
}

impl<S, M, C> GuardedFamily<S, M, C>
where
    S: Clone + Hash + Eq,
    M: Clone,
    C: MetricConstructor<M> + Clone,
    Family<S, M, C>: Metric,
{
    /// A family whose metrics `constructor` makes, registered in `registry` as `export`
    /// says.
    pub fn register_with_constructor(
        registry: &mut Registry,
        guard: &CardinalityGuard,
        export: Export,
        constructor: C,
    ) -> Self {
        let guarded = GuardedFamily {
            family: Family::new_with_constructor(constructor.clone()),
            len: AtomicUsize::new(0),
            constructor,
            name: export.exported_name(),
            guard: guard.clone(),
        };
        let family = guarded.family.clone();
        match export.unit {
            Some(unit) => registry.register_with_unit(export.name, export.help, unit, family),
            None => registry.register(export.name, export.help, family),
        }
        guarded
    }
}

impl<S: Clone + Hash + Eq, M: Clone, C: MetricConstructor<M> + Clone> GuardedFamily<S, M, C> {
    /// The series for `labels`. Over the cap, a detached metric that is never exported:
    /// updates to it go nowhere, and the drop is counted.
    pub fn get_or_create_owned(&self, labels: &S) -> M {
        if let Some(existing) = self.family.get(labels) {
            return existing.clone();
        }
        if self
            .guard
            .admit(&self.name, self.len.load(Ordering::Relaxed))
        {
            self.len.fetch_add(1, Ordering::Relaxed);
            self.family.get_or_create_owned(labels)
        } else {
            self.constructor.new_metric()
        }
    }

    pub fn remove(&self, labels: &S) -> bool {
        let removed = self.family.remove(labels);
        if removed {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn beyond_the_cap_new_series_are_dropped_and_counted_existing_ones_update() {
        let mut registry = Registry::with_prefix("selfheal");
        let guard = CardinalityGuard::register(&mut registry, 2);
        let family: GuardedFamily<FamilyLabels, Counter> =
            GuardedFamily::register(&mut registry, &guard, Export::new("demo", "demo"));
        let labels = |name: &str| FamilyLabels {
            family: name.to_owned(),
        };
        for name in ["a", "b", "c", "d"] {
            family.get_or_create_owned(&labels(name)).inc();
        }
        family.get_or_create_owned(&labels("a")).inc();
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(r#"selfheal_demo_total{family="a"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"selfheal_demo_total{family="b"} 1"#));
        assert!(!text.contains(r#"selfheal_demo_total{family="c"}"#));
        assert!(
            text.contains(r#"selfheal_series_dropped_total{family="selfheal_demo"} 2"#),
            "{text}"
        );
        // After a removal there is room again.
        family.remove(&labels("b"));
        family.get_or_create_owned(&labels("c")).inc();
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(r#"selfheal_demo_total{family="c"} 1"#),
            "{text}"
        );
    }
}
