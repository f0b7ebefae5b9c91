//! Answers to a batch of requests leave together: when one progress pass brings a peer
//! more than one request, its connection is held ([`Conn::hold`]) while the engine
//! handles the batch, so that the answers go out in one write, not one system call each
//! (over a socket; memory is written at once, and is never held).
//!
//! A handler of the batch may wait for a call of its own to a held peer, and the answer
//! may come through another thread's progress: every progress pass, on any thread, first
//! writes out what batches hold (the connections stay held), and a send while a batch
//! holds a connection wakes a pass that sleeps. A request to a held peer waits behind
//! the hold at most until the next pass.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use na::{Event, PeerId};
use smallvec::SmallVec;

use crate::conn::Conn;
use crate::{StreamPlugin, lock};

/// Most connections one batch holds.
const MOST: usize = 4;

/// Events of a batch looked at for repeated peers.
const LOOK: usize = 64;

thread_local! {
    /// Batches this thread is handling: its own sends need no wake-up (it makes the
    /// next pass itself, or lets the hold go).
    static HANDLING: Cell<u32> = const { Cell::new(0) };
}

/// Whether a send from this thread may have joined another thread's held connection.
pub(crate) fn foreign_send(plugin: &StreamPlugin) -> bool {
    plugin.batched_n.load(Ordering::Acquire) > 0 && HANDLING.get() == 0
}

/// The connections a batch holds, let go (and written) when dropped.
pub(crate) struct Batch<'a> {
    plugin: &'a StreamPlugin,
    conns: SmallVec<[Arc<Conn>; MOST]>,
}

impl StreamPlugin {
    /// Holds the connections of peers with more than one request in `made`; `None`
    /// (nothing to let go after, the common case) if it holds none.
    pub(crate) fn hold_batch(&self, made: &[Event]) -> Option<Batch<'_>> {
        if made.len() < 2 || self.net.polls_memory() {
            return None;
        }
        let from = |ev: &Event| match ev {
            Event::Unexpected { peer, .. } => Some(*peer),
            _ => None,
        };
        let peers: SmallVec<[PeerId; LOOK]> = made.iter().take(LOOK).filter_map(from).collect();
        let mut conns: SmallVec<[Arc<Conn>; MOST]> = SmallVec::new();
        for (i, p) in peers.iter().enumerate() {
            let again = peers[i + 1..].contains(p);
            if !again || conns.len() == MOST || conns.iter().any(|c| c.peer == *p) {
                continue;
            }
            if let Ok(c) = self.conn(*p) {
                c.hold(true);
                conns.push(c);
            }
        }
        if conns.is_empty() {
            return None;
        }
        HANDLING.set(HANDLING.get() + 1);
        let mut held = lock(&self.batched);
        held.extend(conns.iter().cloned());
        self.batched_n.store(held.len(), Ordering::Release);
        drop(held);
        Some(Batch {
            plugin: self,
            conns,
        })
    }

    /// Writes out what batches hold (they stay held); nothing to look at, the common
    /// case, costs one load.
    pub(crate) fn flush_held(&self) {
        if self.batched_n.load(Ordering::Acquire) == 0 {
            return;
        }
        let held: SmallVec<[Arc<Conn>; MOST]> = lock(&self.batched).iter().cloned().collect();
        for c in held {
            let f = c.flush(&self.mem);
            self.after_flush(&c, f);
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let p = self.plugin;
        HANDLING.set(HANDLING.get().saturating_sub(1));
        {
            let mut held = lock(&p.batched);
            for c in &self.conns {
                if let Some(i) = held.iter().position(|x| Arc::ptr_eq(x, c)) {
                    held.swap_remove(i);
                }
            }
            p.batched_n.store(held.len(), Ordering::Release);
        }
        for c in self.conns.drain(..) {
            if c.hold(false) {
                let f = c.flush(&p.mem);
                p.after_flush(&c, f);
            }
        }
    }
}
