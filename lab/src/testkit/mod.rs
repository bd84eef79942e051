//! The test kit: helpers for the root crate's benches (`benches/*`, each its own crate
//! with `harness = false`) and tests, never used by the lab's own programs: the `/proc`
//! readers and RSS sampler ([`procfs`]), the realistic pod fleet they write into the lab
//! ([`fleet`]), the Prometheus text-format parser and loopback GET they read the daemon's
//! `/metrics` with ([`exposition`]), and the daemon process itself: its command line
//! without the caller's `SELFHEAL_*` variables, and a wrapper that waits for `/readyz`,
//! signals it and stops it ([`daemon`]), and what a test needs from the machine: a
//! missing tool fails the test with the command that installs it, unless skipping was
//! asked for ([`tools`]); and the real cluster of the `real_*` tests with the daemon
//! on the host beside it ([`real_cluster`]); kube-state-metrics run beside the daemon for
//! comparison ([`ksm`]). The root crate's tests use the parser, the command line and
//! the tools too. One copy here instead of one per bench; public, so that each bench
//! uses only what it needs without dead-code warnings (a file pulled into every bench
//! with `mod` would warn for whatever one bench leaves unused).

pub mod daemon;
pub mod exposition;
pub mod fleet;
pub mod ksm;
pub mod procfs;
pub mod real_cluster;
pub mod tools;
