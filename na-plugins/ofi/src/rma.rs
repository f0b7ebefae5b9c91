//! One-sided transfers: `put` and `get` split into pieces contiguous on both sides and
//! posted as `fi_write`/`fi_read` against the owner's provider registration.

use libfabric_sys as fi;
use na::{MemHandle, NaError, NaResult, OpId, PeerId, RemoteMem};
use smallvec::SmallVec;

use crate::checks::Joined;
use crate::plugin::{Ctx, OfiPlugin, OpKind, State, What, lock};
use crate::wire::{self, Piece};

/// One piece ready to post (addresses as integers so that pieces waiting for a grant
/// can sit in the shared state).
pub(crate) struct Post {
    pub(crate) local: usize,
    pub(crate) len: usize,
    desc: usize,
    raddr: u64,
    key: u64,
}

/// A transfer's pieces (most transfers are one: no allocation).
pub(crate) type Posts = SmallVec<[Post; 2]>;

/// A piece waiting for room in the window.
pub(crate) struct Queued {
    pub(crate) id: u64,
    peer: PeerId,
    write: bool,
    post: Post,
}

/// A transfer waiting for its owner's grant, or (carried) for the owner to perform it.
pub(crate) struct Awaiting {
    pub(crate) peer: PeerId,
    pub(crate) write: bool,
    /// Carried by the owner; else it waits for a shared check ([`crate::checks`]).
    pub(crate) carried: bool,
    pub(crate) posts: Posts,
}

/// An owner's grant (or refusal) of a check, acted on once the queue's lock is released.
pub(crate) struct Answer {
    pub(crate) peer: PeerId,
    pub(crate) op: u64,
    pub(crate) ok: bool,
}

