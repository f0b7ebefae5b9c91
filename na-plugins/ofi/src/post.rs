//! Posting messages to the provider without blocking: a post the provider refuses for now
//! (`-FI_EAGAIN`: its queue, or the peer's, is full) joins a backlog that progress retries
//! in order, so no caller waits inside a post for completions only another party (another
//! engine of the same thread, a slow peer) can make. While the backlog holds anything,
//! new posts join it behind the older ones: sends to a peer leave in the order they were
//! made. A backlogged post fails when its peer is certainly gone (checked by progress while
//! it waits at the front: every 5 ms by pid, every 250 ms by a connection attempt) or
//! after 10 s, with its operation; canceling the operation or losing the peer drops it
//! unposted. A pool receive waits as long as it takes (the pool must not shrink).
//!
//! Also here: receive buffers of the unexpected pool, and sends (untagged into a peer's
//! pool, tagged to an expected receive: see [`crate::wire`] for why).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libfabric_sys as fi;
use na::{NaError, NaResult};
use smallvec::SmallVec;

use crate::fabric;
use rustc_hash::FxHashMap;

use crate::bundler::Bundler;
use crate::plugin::{Ctx, Held, OfiPlugin, Peer, State, What, lock};
use crate::wire::{self, Kind};

/// How long a post may wait in the backlog.
const GIVE_UP: Duration = Duration::from_secs(10);

/// How often the front of the backlog checks whether its peer is gone: by its pid (shm),
/// or by a connection attempt to its port (tcp, sockets: not every 5 ms).
const DEATH_CHECK: Duration = Duration::from_millis(5);
const DEATH_CHECK_CONNECT: Duration = Duration::from_millis(250);

/// Where a message goes at its peer.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Route {
    /// Untagged, into the peer's pool of unexpected receives (header first).
    Pool,
    /// Tagged, to the receive the peer posted for this tag.
    Expected(u64),
}

/// One message post.
pub(crate) enum Post {
    /// Injected (no completion): the provider copies the bytes when it takes them.
    Inject {
        peer: u64,
        route: Route,
        buf: Vec<u8>,
    },
    /// Sent with a completion; the context owns the bytes.
    Send { peer: u64, route: Route, ctx: usize },
    /// A tagged receive for an expected message.
    Recv { tag: u64, ctx: usize },
    /// A receive of the unexpected pool.
    Pool { ctx: usize },
}

impl Post {
    /// Gives an injected message's buffer back for the thread's next message (the
    /// provider copied it).
    fn recycle(self) {
        if let Post::Inject { buf, .. } = self {
            na::buf::give(buf);
        }
    }

    fn peer(&self) -> Option<u64> {
        match self {
            Post::Inject { peer, .. } | Post::Send { peer, .. } => Some(*peer),
            Post::Recv { .. } | Post::Pool { .. } => None,
        }
    }

    fn ctx(&self) -> Option<usize> {
        match self {
            Post::Inject { .. } => None,
            Post::Send { ctx, .. } | Post::Recv { ctx, .. } | Post::Pool { ctx } => Some(*ctx),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Post::Inject { .. } => "fi_inject",
            Post::Send { .. } => "fi_send",
            Post::Recv { .. } => "fi_trecv",
            Post::Pool { .. } => "fi_recv(unexpected pool)",
        }
    }
}

/// A post waiting for room at the provider.
pub(crate) struct Backlogged {
    /// What it is for: a part of a user operation, a quiet message, a control message or
    /// a pool receive.
    what: What,
    post: Post,
    /// Its number in the backlog (to know it again after the state lock was let go).
    seq: u64,
    /// When it was backlogged, and when its peer was last checked.
    since: Instant,
    checked: Instant,
}

/// What became of a post.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Posted {
    /// The provider took it.
    Now,
    /// It waits in the backlog; its outcome reaches its operation (a quiet message's
    /// failure: the loss of its peer).
    Later,
}

