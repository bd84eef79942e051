//! Sharding: several replicas split the cluster between them, each observing the pods of
//! the workloads that hash to its shard, so that a workload's counters live in exactly one
//! replica and sum correctly across replicas in PromQL. Probe targets are split the same
//! way (by the workload they front, else by their name), so each is probed once.
//!
//! The hash is FNV-1a over the workload's namespace, kind and name: fixed by its
//! definition, so every replica and every version agrees on who owns what.

use serde::{Deserialize, Serialize};

use crate::k8s::workload::Workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sharding {
    /// This replica's shard, 0-based.
    pub shard: u32,
    /// How many shards there are; 1 means no sharding.
    pub total_shards: u32,
}

impl Default for Sharding {
    fn default() -> Self {
        Sharding {
            shard: 0,
            total_shards: 1,
        }
    }
}

impl Sharding {
    pub fn owns_workload(&self, workload: &Workload) -> bool {
        self.owns_key(&[workload.namespace(), workload.kind(), workload.name()].map(|part| &**part))
    }

    /// For things without a workload (e.g. a probe target known only by name).
    pub fn owns_name(&self, name: &str) -> bool {
        self.owns_key(&[name])
    }

    fn owns_key(&self, parts: &[&str]) -> bool {
        if self.total_shards <= 1 {
            return true;
        }
        fnv1a(parts) % u64::from(self.total_shards) == u64::from(self.shard)
    }

    /// The shard of a StatefulSet pod: the ordinal at the end of its name (`x-2` → 2).
    pub fn ordinal_of(pod_name: &str) -> Option<u32> {
        pod_name.rsplit_once('-')?.1.parse().ok()
    }
}

/// FNV-1a, 64 bit, with a separator byte between parts.
fn fnv1a(parts: &[&str]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            hash = (hash ^ 0xff).wrapping_mul(PRIME);
        }
        for byte in part.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str) -> Workload {
        Workload::new("ns", "Deployment", name)
    }

    #[test]
    fn every_workload_has_exactly_one_owner_and_the_split_is_even() {
        let shards: Vec<Sharding> = (0..3)
            .map(|shard| Sharding {
                shard,
                total_shards: 3,
            })
            .collect();
        let mut per_shard = [0u32; 3];
        for i in 0..3000 {
            let w = workload(&format!("app-{i}"));
            let owners: Vec<u32> = shards
                .iter()
                .filter(|s| s.owns_workload(&w))
                .map(|s| s.shard)
                .collect();
            assert_eq!(owners.len(), 1, "{w}");
            per_shard[owners[0] as usize] += 1;
        }
        assert!(
            per_shard.iter().all(|n| (900..1100).contains(n)),
            "{per_shard:?}"
        );
    }

    #[test]
    fn the_hash_is_stable_and_unsharded_owns_everything() {
        // Fixed by FNV-1a's definition: replicas of different versions must agree.
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert!(Sharding::default().owns_workload(&workload("x")));
        assert_eq!(Sharding::ordinal_of("selfheal-exporter-2"), Some(2));
        assert_eq!(Sharding::ordinal_of("selfheal-exporter"), None);
    }
}
