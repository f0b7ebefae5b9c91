//! What an initiator makes of its owners' answers (providers whose RMA the owner checks):
//! a grant posts the transfers waiting for it (one transfer's, or every transfer sharing
//! the check, [`crate::checks`]), a refusal fails them, and a carried transfer's bytes are
//! copied into the caller's memory. Answers are taken only from the transfer's own peer
//! and only in the form asked for (`answers_tests`).

use na::{NaError, PeerId};

use crate::plugin::{OfiPlugin, State, lock};
use crate::rma::{Answer, Awaiting};

impl OfiPlugin {
    /// The owner granted (or refused) a check: the transfers waiting for it are posted.
    pub(crate) fn on_answer(&self, a: Answer) {
        let Some(go) = self.on_shared_answer(&a) else {
            self.settle(&mut lock(&self.state), a.peer, a.op, a.ok, None);
            return;
        };
        for (id, aw) in go {
            if let Err(e) = self.post_pieces(id, aw.peer, aw.write, aw.posts) {
                self.finish_now(id, Some(e));
            }
        }
    }

    /// The owner answered shared check `a.op` ([`crate::checks`]): `None` if it is none
    /// of that peer's; else the transfers to post now (a refusal fails them here).
    fn on_shared_answer(&self, a: &Answer) -> Option<Vec<(u64, Awaiting)>> {
        let mut s = lock(&self.state);
        let waiting = s.checks.answer(a.peer.0, a.op, a.ok)?;
        let mut go = Vec::with_capacity(if a.ok { waiting.len() } else { 0 });
        for id in waiting {
            // (One canceled meanwhile is no longer awaiting.)
            let Some(aw) = s.awaiting.remove(&id) else {
                continue;
            };
            if a.ok {
                go.push((id, aw));
            } else {
                self.finish_locked(&mut s, id, Some(refused_by_owner()));
            }
        }
        Some(go)
    }

    /// The message asking the owner about `id` (a transfer's own check or carried
    /// transfer, or a shared check) could not be sent: what waited for its answer fails.
    pub(crate) fn fail_asked(&self, s: &mut State, id: u64, e: NaError) {
        let waiting = s.checks.fail(id);
        for w in waiting.into_iter().chain([id]) {
            if s.awaiting.remove(&w).is_some() {
                self.finish_locked(s, w, Some(e.clone()));
            }
        }
    }

    /// The owner answered carried transfer `id` (only the op's own peer may) with its
    /// outcome and the bytes read (empty for a write), copied into the caller's memory
    /// here, under the state lock (a cancel takes it too, so the memory is still the
    /// caller's); or sent a grant that is no shared check's (`carried` None): released
    /// if it names none of ours, a misbehaving owner's if it names a carried transfer.
    pub(crate) fn settle(
        &self,
        s: &mut State,
        peer: PeerId,
        id: u64,
        ok: bool,
        carried: Option<&[u8]>,
    ) {
        // (A transfer waiting for a shared check is answered only through that check.)
        if s.awaiting
            .get(&id)
            .is_none_or(|aw| aw.peer != peer || !aw.carried)
        {
            // A grant of a shared check all of whose transfers ended before it came: the
            // owner holds a lease for it (releasing one it does not hold is ignored
            // there).
            if ok && carried.is_none() && self.leased_rma {
                self.release_later(s, peer.0, id);
            }
            return;
        }
        let Some(aw) = s.awaiting.remove(&id) else {
            return;
        };
        let want = aw.posts.iter().map(|p| p.len).sum::<usize>();
        let failed = match carried {
            _ if aw.carried != carried.is_some() => Some(NaError::PeerMisbehaved(
                "the owner answered a transfer in another way than asked".into(),
            )),
            Some(d) if ok && d.len() != if aw.write { 0 } else { want } => {
                Some(NaError::PeerMisbehaved(format!(
                    "the owner carried {} bytes for a {want}-byte transfer",
                    d.len()
                )))
            }
            _ if !ok => Some(refused_by_owner()),
            _ => None,
        };
        let Some(d) = carried.filter(|_| failed.is_none()) else {
            self.finish_locked(s, id, failed);
            return;
        };
        let mut at = 0;
        let reads = if aw.write { &[][..] } else { &aw.posts[..] };
        for p in reads {
            // SAFETY: the piece lies in registered memory (checked when posted) that the
            // caller keeps valid until this op completes or its cancel returns (neither
            // has: its entry was still awaiting, and a cancel removes it under this lock
            // before anything else); `d` holds `want` bytes (at most `carry_max`, copied
            // under the lock).
            unsafe { std::ptr::copy_nonoverlapping(d[at..].as_ptr(), p.local as *mut u8, p.len) };
            at += p.len;
        }
        self.finish_locked(s, id, None);
    }
}

/// A transfer its owner refused.
fn refused_by_owner() -> NaError {
    NaError::AccessDenied(
        "the owner refused the transfer (unknown key, out of bounds, or access mode)".into(),
    )
}
