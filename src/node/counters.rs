//! The kernel's memory-cgroup files, parsed into one typed [`Snapshot`]: pure text in,
//! values out (the reader does the I/O).
//!
//! - cgroup v2: `memory.events` (`oom`, `oom_kill`, `oom_group_kill`; hierarchical unless
//!   mounted with `memory_localevents`), `memory.peak`, `memory.max` (`max` = no limit),
//!   `cgroup.events` (`populated`).
//! - cgroup v1: `memory.oom_control` (`oom_kill_disable`, `under_oom`, `oom_kill` since
//!   Linux 4.13; local to the cgroup: a parent does not count its children's kills, as
//!   measured on this project's v1 host), `memory.max_usage_in_bytes`,
//!   `memory.limit_in_bytes` (PAGE_COUNTER_MAX pages, 9223372036854771712 with 4 KiB
//!   pages, = no limit), `cgroup.procs` (empty = no process left).
//!
//! Unknown keys are ignored (kernels add some); a missing `oom_kill` or a value that is
//! not a number is an error naming the file and the line.

use thiserror::Error;

/// What the kernel says about one memory cgroup at one reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Processes the OOM killer killed in the cgroup (v1 `memory.oom_control` and v2
    /// `memory.events` `oom_kill`).
    pub oom_kill: u64,
    /// v2 `oom_group_kill`: whole-cgroup kills (`memory.oom.group` = 1, the kubelet's
    /// default on v2 unless `singleProcessOOMKill`); 0 on v1.
    pub oom_group_kill: u64,
    /// v2 `oom`: times the limit was hit and an allocation was about to fail.
    pub oom: Option<u64>,
    /// v1 `under_oom`: the cgroup is in an OOM state now.
    pub under_oom: Option<bool>,
    /// The highest usage seen (v2 `memory.peak`, v1 `memory.max_usage_in_bytes`).
    pub peak_bytes: Option<u64>,
    /// The limit (`memory.max`, `memory.limit_in_bytes`); `None` without one.
    pub limit_bytes: Option<u64>,
    /// Whether a process is left in the cgroup (`cgroup.events` / `cgroup.procs`); `None`
    /// when it could not be read.
    pub populated: Option<bool>,
}

/// A file whose content is not what the kernel writes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CounterError {
    #[error("{file}: line {line:?} is not `<key> <number>`")]
    Malformed { file: &'static str, line: String },
    #[error("{file}: no `{key}` line")]
    Missing {
        file: &'static str,
        key: &'static str,
    },
}

/// The counters of v2 `memory.events`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventsV2 {
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

/// The counters of v1 `memory.oom_control`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomControlV1 {
    pub oom_kill: u64,
    pub under_oom: bool,
}

/// Limits at or above this are the kernel's "no limit" (v1 writes PAGE_COUNTER_MAX
/// pages, 2^63 − 4096 with 4 KiB pages; bigger pages give other values, all ≥ 2^62).
const UNLIMITED_V1: u64 = 1 << 62;

/// `key value` lines: calls `each(key, value)` for each, numbers checked.
fn key_values(
    file: &'static str,
    text: &str,
    mut each: impl FnMut(&str, u64),
) -> Result<(), CounterError> {
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let malformed = || CounterError::Malformed {
            file,
            line: line.chars().take(80).collect(),
        };
        let (key, value) = line.split_once(' ').ok_or_else(malformed)?;
        let value = value.trim().parse::<u64>().map_err(|_| malformed())?;
        each(key, value);
    }
    Ok(())
}

/// Parses v2 `memory.events`.
pub fn parse_events_v2(text: &str) -> Result<EventsV2, CounterError> {
    const FILE: &str = "memory.events";
    let mut events = EventsV2::default();
    let mut seen = false;
    key_values(FILE, text, |key, value| match key {
        "oom" => events.oom = value,
        "oom_kill" => {
            events.oom_kill = value;
            seen = true;
        }
        "oom_group_kill" => events.oom_group_kill = value,
        _ => {}
    })?;
    if !seen {
        return Err(CounterError::Missing {
            file: FILE,
            key: "oom_kill",
        });
    }
    Ok(events)
}

