//! Single-copy RMA between processes of one node: the requester names its own memory by
//! address, and the owner, after the usual checks, copies straight between that and its
//! registered region ([`Wire::peer_copy`]); only a status byte travels back.
//!
//! The owner copies while it holds the registration's read lock, so a deregistration
//! waits for a copy in progress and none starts after it. On the requester's side the
//! owner may be writing into its memory until the answer arrives: cancelling such a
//! transfer waits for the answers in flight (the contract of `Plugin::cancel`).

use std::time::{Duration, Instant};

use na::{NaError, OpId, PeerId};

use crate::conn::{Conn, OutFrame, ReadState};
use crate::frame::{Kind, RmaReq, RmaStatus};
use crate::ops::{Chunk, Rma};
use crate::wire::{CopyDir, Wire};
use crate::{StreamPlugin, lock};

/// How long a cancel waits for an owner to answer copies in flight before giving up on
/// the connection.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Bytes of single copies served per connection and pass before completions and the
/// messages behind the requests get a turn.
const COPY_BUDGET: u64 = 2 << 20;

/// Most pieces a request may name, and a run of requests copied together (the kernel's
/// `IOV_MAX`).
const MAX_PIECES: usize = 1024;

/// A decoded single-copy request: the region's part, and the requester's pieces.
type Request = (RmaReq, crate::frame::Pieces);

impl StreamPlugin {
    /// The request frame for chunk `c` (id `id`) of single-copy transfer `r`.
    pub(crate) fn copy_request(&self, r: &Rma, c: &Chunk, id: u64) -> Result<OutFrame, NaError> {
        let pieces = self
            .mem
            .local_pieces(r.local_id, r.local_off + c.rel_off, c.len)?;
        let req = RmaReq {
            key: r.remote_key,
            offset: r.remote_off + c.rel_off,
            len: c.len,
        };
        let kind = if r.is_get {
            Kind::GetCopy
        } else {
            Kind::PutCopy
        };
        Ok(OutFrame::new(kind, id, req.encode_copy(&pieces), None))
    }

    /// Serves queued single-copy requests of `conn`, up to `COPY_BUDGET` bytes; leaves
    /// the rest for the next pass. A run of requests in one direction is copied with one
    /// call (64 small pulls cost the owner one system call, not 64).
    pub(crate) fn serve_copies(&self, conn: &Conn, rs: &mut ReadState) {
        let mut served = 0u64;
        let mut answers = Vec::new();
        while let Some((h, _)) = rs.copies.front() {
            if served >= COPY_BUDGET {
                break;
            }
            let put = h.kind == Kind::PutCopy;
            let mut run = Vec::new();
            let (mut bytes, mut pieces) = (0u64, 0usize);
            while let Some((h, _)) = rs.copies.front() {
                if (h.kind == Kind::PutCopy) != put || served + bytes >= COPY_BUDGET {
                    break;
                }
                let req =
                    RmaReq::decode_copy(&rs.copies[0].1).filter(|(_, r)| r.len() <= MAX_PIECES);
                let n = req.as_ref().map_or(0, |(_, r)| r.len());
                if !run.is_empty() && pieces + n > MAX_PIECES {
                    break;
                }
                (bytes, pieces) = (
                    bytes + req.as_ref().map_or(1, |(q, _)| q.len.max(1)),
                    pieces + n,
                );
                let tag = rs.copies.pop_front().map_or(0, |(h, _)| h.tag);
                run.push((tag, req));
            }
            served += bytes;
            let kind = if put { Kind::PutResp } else { Kind::GetResp };
            for ((tag, _), st) in run.iter().zip(self.serve_run(conn, put, &run)) {
                answers.push(OutFrame::status(kind, *tag, st as u8));
            }
        }
        if !rs.copies.is_empty() {
            self.unread.insert(conn.peer);
        }
        if !answers.is_empty() {
            self.queue_frames(conn, answers);
            let f = conn.flush(&self.mem);
            self.after_flush(conn, f);
        }
    }

    /// Serves a run of a peer's single-copy requests in one direction (`None`: one that
    /// did not decode); returns each one's status. The allowed ones are copied with one
    /// call; if that call comes up short, each is copied alone, so that each request's
    /// status is its own (copying the same bytes again changes nothing).
    fn serve_run(&self, conn: &Conn, put: bool, run: &[(u64, Option<Request>)]) -> Vec<RmaStatus> {
        let mut st: Vec<RmaStatus> = run
            .iter()
            .map(|(_, r)| match r {
                None => RmaStatus::Malformed,
                // Only with peers the wire allows it with (sm: of our own uid), whatever
                // they ask: we copy with our rights into a process the peer chose.
                Some(_) if !conn.wire.single_copy() => RmaStatus::Forbidden,
                Some(_) => RmaStatus::Ok,
            })
            .collect();
        let asked: Vec<(usize, &Request)> = run
            .iter()
            .enumerate()
            .filter_map(|(i, (_, r))| {
                r.as_ref()
                    .filter(|_| st[i] == RmaStatus::Ok)
                    .map(|r| (i, r))
            })
            .collect();
        if asked.is_empty() {
            return st;
        }
        let dir = if put {
            CopyDir::FromPeer
        } else {
            CopyDir::ToPeer
        };
        let wire: &dyn Wire = &*conn.wire;
        let accesses = asked.iter().map(|(_, (q, _))| (q.key, q.offset, q.len));
        self.mem.with_many_remote_pieces(accesses, put, |each| {
            let mut ok = Vec::with_capacity(asked.len());
            let (mut local, mut remote, mut total) = (Vec::new(), Vec::new(), 0u64);
            for (&(i, (q, r)), pieces) in asked.iter().zip(&each) {
                match pieces {
                    Err(why) => st[i] = *why,
                    Ok(p) => {
                        local.extend_from_slice(p);
                        remote.extend_from_slice(r);
                        total += q.len;
                        ok.push((i, q.len, p, r));
                    }
                }
            }
            // SAFETY: `local` are pieces of live registrations, valid for reads and writes
            // by the register contract, kept registered by the read lock held around this
            // closure; no Rust reference to them exists meanwhile.
            let copied = unsafe { wire.peer_copy(dir, &local, &remote) };
            if matches!(copied, Ok(n) if n as u64 == total) {
                return;
            }
            for (i, len, p, r) in ok {
                // SAFETY: as above, for one request's pieces.
                let copied = unsafe { wire.peer_copy(dir, p, r) };
                if !matches!(copied, Ok(n) if n as u64 == len) {
                    tracing::warn!(peer = conn.peer.0, result = ?copied, len, "single copy failed");
                    st[i] = RmaStatus::CopyFailed;
                }
            }
        });
        st
    }

    /// Waits until canceled single-copy transfer `op` has its answers in (reading the
    /// connection from this thread), so that the owner no longer writes our memory.
    pub(crate) fn await_copies(&self, op: OpId, peer: PeerId) {
        let end = Instant::now() + CANCEL_WAIT;
        while lock(&self.ops).is_pending(op) {
            let Ok(conn) = self.conn(peer) else { return };
            if Instant::now() > end {
                tracing::error!(
                    peer = peer.0,
                    "owner did not answer copies of a canceled transfer"
                );
                return self.close_conn(
                    peer,
                    NaError::Disconnected("no answer to a canceled transfer's copies".into()),
                );
            }
            // (A queued tail of its own is part of what it waits for.)
            self.run_tails();
            self.read_or_close(&conn);
            std::thread::yield_now();
        }
        self.bell.ring();
    }
}
