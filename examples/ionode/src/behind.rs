//! Work done behind the clients' backs, on one thread, in order: backend closes of
//! handles clients closed (their `close` is answered before), and the files of clients
//! that went away.
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

/// Runs the jobs until the node is gone.
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
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let Some(n) = node.upgrade() else { break };
        match job {
            Behind::Close(h) => {
                n.stats.request_out(CLOSE.name());
                let p = h.backing.fs.start(CLOSE, &h.backing.fh());
                flight.push_back((h, p));
                n.land(&mut flight, CLOSES_IN_FLIGHT - 1);
            }
            Behind::Lost(files) => {
                n.land(&mut flight, 0);
                n.lost(files);
            }
        }
    }
    if let Some(n) = node.upgrade() {
        n.land(&mut flight, 0);
    }
}

impl Node {
    /// Waits for the oldest closes in flight until at most `keep` remain.
    fn land(&self, flight: &mut Flight, keep: usize) {
        while flight.len() > keep {
            let Some((h, p)) = flight.pop_front() else {
                break;
            };
            let r = match p.wait() {
                // The server's bound of requests in flight: closed the waiting way.
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.backend_close(&h),
                r => r.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
            };
            if let Err(e) = r {
                tracing::debug!(errno = e, "closing a backend handle");
            }
        }
    }
}
