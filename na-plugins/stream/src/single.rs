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

/// Most pieces a request may name (the kernel's `IOV_MAX`).
const MAX_PIECES: usize = 1024;

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
    /// the rest for the next pass.
    pub(crate) fn serve_copies(&self, conn: &Conn, rs: &mut ReadState) {
        let mut served = 0u64;
        let mut answers = Vec::new();
        while served < COPY_BUDGET {
            let Some((h, p)) = rs.copies.pop_front() else {
                break;
            };
            let put = h.kind == Kind::PutCopy;
            let (st, len) = self.serve_copy(conn, put, &p);
            served += len.max(1);
            let kind = if put { Kind::PutResp } else { Kind::GetResp };
            answers.push(OutFrame::new(kind, h.tag, vec![st as u8], None));
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

    /// Serves a peer's single-copy request; returns the answer's status and the length.
    fn serve_copy(&self, conn: &Conn, put: bool, p: &[u8]) -> (RmaStatus, u64) {
        let Some((req, remote)) = RmaReq::decode_copy(p).filter(|(_, r)| r.len() <= MAX_PIECES)
        else {
            return (RmaStatus::Malformed, 0);
        };
        // Only with peers the wire allows it with (sm: of our own uid), whatever they ask:
        // we copy with our rights into a process the peer chose.
        if !conn.wire.single_copy() {
            return (RmaStatus::Forbidden, 0);
        }
        let dir = if put {
            CopyDir::FromPeer
        } else {
            CopyDir::ToPeer
        };
        let wire: &dyn Wire = &*conn.wire;
        let copied = self
            .mem
            .with_remote_pieces(req.key, req.offset, req.len, put, |local| {
                // SAFETY: `local` are pieces of a live registration, valid for reads and
                // writes by the register contract, kept registered by the read lock held
                // around this closure; no Rust reference to them exists meanwhile.
                unsafe { wire.peer_copy(dir, local, &remote) }
            });
        let st = match copied {
            Err(st) => st,
            Ok(Ok(n)) if n as u64 == req.len => RmaStatus::Ok,
            Ok(r) => {
                tracing::warn!(peer = conn.peer.0, result = ?r, len = req.len, "single copy failed");
                RmaStatus::CopyFailed
            }
        };
        (st, req.len)
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
        let _ = self.waker.wake();
    }
}
