//! Pod IPs: one loopback address 127.0.0.N per pod, the lowest free N from the runner's
//! first address up, reused once the pod is gone. The pool is shared by every runner in
//! the process, so two runners (two tests of one binary) never hand out the same address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

static IN_USE: Mutex<BTreeSet<u8>> = Mutex::new(BTreeSet::new());

/// Takes the lowest free 127.0.0.N with N ≥ `first`; `None` when all are taken.
pub fn allocate(first: u8) -> Option<Ipv4Addr> {
    let mut used = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let n = (first.max(2)..=254).find(|n| !used.contains(n))?;
    used.insert(n);
    Some(Ipv4Addr::new(127, 0, 0, n))
}

/// Gives `ip` back to the pool.
pub fn release(ip: Ipv4Addr) {
    let mut used = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    used.remove(&ip.octets()[3]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_and_reused_after_release() {
        let a = allocate(200).unwrap();
        let b = allocate(200).unwrap();
        assert_ne!(a, b);
        release(a);
        assert_eq!(allocate(200), Some(a));
        release(a);
        release(b);
    }
}