/// Parses v1 `memory.oom_control`.
pub fn parse_oom_control_v1(text: &str) -> Result<OomControlV1, CounterError> {
    const FILE: &str = "memory.oom_control";
    let mut control = OomControlV1::default();
    let mut seen = false;
    key_values(FILE, text, |key, value| match key {
        "oom_kill" => {
            control.oom_kill = value;
            seen = true;
        }
        "under_oom" => control.under_oom = value != 0,
        _ => {}
    })?;
    if !seen {
        return Err(CounterError::Missing {
            file: FILE,
            key: "oom_kill",
        });
    }
    Ok(control)
}

/// Parses a one-number file (`memory.peak`, `memory.max_usage_in_bytes`).
pub fn parse_bytes(file: &'static str, text: &str) -> Result<u64, CounterError> {
    let text = text.trim();
    text.parse().map_err(|_| CounterError::Malformed {
        file,
        line: text.chars().take(80).collect(),
    })
}

/// Parses a limit file: `None` for no limit (`max` on v2, PAGE_COUNTER_MAX on v1).
pub fn parse_limit(file: &'static str, text: &str) -> Result<Option<u64>, CounterError> {
    if text.trim() == "max" {
        return Ok(None);
    }
    let bytes = parse_bytes(file, text)?;
    Ok((bytes < UNLIMITED_V1).then_some(bytes))
}

/// v2 `cgroup.events`: `populated 1` while a process is in the cgroup or below.
pub fn parse_populated_v2(text: &str) -> Result<bool, CounterError> {
    const FILE: &str = "cgroup.events";
    let mut populated = None;
    key_values(FILE, text, |key, value| {
        if key == "populated" {
            populated = Some(value != 0);
        }
    })?;
    populated.ok_or(CounterError::Missing {
        file: FILE,
        key: "populated",
    })
}

/// v1 `cgroup.procs`: one PID a line; any line means a process is left.
pub fn parse_populated_v1(text: &str) -> bool {
    text.lines().any(|line| !line.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_memory_events_give_the_three_oom_counters() {
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\nsock_throttled 0\n";
        assert_eq!(
            parse_events_v2(text),
            Ok(EventsV2 {
                oom: 3,
                oom_kill: 2,
                oom_group_kill: 1
            })
        );
        // Kernels before 5.16 have no oom_group_kill line.
        assert_eq!(
            parse_events_v2("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n").map(|e| e.oom_group_kill),
            Ok(0)
        );
    }

    #[test]
    fn v1_oom_control_gives_oom_kill_and_under_oom() {
        let text = "oom_kill_disable 0\nunder_oom 1\noom_kill 4\n";
        assert_eq!(
            parse_oom_control_v1(text),
            Ok(OomControlV1 {
                oom_kill: 4,
                under_oom: true
            })
        );
    }

    #[test]
    fn malformed_or_incomplete_files_are_errors_naming_the_file() {
        assert_eq!(
            parse_oom_control_v1("oom_kill_disable 0\nunder_oom 0\n"),
            Err(CounterError::Missing {
                file: "memory.oom_control",
                key: "oom_kill"
            })
        );
        assert!(matches!(
            parse_events_v2("oom_kill lots\n"),
            Err(CounterError::Malformed {
                file: "memory.events",
                ..
            })
        ));
        assert!(matches!(
            parse_events_v2("garbage"),
            Err(CounterError::Malformed { .. })
        ));
        assert!(parse_events_v2("").is_err());
        assert!(parse_bytes("memory.peak", "12 kB").is_err());
    }

    #[test]
    fn limits_without_a_limit_are_none() {
        assert_eq!(parse_limit("memory.max", "max\n"), Ok(None));
        assert_eq!(
            parse_limit("memory.max", "50331648\n"),
            Ok(Some(50_331_648))
        );
        assert_eq!(
            parse_limit("memory.limit_in_bytes", "9223372036854771712\n"),
            Ok(None)
        );
        assert_eq!(
            parse_limit("memory.limit_in_bytes", "29999104\n"),
            Ok(Some(29_999_104))
        );
    }

    #[test]
    fn populated_from_cgroup_events_or_procs() {
        assert_eq!(parse_populated_v2("populated 1\nfrozen 0\n"), Ok(true));
        assert_eq!(parse_populated_v2("populated 0\nfrozen 0\n"), Ok(false));
        assert!(parse_populated_v2("frozen 0\n").is_err());
        assert!(parse_populated_v1("1\n42\n"));
        assert!(!parse_populated_v1(""));
    }
}
