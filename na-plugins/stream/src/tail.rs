//! Large reads by single copy, shared between the two processes: the owner copies the
//! head of the range into our memory, as for any single-copy read, while this thread
//! copies the tail out of the owner's memory itself ([`crate::direct`]: only what the
//! owner exposed, checked against its entry). Two cores copy instead of one: the owner's
//! progress thread alone copied at one core's speed while the other core idled
//! (`perf record -a` of `qs-bw -t sm -y 1048576`).
//!
//! Only reads: a write into the owner's memory could not be taken back if the owner had
//! let the region go meanwhile. A tail that cannot be copied here (another pid, an entry
//! that does not confirm, a short copy) is requested from the owner after all.

use std::sync::atomic::Ordering;

use na::{MemHandle, OpId, RemoteMem};

use crate::conn::Conn;
use crate::direct::{self, Direct};
use crate::wire::CopyDir;
use crate::{StreamPlugin, lock};

impl StreamPlugin {
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
        let Some((_held, mut pieces)) = self.mem.landing(local.id, local_off, len as usize, false)
        else {
            return false;
        };
        // After the data, in this order: the entry's key, its address and length, the key.
        let mut entry = [0u64; 4];
        let e = entry.as_mut_ptr().cast::<u8>();
        // SAFETY: offsets within the 32 bytes of `entry`.
        pieces.extend(unsafe { [(e, 8), (e.add(8), 16), (e.add(24), 8)] });
        let remote = [
            (d.addr + remote_off, len),
            (d.entry, 8),
            (d.entry + 8, 16),
            (d.entry, 8),
        ];
        // SAFETY: the local pieces are a live registration's, kept registered by `_held`
        // (deregistration takes the write lock), and `entry`, which nothing else borrows.
        let copied = unsafe { conn.wire.peer_copy(CopyDir::FromPeer, &pieces, &remote) };
        matches!(copied, Ok(n) if n as u64 == len + 32) && d.confirms(key, &entry)
    }
}