impl OfiPlugin {
    /// Posts `post` (for `what`: a part of a user operation, a quiet message...) now, or
    /// backlogs it if the provider's queue is full or older posts wait. An error is the
    /// provider's refusal of a first try: the caller still owns the post's context.
    pub(crate) fn submit(&self, what: What, post: Post) -> NaResult<Posted> {
        if !self.backlogged.load(Ordering::SeqCst) {
            match self.post_now(&post) {
                Err(NaError::Exhausted(_)) => {}
                Err(e) => return Err(post.peer().map_or(e.clone(), |p| self.as_seen(p, e))),
                Ok(()) => {
                    post.recycle();
                    return Ok(Posted::Now);
                }
            }
        }
        let now = Instant::now();
        {
            let mut s = lock(&self.state);
            s.backlog_seq += 1;
            s.stats.backlogged += 1;
            let b = Backlogged {
                what,
                post,
                seq: s.backlog_seq,
                since: now,
                checked: now,
            };
            s.backlog.push_back(b);
            self.backlogged.store(true, Ordering::SeqCst);
        }
        self.drain_backlog(false);
        if self.backlogged.load(Ordering::SeqCst) {
            // A progress thread asleep on the queue's wait fd may see no completion to wake
            // it (a connection being made): it looks at the backlog at its next pass.
            na::Plugin::wake(self);
        }
        Ok(Posted::Later)
    }

    /// Posts what the backlog holds, in order, until the provider refuses again. One
    /// thread at a time; progress calls it every pass, with `expire`: only then does a
    /// post waiting at the front fail for its dead peer or its age (a sender never waits
    /// on a death check, which may be a connection attempt).
    pub(crate) fn drain_backlog(&self, expire: bool) {
        loop {
            if !self.backlogged.load(Ordering::SeqCst) || self.draining.swap(true, Ordering::SeqCst)
            {
                return;
            }
            let blocked = self.drain_inner(expire);
            self.draining.store(false, Ordering::SeqCst);
            // Emptied: a post backlogged after the last look but before `draining` was
            // cleared found another thread draining; look again. Blocked: the next pass.
            if blocked {
                return;
            }
        }
    }

    /// The body of [`Self::drain_backlog`]; returns whether the provider refused again.
    fn drain_inner(&self, expire: bool) -> bool {
        loop {
            // The front is posted and taken out under one hold of the state lock: a
            // cancel cannot free its context between, and a post made meanwhile sees the
            // backlog non-empty and goes behind it.
            let (b, r) = {
                let mut s = lock(&self.state);
                let State { backlog, peers, .. } = &mut *s;
                let Some(front) = backlog.front_mut() else {
                    self.backlogged.store(false, Ordering::SeqCst);
                    return false;
                };
                let r = match self.post_now(&front.post) {
                    Err(NaError::Exhausted(_)) if !expire => return true,
                    Err(NaError::Exhausted(_)) => match expired(front, peers, self.check_every()) {
                        Expiry::Waits => return true,
                        Expiry::Now(e) => Err(e),
                        Expiry::IfDead(seq, raw, e) => {
                            drop(s);
                            if !crate::provider::certainly_dead(self.provider.death_check, &raw) {
                                return true;
                            }
                            s = lock(&self.state);
                            if s.backlog.front().is_none_or(|b| b.seq != seq) {
                                continue;
                            }
                            Err(e)
                        }
                    },
                    r => r,
                };
                (s.backlog.pop_front(), r)
            };
            if let Some(b) = b {
                self.posted_late(b, r);
            }
        }
    }

    fn check_every(&self) -> Duration {
        match self.provider.death_check {
            crate::provider::DeathCheck::Connect => DEATH_CHECK_CONNECT,
            _ => DEATH_CHECK,
        }
    }