/// What a new transfer does first.
enum Next {
    /// Post its pieces (the provider checks the owner's keys).
    Post(Posts),
    /// Send this check (or carried transfer) to the owner, and wait for its answer.
    Ask(Vec<u8>),
    /// It went into the bundle held for the owner (`Plugin::hold`): send these bundles,
    /// which filled, and wait for its answer.
    Held(Vec<Vec<u8>>),
    /// Wait for the answer to a shared check already sent.
    Wait,
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
        if remote_off
            .checked_add(len)
            .is_none_or(|end| end > remote.len)
        {
            return bad(format!(
                "remote range {remote_off}+{len} is outside the {}-byte region",
                remote.len
            ));
        }
        // The descriptor's own table must cover the range; one that does not lies about
        // the region (forged or corrupted): refused as the owner would.
        // Refused like an owner's refusal: an operation that completes with the error.
        let rsegs = match wire::decode_segs(&remote.extra) {
            Ok(r) => r,
            Err(e) => return self.refused(peer, e),
        };
        let rlens: SmallVec<[u64; 4]> = rsegs.iter().map(|s| s.len).collect();
        let rtotal = rlens.iter().try_fold(0u64, |a, l| a.checked_add(*l));
        if rtotal.is_none_or(|t| remote_off + len > t) {
            return self.refused(
                peer,
                NaError::AccessDenied(format!(
                    "remote range {remote_off}+{len} is outside the region the descriptor describes"
                )),
            );
        }
        let (id, next) = {
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
            let llens: SmallVec<[u64; 4]> = region.segs.iter().map(|s| s.len).collect();
            let chunk = self.cfg.rma_chunk as u64;
            let pieces = wire::pieces(&llens, local_off, &rlens, remote_off, len, chunk);
            let posts: Posts = pieces
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
            let carried = len <= self.carry_max as u64;
            if self.provider.checked_rma && !posts.is_empty() && !carried {
                // One check of the whole region described for the transfers of it.
                let whole = remote.len.min(rtotal.unwrap_or(0));
                let key = (peer.0, remote.key, write);
                let next_id = || {
                    self.next_op
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                };
                let now = std::time::Instant::now();
                let joined = s
                    .checks
                    .join(key, (remote_off + len, whole), id, now, next_id);
                if let Some(op) = s.ops.get_mut(&id) {
                    op.shared = Some(joined.id());
                }
                let aw = Awaiting {
                    peer,
                    write,
                    carried: false,
                    posts,
                };
                let next = match joined {
                    Joined::Post(_) => Next::Post(aw.posts),
                    Joined::Wait(_) => {
                        s.awaiting.insert(id, aw);
                        Next::Wait
                    }
                    Joined::Ask(check) => {
                        s.awaiting.insert(id, aw);
                        s.stats.checks += 1;
                        let c = wire::Check {
                            op: check,
                            key: remote.key,
                            off: 0,
                            len: whole,
                            write,
                        };
                        let write_msg = |b: &mut Vec<u8>| {
                            wire::header_into(b, wire::Kind::Check, 0, &self.self_raw);
                            b.extend_from_slice(&c.encode());
                        };
                        // Checks of puts leave bundled when the caller holds the peer
                        // (`Plugin::hold`): over ofi+tcp, 64 puts of 8-32 KiB 1.5x
                        // faster so, 64 KiB-1 MiB level (qs-bw -d push, alternated with
                        // the build before, 3 rounds); held checks of gets made pulls of
                        // 64-128 KiB slower (their reads then start all at once, not as
                        // each grant comes), so those go at once. ofi+shm: level either
                        // way. (Measured with a check per transfer.)
                        let len = wire::header_len(&self.self_raw) + 33;
                        match write {
                            true => self.ask(peer, len, write_msg),
                            false => Next::Ask(built(len, write_msg)),
                        }
                    }
                };
                (id, next)
            } else if self.provider.checked_rma && !posts.is_empty() {
                // Carried: the owner performs it itself, one round trip.
                let check = wire::Check {
                    op: id,
                    key: remote.key,
                    off: remote_off,
                    len,
                    write,
                };
                let room = 33 + if write { len as usize } else { 0 };
                let write_msg = |b: &mut Vec<u8>| {
                    wire::header_into(b, wire::Kind::Carry, 0, &self.self_raw);
                    b.extend_from_slice(&check.encode());
                    if write {
                        for p in &posts {
                            // SAFETY: the piece lies in registered memory (checked above)
                            // that the caller keeps valid until this op completes, which
                            // it cannot before it is in `awaiting` (below, under the same
                            // state lock).
                            b.extend_from_slice(unsafe {
                                std::slice::from_raw_parts(p.local as *const u8, p.len)
                            });
                        }
                    }
                };
                // Carried transfers leave bundled when the caller holds the peer, written
                // straight into the bundle.
                let next = self.ask(peer, wire::header_len(&self.self_raw) + room, write_msg);
                let aw = Awaiting {
                    peer,
                    write,
                    carried: true,
                    posts,
                };
                s.awaiting.insert(id, aw);
                (id, next)
            } else {
                (id, Next::Post(posts))
            }
        };
        match next {
            Next::Wait => {}
            Next::Post(posts) => self.post_pieces(id, peer, write, posts)?,
            Next::Held(full) => self.send_bundles(peer.0, full),
            Next::Ask(ask) => {
                if let Err(e) = self.send_control(peer.0, ask) {
                    {
                        let mut s = lock(&self.state);
                        s.awaiting.remove(&id);
                        // Transfers that joined its check meanwhile fail with it (this one
                        // is not reported: the caller gets the error).
                        if let Some(c) = s.ops.get(&id).and_then(|o| o.shared) {
                            self.fail_asked(&mut s, c, e.clone());
                            s.checks.leave(c);
                        }
                    }
                    self.forget_op(id);
                    return Err(e);
                }
            }
        }
        Ok(OpId(id))
    }

    /// A check or carried transfer of at most `len` bytes, which `write` writes: into the
    /// bundle held for `peer`, if it is held, else a message of its own.
    fn ask(&self, peer: PeerId, len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Next {
        match self.held_with(peer.0, len, write) {
            Ok(full) => Next::Held(full),
            Err(write) => Next::Ask(built(len, write)),
        }
    }

    /// Completes `id`, none of whose pieces is posted (with `e` if given).
    pub(crate) fn finish_now(&self, id: u64, e: Option<NaError>) {
        self.finish_locked(&mut lock(&self.state), id, e);
    }

    /// [`Self::finish_now`] under the state lock.
    pub(crate) fn finish_locked(&self, s: &mut State, id: u64, e: Option<NaError>) {
        if let Some(op) = s.ops.get_mut(&id) {
            op.parts = 0;
            if let Some(e) = e {
                op.error.get_or_insert(e);
            }
        }
        self.finish_if_done(s, id);
    }

    /// Queues the pieces of `id` and posts as many as the window allows. Pieces of all
    /// transfers share one window of bytes in flight, so that messages (small RPCs) queued
    /// behind them on the same connection wait for at most a window's worth of data.
    pub(crate) fn post_pieces(
        &self,
        id: u64,
        peer: PeerId,
        write: bool,
        posts: Posts,
    ) -> NaResult<()> {
        if posts.is_empty() {
            self.finish_now(id, None);
            return Ok(());
        }
        {
            let mut s = lock(&self.state);
            for p in posts {
                s.rma_queue.push_back(Queued {
                    id,
                    peer,
                    write,
                    post: p,
                });
            }
            self.queued
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.pump();
        Ok(())
    }

    /// Posts queued pieces while the window has room. A piece that cannot be posted fails
    /// its operation (which completes once its posted pieces return).
    pub(crate) fn pump(&self) {
        if self.pumping.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        self.pump_inner();
        self.pumping
            .store(false, std::sync::atomic::Ordering::Release);
    }

    fn pump_inner(&self) {
        if !self.queued.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        loop {
            let q = {
                let mut s = lock(&self.state);
                if s.rma_inflight >= self.rma_window {
                    return;
                }
                let Some(q) = s.rma_queue.pop_front() else {
                    return;
                };
                if s.ops
                    .get(&q.id)
                    .is_none_or(|o| o.reported || o.error.is_some())
                {
                    // Canceled or failed meanwhile: this piece is never posted.
                    drop(s);
                    self.part_done(q.id, Err(NaError::Canceled));
                    continue;
                }
                s.rma_inflight += q.post.len;
                q
            };
            match self.post_one(&q) {
                Ok(()) => {}
                Err(NaError::Exhausted(_)) => {
                    // The provider's queue is full (a slow or dead peer): retry on a later
                    // pass rather than block progress (liveness checks must keep running).
                    let mut s = lock(&self.state);
                    s.rma_inflight -= q.post.len;
                    s.rma_queue.push_front(q);
                    return;
                }
                Err(e) => {
                    lock(&self.state).rma_inflight -= q.post.len;
                    self.part_done(q.id, Err(self.as_seen(q.peer.0, e)));
                }
            }
        }
    }

    fn post_one(&self, q: &Queued) -> NaResult<()> {
        let (id, peer, write, p) = (q.id, q.peer, q.write, &q.post);
        let ctx = Ctx::new(What::Rma(id, p.len), Vec::new());
        {
            let mut s = lock(&self.state);
            s.live.insert(ctx as usize);
            if let Some(op) = s.ops.get_mut(&id) {
                op.ctxs.push(ctx as usize);
            }
        }
        // One try: on -FI_EAGAIN the piece goes back to the queue (see `pump_inner`).
        let r = self.post_once(if write { "fi_write" } else { "fi_read" }, || unsafe {
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
        if r.is_err() {
            let mut s = lock(&self.state);
            s.live.remove(&(ctx as usize));
            if let Some(op) = s.ops.get_mut(&id) {
                op.ctxs.retain(|c| *c != ctx as usize);
            }
            // SAFETY: not posted; libfabric holds no reference.
            drop(unsafe { Box::from_raw(ctx) });
        }
        r
    }

    /// An operation on `peer` that completes at once with `e`.
    fn refused(&self, peer: PeerId, e: NaError) -> NaResult<OpId> {
        let id = {
            let mut s = lock(&self.state);
            self.fi_addr(&s, peer)?;
            self.new_op(&mut s, peer, OpKind::Rma, 0)
        };
        self.finish_now(id, Some(e));
        Ok(OpId(id))
    }
}

/// A message of at most `len` bytes, which `write` writes.
fn built(len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = na::buf::take(len);
    write(&mut b);
    b
}
