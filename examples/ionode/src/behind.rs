//! Work done behind the clients' backs, on one thread: backend closes of handles clients
//! closed (their `close` is answered before), and the files of clients that went away
//! (detached, in order, their buffered writes landing first).
//!
//! Closes are kept [`CLOSES_IN_FLIGHT`] at a time: made one at a time, a metadata load
//! (64 clients creating, closing and unlinking files: thousands of closes a second, each a
//! backend round trip) left a backlog that held backend handles open by the thousand,
//! unlinked files among them, until the server's descriptor limit failed the run
//! (`qs-fwd --shapes md -f 64 -r 5`: `EMFILE`).

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Weak};

use posix_ship::client::Pending;
use posix_ship::proto::CLOSE;

use crate::node::{Handle, Node};

/// Backend closes in flight at once (well under a server's per-client bound of 64).
pub(crate) const CLOSES_IN_FLIGHT: usize = 16;

/// A job for the thread behind.
pub(crate) enum Behind {
    /// Let a closed handle go at the backend.
    Close(Arc<Handle>),
    /// A client is gone: close what it held (flushing, calling the backend).
    Lost(Vec<Arc<Handle>>),
}

type Flight = VecDeque<(Arc<Handle>, Pending<()>)>;

/// Runs the jobs until the node is gone (closes still in flight then are the backend's
/// to finish: their requests left).
pub(crate) fn run(node: Weak<Node>, jobs: Receiver<Behind>) {
    let mut flight = Flight::new();
    loop {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Empty) => {
                // Nothing more queued: let the closes in flight land, then sleep.
                if let Some(n) = node.upgrade() {
                    n.land(&mut flight, 0);
                }
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        let Some(n) = node.upgrade() else { return };
        let handles = match job {
            Behind::Close(h) => vec![h],
            Behind::Lost(files) => files
                .into_iter()
                .inspect(|h| {
                    if let Err(e) = n.detach(h) {
                        tracing::debug!(errno = e, "closing a lost client's file");
                    }
                })
                .collect(),
        };
        for h in handles {
            // A backend handle other clients still use stays open (`crate::opens`).
            if !n.opens.release(&h.backing) {
                continue;
            }
            let p = n.start(&h.backing.fs, CLOSE, h.backing.fh());
            flight.push_back((h, p));
            n.land(&mut flight, CLOSES_IN_FLIGHT - 1);
        }
    }
}

impl Node {
    /// Waits for the oldest closes in flight until at most `keep` remain.
    fn land(&self, flight: &mut Flight, keep: usize) {
        while flight.len() > keep {
            let Some((h, p)) = flight.pop_front() else {
                break;
            };
            let r = match self.landed(p) {
                // The server's bound of requests in flight: closed again, the waiting way.
                Err(libc::EAGAIN) => self.backend_close(&h),
                r => r,
            };
            if let Err(e) = r {
                tracing::debug!(errno = e, "closing a backend handle");
            }
        }
    }
}
