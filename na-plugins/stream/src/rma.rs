//! Transfers over the stream: posting a `get` or `put` (split between the owner's chunks
//! and, where the wire copies between processes, a tail this side copies itself:
//! `crate::tail`), and building the request frames of its next chunks within the window.

use na::{Chunker, Event, MemHandle, NaError, NaResult, OpId, PeerId, RemoteMem};

use crate::conn::{Body, OutFrame, Prefix};

/// The request frames of a transfer's next chunks: one inline (a completion lets one
/// more go; moving more inline cost more than the allocation saved), more on the heap.
pub(crate) type Frames = smallvec::SmallVec<[OutFrame; 1]>;
use crate::frame::{Kind, RmaReq};
use crate::ops::{Ops, Rma};
use crate::{COPY_MIN, StreamPlugin, lock, tail};

impl StreamPlugin {
    // The trait's put/get arguments plus the direction.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn post_rma(
        &self,
        is_get: bool,
        peer: PeerId,
        local: &MemHandle,
        local_off: u64,
        remote: &RemoteMem,
        remote_off: u64,
        len: u64,
    ) -> NaResult<OpId> {
        self.mem.check_local(local.id, local_off, len)?;
        if remote_off
            .checked_add(len)
            .is_none_or(|end| end > remote.len)
        {
            return Err(NaError::InvalidArgument(format!(
                "remote range {remote_off}+{len} outside region of {} bytes",
                remote.len
            )));
        }
        let conn = self.conn(peer)?;
        let copy = conn.wire.single_copy() && len >= COPY_MIN;
        // A large transfer by single copy is shared: the owner copies the head while we
        // copy the tail ourselves (`tail.rs`).
        let shared = copy.then(|| self.shared_tail(&conn, remote, len)).flatten();
        let tail = shared.as_ref().map_or(0, |s| s.1);
        let rma = Rma {
            is_get,
            local_id: local.id,
            local_off,
            remote_key: remote.key,
            remote_off,
            plan: Chunker::new(len - tail, self.cfg.chunks),
            copy,
        };
        let (op, frames, evs) = {
            let mut ops = lock(&self.ops);
            let op = ops.add_rma(peer, rma);
            if len == 0 {
                let ev = ops.complete(op, Ok(Vec::new()));
                (op, Frames::new(), ev.into_iter().collect())
            } else {
                if let Some(plan) = ops.plan(op).filter(|_| tail > 0) {
                    plan.hold();
                }
                let (f, e) = self.issue_chunks(&mut ops, op);
                (op, f, e)
            }
        };
        self.push_events(evs, true);
        self.send_frames(&conn, frames);
        if let Some((d, tail)) = shared {
            let at = len - tail;
            let ours = (local_off + at, remote_off + at, tail);
            self.queue_tail(tail::Tail::new(
                conn, op, is_get, d, remote.key, local, ours,
            ));
        }
        Ok(op)
    }

    /// Builds the request frames for the next chunks of `op` within its window.
    pub(crate) fn issue_chunks(&self, ops: &mut Ops, op: OpId) -> (Frames, Vec<Event>) {
        let mut frames = Frames::new();
        let mut evs = Vec::new();
        for (id, c) in ops.next_chunks(op) {
            let Some(r) = ops.rma(op) else { break };
            let offset = r.remote_off + c.rel_off;
            if r.copy {
                match self.copy_request(r, &c, id) {
                    Ok(f) => frames.push(f),
                    Err(e) => {
                        ops.take_chunk(id);
                        evs.extend(ops.chunk_done(op, Err(e)));
                    }
                }
                continue;
            }
            if r.is_get {
                let req = RmaReq {
                    key: r.remote_key,
                    offset,
                    len: c.len,
                };
                frames.push(OutFrame::new(Kind::GetReq, id, req.encode_get(), None));
                continue;
            }
            // The data is read from registered memory when the frame is written.
            let local_off = r.local_off + c.rel_off;
            match self.mem.pin_local(r.local_id, local_off, c.len) {
                Ok(pin) => {
                    let prefix =
                        Prefix::from_slice(&RmaReq::encode_put_prefix(r.remote_key, offset));
                    let body = Body::Region {
                        prefix,
                        key: r.local_id,
                        offset: local_off,
                        len: c.len as usize,
                        _pin: pin,
                    };
                    frames.push(OutFrame::with_body(Kind::PutReq, id, body, None));
                }
                Err(e) => {
                    ops.take_chunk(id);
                    evs.extend(ops.chunk_done(op, Err(e)));
                }
            }
        }
        (frames, evs)
    }
}