    /// A backlogged post left the backlog: posted (`Ok`), refused, or expired.
    fn posted_late(&self, b: Backlogged, r: NaResult<()>) {
        match (r, &b.post) {
            (Ok(()), Post::Inject { .. }) => {
                if let Some(op) = b.what.op() {
                    self.part_done(op, Ok(0));
                }
                b.post.recycle();
            }
            (Ok(()), _) => {}
            (Err(e), Post::Pool { .. }) => {
                tracing::error!("ofi: cannot repost an unexpected receive: {e}");
            }
            (Err(e), post) => {
                let e = post.peer().map_or(e.clone(), |p| self.as_seen(p, e));
                if let Some(ctx) = post.ctx() {
                    self.free_unposted(b.what.op(), ctx);
                }
                match b.what {
                    What::Op(op) => self.part_done(op, Err(e)),
                    // Its peer is certainly gone, or its queue stayed full for `GIVE_UP`:
                    // the message is dropped, and what waits on it (a call's answer, a
                    // client's) would hang until its timeout; the contract makes an
                    // undeliverable quiet message the peer's loss, so it is.
                    What::Quiet(peer) => self.peer_lost(peer, e),
                    _ => tracing::debug!("ofi: control message not sent: {e}"),
                }
            }
        }
    }

    /// Frees a context libfabric never took, and forgets it in its operation.
    pub(crate) fn free_unposted(&self, op: Option<u64>, ctx: usize) {
        let mut s = lock(&self.state);
        forget_ctx(&mut s, op, ctx);
    }

    /// One try of a post; `-FI_EAGAIN` is `Exhausted`.
    fn post_now(&self, post: &Post) -> NaResult<()> {
        let (ep, none) = (self.ep.0, std::ptr::null_mut());
        let buf_of = |ctx: usize| {
            let ctx = ctx as *mut Ctx;
            // SAFETY: a backlogged or fresh context is live (in `live`) and libfabric holds
            // none of it until this post succeeds; its buffer is not touched meanwhile.
            unsafe { ((*ctx).buf.as_mut_ptr(), (*ctx).buf.len(), ctx) }
        };
        let rc = match post {
            Post::Inject { peer, route, buf } => {
                let (p, n) = (buf.as_ptr().cast(), buf.len());
                match route {
                    // SAFETY: buf is valid for its length during the call; inject copies it.
                    Route::Pool => unsafe { fi::fi_inject(ep, p, n, *peer) },
                    // SAFETY: as above.
                    Route::Expected(tag) => unsafe { fi::fi_tinject(ep, p, n, *peer, *tag) },
                }
            }
            Post::Send { peer, route, ctx } => {
                let (p, n, c) = buf_of(*ctx);
                // SAFETY: as `buf_of`: the tail is not touched either until the completion.
                let tail = unsafe { &(*c).tail };
                if tail.is_empty() {
                    match route {
                        // SAFETY: the context and its buffer live until its completion.
                        Route::Pool => unsafe {
                            fi::fi_send(ep, p.cast(), n, none, *peer, c.cast())
                        },
                        // SAFETY: as above.
                        Route::Expected(tag) => unsafe {
                            fi::fi_tsend(ep, p.cast(), n, none, *peer, *tag, c.cast())
                        },
                    }
                } else {
                    let piece = |base: *const u8, len| libc::iovec {
                        iov_base: base as *mut _,
                        iov_len: len,
                    };
                    let iov = [piece(p, n), piece(tail.as_ptr(), tail.len())];
                    let (v, no_desc) = (iov.as_ptr().cast(), std::ptr::null_mut());
                    match route {
                        // SAFETY: both pieces live until the completion; the provider
                        // copies the iovec array during the call.
                        Route::Pool => unsafe { fi::fi_sendv(ep, v, no_desc, 2, *peer, c.cast()) },
                        // SAFETY: as above.
                        Route::Expected(tag) => unsafe {
                            fi::fi_tsendv(ep, v, no_desc, 2, *peer, *tag, c.cast())
                        },
                    }
                }
            }
            Post::Recv { tag, ctx } => {
                let c = *ctx as *mut Ctx;
                // The receive's room is its buffer's capacity, never zeroed: only the
                // bytes the provider writes are read (`finish_part_locked`).
                // SAFETY: as `buf_of`; the provider writes the spare capacity through a
                // raw pointer, no reference to it exists meanwhile.
                let (p, room) = unsafe { ((*c).buf.as_mut_ptr(), (*c).buf.capacity()) };
                // (Not past the largest message: the allocator may round the room up.)
                let n = room.min(self.max_eager);
                let any = fi::FI_ADDR_UNSPEC;
                // SAFETY: as above.
                unsafe { fi::fi_trecv(ep, p.cast(), n, none, any, *tag, 0, c.cast()) }
            }
            Post::Pool { ctx } if self.multi_recv => {
                let (p, n, c) = buf_of(*ctx);
                let iov = libc::iovec {
                    iov_base: p.cast(),
                    iov_len: n,
                };
                let msg = fi::fi_msg {
                    msg_iov: (&raw const iov).cast(),
                    desc: std::ptr::null_mut(),
                    iov_count: 1,
                    addr: fi::FI_ADDR_UNSPEC,
                    context: c.cast(),
                    data: 0,
                };
                // SAFETY: as above; the provider copies `msg` and its iovec during the call.
                unsafe { fi::fi_recvmsg(ep, &msg, fi::FI_MULTI_RECV as u64) }
            }
            Post::Pool { ctx } => {
                let (p, n, c) = buf_of(*ctx);
                let any = fi::FI_ADDR_UNSPEC;
                // SAFETY: as above.
                unsafe { fi::fi_recv(ep, p.cast(), n, none, any, c.cast()) }
            }
        };
        // A receive queue at its size: shm 1.17 answers `-FI_ENOMEM`, not `-FI_EAGAIN`
        // (the 1 024th call in flight failed, `qs-rate -t ofi+shm -x 1024`); the receive
        // waits in the backlog for room like a send.
        let full = matches!(post, Post::Recv { .. } | Post::Pool { .. })
            && rc == -(fi::FI_ENOMEM as isize);
        self.post_once(post.what(), || {
            if full { -(fi::FI_EAGAIN as isize) } else { rc }
        })
    }

