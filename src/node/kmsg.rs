//! The OOM killer's victims from the kernel log (`/dev/kmsg`), optional (`node.kmsg`,
//! off by default): which process the kernel killed in which memory cgroup, for the
//! incident record. The kernel writes one line per kill:
//!
//! ```text
//! 6,658,1380747718,-;oom-kill:constraint=CONSTRAINT_MEMCG,…,oom_memcg=/kubepods/…,task_memcg=/kubepods/burstable/pod<uid>/<id>,task=python3,pid=6192,uid=0
//! ```
//!
//! (`/dev/kmsg` record: priority, sequence, microseconds, flags; then the message.) The
//! parser is pure; [`spawn_reader`] reads the device on a thread of its own. Reading it
//! needs `CAP_SYSLOG` when `kernel.dmesg_restrict` is 1 (the usual default), and, in a
//! container, the host's `/dev/kmsg` as a device and a root user (capabilities added
//! to a non-root container are not effective): see the README's "Node agent".

use std::io::Read as _;
use std::path::PathBuf;

use tokio::sync::mpsc;

/// One process the OOM killer killed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Victim {
    /// `task_memcg`: the victim's memory cgroup, relative to the memory hierarchy
    /// (`/kubepods/burstable/pod<uid>/<id>`).
    pub memcg: String,
    /// `task`: the process's name (its `comm`).
    pub name: String,
    pub pid: u32,
}

/// The victim named by one `/dev/kmsg` record, if it is an `oom-kill:` line.
pub fn parse_record(record: &str) -> Option<Victim> {
    let (_, message) = record.split_once(';')?;
    let fields = message.trim_end().strip_prefix("oom-kill:")?;
    let mut memcg = None;
    let mut name = None;
    let mut pid = None;
    for field in fields.split(',') {
        match field.split_once('=') {
            Some(("task_memcg", value)) => memcg = Some(value.to_owned()),
            Some(("task", value)) => name = Some(value.to_owned()),
            Some(("pid", value)) => pid = value.parse().ok(),
            _ => {}
        }
    }
    Some(Victim {
        memcg: memcg?,
        name: name?,
        pid: pid?,
    })
}

/// Reads `path` (`/dev/kmsg`) from its end on a thread of its own, sending every victim.
/// Fails at once when the device cannot be opened (no `CAP_SYSLOG`, not mounted); the
/// thread ends when the receiver is dropped or the device fails.
pub fn spawn_reader(path: PathBuf) -> std::io::Result<mpsc::UnboundedReceiver<Victim>> {
    let mut file = std::fs::File::open(&path)?;
    // Only what happens from now on: the buffered past is not news.
    rustix::fs::seek(&file, rustix::fs::SeekFrom::End(0)).map_err(std::io::Error::from)?;
    let (send, receive) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("kmsg".to_owned())
        .spawn(move || {
            // One record per read; records are at most 8 KiB (PRINTK_MESSAGE_MAX).
            let mut buffer = vec![0u8; 8192];
            loop {
                match file.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => {
                        let record = String::from_utf8_lossy(&buffer[..n]);
                        if let Some(victim) = parse_record(&record)
                            && send.send(victim).is_err()
                        {
                            break;
                        }
                    }
                    // EPIPE: records were overwritten before we read them; go on.
                    Err(error) if error.raw_os_error() == Some(32) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        tracing::warn!(%error, path = %path.display(), "reading the kernel log failed: no more OOM victims' names");
                        break;
                    }
                }
            }
        })?;
    Ok(receive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_line_names_the_victim_and_its_cgroup() {
        let record = "6,658,1380747718,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/kubepods/burstable/pod1/abc,task_memcg=/kubepods/burstable/pod1/abc,task=python3,pid=6192,uid=0\n";
        assert_eq!(
            parse_record(record),
            Some(Victim {
                memcg: "/kubepods/burstable/pod1/abc".to_owned(),
                name: "python3".to_owned(),
                pid: 6192,
            })
        );
        for other in [
            "3,578,1379986342,-;Memory cgroup out of memory: Killed process 6101 (python3) total-vm:43028kB",
            "4,579,1380745451,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0",
            "6,1,1,-;oom-kill:task=x,pid=notanumber,task_memcg=/a",
            "no separator",
        ] {
            assert_eq!(parse_record(other), None, "{other}");
        }
    }
}
