//! Large reads by single copy, shared between the two processes: the owner copies the
//! head of the range into our memory, as for any single-copy read, while our next
//! progress call copies the tail out of the owner's memory itself ([`crate::direct`]:
//! only what the owner exposed, checked against its entry). Two cores copy instead of one: the owner's
//! progress thread alone copied at one core's speed while the other core idled
//! (`perf record -a` of `qs-bw -t sm -y 1048576`).
//!
//! Only reads: a write into the owner's memory could not be taken back if the owner had
//! let the region go meanwhile. A tail that cannot be copied here (another pid, an entry
//! that does not confirm, a short copy) is requested from the owner after all; nothing
//! is read before the entry confirms (a region let go during the copy leaves the tail's
//! bytes unspecified, as a failed read's are, and the owner's answer fails the read).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use na::{MemHandle, OpId, RemoteMem};

use crate::conn::Conn;
use crate::direct::{self, Direct};
use crate::wire::CopyDir;
use crate::{StreamPlugin, lock};

/// Bytes of tails copied per progress call before the rest waits for the next (as the
/// owner's copies are served: completions and messages get their turn).
const TAIL_BUDGET: u64 = 2 << 20;

/// A tail to copy: the read, the owner's region, and where the bytes go.
pub(crate) struct Tail {
    conn: Arc<Conn>,
    op: OpId,
    d: Direct,
    key: u64,
    local: MemHandle,
    at: (u64, u64, u64),
}

impl Tail {
    /// The tail of read `op` over `conn` of region `d` (key `key`) into `local`, at
    /// `(local offset, remote offset, length)`.
    pub(crate) fn new(
        conn: Arc<Conn>,
        op: OpId,
        d: Direct,
        key: u64,
        local: &MemHandle,
        at: (u64, u64, u64),
    ) -> Tail {
        Tail {
            conn,
            op,
            d,
            key,
            local: local.clone(),
            at,
        }
    }
}

/// Tails waiting for a progress call: copied there, not where the read is posted (which
/// may hold a caller's lock, rpc-core's call table: every completion of the engine would
/// wait on the copy).
#[derive(Default)]
pub(crate) struct Tails {
    queue: Mutex<VecDeque<Tail>>,
    /// The queue's length, read without its lock by every progress call.
    len: AtomicUsize,
}

impl StreamPlugin {
    /// Queues a tail for the next progress call, and wakes one that sleeps.
    pub(crate) fn queue_tail(&self, t: Tail) {
        let mut q = lock(&self.tails.queue);
        q.push_back(t);
        self.tails.len.store(q.len(), Ordering::Release);
        drop(q);
        let _ = self.waker.wake();
    }

    /// Copies queued tails, up to [`TAIL_BUDGET`] bytes; true if some are left.
    pub(crate) fn run_tails(&self) -> bool {
        let mut done = 0;
        while self.tails.len.load(Ordering::Acquire) > 0 {
            if done >= TAIL_BUDGET {
                return true;
            }
            let t = {
                let mut q = lock(&self.tails.queue);
                let t = q.pop_front();
                self.tails.len.store(q.len(), Ordering::Release);
                t
            };
            let Some(t) = t else { break };
            done += t.at.2;
            self.copy_tail(&t.conn, t.op, &t.d, t.key, &t.local, t.at);
        }
        false
    }

    /// The owner's region and the length of the tail to copy here, if a read of `len`
    /// bytes of `remote` over `conn` is shared.
    pub(crate) fn shared_tail(
        &self,
        conn: &Conn,
        remote: &RemoteMem,
        len: u64,
    ) -> Option<(Direct, u64)> {
        if !direct::SUPPORTED || len < direct::SHARE_MIN {
            return None;
        }
        let (pid, a) = conn.wire.direct_peer()?;
        let d = Direct::decode(&remote.extra, remote.key, remote.len, a.salt)?;
        (d.pid == pid && d.entry_in(a.arena)).then_some((d, (len / 2) & !4095))
    }

    /// Copies the tail of read `op` (`(local offset, remote offset, length)`), then
    /// counts it done, or gives it back to the owner's chunks if it could not be copied.
    pub(crate) fn copy_tail(
        &self,
        conn: &Conn,
        op: OpId,
        d: &Direct,
        key: u64,
        local: &MemHandle,
        (local_off, remote_off, len): (u64, u64, u64),
    ) {
        let copied = self.direct_copy(conn, d, key, local, local_off, remote_off, len);
        let (frames, mut evs) = {
            let mut ops = lock(&self.ops);
            if copied {
                self.direct.fetch_add(len, Ordering::Relaxed);
                (Vec::new(), ops.chunk_done(op, Ok(())).into_iter().collect())
            } else {
                tracing::trace!(
                    peer = conn.peer.0,
                    "tail not copied here; the owner copies it"
                );
                ops.extend(op, len);
                let done: Vec<_> = ops.chunk_done(op, Ok(())).into_iter().collect();
                let (f, e) = self.issue_chunks(&mut ops, op);
                (f, done.into_iter().chain(e).collect::<Vec<_>>())
            }
        };
        self.push_events(evs.drain(..), true);
        self.send_frames(conn, frames);
    }

    /// Copies `len` bytes at `remote_off` of the owner's region `d` (key `key`) into our
    /// registration `local` at `local_off`: true if they are in place and were the
    /// region's throughout.
    #[allow(clippy::too_many_arguments)]
    fn direct_copy(
        &self,
        conn: &Conn,
        d: &Direct,
        key: u64,
        local: &MemHandle,
        local_off: u64,
        remote_off: u64,
        len: u64,
    ) -> bool {
        // The entry first (the region's key, address and length), or nothing is read.
        let mut entry = [0u64; 3];
        let e = entry.as_mut_ptr().cast::<u8>();
        // SAFETY: `entry` is ours, 24 bytes, not otherwise borrowed during the call.
        let got = unsafe {
            conn.wire
                .peer_copy(CopyDir::FromPeer, &[(e, 24)], &[(d.entry, 24)])
        };
        if !matches!(got, Ok(24)) || !d.confirms(key, &entry) {
            return false;
        }
        let Some((_held, mut pieces)) = self.mem.landing(local.id, local_off, len as usize, false)
        else {
            return false;
        };
        // Then the data, and after it (same call, in order) the key again.
        let mut again = 0u64;
        pieces.push(((&raw mut again).cast::<u8>(), 8));
        let remote = [(d.addr + remote_off, len), (d.entry, 8)];
        // SAFETY: the local pieces are a live registration's, kept registered by `_held`
        // (deregistration takes the write lock), and `again`, which nothing else borrows.
        let copied = unsafe { conn.wire.peer_copy(CopyDir::FromPeer, &pieces, &remote) };
        matches!(copied, Ok(n) if n as u64 == len + 8) && again == key
    }
}
