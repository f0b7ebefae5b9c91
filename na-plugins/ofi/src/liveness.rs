//! Liveness: silent peers are probed (closely those that operations wait on, that hold
//! leases or were active lately; the others once contacted at an idle pace); those whose
//! probes go unanswered, or whose process is proven gone, are declared lost, and what
//! waited on them fails.

use std::time::{Duration, Instant};

use libfabric_sys as fi;
use na::{Event, NaError, NaResult, PeerId};

use crate::fabric;
use crate::plugin::{Ctx, OfiPlugin, OpKind, Peer, State, What, lock};
use crate::post::drop_backlogged;
use crate::progress::{as_loss, drop_queued};
use crate::provider::DeathCheck;
use crate::wire::{self, Kind};

/// The longest a due liveness action waits for the rate limit of the check.
const LIVENESS_TICK: Duration = Duration::from_millis(20);

/// How many times `probe_timeout` a peer may stay out of reach because the provider has no
/// room for a probe to it (its queue full: a busy peer, not a silent one) before it is
/// declared lost.
const REFUSED_FACTOR: u32 = 6;

/// The probing of one silent peer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probing {
    /// The first probe attempt.
    since: Instant,
    /// When the first probe the provider took went out.
    posted: Option<Instant>,
    /// Probes posted.
    sent: u32,
    /// Probe attempts the provider refused for lack of room.
    refused: u32,
}

impl Probing {
    pub(crate) fn new(now: Instant) -> Probing {
        Probing {
            since: now,
            posted: None,
            sent: 0,
            refused: 0,
        }
    }

    /// Counts a probe attempt made at `now`.
    pub(crate) fn record(&mut self, posted: bool, now: Instant) {
        if posted {
            self.sent += 1;
            self.posted.get_or_insert(now);
        } else {
            self.refused += 1;
        }
    }

    /// When [`Probing::verdict`] may next change, given `timeout`.
    pub(crate) fn due(&self, timeout: Duration) -> Instant {
        match self.posted {
            Some(t) => t + timeout,
            None => self.since + timeout * REFUSED_FACTOR,
        }
    }

    /// Why the peer is lost as of `now`, if it is: a probe that went out stayed unanswered
    /// for `timeout` (nothing at all came from the peer meanwhile: hearing from it ends
    /// the probing), or for `REFUSED_FACTOR` times that no probe could go out at all.
    pub(crate) fn verdict(&self, now: Instant, timeout: Duration) -> Option<String> {
        let (sent, refused) = (self.sent, self.refused);
        match self.posted {
            Some(t) if now.duration_since(t) >= timeout => Some(format!(
                "its liveness probes went unanswered for {:.1} s ({sent} sent, {refused} \
                 refused by the provider for lack of room)",
                now.duration_since(t).as_secs_f64()
            )),
            None if now.duration_since(self.since) >= timeout * REFUSED_FACTOR => Some(format!(
                "no liveness probe could be sent to it for {:.1} s (the provider had no room \
                 for any of {refused})",
                now.duration_since(self.since).as_secs_f64()
            )),
            _ => None,
        }
    }
}

/// How long transfers to a lost peer may take to come back from the provider before they
/// are completed with the error regardless (`shm` never returns a transfer whose target
/// process died: the target performs the copy).
const ABANDON_AFTER: Duration = Duration::from_secs(2);

