//! The plugin's two shared queues, each with a count read without its lock, so that a
//! spinning progress pass that finds them empty (the common case) takes no lock.
//!
//! The count is a hint: it is written under the lock, so a reader that sees zero may miss
//! an item pushed an instant ago, exactly as a reader taking the lock an instant earlier
//! would have. Producers that must not be missed wake the poller, as before.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use na::{Event, PeerId};
use rustc_hash::FxHashSet as HashSet;

use crate::lock;

/// Events waiting for the engine.
#[derive(Default)]
pub(crate) struct EventQueue {
    q: Mutex<VecDeque<Event>>,
    len: AtomicUsize,
}

impl EventQueue {
    /// Appends `evs`; returns whether any were added.
    pub(crate) fn extend(&self, evs: impl IntoIterator<Item = Event>) -> bool {
        let mut q = lock(&self.q);
        let before = q.len();
        q.extend(evs);
        self.len.store(q.len(), Ordering::Release);
        q.len() > before
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    pub(crate) fn pop(&self) -> Option<Event> {
        if self.is_empty() {
            return None;
        }
        let mut q = lock(&self.q);
        let ev = q.pop_front();
        self.len.store(q.len(), Ordering::Release);
        ev
    }

    /// Hands every queued event to `f`, taking the lock twice per batch (not per event):
    /// events `f` causes wait for the next call. Returns how many it handed.
    pub(crate) fn drain(&self, f: &mut dyn FnMut(Event)) -> usize {
        if self.is_empty() {
            return 0;
        }
        let mut batch = {
            let mut q = lock(&self.q);
            self.len.store(0, Ordering::Release);
            std::mem::take(&mut *q)
        };
        let n = batch.len();
        batch.drain(..).for_each(&mut *f);
        // Give the allocation back if nothing came meanwhile.
        let mut q = lock(&self.q);
        if q.is_empty() {
            *q = batch;
        }
        n
    }
}

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
    use na::OpId;

    fn done(n: u64) -> Event {
        Event::Done {
            op: OpId(n),
            result: Ok(Vec::new()),
        }
    }

    fn op(e: &Event) -> u64 {
        match e {
            Event::Done { op, .. } => op.0,
            _ => u64::MAX,
        }
    }

    #[test]
    fn events_come_out_in_order_singly_or_in_batches() {
        let q = EventQueue::default();
        assert!(q.is_empty() && q.pop().is_none());
        assert!(!q.extend(None));
        assert!(q.extend((1..=3).map(done)));
        assert_eq!(q.pop().as_ref().map(op), Some(1));
        let mut seen = Vec::new();
        assert_eq!(q.drain(&mut |e| seen.push(op(&e))), 2);
        assert_eq!(seen, [2, 3]);
        assert!(q.is_empty());
        assert_eq!(q.drain(&mut |_| panic!("empty")), 0);
        // Events pushed while a batch is handled wait for the next call.
        q.extend([done(4)]);
        let mut n = 0;
        q.drain(&mut |_| {
            n += 1;
            q.extend([done(5)]);
        });
        assert_eq!(n, 1);
        assert_eq!(q.pop().as_ref().map(op), Some(5));
    }

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
