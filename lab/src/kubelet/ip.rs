//! Pod IPs: each pod gets its own loopback address (Linux routes all of 127.0.0.0/8 to
//! `lo`), so several pods can listen on the same port. Addresses are handed out from a
//! start address (default 127.0.1.1) upward, skipping `.0` and `.255` and never giving
//! out 127.0.0.x. The set in use is shared by every kubelet in the process, so kubelets
//! started side by side (parallel tests) never hand out the same address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

static IN_USE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Default first pod IP.
pub const DEFAULT_START: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);

fn usable(a: u32) -> bool {
    let [first, second, third, last] = a.to_be_bytes();
    first == 127 && (second, third) != (0, 0) && last != 0 && last != 255
}

/// Takes the lowest free address at or above `start` (`None` if 127/8 is exhausted).
pub fn allocate(start: Ipv4Addr) -> Option<Ipv4Addr> {
    let mut used = IN_USE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let end = u32::from(Ipv4Addr::new(127, 255, 255, 254));
    let mut a = u32::from(start).max(u32::from(DEFAULT_START));
    while a <= end {
        if usable(a) && !used.contains(&a) {
            used.insert(a);
            return Some(Ipv4Addr::from(a));
        }
        a += 1;
    }
    None
}

/// Gives `ip` back.
pub fn release(ip: Ipv4Addr) {
    let mut used = IN_USE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    used.remove(&u32::from(ip));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation() {
        let start = Ipv4Addr::new(127, 0, 200, 254);
        let a = allocate(start).unwrap();
        let b = allocate(start).unwrap();
        assert_eq!(a, start);
        assert_eq!(b, Ipv4Addr::new(127, 0, 201, 1), "skips .255 and .0");
        release(a);
        assert_eq!(allocate(start), Some(a));
        release(a);
        release(b);
        assert!(allocate(Ipv4Addr::new(127, 0, 0, 1)).unwrap() >= DEFAULT_START);
    }
}
