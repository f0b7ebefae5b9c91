//! Progress: reading the completion queue, finishing operations, answering liveness
//! probes, sleeping on the queue's wait fd, and cancellation (probing is in `liveness`).

use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use libfabric_sys as fi;
use na::{Event, NaError, NaResult, PeerId};

use crate::bundler::Bundler;
use crate::fabric;
use crate::plugin::{Ctx, OfiPlugin, OpKind, Peer, RECV_BUFS_KEPT, State, What, lock};
use crate::poll::{IDLE_POLL, Poll};
use crate::post::Route;
use crate::post::drop_backlogged;
use crate::slack::{POLL_SLACK_NS, TightSlack};
use crate::wire::{self, Kind};

const BATCH: usize = 32;

/// Dropped peer messages are logged at `warn` at most this often (`drop_message`).
const DROP_WARN_EVERY: Duration = Duration::from_secs(1);

/// A spinning progress pass looks at liveness (and the clock) once in this many.
const LIVENESS_EVERY: u64 = 64;

impl OfiPlugin {
    /// Reads and handles every completion queued now. With `wait_turn` false, returns at
    /// once when another thread is reading the queue.
    pub(crate) fn poll_cq(&self, wait_turn: bool) {
        let _turn = if wait_turn {
            lock(&self.cq_lock)
        } else {
            match self.cq_lock.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            }
        };
        // Not zeroed: 1.5 KiB of `memset` at every poll, empty ones included, cost about
        // as much as the read (callgrind of `qs-rate -c -t ofi+shm`).
        let mut entries = [const { MaybeUninit::<fi::fi_cq_tagged_entry>::uninit() }; BATCH];
        loop {
            // SAFETY: entries has room for BATCH tagged entries, the CQ's format.
            let n = unsafe { fi::fi_cq_read(self.cq.0, entries.as_mut_ptr().cast(), BATCH) };
            if n > 0 {
                // Anything completed (an owner's grant request included): the peer is
                // busy with us, so poll again soon.
                self.active();
                for e in &entries[..(n as usize).min(BATCH)] {
                    // SAFETY: fi_cq_read wrote its first `n` (at most BATCH) entries.
                    let e = unsafe { e.assume_init_ref() };
                    self.on_completion(e.op_context.cast(), Ok((e.len, e.tag)), e.buf, e.flags);
                }
                if (n as usize) < BATCH {
                    break;
                }
                continue;
            }
            if n == -(fi::FI_EAVAIL as isize) {
                let mut err = fi::fi_cq_err_entry::default();
                // SAFETY: reads one error entry into a local.
                let r = unsafe { fi::fi_cq_readerr(self.cq.0, &mut err, 0) };
                if r == 1 {
                    let e = fabric::error("completion", err.err as i64);
                    tracing::debug!(
                        "ofi error completion: {e} (provider errno {})",
                        err.prov_errno
                    );
                    self.on_completion(err.op_context.cast(), Err(e), err.buf, err.flags);
                }
                continue;
            }
            if n != -(fi::FI_EAGAIN as isize) {
                tracing::warn!("fi_cq_read: {}", fabric::strerror(n as i64));
            }
            break;
        }
        drop(_turn);
        // Granted transfers and queued pieces are posted outside the queue lock: posting
        // may need progress.
        let answers = std::mem::take(&mut *lock(&self.answers));
        for a in answers {
            self.on_answer(a);
        }
        self.pump();
        self.drain_backlog(true);
        self.send_releases();
    }

    /// A completion of `ctx`; `at` and `flags` are the entry's (a pool receive's message
    /// lies there).
    fn on_completion(
        &self,
        ctx: *mut Ctx,
        r: Result<(usize, u64), NaError>,
        at: *mut std::ffi::c_void,
        flags: u64,
    ) {
        if ctx.is_null() {
            return;
        }
        // SAFETY: every context we post is a live Ctx (tracked in `live`); libfabric returns
        // it exactly once.
        // (A pool context's `what` never changes; others may be rewritten by `abandon`
        // under the state lock, so they are read under it.)
        if unsafe { (*ctx).what } == What::Pool {
            self.on_pool(ctx, r.map(|(len, _)| len), at, flags);
            return;
        }
        let mut s = lock(&self.state);
        s.live.remove(&(ctx as usize));
        // SAFETY: as above; this completion is its last use by libfabric.
        let mut owned = unsafe { Box::from_raw(ctx) };
        // (Its operation forgets it in `finish_part`; until then it sits in this thread's
        // spares, posted nowhere, and a cancel by its address finds nothing.)
        let (what, buf) = (owned.what, std::mem::take(&mut owned.buf));
        na::buf::give(std::mem::take(&mut owned.tail));
        Ctx::recycle(owned);
        // An operation's part is finished under the same lock (one per completion); a
        // receive's message is copied out of the buffer there.
        let len = r.map(|(len, _)| len);
        match what {
            What::Op(id) => self.finish_part_locked(s, id, len, buf, ctx as usize),
            What::Rma(id, n) => {
                s.rma_inflight = s.rma_inflight.saturating_sub(n);
                self.finish_part_locked(s, id, len, Vec::new(), ctx as usize);
            }
            What::Ping(peer) => {
                drop(s);
                if let Err(e) = len
                    && e != NaError::Canceled
                {
                    self.peer_lost(peer, e);
                }
            }
            // Nobody cancels a quiet message: the provider canceled what it could not
            // deliver (rxm on a lost connection), as for an operation's send.
            What::Quiet(peer) => {
                drop(s);
                na::buf::give(buf);
                if let Err(e) = len {
                    self.peer_lost(peer, undelivered(e));
                }
            }
            // A sent control message's buffer serves this thread's next one.
            What::Control => {
                drop(s);
                na::buf::give(buf);
            }
            What::Pool => {}
        }
    }

    /// One fabric completion of operation `id` (or an injected send, which has none).
    pub(crate) fn part_done(&self, id: u64, r: NaResult<usize>) {
        self.finish_part(id, r, Vec::new(), 0);
    }

    /// One completion of operation `id`; `ctx`, the address of its context (0: none).
    fn finish_part(&self, id: u64, r: NaResult<usize>, data: Vec<u8>, ctx: usize) {
        self.finish_part_locked(lock(&self.state), id, r, data, ctx);
    }

    /// [`Self::finish_part`] with the state lock taken (and let go here).
    fn finish_part_locked(
        &self,
        mut s: std::sync::MutexGuard<'_, State>,
        id: u64,
        r: NaResult<usize>,
        mut data: Vec<u8>,
        ctx: usize,
    ) {
        let mut lost = None;
        let Some(op) = s.ops.get_mut(&id) else { return };
        // The operation forgets its completed context: a cancel, or a lost peer, cancels
        // each of an operation's contexts by address, and this one's address is soon
        // another's (reused by this thread, or by the allocator): left in the list, it
        // would be canceled in that other operation's stead.
        if ctx != 0 {
            op.ctxs.retain(|c| *c != ctx);
        }
        op.parts = op.parts.saturating_sub(1);
        match r {
            Ok(len) => {
                if op.kind == OpKind::Recv {
                    // SAFETY: the receive was posted over the buffer's capacity, empty
                    // (`recv_expected`); the provider wrote the message's `len` bytes at
                    // its start.
                    unsafe { data.set_len(len.min(data.capacity())) };
                    op.data = na::buf::copy_of(&data);
                }
            }
            Err(e) => {
                // Unless the caller canceled (reported), see `undelivered`.
                let e = if !op.reported && op.error.is_none() {
                    undelivered(e)
                } else {
                    e
                };
                if matches!(e, NaError::Unreachable(_) | NaError::Disconnected(_)) {
                    lost = Some((op.peer, e.clone()));
                }
                op.error.get_or_insert(e);
            }
        }
        let peer = op.peer;
        let recv = op.kind == OpKind::Recv;
        if recv && op.error.is_none() {
            heard_from(&mut s, peer, true);
        }
        let sent =
            if recv && data.capacity() >= self.max_eager && s.recv_bufs.len() < RECV_BUFS_KEPT {
                data.clear();
                s.recv_bufs.push(data);
                None
            } else {
                (!recv).then_some(data)
            };
        self.finish_if_done(&mut s, id);
        drop(s);
        // A sent message's buffer serves this thread's next one.
        if let Some(b) = sent {
            na::buf::give(b);
        }
        if let Some((peer, e)) = lost {
            self.peer_lost(peer, e);
        }
    }

    /// Queues the `Done` of `id` once its last part completed.
    pub(crate) fn finish_if_done(&self, s: &mut State, id: u64) {
        let Some(op) = s.ops.get(&id) else { return };
        if op.parts > 0 {
            return;
        }
        let Some(op) = s.ops.remove(&id) else { return };
        if let Some(check) = op.shared
            && let Some(owner) = s.checks.leave(check)
        {
            self.release_later(s, owner, check);
        }
        if let Some(p) = s.peers.get_mut(&op.peer.0) {
            p.pending = p.pending.saturating_sub(1);
            if p.pending == 0 {
                p.probing = None;
            }
        }
        if !op.reported {
            let result = match op.error {
                Some(e) => Err(e),
                None => Ok(op.data),
            };
            self.push_event(Event::Done {
                op: na::OpId(id),
                result,
            });
        }
    }

    pub(crate) fn handle_unexpected(&self, msg: &[u8]) {
        let wire::Parsed {
            kind,
            tag,
            from,
            data,
        } = match wire::parse(msg) {
            Ok(x) => x,
            Err(e) => return self.drop_message(e),
        };
        let peer = {
            let mut s = lock(&self.state);
            match self.peer_for(&mut s, from) {
                Ok(p) => {
                    // Probes and their answers prove it alive, but do not keep it watched.
                    heard_from(&mut s, p, !matches!(kind, Kind::Ping | Kind::Pong));
                    p
                }
                Err(e) => {
                    return self
                        .drop_message(format_args!("from an address the provider refuses: {e}"));
                }
            }
        };
        if kind == Kind::Bundle {
            return self.unbundle(peer, from, data);
        }
        self.on_message(peer, kind, tag, data, None);
    }

    /// The control messages of a bundle from `peer` (at `from`), each handled as if it
    /// came alone; the answers they make go back bundled too (in as few messages as fit),
    /// at once: never held behind this side's own holds of the peer.
    fn unbundle(&self, peer: PeerId, from: &[u8], data: &[u8]) {
        let msgs = match wire::unbundle(data) {
            Ok(m) => m,
            Err(e) => return self.drop_message(e),
        };
        let mut answers = Bundler::new(self.max_eager);
        for m in msgs {
            match wire::parse(m) {
                // Only what a bundle is made of: each carried transfer, check or answer
                // makes at most one answer.
                Ok(p)
                    if p.from == from
                        && matches!(
                            p.kind,
                            Kind::Carry | Kind::Carried | Kind::Check | Kind::Grant
                        ) =>
                {
                    self.on_message(peer, p.kind, p.tag, p.data, Some(&mut answers))
                }
                _ => self.drop_message("a malformed bundled message"),
            }
        }
        for b in answers.finish() {
            self.bundles_sent.fetch_add(1, Relaxed);
            if let Err(e) = self.send_to(peer.0, Route::Pool, b, What::Control, true) {
                tracing::debug!("ofi: answers not sent: {e}");
            }
        }
    }

    /// Writes an owner's answer into `out` (a bundle's), or into a message of its own,
    /// returned for [`Self::send_answer`] once any lock `write` needs is let go: `write`
    /// appends the message (at most `len` bytes, its header included).
    fn answer(
        &self,
        out: Option<&mut Bundler>,
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Option<Vec<u8>> {
        match out {
            Some(out) => {
                out.push_with(&self.self_raw, len, write);
                None
            }
            None => {
                let mut msg = na::buf::take(len);
                write(&mut msg);
                Some(msg)
            }
        }
    }

    /// Sends an answer [`Self::answer`] returned (with the state lock not held).
    fn send_answer(&self, peer: PeerId, msg: Option<Vec<u8>>) {
        if let Some(m) = msg
            && let Err(e) = self.send_control(peer.0, m)
        {
            tracing::debug!("ofi: answer not sent: {e}");
        }
    }

    /// Handles one message from `peer`; the answer it makes goes to `out` if given.
    fn on_message(
        &self,
        peer: PeerId,
        kind: Kind,
        tag: u64,
        data: &[u8],
        out: Option<&mut Bundler>,
    ) {
        match kind {
            Kind::Request => self.push_event(Event::Unexpected {
                peer,
                tag,
                data: na::buf::copy_of(data),
            }),
            Kind::Ping => {
                let len = wire::header_len(&self.self_raw);
                let m = self.answer(None, len, |b| {
                    wire::header_into(b, Kind::Pong, 0, &self.self_raw)
                });
                self.send_answer(peer, m);
            }
            Kind::Pong => {}
            Kind::Check => {
                let c = match wire::Check::decode(data) {
                    Ok(c) => c,
                    Err(e) => return self.drop_message(e),
                };
                let ok = {
                    let mut s = lock(&self.state);
                    match s.mem.allowed(c.key, c.off, c.len, c.write) {
                        // A transfer the owner's provider may not see end: leased until
                        // the initiator releases it (or is lost).
                        Some(region) if self.leased_rma => s.leases.grant(peer.0, c.op, region),
                        r => r.is_some(),
                    }
                };
                let len = wire::header_len(&self.self_raw) + 9;
                let m = self.answer(out, len, |b| {
                    wire::header_into(b, Kind::Grant, 0, &self.self_raw);
                    b.extend_from_slice(&wire::encode_grant(c.op, ok));
                });
                self.send_answer(peer, m);
            }
            Kind::Carry => {
                let (c, bytes) = match wire::decode_carry(data) {
                    Ok(x) => x,
                    Err(e) => return self.drop_message(e),
                };
                let put = c.write.then_some(bytes);
                // A read whose answer would not fit in a message is refused like a bad
                // range (the initiator's cut-off is its own: any that fits is served).
                // Room for the bytes only once the read is allowed (a peer names `len`).
                let st = lock(&self.state);
                let ok =
                    c.len <= self.max_eager as u64 && st.mem.allows(c.key, c.off, c.len, c.write);
                let room = if ok && !c.write { c.len as usize } else { 0 };
                let len = wire::header_len(&self.self_raw) + 9 + room;
                // The bytes read go straight into the answer (in a bundle: in place).
                let m = self.answer(out, len, |b| {
                    wire::header_into(b, Kind::Carried, 0, &self.self_raw);
                    wire::encode_carried(b, c.op, |o| {
                        ok && st.mem.carry(c.key, c.off, c.len, put, o)
                    });
                });
                drop(st);
                self.send_answer(peer, m);
            }
            Kind::Grant => match wire::decode_grant(data) {
                Ok((op, ok)) => lock(&self.answers).push(crate::rma::Answer { peer, op, ok }),
                Err(e) => self.drop_message(e),
            },
            // The bytes go straight from the pool buffer into the caller's memory (they
            // need no post, so nothing waits for the queue's lock to be released).
            Kind::Carried => match wire::decode_carried(data) {
                Ok((op, ok, d)) => {
                    self.settle(&mut lock(&self.state), peer, op, ok, Some(d));
                }
                Err(e) => self.drop_message(e),
            },
            Kind::Release => match wire::decode_release(data) {
                Ok(ops) => {
                    let mut s = lock(&self.state);
                    for op in ops {
                        s.leases.release(peer.0, op);
                    }
                }
                Err(e) => self.drop_message(e),
            },
            Kind::Bundle => self.drop_message("a bundle inside a bundle"),
        }
    }

    /// A peer's message dropped for `why` (malformed, of another wire version, from an
    /// address the provider refuses): counted (`OfiStats::dropped`) and logged at `warn`
    /// at most once a second, the rest at `debug`: a peer that sends garbage cannot
    /// flood the log (an RDM endpoint has no connection to close on it).
    pub(crate) fn drop_message(&self, why: impl std::fmt::Display) {
        let n = self.dropped.fetch_add(1, Relaxed) + 1;
        let now = Instant::now();
        let mut last = lock(&self.drop_warned);
        if last.is_some_and(|t| now.duration_since(t) < DROP_WARN_EVERY) {
            tracing::debug!("ofi: dropped a message: {why}");
        } else {
            *last = Some(now);
            tracing::warn!("ofi: dropped a message: {why} ({n} dropped since the start)");
        }
    }

    /// Marks activity: the next idle polls (without a wait object) come soon after.
    pub(crate) fn active(&self) {
        if self.wait_fd.is_none() {
            self.poll.store(Poll::active().pack(), Relaxed);
        }
    }

    /// How long an idle poll sleeps now ([`Poll::step`]: a few µs after activity, 200 µs
    /// at most while the queue stays idle, then up to `OfiConfig::idle_poll_max`; 10 µs
    /// at most while operations are in flight). The step is taken on the state it read
    /// or not at all: activity marked meanwhile is never overwritten.
    fn backoff(&self) -> Duration {
        let busy = !lock(&self.state).ops.is_empty();
        let mut now = self.poll.load(Relaxed);
        loop {
            let (sleep, next) = Poll::unpack(now).step(busy, self.cfg.idle_poll_max);
            match self
                .poll
                .compare_exchange_weak(now, next.pack(), Relaxed, Relaxed)
            {
                Ok(_) => return sleep,
                Err(seen) => now = seen,
            }
        }
    }

    /// The body of `Plugin::progress`.
    pub(crate) fn drive(&self, timeout: Option<Duration>) -> NaResult<()> {
        if timeout == Some(Duration::ZERO) {
            // A spinning pass: the clock (for liveness) only once in a while.
            self.poll_cq(false);
            if self
                .spins
                .fetch_add(1, Relaxed)
                .is_multiple_of(LIVENESS_EVERY)
            {
                self.liveness_tick(Instant::now());
                // (Releases of transfers the check abandoned.)
                self.send_releases();
            }
            return Ok(());
        }
        let end = timeout.map(|t| Instant::now() + t);
        loop {
            self.poll_cq(false);
            let now = Instant::now();
            let next_check = self.liveness_tick(now);
            self.send_releases();
            if !self.events.is_empty() {
                return Ok(());
            }
            if end.is_some_and(|e| now >= e) {
                return Ok(());
            }
            let mut until = end;
            if let Some(n) = next_check {
                until = Some(until.map_or(n, |u| u.min(n)));
            }
            let wait = until.map(|u| u.saturating_duration_since(now));
            if self.sleep(wait)? {
                // `wake` makes progress return even with no event: the caller asked for it.
                return Ok(());
            }
        }
    }

    /// Sleeps until the completion queue or `wake` signals, or `wait` passes. Returns
    /// whether `wake` was called.
    fn sleep(&self, wait: Option<Duration>) -> NaResult<bool> {
        let mut fds = [
            libc::pollfd {
                fd: self.wake_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wait_fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut wait = wait;
        let mut nfds = 1;
        if self.wait_fd.is_some() {
            let mut fid = self.cq.fid();
            // SAFETY: one open CQ fid; trywait says whether sleeping on its fd is safe now.
            let rc = unsafe { fi::fi_trywait(self.fabric.0, &mut fid, 1) };
            if rc != 0 {
                return Ok(false);
            }
            nfds = 2;
            if self.backlogged.load(Relaxed) {
                // Posts wait for room: look again before long even if nothing completes
                // (completions, which make room, wake us anyway).
                wait = Some(wait.map_or(IDLE_POLL, |w| w.min(IDLE_POLL)));
            }
        } else {
            // No wait object (shm): poll the queue, soon after activity (a peer's answer
            // is likely on its way), then less often while nothing comes. Marked before
            // the look at operations in flight (`backoff`, under the state lock): one
            // posted meanwhile is either seen there (a short sleep) or sees the mark and
            // wakes us (`new_op`), so a deep sleep never holds up its answer.
            self.deep_asleep.store(true, SeqCst);
            let mut b = self.backoff();
            if self.backlogged.load(Relaxed) {
                // Posts wait for room: look again before long (nothing else will say).
                b = b.min(IDLE_POLL);
            }
            wait = Some(wait.map_or(b, |w| w.min(b)));
            if wait.is_some_and(|w| w <= IDLE_POLL) {
                self.deep_asleep.store(false, Relaxed);
            }
            self.queue_polls.fetch_add(1, Relaxed);
        }
        // A poll's sleep of a few µs would otherwise last the thread's timer slack (50 µs
        // by default) longer.
        let _slack = (self.wait_fd.is_none() && wait.is_some_and(|w| w <= IDLE_POLL))
            .then(|| TightSlack::new(POLL_SLACK_NS));
        let ts = wait.map(|w| libc::timespec {
            tv_sec: w.as_secs() as libc::time_t,
            tv_nsec: w.subsec_nanos() as libc::c_long,
        });
        // SAFETY: fds has nfds valid entries; ts (if any) is a valid timespec.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                nfds,
                ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
                std::ptr::null(),
            )
        };
        self.deep_asleep.store(false, Relaxed);
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut v: u64 = 0;
            // SAFETY: reads the eventfd counter into a local.
            unsafe { libc::read(self.wake_fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
            return Ok(true);
        }
        Ok(false)
    }

    /// The body of `Plugin::cancel`.
    pub(crate) fn cancel_op(&self, id: u64) -> bool {
        let (kind, awaiting) = {
            let mut s = lock(&self.state);
            let Some(op) = s.ops.get_mut(&id) else {
                return false;
            };
            if op.reported {
                return false;
            }
            op.reported = true;
            op.error = Some(NaError::Canceled);
            for c in &op.ctxs {
                // SAFETY: cancel by context on our open endpoint.
                unsafe { fi::fi_cancel(self.ep.fid(), *c as *mut libc::c_void) };
            }
            let kind = op.kind;
            drop_queued(&mut s, id);
            let unposted = drop_backlogged(&mut s, id);
            // A transfer still awaiting its owner's answer posted nothing, and (removed in
            // this same hold of the lock) an answer that comes now takes nothing:
            // `OfiPlugin::settle` looks for it under this lock.
            let awaiting = self.forget_awaiting(&mut s, id);
            if let Some(op) = s.ops.get_mut(&id) {
                op.parts = match awaiting {
                    true => 0,
                    false => op.parts.saturating_sub(unposted),
                };
            }
            self.finish_if_done(&mut s, id);
            (kind, awaiting)
        };
        if kind == OpKind::Rma && !awaiting {
            // The contract: no access to the caller's memory after cancel returns. Wait for
            // every posted part to come back from the fabric.
            let start = Instant::now();
            while lock(&self.state).ops.contains_key(&id) {
                self.poll_cq(true);
                // A lost peer's transfers are abandoned by the liveness check.
                self.check_liveness(Instant::now());
                if start.elapsed() > Duration::from_secs(60) {
                    tracing::error!("ofi: a canceled transfer did not complete in 60 s");
                    break;
                }
                std::thread::yield_now();
            }
        }
        self.push_event(Event::Done {
            op: na::OpId(id),
            result: Err(NaError::Canceled),
        });
        self.send_releases();
        true
    }
}

/// Removes the queued (unposted) pieces of `id`; returns whether there were any.
pub(crate) fn drop_queued(s: &mut State, id: u64) -> bool {
    let before = s.rma_queue.len();
    s.rma_queue.retain(|q| q.id != id);
    let n = (before - s.rma_queue.len()) as u32;
    if let Some(op) = s.ops.get_mut(&id) {
        op.parts = op.parts.saturating_sub(n);
    }
    n > 0
}

impl OfiPlugin {
    /// A transport error about `peer` as its operations report it (see [`as_loss`]).
    pub(crate) fn as_seen(&self, peer: u64, e: NaError) -> NaError {
        match lock(&self.state).peers.get(&peer) {
            Some(p) => as_loss(p, e),
            None => e,
        }
    }
}

/// A transport error about peer `p` as its operations report it: a peer reached before
/// that cannot be reached now has been lost (`Disconnected`), not never been there.
pub(crate) fn as_loss(p: &Peer, e: NaError) -> NaError {
    match e {
        NaError::Unreachable(m) if p.contacted => NaError::Disconnected(m),
        other => other,
    }
}

/// A failure nobody asked for, as its operation sees it: the provider cancels what it can
/// no longer deliver or receive (rxm on a lost connection), which is a lost connection.
fn undelivered(e: NaError) -> NaError {
    match e {
        NaError::Canceled => NaError::Disconnected("the provider canceled the operation".into()),
        e => e,
    }
}

/// A sign of life from `peer`; `active`: traffic other than liveness probes' (see
/// `Peer::active`).
fn heard_from(s: &mut State, peer: PeerId, active: bool) {
    if let Some(p) = s.peers.get_mut(&peer.0) {
        p.contacted = true;
        p.lost = false;
        p.heard = true;
        p.active |= active;
        p.probing = None;
        p.last_probe = None;
    }
}
