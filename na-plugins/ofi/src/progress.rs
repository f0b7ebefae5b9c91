//! Progress: reading the completion queue, finishing operations, answering and sending
//! liveness probes, sleeping on the queue's wait fd, and cancellation.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use libfabric_sys as fi;
use na::{Event, NaError, NaResult, PeerId};

use crate::fabric;
use crate::plugin::{Ctx, OfiPlugin, OpKind, Peer, RECV_BUFS_KEPT, State, What, lock};
use crate::post::drop_backlogged;
use crate::provider::DeathCheck;
use crate::wire::{self, Kind};

/// The longest idle poll interval of a provider without a wait object.
pub(crate) const IDLE_POLL: Duration = Duration::from_micros(200);

/// The longest poll interval while operations are in flight.
const BUSY_POLL: Duration = Duration::from_micros(10);

/// The first idle poll interval after activity.
const FIRST_IDLE_POLL: Duration = Duration::from_micros(2);

const BATCH: usize = 32;

/// The longest a due liveness action waits for the rate limit of the check.
const LIVENESS_TICK: Duration = Duration::from_millis(20);

/// A spinning progress pass looks at liveness (and the clock) once in this many.
const LIVENESS_EVERY: u64 = 64;

/// How long transfers to a lost peer may take to come back from the provider before they
/// are completed with the error regardless (`shm` never returns a transfer whose target
/// process died: the target performs the copy).
const ABANDON_AFTER: Duration = Duration::from_secs(2);

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
        let mut entries = [fi::fi_cq_tagged_entry::default(); BATCH];
        loop {
            // SAFETY: entries has room for BATCH tagged entries, the CQ's format.
            let n = unsafe { fi::fi_cq_read(self.cq.0, entries.as_mut_ptr().cast(), BATCH) };
            if n > 0 {
                // Anything completed (an owner's grant request included): the peer is
                // busy with us, so poll again soon.
                self.active();
                for e in &entries[..n as usize] {
                    self.on_completion(e.op_context.cast(), Ok((e.len, e.tag)));
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
                    self.on_completion(err.op_context.cast(), Err(e));
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
    }

    fn on_completion(&self, ctx: *mut Ctx, r: Result<(usize, u64), NaError>) {
        if ctx.is_null() {
            return;
        }
        // SAFETY: every context we post is a live Ctx (tracked in `live`); libfabric returns
        // it exactly once.
        // (A pool context's `what` never changes; others may be rewritten by `abandon`
        // under the state lock, so they are read under it.)
        if unsafe { (*ctx).what } == What::Pool {
            self.on_unexpected(ctx, r);
            return;
        }
        let owned = {
            let mut s = lock(&self.state);
            s.live.remove(&(ctx as usize));
            // SAFETY: as above; this completion is its last use by libfabric.
            unsafe { Box::from_raw(ctx) }
        };
        match owned.what {
            What::Op(id) => {
                // The message is copied out of the buffer if this is a receive (decided
                // under the one lock `finish_part` takes).
                self.finish_part(id, r.map(|(len, _)| len), owned.buf);
            }
            What::Rma(id, len) => {
                let mut st = lock(&self.state);
                st.rma_inflight = st.rma_inflight.saturating_sub(len);
                drop(st);
                self.finish_part(id, r.map(|(l, _)| l), Vec::new());
            }
            What::Ping(peer) => {
                if let Err(e) = r
                    && e != NaError::Canceled
                {
                    self.peer_lost(peer, e);
                }
            }
            What::Pool | What::Control => {}
        }
    }

    /// One fabric completion of operation `id` (or an injected send, which has none).
    pub(crate) fn part_done(&self, id: u64, r: NaResult<usize>) {
        self.finish_part(id, r, Vec::new());
    }

    fn finish_part(&self, id: u64, r: NaResult<usize>, data: Vec<u8>) {
        let mut lost = None;
        let mut s = lock(&self.state);
        let Some(op) = s.ops.get_mut(&id) else { return };
        op.parts = op.parts.saturating_sub(1);
        match r {
            Ok(len) => {
                if op.kind == OpKind::Recv {
                    op.data = data.get(..len).unwrap_or(&data).to_vec();
                }
            }
            Err(e) => {
                // The provider cancels what it can no longer deliver (rxm on a lost
                // connection): unless the caller canceled, that is a lost connection.
                let e = if e == NaError::Canceled && !op.reported && op.error.is_none() {
                    NaError::Disconnected("the provider canceled the operation".into())
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
            heard_from(&mut s, peer);
        }
        if recv && data.len() == self.max_eager && s.recv_bufs.len() < RECV_BUFS_KEPT {
            s.recv_bufs.push(data);
        }
        self.finish_if_done(&mut s, id);
        drop(s);
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
        if let Some(p) = s.peers.get_mut(&op.peer.0) {
            p.pending = p.pending.saturating_sub(1);
            if p.pending == 0 {
                p.probing_since = None;
                p.probes = (0, 0);
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

    fn on_unexpected(&self, ctx: *mut Ctx, r: Result<(usize, u64), NaError>) {
        match r {
            Ok((len, _)) => {
                // SAFETY: the pool context is live and libfabric is done with it until reposted.
                let msg = unsafe { &(&(*ctx).buf)[..len.min((*ctx).buf.len())] };
                self.handle_unexpected(msg);
            }
            Err(NaError::Canceled) => return,
            Err(e) => tracing::warn!("ofi: unexpected receive failed: {e}"),
        }
        if let Err(e) = self.post_pool(ctx) {
            tracing::error!("ofi: cannot repost an unexpected receive: {e}");
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
            Err(e) => {
                tracing::warn!("ofi: dropped a malformed message: {e}");
                return;
            }
        };
        let peer = {
            let mut s = lock(&self.state);
            match self.peer_for(&mut s, from) {
                Ok(p) => {
                    heard_from(&mut s, p);
                    p
                }
                Err(e) => {
                    tracing::warn!("ofi: message from an address the provider refuses: {e}");
                    return;
                }
            }
        };
        if kind == Kind::Bundle {
            return self.unbundle(peer, from, data);
        }
        self.on_message(peer, kind, tag, data);
    }

    /// The control messages of a bundle from `peer` (at `from`), each handled as if it
    /// came alone; the answers they make go back bundled too.
    fn unbundle(&self, peer: PeerId, from: &[u8], data: &[u8]) {
        let msgs = match wire::unbundle(data) {
            Ok(m) => m,
            Err(e) => return tracing::warn!("ofi: {e}"),
        };
        self.hold_control(peer.0, true);
        for m in msgs {
            match wire::parse(m) {
                // Only what a bundle is made of: each carried transfer or answer makes
                // at most one answer, itself held.
                Ok(p) if p.from == from && matches!(p.kind, Kind::Carry | Kind::Carried) => {
                    self.on_message(peer, p.kind, p.tag, p.data)
                }
                _ => tracing::warn!("ofi: dropped a malformed bundled message"),
            }
        }
        self.hold_control(peer.0, false);
    }

    /// Handles one message from `peer`.
    fn on_message(&self, peer: PeerId, kind: Kind, tag: u64, data: &[u8]) {
        match kind {
            Kind::Request => self.push_event(Event::Unexpected {
                peer,
                tag,
                data: data.to_vec(),
            }),
            Kind::Ping => {
                let b = wire::header(Kind::Pong, 0, &self.self_raw);
                if let Err(e) = self.send_control(peer.0, b) {
                    tracing::debug!("ofi: pong not sent: {e}");
                }
            }
            Kind::Pong => {}
            Kind::Check => {
                let c = match wire::Check::decode(data) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("ofi: {e}");
                        return;
                    }
                };
                let ok = lock(&self.state).mem.allows(c.key, c.off, c.len, c.write);
                let mut b = wire::header(Kind::Grant, 0, &self.self_raw);
                b.extend_from_slice(&wire::encode_grant(c.op, ok));
                if let Err(e) = self.send_control(peer.0, b) {
                    tracing::debug!("ofi: grant not sent: {e}");
                }
            }
            Kind::Carry => {
                let (c, bytes) = match wire::decode_carry(data) {
                    Ok(x) => x,
                    Err(e) => return tracing::warn!("ofi: {e}"),
                };
                let put = c.write.then_some(bytes);
                let mut b = wire::header(Kind::Carried, 0, &self.self_raw);
                // A read whose answer would not fit in a message is refused like a bad
                // range (the initiator's cut-off is its own: any that fits is served).
                wire::encode_carried(&mut b, c.op, |out| {
                    c.len <= self.max_eager as u64
                        && lock(&self.state).mem.carry(c.key, c.off, c.len, put, out)
                });
                if let Err(e) = self.send_control(peer.0, b) {
                    tracing::debug!("ofi: carried answer not sent: {e}");
                }
            }
            Kind::Grant => match wire::decode_grant(data) {
                Ok((op, ok)) => self.answered(peer, op, ok, None),
                Err(e) => tracing::warn!("ofi: {e}"),
            },
            // The bytes are copied out: the pool buffer they are in is reposted before
            // the answer is acted on.
            Kind::Carried => match wire::decode_carried(data) {
                Ok((op, ok, d)) => self.answered(peer, op, ok, Some(d.to_vec())),
                Err(e) => tracing::warn!("ofi: {e}"),
            },
            Kind::Bundle => tracing::warn!("ofi: dropped a bundle inside a bundle"),
        }
    }

    /// Keeps an owner's answer to act on once the queue's lock is released.
    fn answered(&self, peer: PeerId, op: u64, ok: bool, carried: Option<Vec<u8>>) {
        let a = crate::rma::Answer {
            peer,
            op,
            ok,
            carried,
        };
        lock(&self.answers).push(a);
    }

    /// Fails every operation waiting on `peer` with `e` (RMA ones when the fabric returns
    /// them), and reports the loss.
    pub(crate) fn peer_lost(&self, peer: PeerId, e: NaError) {
        let mut s = lock(&self.state);
        let Some(p) = s.peers.get_mut(&peer.0) else {
            return;
        };
        let e = as_loss(p, e);
        p.probing_since = None;
        p.last_probe = None;
        p.probes = (0, 0);
        p.last_heard = Instant::now();
        // Declared lost again (operations still waiting on it): fail them, report once.
        let again = std::mem::replace(&mut p.lost, true);
        if !again {
            s.stats.peers_lost += 1;
        }
        let ids: Vec<u64> = s
            .ops
            .iter()
            .filter(|(_, o)| o.peer == peer && !o.reported)
            .map(|(id, _)| *id)
            .collect();
        tracing::info!(
            "ofi: peer {peer:?} lost ({e}); failing {} operations",
            ids.len()
        );
        for id in ids {
            let Some(op) = s.ops.get_mut(&id) else {
                continue;
            };
            op.error.get_or_insert(e.clone());
            for c in &op.ctxs {
                // SAFETY: cancel by context on our open endpoint; a context that already
                // completed is simply not found.
                unsafe { fi::fi_cancel(self.ep.fid(), *c as *mut libc::c_void) };
            }
            if op.kind != OpKind::Rma {
                // Receives and sends own their buffers: report now, release on completion
                // (or now, for posts still in the backlog).
                op.reported = true;
                self.push_event(Event::Done {
                    op: na::OpId(id),
                    result: Err(e.clone()),
                });
                let unposted = drop_backlogged(&mut s, id);
                if let Some(op) = s.ops.get_mut(&id) {
                    op.parts = op.parts.saturating_sub(unposted);
                }
                self.finish_if_done(&mut s, id);
            } else {
                // Transfers: pieces not posted yet are dropped; posted ones are left to the
                // provider for a while (they may still touch the caller's memory).
                drop_queued(&mut s, id);
                if s.awaiting.remove(&id).is_some()
                    && let Some(op) = s.ops.get_mut(&id)
                {
                    op.parts = 0;
                }
                if let Some(op) = s.ops.get_mut(&id) {
                    op.abandon_at.get_or_insert(Instant::now() + ABANDON_AFTER);
                }
                self.finish_if_done(&mut s, id);
            }
        }
        crate::post::drop_control_to(&mut s, peer.0);
        if !again {
            self.push_event(Event::PeerLost { peer, error: e });
        }
    }

    /// Probes silent peers that operations wait on; declares lost those whose probes went
    /// unanswered for `probe_timeout`. Returns when it next needs to run.
    fn check_liveness(&self, now: Instant) -> Option<Instant> {
        let mut probe = Vec::new();
        let mut lost: Vec<(PeerId, String)> = Vec::new();
        let mut suspects = Vec::new();
        let mut next: Option<Instant> = None;
        {
            let mut s = lock(&self.state);
            let mut probes = 0;
            let idle = self.cfg.watch_idle;
            for p in s.peers.values_mut() {
                if std::mem::take(&mut p.heard) {
                    p.last_heard = now;
                }
            }
            let watched =
                |p: &Peer| p.pending > 0 || (!p.lost && now.duration_since(p.last_heard) < idle);
            for (a, p) in s.peers.iter_mut().filter(|(_, p)| watched(p)) {
                if let Some(t0) = p.probing_since
                    && now.duration_since(t0) >= self.cfg.probe_timeout
                {
                    let (sent, refused) = p.probes;
                    lost.push((
                        PeerId(*a),
                        format!(
                            "its liveness probes went unanswered for {:.1} s ({sent} sent, \
                             {refused} refused by the provider for lack of room)",
                            now.duration_since(t0).as_secs_f64()
                        ),
                    ));
                    continue;
                }
                let silent = now.duration_since(p.last_heard) >= self.cfg.probe_after;
                let due = p
                    .last_probe
                    .is_none_or(|t| now.duration_since(t) >= self.cfg.probe_after);
                if silent && due {
                    if p.probing_since.is_some() || self.provider.death_check == DeathCheck::Pid {
                        // A probe went unanswered: is the process there at all?
                        suspects.push((*a, p.raw.clone()));
                    }
                    p.probing_since.get_or_insert(now);
                    p.last_probe = Some(now);
                    probe.push(*a);
                    probes += 1;
                }
                let at = p.last_probe.unwrap_or(p.last_heard) + self.cfg.probe_after;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
            s.stats.probes += probes;
            abandon_overdue(self, &mut s, now);
        }
        for (a, raw) in suspects {
            if crate::provider::certainly_dead(self.provider.death_check, &raw) {
                lost.push((
                    PeerId(a),
                    "it stopped answering and its process or port is gone".into(),
                ));
            }
        }
        for a in probe {
            if lost.iter().any(|(p, _)| *p == PeerId(a)) {
                continue;
            }
            let b = wire::header(Kind::Ping, 0, &self.self_raw);
            // A ping is never injected: its completion (or error) is part of the probe.
            match self.tsend_with_completion(a, b) {
                Ok(posted) => {
                    if let Some(p) = lock(&self.state).peers.get_mut(&a) {
                        let n = if posted {
                            &mut p.probes.0
                        } else {
                            &mut p.probes.1
                        };
                        *n += 1;
                    }
                }
                Err(e) => {
                    lost.push((PeerId(a), "a liveness probe could not be sent to it".into()));
                    tracing::debug!("ofi: probe to {a} not posted: {e}");
                }
            }
        }
        for (p, why) in lost {
            self.peer_lost(p, NaError::Unreachable(format!("the peer is lost: {why}")));
        }
        next
    }

    /// Posts a probe; `Ok(false)` when the provider had no room for it now.
    fn tsend_with_completion(&self, peer: u64, buf: Vec<u8>) -> NaResult<bool> {
        let ctx = Ctx::new(What::Ping(PeerId(peer)), buf);
        lock(&self.state).live.insert(ctx as usize);
        // SAFETY: ctx is live until its completion.
        let (p, n) = unsafe { ((*ctx).buf.as_ptr(), (*ctx).buf.len()) };
        // SAFETY: as above; one try only (a probe that cannot go out now goes next time).
        let rc = unsafe {
            fi::fi_send(
                self.ep.0,
                p.cast(),
                n,
                std::ptr::null_mut(),
                peer,
                ctx.cast(),
            )
        };
        if rc != 0 {
            lock(&self.state).live.remove(&(ctx as usize));
            // SAFETY: not posted.
            drop(unsafe { Box::from_raw(ctx) });
            if rc == -(fi::FI_EAGAIN as isize) {
                return Ok(false);
            }
            return Err(fabric::error("fi_send(ping)", rc as i64));
        }
        Ok(true)
    }

    /// Runs the liveness check when it is due: at most every `LIVENESS_TICK` (busy polling
    /// calls progress millions of times a second; the check locks and scans every peer), or
    /// at once after an operation made a silent peer watched (`liveness_dirty`).
    fn liveness_tick(&self, now: Instant) -> Option<Instant> {
        let mut t = lock(&self.liveness);
        let dirty = self
            .liveness_dirty
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        if !dirty && t.0.is_some_and(|last| now < last + LIVENESS_TICK) {
            return t.1;
        }
        let next = self.check_liveness(now);
        *t = (Some(now), next);
        next
    }

    /// Marks activity: the next idle polls (without a wait object) come soon after.
    pub(crate) fn active(&self) {
        if self.wait_fd.is_none() {
            self.poll_backoff
                .store(FIRST_IDLE_POLL.as_nanos() as u64, Relaxed);
        }
    }

    /// How long an idle poll sleeps now, and the next one twice that: at most
    /// [`IDLE_POLL`], or [`BUSY_POLL`] while operations are in flight (an answer awaited,
    /// an RMA): the provider moves a peer's small transfers into our memory only while we
    /// poll, and nothing tells us they come.
    fn backoff(&self) -> Duration {
        let busy = !lock(&self.state).ops.is_empty();
        let cap = if busy { BUSY_POLL } else { IDLE_POLL }.as_nanos() as u64;
        let cur = self
            .poll_backoff
            .load(Relaxed)
            .clamp(FIRST_IDLE_POLL.as_nanos() as u64, cap);
        self.poll_backoff.store((cur * 2).min(cap), Relaxed);
        Duration::from_nanos(cur)
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
            }
            return Ok(());
        }
        let end = timeout.map(|t| Instant::now() + t);
        loop {
            self.poll_cq(false);
            let now = Instant::now();
            let next_check = self.liveness_tick(now);
            if !lock(&self.events).is_empty() {
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
            // is likely on its way), then less often while nothing comes.
            let b = self.backoff();
            wait = Some(wait.map_or(b, |w| w.min(b)));
        }
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
        let kind = {
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
            if let Some(op) = s.ops.get_mut(&id) {
                op.parts = op.parts.saturating_sub(unposted);
            }
            self.finish_if_done(&mut s, id);
            kind
        };
        let awaiting = {
            let mut s = lock(&self.state);
            let was = s.awaiting.remove(&id).is_some();
            if was {
                if let Some(op) = s.ops.get_mut(&id) {
                    op.parts = 0;
                }
                self.finish_if_done(&mut s, id);
            }
            was
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
        true
    }
}

/// Completes with their error the transfers to lost peers that the provider did not
/// return within `ABANDON_AFTER`. Their contexts stay allocated (freed if the provider ever
/// completes them, or with the plugin) but no longer count in the window.
fn abandon_overdue(p: &OfiPlugin, s: &mut State, now: Instant) {
    let due: Vec<u64> = s
        .ops
        .iter()
        .filter(|(_, o)| !o.reported && o.abandon_at.is_some_and(|t| now >= t))
        .map(|(id, _)| *id)
        .collect();
    for id in due {
        let Some(op) = s.ops.get(&id) else { continue };
        let ctxs: Vec<usize> = op
            .ctxs
            .iter()
            .copied()
            .filter(|c| s.live.contains(c))
            .collect();
        for c in ctxs {
            let ctx = c as *mut Ctx;
            // SAFETY: the context is live (in `live`, checked under the state lock held here);
            // libfabric uses only its `fi` field, and completions read `what` under this lock.
            unsafe {
                if let What::Rma(_, len) = (*ctx).what {
                    s.rma_inflight = s.rma_inflight.saturating_sub(len);
                }
                (*ctx).what = What::Control;
            }
        }
        drop_queued(s, id);
        tracing::warn!("ofi: a transfer to a lost peer was not returned by the provider; failed");
        if let Some(op) = s.ops.get_mut(&id) {
            op.parts = 0;
        }
        p.finish_if_done(s, id);
    }
}

/// Removes the queued (unposted) pieces of `id`; returns whether there were any.
fn drop_queued(s: &mut State, id: u64) -> bool {
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
fn as_loss(p: &Peer, e: NaError) -> NaError {
    match e {
        NaError::Unreachable(m) if p.contacted => NaError::Disconnected(m),
        other => other,
    }
}

fn heard_from(s: &mut State, peer: PeerId) {
    if let Some(p) = s.peers.get_mut(&peer.0) {
        p.contacted = true;
        p.lost = false;
        p.heard = true;
        p.probing_since = None;
        p.last_probe = None;
        p.probes = (0, 0);
    }
}