    /// One post; `-FI_EAGAIN` is `Exhausted`.
    pub(crate) fn post_once(&self, what: &str, mut f: impl FnMut() -> isize) -> NaResult<()> {
        let rc = f();
        if rc == 0 {
            Ok(())
        } else if rc == -(fi::FI_EAGAIN as isize) {
            Err(NaError::Exhausted(format!("{what}: provider queue full")))
        } else {
            Err(fabric::error(what, rc as i64))
        }
    }

    /// Posts a receive of the unexpected pool (its context is in `live` for good).
    pub(crate) fn post_pool(&self, ctx: *mut Ctx) -> NaResult<()> {
        self.pool_posts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.submit(What::Pool, Post::Pool { ctx: ctx as usize })
            .map(drop)
    }

    /// Sends a control message (header included) into `peer`'s pool, injected when it
    /// fits.
    pub(crate) fn send_control(&self, peer: u64, buf: Vec<u8>) -> NaResult<bool> {
        self.send_to(peer, Route::Pool, buf, What::Control, true)
    }

    /// Writes a requester's control message of at most `len` bytes (a carried transfer,
    /// a check of puts) straight into the bundle that waits in a hold of `peer`
    /// (`Plugin::hold`), to leave with the rest: returns the bundles that filled, to be
    /// sent now (with no lock held). `write` is given back if `peer` is not held (or the
    /// message would not fit a bundle). An owner's answers never wait in a hold: a
    /// bundle's go back together (see `unbundle`).
    pub(crate) fn held_with<W: FnOnce(&mut Vec<u8>)>(
        &self,
        peer: u64,
        len: usize,
        write: W,
    ) -> Result<Vec<Vec<u8>>, W> {
        let mut held = lock(&self.held);
        match held.get_mut(&peer) {
            Some(h) if h.out.fits(len) => {
                h.out.push_with(&self.self_raw, len, write);
                Ok(h.out.take_full())
            }
            _ => Err(write),
        }
    }