impl OfiPlugin {
    /// Fails every operation waiting on `peer` with `e` (RMA ones when the fabric returns
    /// them), and reports the loss.
    pub(crate) fn peer_lost(&self, peer: PeerId, e: NaError) {
        // Its transfers of our memory are over if its process is gone or the owner's
        // provider checks them (a silent peer's are refused once the region closes); a
        // silent `shm` peer whose process is there (stopped: a debugger, a suspended
        // job) could still copy into our memory when it resumes (`shm` checks no key):
        // deregistrations keep waiting for its leases while it exists (`await_leases`).
        // (Looked at before the state lock is taken: the look reads the file system.)
        let raw = lock(&self.state).peers.get(&peer.0).map(|p| p.raw.clone());
        let Some(raw) = raw else { return };
        let leases_over = self.provider.death_check != DeathCheck::Pid
            || crate::provider::certainly_dead(DeathCheck::Pid, &raw);
        let mut s = lock(&self.state);
        let Some(p) = s.peers.get_mut(&peer.0) else {
            return;
        };
        let e = as_loss(p, e);
        p.probing = None;
        p.last_probe = None;
        p.last_heard = Instant::now();
        // Declared lost again (operations still waiting on it): fail them, report once.
        let again = std::mem::replace(&mut p.lost, true);
        if !again {
            s.stats.peers_lost += 1;
        }
        if leases_over {
            s.leases.forget_peer(peer.0);
        }
        s.checks.retire_peer(peer.0);
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
                if self.forget_awaiting(&mut s, id)
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

    /// Probes silent peers that are watched (closely: operations wait on them, they hold
    /// leases or were active lately; at the idle pace: the others once contacted);
    /// declares lost those whose process is gone or whose probing says so
    /// ([`Probing::verdict`]). Returns when it next needs to run.
    pub(crate) fn check_liveness(&self, now: Instant) -> Option<Instant> {
        let mut probe = Vec::new();
        let mut lost: Vec<(PeerId, String)> = Vec::new();
        let mut suspects = Vec::new();
        let mut next: Option<Instant> = None;
        {
            let mut s = lock(&self.state);
            let mut probes = 0;
            let idle = self.cfg.watch_idle;
            for p in s.peers.values_mut() {
                // A sign of life, or a first operation on it after none: a new silence
                // starts, judged from scratch.
                if std::mem::take(&mut p.heard) {
                    p.last_heard = now;
                    p.probing = None;
                    p.last_probe = None;
                }
                if std::mem::take(&mut p.active) {
                    p.last_active = now;
                }
            }
            // A peer holding leases on our memory is watched too: its loss ends them, so
            // that a deregistration does not wait for a peer that went away silently.
            let st = &mut *s;
            let leases = &st.leases;
            // How often a peer is probed when silent, if it is watched: closely while
            // operations wait on it, it holds leases or it was active lately; at the idle
            // pace while it was ever contacted and not lost.
            let every = |a: u64, p: &Peer| {
                let close = now.duration_since(p.last_active) < idle || leases.holds(a);
                match (p.pending > 0, p.lost) {
                    (true, _) => Some(self.cfg.probe_after),
                    (false, true) => None,
                    (false, false) if close => Some(self.cfg.probe_after),
                    (false, false) => p.contacted.then_some(self.cfg.idle_probe_after),
                }
            };
            for (a, p) in st.peers.iter_mut() {
                let Some(every) = every(*a, p) else {
                    // A probing it stopped being watched in would otherwise judge a later
                    // silence by its old start.
                    p.probing = None;
                    continue;
                };
                let timeout = self.cfg.probe_timeout;
                if let Some(why) = p.probing.and_then(|pr| pr.verdict(now, timeout)) {
                    lost.push((PeerId(*a), why));
                    continue;
                }
                let silent = now.duration_since(p.last_heard) >= every;
                let due = p.last_probe.is_none_or(|t| now.duration_since(t) >= every);
                if silent && due {
                    if p.probing.is_some() || self.provider.death_check == DeathCheck::Pid {
                        // A probe went unanswered: is the process there at all?
                        suspects.push((*a, p.raw.clone()));
                    }
                    p.probing.get_or_insert(Probing::new(now));
                    p.last_probe = Some(now);
                    probe.push(*a);
                    probes += 1;
                }
                let at = p.last_probe.unwrap_or(p.last_heard) + every;
                // A probe out is judged on time, whatever the pace of the next one.
                let at = p.probing.map_or(at, |pr| at.min(pr.due(timeout)));
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
            let b = wire::header(Kind::Ping, 0, &self.self_raw, 0);
            // A ping is never injected: its completion (or error) is part of the probe.
            match self.tsend_with_completion(a, b) {
                Ok(posted) => {
                    let mut s = lock(&self.state);
                    if let Some(pr) = s.peers.get_mut(&a).and_then(|p| p.probing.as_mut()) {
                        pr.record(posted, now);
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
    pub(crate) fn liveness_tick(&self, now: Instant) -> Option<Instant> {
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
            // Pieces are still out: no release (the owner, lost to us, ends its lease when
            // it loses us or gives up).
            if let Some(c) = op.shared.take() {
                s.checks.abandon(c);
            }
        }
        p.finish_if_done(s, id);
    }
}
