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
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: &'static str,
}

/// Shared by every guarded family of the process.
#[derive(Clone, Debug)]
pub struct CardinalityGuard {
    max_series: usize,
    dropped: Family<FamilyLabels, Counter>,
    warned: Arc<Mutex<HashSet<&'static str>>>,
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
    fn admit(&self, family: &'static str, len: usize) -> bool {
        if len < self.max_series {
            return true;
        }
        self.dropped
            .get_or_create_owned(&FamilyLabels { family })
            .inc();
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.insert(family) {
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
    name: &'static str,
    guard: CardinalityGuard,
}

impl<S: Clone + Hash + Eq, M: Default + Clone> GuardedFamily<S, M, fn() -> M> {
    /// `name` is the family's exported name, as reported in `{family}`.
    pub fn new(name: &'static str, guard: &CardinalityGuard) -> Self {
        Self::with_constructor(name, guard, M::default as fn() -> M)
    }
}

impl<S: Clone + Hash + Eq, M: Clone, C: MetricConstructor<M> + Clone> GuardedFamily<S, M, C> {
    pub fn with_constructor(name: &'static str, guard: &CardinalityGuard, constructor: C) -> Self {
        GuardedFamily {
            family: Family::new_with_constructor(constructor.clone()),
            len: AtomicUsize::new(0),
            constructor,
            name,
            guard: guard.clone(),
        }
    }

    /// The family, for registration.
    pub fn family(&self) -> &Family<S, M, C> {
        &self.family
    }

    /// The series for `labels`. Over the cap, a detached metric that is never exported:
    /// updates to it go nowhere, and the drop is counted.
    pub fn get_or_create_owned(&self, labels: &S) -> M {
        if let Some(existing) = self.family.get(labels) {
            return existing.clone();
        }
        if self
            .guard
            .admit(self.name, self.len.load(Ordering::Relaxed))
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
        let family: GuardedFamily<FamilyLabels, Counter> = GuardedFamily::new("demo", &guard);
        registry.register("demo", "demo", family.family().clone());
        for name in ["a", "b", "c", "d"] {
            family
                .get_or_create_owned(&FamilyLabels { family: name })
                .inc();
        }
        family
            .get_or_create_owned(&FamilyLabels { family: "a" })
            .inc();
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(r#"selfheal_demo_total{family="a"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"selfheal_demo_total{family="b"} 1"#));
        assert!(!text.contains(r#"selfheal_demo_total{family="c"}"#));
        assert!(
            text.contains(r#"selfheal_series_dropped_total{family="demo"} 2"#),
            "{text}"
        );
        // After a removal there is room again.
        family.remove(&FamilyLabels { family: "b" });
        family
            .get_or_create_owned(&FamilyLabels { family: "c" })
            .inc();
        let mut text = String::new();
        encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains(r#"selfheal_demo_total{family="c"} 1"#),
            "{text}"
        );
    }
}