    /// Holds (`on`) or lets go of control messages to `peer` (`Plugin::hold`); the last
    /// release sends what was held, bundled.
    pub(crate) fn hold_control(&self, peer: u64, on: bool) {
        let out = {
            let mut held = lock(&self.held);
            let h = held.entry(peer).or_insert_with(|| Held {
                holds: 0,
                out: Bundler::new(self.max_eager),
            });
            if on {
                h.holds += 1;
                return;
            }
            h.holds = h.holds.saturating_sub(1);
            if h.holds > 0 {
                return;
            }
            match held.remove(&peer) {
                Some(h) => h.out.finish(),
                None => return,
            }
        };
        self.send_bundles(peer, out);
    }

    /// Sends bundles of control messages to `peer`. If one cannot be sent, the transfers
    /// it carried or checked fail now (not at their timeout).
    pub(crate) fn send_bundles(&self, peer: u64, bundles: Vec<Vec<u8>>) {
        for b in bundles {
            // Read before the bundle goes (it may be freed by the post); a few header
            // reads per message against the copy of its bytes.
            let asked: SmallVec<[u64; 16]> = wire::parse(&b)
                .ok()
                .and_then(|p| wire::unbundle(p.data).ok())
                .into_iter()
                .flatten()
                .filter_map(asked)
                .collect();
            self.bundles_sent.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.send_control(peer, b) {
                tracing::debug!("ofi: held control messages not sent: {e}");
                let mut s = lock(&self.state);
                for id in asked {
                    self.fail_asked(&mut s, id, e.clone());
                }
            }
        }
    }

    /// Sends `buf` to `peer` by `route`: injected (no completion) when `inject` allows and
    /// it fits, else with a context that owns the buffer (`inject` false asks for a
    /// completion even for a small message: a tracked answer, `send_expected`, fails its
    /// operation if it cannot be delivered). Returns whether the operation (`what`)
    /// completes later (a completion or the backlog); false: an injected send is done.
    pub(crate) fn send_to(
        &self,
        peer: u64,
        route: Route,
        buf: Vec<u8>,
        what: What,
        inject: bool,
    ) -> NaResult<bool> {
        if inject && buf.len() <= self.inject {
            let posted = self.submit(what, Post::Inject { peer, route, buf })?;
            return Ok(posted == Posted::Later);
        }
        self.send_ctx(peer, route, Ctx::new(what, buf), what)
    }

    /// Sends a message as `OfiPlugin::message` made it (head, tail, route): with a tail,
    /// the two as one message gathered by the provider (`fi_sendv`), with a completion
    /// (the tail, a request's payload, is not copied behind its header); else as
    /// [`OfiPlugin::send_to`].
    pub(crate) fn send_made(
        &self,
        peer: u64,
        (head, tail, route): (Vec<u8>, Vec<u8>, Route),
        what: What,
        inject: bool,
    ) -> NaResult<bool> {
        if tail.is_empty() {
            return self.send_to(peer, route, head, what, inject);
        }
        let ctx = Ctx::new(what, head);
        // SAFETY: the context is new and ours alone until posted.
        unsafe { (*ctx).tail = tail };
        self.send_ctx(peer, route, ctx, what)
    }

    /// Posts a send of `ctx`, which owns its bytes, with a completion.
    fn send_ctx(&self, peer: u64, route: Route, ctx: *mut Ctx, what: What) -> NaResult<bool> {
        let op = what.op();
        {
            let mut s = lock(&self.state);
            s.live.insert(ctx as usize);
            if let Some(op) = op.and_then(|id| s.ops.get_mut(&id)) {
                op.ctxs.push(ctx as usize);
            }
        }
        let ctx = ctx as usize;
        match self.submit(what, Post::Send { peer, route, ctx }) {
            Ok(_) => Ok(true),
            Err(e) => {
                self.free_unposted(op, ctx);
                Err(e)
            }
        }
    }

