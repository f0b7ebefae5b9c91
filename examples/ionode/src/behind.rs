//! Work done behind the clients' backs, on one thread: backend closes of handles clients
//! closed (their `close` is answered before), and the files of clients that went away
//! (detached, in order, their buffered writes landing first).
//!
//! Closes are kept [`CLOSES_IN_FLIGHT`] requests at a time: made one at a time, a
//! metadata load (64 clients creating, closing and unlinking files: thousands of closes a
//! second, each a backend round trip) left a backlog that held backend handles open by
//! the thousand, unlinked files among them, until the server's descriptor limit failed
//! the run (`qs-fwd --shapes md -f 64 -r 5`: `EMFILE`). And the closes queued together
//! go in one request per backend and user (`posix.close_many`, up to [`BATCH`] handles):
//! a backend request, with its latency, for many closes (servers built before it answer
//! `ENOSYS`, and get one `close` per handle from then on).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Weak};

use posix_ship::client::Pending;
use posix_ship::proto::{CLOSE, CLOSE_MANY, FhList, MAX_CLOSE_MANY, Principal};

use crate::node::{Handle, Node};

/// Backend close requests in flight at once (well under a server's per-client bound of 64).
pub(crate) const CLOSES_IN_FLIGHT: usize = 16;

/// Handles closed in one request at most.
const BATCH: usize = 64;
const _: () = assert!(BATCH <= MAX_CLOSE_MANY);

/// Closes go together per backend and user.
type Group = (usize, Option<Option<Principal>>);

/// A job for the thread behind.
pub(crate) enum Behind {
    /// Let a closed handle go at the backend.
    Close(Arc<Handle>),
    /// A client is gone: close what it held (flushing, calling the backend).
    Lost(Vec<Arc<Handle>>),
}

/// A close request in flight.
enum Landing {
    One(Arc<Handle>, Pending<()>),
    Many(Vec<Arc<Handle>>, Pending<Vec<i32>>),
}

/// The closes in flight, and the backends that answered `ENOSYS` to `close_many`.
#[derive(Default)]
struct Flight {
    requests: VecDeque<Landing>,
    one_by_one: HashSet<usize>,
}

/// Runs the jobs until the node is gone (closes still in flight then are the backend's
/// to finish: their requests left).
pub(crate) fn run(node: Weak<Node>, jobs: Receiver<Behind>) {
    let mut flight = Flight::default();
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
        let mut handles = n.handles_of(job);
        // What else is queued now goes with them.
        while handles.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => handles.extend(n.handles_of(job)),
                Err(_) => break,
            }
        }
        // A backend handle other clients still use stays open (`crate::opens`).
        handles.retain(|h| n.opens.release(&h.backing));
        let mut groups: HashMap<Group, Vec<Arc<Handle>>> = HashMap::new();
        for h in handles {
            let user = h.backing.fs.acting_as().cloned();
            groups.entry((h.backend, user)).or_default().push(h);
        }
        for ((b, _), group) in groups {
            for chunk in group.chunks(BATCH) {
                n.start_closes(&mut flight, b, chunk.to_vec());
                n.land(&mut flight, CLOSES_IN_FLIGHT - 1);
            }
        }
    }
}

/// The backend handles of `group`.
fn handles(group: &[Arc<Handle>]) -> FhList {
    posix_ship::proto::Bounded(group.iter().map(|h| h.backing.fh()).collect())
}

impl Node {
    /// The handles a job lets go of (a lost client's detached first).
    fn handles_of(&self, job: Behind) -> Vec<Arc<Handle>> {
        match job {
            Behind::Close(h) => vec![h],
            Behind::Lost(files) => files
                .into_iter()
                .inspect(|h| {
                    if let Err(e) = self.detach(h) {
                        tracing::debug!(errno = e, "closing a lost client's file");
                    }
                })
                .collect(),
        }
    }

    /// Starts closing `group` (handles of backend `b`, one user) at the backend.
    fn start_closes(&self, flight: &mut Flight, b: usize, group: Vec<Arc<Handle>>) {
        if group.len() == 1 || flight.one_by_one.contains(&b) {
            for h in group {
                let p = self.start(&h.backing.fs, CLOSE, h.backing.fh());
                flight.requests.push_back(Landing::One(h, p));
            }
            return;
        }
        let p = self.start(&group[0].backing.fs, CLOSE_MANY, handles(&group));
        flight.requests.push_back(Landing::Many(group, p));
    }

    /// Waits for the oldest close requests in flight until at most `keep` remain.
    fn land(&self, flight: &mut Flight, keep: usize) {
        while flight.requests.len() > keep {
            let Some(l) = flight.requests.pop_front() else {
                break;
            };
            let failed = match l {
                Landing::One(h, p) => match self.landed(p) {
                    // The server's bound of requests in flight: closed again, waiting.
                    Err(libc::EAGAIN) => vec![self.backend_close(&h)],
                    r => vec![r],
                },
                Landing::Many(group, p) => match self.landed(p) {
                    Ok(errnos) => {
                        // An answer shorter than the list leaves the rest to close.
                        let rest = group.iter().skip(errnos.len());
                        let rest: Vec<_> = rest.map(|h| self.backend_close(h)).collect();
                        let failed = errnos.into_iter().filter(|e| *e != 0).map(Err);
                        failed.chain(rest).collect()
                    }
                    Err(libc::ENOSYS | libc::EINVAL) => {
                        // A server without it: one close each, from now on.
                        flight.one_by_one.insert(group[0].backend);
                        group.iter().map(|h| self.backend_close(h)).collect()
                    }
                    // At the server's bound: the same request, waiting it out.
                    Err(libc::EAGAIN) => {
                        match self.call(&group[0].backing.fs, CLOSE_MANY, handles(&group)) {
                            Ok(errnos) => errnos.into_iter().filter(|e| *e != 0).map(Err).collect(),
                            Err(e) => vec![Err(e)],
                        }
                    }
                    // The connection is gone (its handles with it) or the answer was lost:
                    // nothing more to do for these handles.
                    Err(e) => vec![Err(e)],
                },
            };
            for e in failed.into_iter().filter_map(Result::err) {
                tracing::debug!(errno = e, "closing a backend handle");
            }
        }
    }
}
