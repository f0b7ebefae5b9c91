//! The plugin's side of leased transfers ([`crate::leases`]): an initiator releases the
//! transfers its owners granted once they end; an owner's deregistration waits out the
//! transfers it granted of the region.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::plugin::{OfiPlugin, State, lock};
use crate::provider::DeathCheck;
use crate::wire::{self, Kind};

impl OfiPlugin {
    /// Queues the release of our transfer `op` to `owner`, sent at the end of the pass
    /// (its last piece came back: a put's data has landed, see
    /// `Provider::delivered_by_default`).
    pub(crate) fn release_later(&self, s: &mut State, owner: u64, op: u64) {
        s.releases.push((owner, op));
        self.releases_pending.store(true, Ordering::Release);
    }

    /// Drops transfer `id` from those awaiting their owner's answer; whether it was. (A
    /// transfer waiting for a shared check leaves it when it ends, `finish_if_done`; the
    /// check's lease is released by the last to leave, or, if none was left to, when its
    /// grant comes, `settle`.)
    pub(crate) fn forget_awaiting(&self, s: &mut State, id: u64) -> bool {
        s.awaiting.remove(&id).is_some()
    }

    /// Sends the queued releases, as few messages per owner as fit.
    pub(crate) fn send_releases(&self) {
        if !self.releases_pending.load(Ordering::Acquire) {
            return;
        }
        let mut out = {
            let mut s = lock(&self.state);
            self.releases_pending.store(false, Ordering::Release);
            std::mem::take(&mut s.releases)
        };
        out.sort_unstable();
        // (Pool receives hold a header beyond `max_eager`.)
        let per_msg = (self.max_eager / 8).max(1);
        for to_owner in out.chunk_by(|a, b| a.0 == b.0) {
            for part in to_owner.chunks(per_msg) {
                let ops: Vec<u64> = part.iter().map(|(_, op)| *op).collect();
                let mut b = wire::header(Kind::Release, 0, &self.self_raw, ops.len() * 8);
                wire::encode_release(&mut b, &ops);
                if let Err(e) = self.send_control(part[0].0, b) {
                    // (An owner we cannot reach any more is lost to us, and we to it.)
                    tracing::debug!("ofi: release of {} transfers not sent: {e}", ops.len());
                }
            }
        }
    }

    /// Waits until no transfer we granted of `region` (revoked: no new one is granted)
    /// may still be under way: each is released by its initiator or its peer is lost.
    /// Drives progress meanwhile (this thread may be the only one that does), blocking
    /// this thread. Bounded by how long a silent peer takes to be declared lost; past that
    /// it ends the leases of holders that are gone, or answer (a release that never came:
    /// it warns that the memory may still be reached), and waits on only for holders
    /// declared lost whose process exists, over `shm` (its copies pass no key check: a
    /// stopped process resumes its copy), as `sm` waits for write leases, warning each
    /// second.
    pub(crate) fn await_leases(&self, region: u64) {
        let start = Instant::now();
        let bound = self.cfg.probe_after + self.cfg.probe_timeout + Duration::from_secs(1);
        let (mut looked, mut warned) = (start, 0);
        while lock(&self.state).leases.held(region) {
            let now = Instant::now();
            if now.duration_since(start) > bound && now.duration_since(looked) >= LOOK_EVERY {
                looked = now;
                let stopped = self.end_leases_but_stopped(region, bound);
                let waited = now.duration_since(start).as_secs();
                if !stopped.is_empty() && waited > warned {
                    warned = waited;
                    tracing::warn!(
                        region,
                        ?stopped,
                        waited_s = waited,
                        "ofi: deregistration waits for peers holding transfers of the \
                         region, silent but not gone (stopped processes?)"
                    );
                }
            }
            if let Err(e) = self.drive(Some(Duration::ZERO)) {
                tracing::debug!("ofi: progress while waiting for releases: {e}");
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Past the wait's bound: ends the leases of `region` except those of holders
    /// declared lost whose process exists over `shm`, which it returns.
    fn end_leases_but_stopped(&self, region: u64, bound: Duration) -> Vec<u64> {
        let holders: Vec<(u64, Vec<u8>, bool)> = {
            let s = lock(&self.state);
            let holders = s.leases.holders(region).into_iter();
            holders
                .map(|p| {
                    let (raw, lost) = s
                        .peers
                        .get(&p)
                        .map(|e| (e.raw.clone(), e.lost))
                        .unwrap_or_default();
                    (p, raw, lost)
                })
                .collect()
        };
        let pid_checked = self.provider.death_check == DeathCheck::Pid;
        let mut stopped = Vec::new();
        for (p, raw, lost) in holders {
            if pid_checked && lost && !crate::provider::certainly_dead(DeathCheck::Pid, &raw) {
                stopped.push(p);
                continue;
            }
            if !lost {
                tracing::warn!(
                    region,
                    peer = p,
                    "ofi: deregistered with transfers granted of it neither released nor \
                     lost after {bound:?}: the memory may still be reached"
                );
            }
            lock(&self.state).leases.forget_holder(p, region);
        }
        stopped
    }
}

/// How often a deregistration past its bound looks at the holders it waits for.
const LOOK_EVERY: Duration = Duration::from_millis(100);
