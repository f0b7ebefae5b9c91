//! One-sided transfers: `put` and `get` split into pieces contiguous on both sides and
//! posted as `fi_write`/`fi_read` against the owner's provider registration.

use libfabric_sys as fi;
use na::{MemHandle, NaError, NaResult, OpId, PeerId, RemoteMem};

use crate::plugin::{Ctx, OfiPlugin, OpKind, What, lock};
use crate::wire::{self, Piece};

/// One piece ready to post (addresses as integers so that pieces waiting for a grant
/// can sit in the shared state).
pub(crate) struct Post {
    local: usize,
    len: usize,
    desc: usize,
    raddr: u64,
    key: u64,
}

/// A transfer waiting for its owner's grant.
pub(crate) struct Awaiting {
    pub(crate) write: bool,
    pub(crate) posts: Vec<Post>,
}

impl OfiPlugin {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rma(
        &self,
        write: bool,
        peer: PeerId,
        local: &MemHandle,
        local_off: u64,
        remote: &RemoteMem,
        remote_off: u64,
        len: u64,
    ) -> NaResult<OpId> {
        let bad = |m: String| Err(NaError::InvalidArgument(m));
        let rsegs = wire::decode_segs(&remote.extra)?;
        let rlens: Vec<u64> = rsegs.iter().map(|s| s.len).collect();
        let rtotal = rlens.iter().try_fold(0u64, |a, l| a.checked_add(*l));
        let in_remote = remote_off
            .checked_add(len)
            .is_some_and(|end| end <= remote.len && rtotal.is_some_and(|t| end <= t));
        if !in_remote {
            return bad(format!(
                "remote range {remote_off}+{len} is outside the {}-byte region",
                remote.len
            ));
        }
        let (id, posts, checked) = {
            let mut s = lock(&self.state);
            self.fi_addr(&s, peer)?;
            let Some(region) = s.mem.get(local.id) else {
                return bad(format!("unknown local registration {}", local.id));
            };
            if local_off
                .checked_add(len)
                .is_none_or(|end| end > region.len())
            {
                return bad(format!(
                    "local range {local_off}+{len} is outside the {}-byte registration",
                    region.len()
                ));
            }
            let llens: Vec<u64> = region.segs.iter().map(|s| s.len).collect();
            let chunk = self.cfg.rma_chunk as u64;
            let pieces = wire::pieces(&llens, local_off, &rlens, remote_off, len, chunk);
            let posts: Vec<Post> = pieces
                .iter()
                .map(|p: &Piece| {
                    let r = rsegs[p.rseg];
                    Post {
                        // SAFETY (of the later use): within the registered segment, checked above.
                        local: region.segs[p.lseg].ptr as usize + p.loff as usize,
                        len: p.len as usize,
                        desc: if self.mr_local {
                            region.desc(p.lseg) as usize
                        } else {
                            0
                        },
                        raddr: r.base.wrapping_add(p.roff),
                        key: remote.key ^ r.key_delta,
                    }
                })
                .collect();
            let id = self.new_op(&mut s, peer, OpKind::Rma, posts.len() as u32);
            if self.provider.checked_rma && !posts.is_empty() {
                s.awaiting.insert(id, Awaiting { write, posts });
                (id, Vec::new(), true)
            } else {
                (id, posts, false)
            }
        };
        if checked {
            let check = wire::Check {
                op: id,
                key: remote.key,
                off: remote_off,
                len,
                write,
            };
            let mut b = wire::header(wire::Kind::Check, &self.self_raw);
            b.extend_from_slice(&check.encode());
            if let Err(e) = self.tsend(peer.0, wire::UNEXPECTED, b, What::Pong) {
                lock(&self.state).awaiting.remove(&id);
                self.forget_op(id);
                return Err(e);
            }
            return Ok(OpId(id));
        }
        if let Err(e) = self.post_pieces(id, peer, write, posts) {
            self.forget_op(id);
            return Err(e);
        }
        Ok(OpId(id))
    }