    /// Posts the receive of an expected message for operation `op`.
    pub(crate) fn post_recv(&self, op: u64, tag: u64, ctx: *mut Ctx) -> NaResult<()> {
        let ctx = ctx as usize;
        self.submit(What::Op(op), Post::Recv { tag, ctx })
            .map(drop)
            .inspect_err(|_| self.free_unposted(Some(op), ctx))
    }
}

/// Whether a front post the provider refused again must fail.
enum Expiry {
    /// It waits on.
    Waits,
    /// It fails with this.
    Now(NaError),
    /// It fails with this if its peer (at this raw address) is certainly gone: a check
    /// that may take a while (a connection attempt), made outside the state lock.
    IfDead(u64, Vec<u8>, NaError),
}

/// Whether the waiting front post `b` must fail now: it waited too long, or its peer may
/// be gone (looked at every `check_every`). A pool receive never fails: the pool would
/// shrink for good.
fn expired(b: &mut Backlogged, peers: &FxHashMap<u64, Peer>, check_every: Duration) -> Expiry {
    if matches!(b.post, Post::Pool { .. }) {
        return Expiry::Waits;
    }
    let (now, what) = (Instant::now(), b.post.what());
    if now.duration_since(b.since) > GIVE_UP {
        let secs = GIVE_UP.as_secs();
        return Expiry::Now(NaError::Exhausted(format!(
            "{what}: the provider's queue stayed full for {secs} s"
        )));
    }
    if now.duration_since(b.checked) < check_every {
        return Expiry::Waits;
    }
    b.checked = now;
    match b.post.peer().and_then(|p| peers.get(&p)) {
        Some(p) => Expiry::IfDead(
            b.seq,
            p.raw.clone(),
            NaError::Unreachable(format!("{what}: the peer is gone and its queue is full")),
        ),
        None => Expiry::Waits,
    }
}

/// Drops the backlogged posts of operation `id` (canceled, or its peer lost), freeing their
/// contexts; returns how many there were (each was one of its parts).
pub(crate) fn drop_backlogged(s: &mut State, id: u64) -> u32 {
    let mut gone = Vec::new();
    s.backlog.retain(|b| {
        let mine = b.what.op() == Some(id);
        if mine {
            gone.push(b.post.ctx());
        }
        !mine
    });
    // (The drainer posts and removes the front under the state lock held here: what is
    // still in the backlog was never posted.)
    for ctx in gone.iter().flatten() {
        forget_ctx(s, Some(id), *ctx);
    }
    gone.len() as u32
}

/// Drops the backlogged control and quiet messages to `peer` (lost): nobody waits for
/// them, and at the front they would hold back the posts behind them.
pub(crate) fn drop_control_to(s: &mut State, peer: u64) {
    let mut gone = Vec::new();
    s.backlog.retain(|b| {
        let mine = b.what.op().is_none() && b.post.peer() == Some(peer);
        if mine {
            gone.extend(b.post.ctx());
        }
        !mine
    });
    for ctx in gone {
        forget_ctx(s, None, ctx);
    }
}

fn forget_ctx(s: &mut State, op: Option<u64>, ctx: usize) {
    if !s.live.remove(&ctx) {
        return;
    }
    if let Some(o) = op.and_then(|id| s.ops.get_mut(&id)) {
        o.ctxs.retain(|c| *c != ctx);
    }
    // SAFETY: made by Ctx::new and never taken by libfabric (its post failed or never
    // happened); removed from `live` just now, so freed once.
    drop(unsafe { Box::from_raw(ctx as *mut Ctx) });
}

/// The transfer a control message asks the owner about (a carried transfer or a check).
fn asked(m: &[u8]) -> Option<u64> {
    match wire::parse(m) {
        Ok(p) if p.kind == Kind::Carry => wire::decode_carry(p.data).ok().map(|c| c.0.op),
        Ok(p) if p.kind == Kind::Check => wire::Check::decode(p.data).ok().map(|c| c.op),
        _ => None,
    }
}
