//! What a test needs from the machine (a tool such as `promtool`, `helm` or `kubectl`; a
//! memory cgroup), and what happens when it is missing.
//!
//! A missing requirement fails the test, naming what is missing, what the test needed it
//! for and the command that installs it (`scripts/test` installs everything it can). Only
//! when the user asks for it with `SKIP_MISSING_TOOLS=1` does the test (or the
//! part of it that needs the tool) skip instead; then it says so on stderr at once
//! (written past the test harness's output capture, so it shows even for a passing test)
//! and appends one line to the file named by `SKIPPED_TESTS_FILE`, which
//! `scripts/test` sets and lists after `cargo test`.
//!
//! ```no_run
//! use selfheal_lab::testkit::tools::PROMTOOL;
//!
//! if PROMTOOL.require("check the exposition with `promtool check metrics`") {
//!     // ... run promtool ...
//! } // else: skipped, on request, and recorded
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Set (to anything but `0` or empty) to let tests skip what needs a missing tool. Not
/// `SELFHEAL_…`: the daemon reads every `SELFHEAL_*` variable as configuration, and its
/// config tests fail on an unknown one.
pub const SKIP_ENV: &str = "SKIP_MISSING_TOOLS";
/// A file each skip appends a line to (`scripts/test` sets it and lists it at the end).
pub const SKIPPED_FILE_ENV: &str = "SKIPPED_TESTS_FILE";

/// A program the suite runs, and how to get it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// The command's name, looked up on `PATH`.
    pub program: &'static str,
    /// Arguments with which it exits 0 when it works (e.g. `--version`).
    pub probe: &'static [&'static str],
    /// How to install it.
    pub install: &'static str,
}

/// `promtool`, from Debian's `prometheus` package.
pub const PROMTOOL: Tool = Tool::new("promtool", &["--version"], DEBIAN_PROMETHEUS);
/// The Prometheus server, from Debian's `prometheus` package.
pub const PROMETHEUS: Tool = Tool::new("prometheus", &["--version"], DEBIAN_PROMETHEUS);
/// Helm 3 (not in Debian).
pub const HELM: Tool = Tool::new(
    "helm",
    &["version", "--short"],
    "scripts/test (it installs the official helm 3.17.2 binary, checked by SHA-256)",
);
/// `kubernetes-validate`, from PyPI: Kubernetes' OpenAPI schemas, offline.
pub const KUBERNETES_VALIDATE: Tool = Tool::new(
    "kubernetes-validate",
    &["--version"],
    "scripts/test (or: pip install kubernetes-validate==1.37.0)",
);
/// `kubectl`.
pub const KUBECTL: Tool = Tool::new(
    "kubectl",
    &["version", "--client"],
    "scripts/test (it builds the upstream v1.37.2 kubectl with lab/upstream/build.sh when \
     none is installed)",
);
/// Alertmanager, from Debian's `prometheus-alertmanager` package (the command's name there).
pub const ALERTMANAGER: Tool = Tool::new(
    "prometheus-alertmanager",
    &["--version"],
    DEBIAN_ALERTMANAGER,
);
/// `amtool`, from Debian's `prometheus-alertmanager` package.
pub const AMTOOL: Tool = Tool::new("amtool", &["--version"], DEBIAN_ALERTMANAGER);
const DEBIAN_PROMETHEUS: &str = "scripts/test (or: apt-get install prometheus)";
const DEBIAN_ALERTMANAGER: &str = "scripts/test (or: apt-get install prometheus-alertmanager)";

/// How to give the lab's kubelet a memory cgroup (for [`require`]).
pub const MEMORY_CGROUP: &str = "run the tests as root on Linux with the memory cgroup \
                                 controller (v1, or v2 with it enabled): sudo scripts/test";

