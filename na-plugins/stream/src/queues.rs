//! The set of connections with data left unread, with a count read without its lock, so
//! that a spinning progress pass that finds it empty (the common case) takes no lock (as
//! the plugin's event queue, `na::EventQueue`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use na::PeerId;
use rustc_hash::FxHashSet as HashSet;

use crate::lock;

/// Connections with data left unread when their read budget ran out.
#[derive(Default)]
pub(crate) struct PeerSet {
    set: Mutex<HashSet<PeerId>>,
    len: AtomicUsize,
}

impl PeerSet {
    pub(crate) fn insert(&self, p: PeerId) {
        let mut s = lock(&self.set);
        s.insert(p);
        self.len.store(s.len(), Ordering::Release);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Takes every peer in the set (a few, the common case, without allocating).
    pub(crate) fn take(&self) -> smallvec::SmallVec<[PeerId; 8]> {
        if self.is_empty() {
            return smallvec::SmallVec::new();
        }
        let mut s = lock(&self.set);
        self.len.store(0, Ordering::Release);
        s.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_set_counts_distinct_peers_and_empties_when_taken() {
        let s = PeerSet::default();
        assert!(s.take().is_empty());
        s.insert(PeerId(7));
        s.insert(PeerId(7));
        assert!(!s.is_empty());
        assert_eq!(s.take().as_slice(), [PeerId(7)]);
        assert!(s.is_empty());
    }
}
