//! Running the external tools the cluster is built with (openssl, ip, mount, ctr, kubectl)
//! and turning their failures into [`ClusterError::Command`].

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use super::error::{ClusterError, Result};

/// Renders a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion; returns its stdout, or an error with its stderr if it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| ClusterError::Command {
        command: describe(cmd),
        status: "not started".into(),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(ClusterError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            output: text,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args…`; see [`output`].
pub fn run<I, S>(program: impl AsRef<OsStr>, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output(Command::new(program).args(args))
}