    /// The owner answered a check of operation `id`.
    pub(crate) fn on_grant(&self, id: u64, ok: bool) {
        let (peer, aw) = {
            let mut s = lock(&self.state);
            let Some(aw) = s.awaiting.remove(&id) else {
                return;
            };
            let Some(op) = s.ops.get(&id) else { return };
            (op.peer, aw)
        };
        if !ok {
            let n = aw.posts.len();
            for _ in 0..n {
                self.part_done(
                    id,
                    Err(NaError::AccessDenied(
                        "the owner refused the transfer (unknown key, out of bounds, or access mode)".into(),
                    )),
                );
            }
            return;
        }
        if let Err(e) = self.post_pieces(id, peer, aw.write, aw.posts) {
            let mut s = lock(&self.state);
            if let Some(op) = s.ops.get_mut(&id) {
                op.parts = 0;
                op.error.get_or_insert(e);
            }
            self.finish_if_done(&mut s, id);
        }
    }

    /// Posts the pieces of `id`. An error on the first piece is returned (and the op
    /// forgotten); later ones complete the op with the error.
    fn post_pieces(&self, id: u64, peer: PeerId, write: bool, posts: Vec<Post>) -> NaResult<()> {
        if posts.is_empty() {
            self.part_done_all(id);
            return Ok(());
        }
        let total = posts.len();
        for (i, p) in posts.into_iter().enumerate() {
            let ctx = Ctx::new(What::Op(id), Vec::new());
            {
                let mut s = lock(&self.state);
                s.live.insert(ctx as usize);
                if let Some(op) = s.ops.get_mut(&id) {
                    op.ctxs.push(ctx as usize);
                }
            }
            let r = self.post(if write { "fi_write" } else { "fi_read" }, || unsafe {
                // SAFETY: the local piece lies in memory registered by the caller (valid until
                // deregistered, per the register contract, and the caller keeps it until this
                // op's Done); ctx lives until its completion.
                let (buf, mut desc) = (p.local as *mut libc::c_void, p.desc as *mut libc::c_void);
                if write {
                    // A put completes when its data is in the owner's memory (delivery
                    // complete), not when it left this process.
                    let iov = libc::iovec {
                        iov_base: buf,
                        iov_len: p.len,
                    };
                    let rma = fi::fi_rma_iov {
                        addr: p.raddr,
                        len: p.len,
                        key: p.key,
                    };
                    let msg = fi::fi_msg_rma {
                        msg_iov: (&iov as *const libc::iovec).cast(),
                        desc: &mut desc,
                        iov_count: 1,
                        addr: peer.0,
                        rma_iov: &rma,
                        rma_iov_count: 1,
                        context: ctx.cast(),
                        data: 0,
                    };
                    fi::fi_writemsg(self.ep.0, &msg, self.write_flags)
                } else {
                    fi::fi_read(
                        self.ep.0,
                        buf,
                        p.len,
                        desc,
                        peer.0,
                        p.raddr,
                        p.key,
                        ctx.cast(),
                    )
                }
            });
            if let Err(e) = r {
                {
                    let mut s = lock(&self.state);
                    s.live.remove(&(ctx as usize));
                    if let Some(op) = s.ops.get_mut(&id) {
                        op.ctxs.retain(|c| *c != ctx as usize);
                    }
                }
                // SAFETY: not posted.
                drop(unsafe { Box::from_raw(ctx) });
                if i == 0 {
                    return Err(e);
                }
                // Later pieces: the op completes with the error once the posted ones return.
                for _ in i..total {
                    self.part_done(id, Err(e.clone()));
                }
                break;
            }
        }
        Ok(())
    }

    fn part_done_all(&self, id: u64) {
        let mut s = lock(&self.state);
        if let Some(op) = s.ops.get_mut(&id) {
            op.parts = 0;
        }
        self.finish_if_done(&mut s, id);
    }
}