impl Tool {
    /// A tool: its command, the arguments with which it exits 0, how to install it.
    pub const fn new(
        program: &'static str,
        probe: &'static [&'static str],
        install: &'static str,
    ) -> Tool {
        Tool {
            program,
            probe,
            install,
        }
    }

    /// Whether `program probe…` runs and exits 0 here; asked once per process and tool.
    pub fn runs(&self) -> bool {
        static SEEN: Mutex<BTreeMap<&'static str, bool>> = Mutex::new(BTreeMap::new());
        *SEEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(self.program)
            .or_insert_with(|| {
                Command::new(self.program)
                    .args(self.probe)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            })
    }

    /// `true` when the tool runs here. Else the test fails (a panic naming the tool,
    /// `purpose` and the install command), or, with `SKIP_MISSING_TOOLS` set,
    /// the skip is recorded and this returns `false`: the caller skips.
    pub fn require(&self, purpose: &str) -> bool {
        self.runs() || missing(self.program, purpose, self.install)
    }

    /// The program's path on `PATH`, as [`Tool::require`] decides: `None` only when
    /// skipping was asked for.
    pub fn require_path(&self, purpose: &str) -> Option<PathBuf> {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(self.program))
                .find(|path| path.is_file())
        });
        match found {
            Some(path) => Some(path),
            None => {
                missing(self.program, purpose, self.install);
                None
            }
        }
    }
}

/// A requirement that is not a program: `true` when `available`; else as
/// [`Tool::require`], with `what` named as missing and `how` to provide it.
pub fn require(what: &str, available: bool, purpose: &str, how: &str) -> bool {
    available || missing(what, purpose, how)
}

/// Whether the user asked to skip what needs a missing tool.
pub fn skipping_allowed() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|value| !value.is_empty() && value != "0")
}

/// Fails the test, or (skipping asked for) records the skip and returns `false`.
fn missing(what: &str, purpose: &str, how: &str) -> bool {
    if !skipping_allowed() {
        panic!(
            "{what} is missing: this test needs it to {purpose}. Install it: {how}. \
             (To skip what needs it instead: {SKIP_ENV}=1 scripts/test, which lists every \
             skipped test at the end.)"
        );
    }
    let line = format!(
        "{}: {what} missing ({SKIP_ENV} set), so not: {purpose}; install: {how}",
        current_test()
    );
    // Past the harness's capture of print!/eprint!, so it shows for a passing test too.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {line}");
    if let Some(file) = std::env::var_os(SKIPPED_FILE_ENV) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(error) = appended {
            panic!(
                "cannot record the skip in {SKIPPED_FILE_ENV}={}: {error}",
                PathBuf::from(file).display()
            );
        }
    }
    false
}

/// `binary::test` for the running test: the test binary's name without cargo's hash, and
/// the harness's name for this thread (each test runs on a thread named after it).
fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
            _ => stem,
        })
        .unwrap_or_else(|| "?".to_owned());
    let thread = std::thread::current();
    match thread.name() {
        Some(name) if name != "main" => format!("{binary}::{name}"),
        _ => binary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_runs_is_required_without_fuss() {
        let sh = Tool::new("sh", &["-c", "exit 0"], "-");
        assert!(sh.runs());
        assert!(sh.require("run a shell"));
    }

    #[test]
    fn a_missing_tool_fails_naming_it_and_its_install_command() {
        if skipping_allowed() {
            return; // the other branch, recorded, is what the user asked for
        }
        let absent = Tool::new("selfheal-no-such-tool", &[], "apt-get install nothing");
        assert!(!absent.runs());
        let message = std::panic::catch_unwind(|| absent.require("test the test kit"))
            .expect_err("a missing tool fails the test");
        let message = message
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert!(
            message.contains("selfheal-no-such-tool is missing"),
            "{message}"
        );
        assert!(message.contains("test the test kit"), "{message}");
        assert!(message.contains("apt-get install nothing"), "{message}");
        assert!(message.contains(SKIP_ENV), "{message}");
    }

    #[test]
    fn the_running_test_is_named_after_its_binary_and_thread() {
        let name = current_test();
        assert!(name.starts_with("selfheal_lab"), "{name}");
    }
}
