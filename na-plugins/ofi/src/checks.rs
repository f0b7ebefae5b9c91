//! Checks shared by an initiator's transfers of one region (providers whose RMA the owner
//! checks, `Provider::checked_rma`). A check of the whole region the descriptor describes,
//! in one direction, lets every transfer of that region in that direction go, so 64 pulls
//! of one buffer cost one check, one grant and one release instead of 64 of each. The
//! owner's side is unchanged: it grants (and leases) the check as any other, under the
//! check's own id, and the initiator releases that id once the last transfer riding on
//! it has ended (however it ended). Transfers that come while the check is unanswered
//! wait for its grant with the first; one refused fails them all (a descriptor whose
//! region the owner does not hold as described is forged or stale). A check carries at
//! most [`MAX_JOINS`] transfers, so that a stream of transfers cannot keep its lease, and
//! the owner's deregistration waiting on it, for ever, nor join a check older than
//! [`JOIN_FOR`]: an owner whose deregistration stopped waiting for a lease (it waits a
//! bounded time for a peer that is not lost) sees no transfer granted after, as with a
//! check per transfer, save those that joined within that time; and a check whose answer
//! was lost holds up only the transfers that joined it. Pure bookkeeping (the time is an
//! input), tested here.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

/// Transfers one shared check carries at most; the next starts a check of its own.
pub const MAX_JOINS: u32 = 256;

/// How long after it was asked a check takes new transfers.
pub const JOIN_FOR: Duration = Duration::from_millis(50);

/// What a new transfer does.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// Its region is granted already: post it now.
    Post(u64),
    /// The check is on its way: wait for its grant.
    Wait(u64),
    /// Send the check with this id (covering the region's first `len` bytes) and wait.
    Ask(u64),
}

impl Joined {
    /// The shared check's id.
    pub fn id(&self) -> u64 {
        match *self {
            Joined::Post(i) | Joined::Wait(i) | Joined::Ask(i) => i,
        }
    }
}

/// Which region of which peer, in which direction (a write is checked apart).
type Key = (u64, u64, bool);

struct Check {
    key: Key,
    /// The bytes of the region it covers, from its start.
    len: u64,
    granted: bool,
    /// When it was asked.
    asked: Instant,
    /// A transfer riding on it was given up with pieces still out: its lease is not ended
    /// by our word (the owner ends it when it loses us).
    abandoned: bool,
    /// Transfers riding on it that have not ended.
    users: u32,
    joins: u32,
    /// Transfers waiting for its grant.
    waiting: Vec<u64>,
}

/// The initiator's shared checks by id, and the one new transfers of a region join.
#[derive(Default)]
pub struct Checks {
    by_id: FxHashMap<u64, Check>,
    current: FxHashMap<Key, u64>,
}

impl Checks {
    /// Transfer `op` of `peer`'s region `key` (in direction `write`), ending at byte
    /// `end` of a region described as `len` bytes, at `now`: joins the current check if
    /// it covers it, else a new one with id `new_id()`.
    pub fn join(
        &mut self,
        (peer, key, write): Key,
        (end, len): (u64, u64),
        op: u64,
        now: Instant,
        new_id: impl FnOnce() -> u64,
    ) -> Joined {
        let k = (peer, key, write);
        if let Some(&id) = self.current.get(&k)
            && let Some(c) = self.by_id.get_mut(&id)
            && end <= c.len
            && c.joins < MAX_JOINS
            && now.saturating_duration_since(c.asked) < JOIN_FOR
        {
            c.users += 1;
            c.joins += 1;
            if c.granted {
                return Joined::Post(id);
            }
            c.waiting.push(op);
            return Joined::Wait(id);
        }
        let id = new_id();
        let check = Check {
            key: k,
            len,
            granted: false,
            asked: now,
            abandoned: false,
            users: 1,
            joins: 1,
            waiting: vec![op],
        };
        self.by_id.insert(id, check);
        self.current.insert(k, id);
        Joined::Ask(id)
    }

    /// `peer` answered check `id`: `None` if that is no shared check of that peer's;
    /// else the transfers that waited for it (to post if `ok`, to fail if not).
    pub fn answer(&mut self, peer: u64, id: u64, ok: bool) -> Option<Vec<u64>> {
        let c = self.by_id.get_mut(&id).filter(|c| c.key.0 == peer)?;
        if c.granted {
            // A second answer to one check (a misbehaving owner): nothing waits.
            return Some(Vec::new());
        }
        let waiting = std::mem::take(&mut c.waiting);
        c.granted = ok;
        if !ok {
            let key = c.key;
            self.unset_current(key, id);
        }
        Some(waiting)
    }

    /// Check `id` could not be sent: the transfers that waited for it (to fail), and
    /// none joins it any more (empty if it is no unanswered shared check).
    pub fn fail(&mut self, id: u64) -> Vec<u64> {
        let Some(c) = self.by_id.get_mut(&id).filter(|c| !c.granted) else {
            return Vec::new();
        };
        let (key, waiting) = (c.key, std::mem::take(&mut c.waiting));
        self.unset_current(key, id);
        waiting
    }

    /// A transfer riding on check `id` ended; `Some(peer)` when it was the last of a
    /// granted check, whose lease the owner is then told to end.
    pub fn leave(&mut self, id: u64) -> Option<u64> {
        let c = self.by_id.get_mut(&id)?;
        c.users = c.users.saturating_sub(1);
        if c.users > 0 {
            return None;
        }
        let c = self.by_id.remove(&id)?;
        self.unset_current(c.key, id);
        // (An unanswered check left with no transfer: its grant, if one comes, is
        // released as a canceled transfer's is.)
        (c.granted && !c.abandoned).then_some(c.key.0)
    }

    /// A transfer riding on check `id` was given up with pieces still out (its peer
    /// lost): it leaves, and the check's lease is not released by us.
    pub fn abandon(&mut self, id: u64) {
        if let Some(c) = self.by_id.get_mut(&id) {
            c.abandoned = true;
        }
        self.leave(id);
    }

    /// `peer` is lost: its checks take no new transfer (those riding on them still
    /// leave, and release, as they end).
    pub fn retire_peer(&mut self, peer: u64) {
        self.current.retain(|k, _| k.0 != peer);
    }

    /// Shared checks not ended.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }

    fn unset_current(&mut self, key: Key, id: u64) {
        if self.current.get(&key) == Some(&id) {
            self.current.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn ids() -> impl FnMut() -> u64 {
        let mut n = 100;
        move || {
            n += 1;
            n
        }
    }

    /// The common join: transfer `op` of bytes up to 10 of a 100-byte region, now.
    fn join(c: &mut Checks, k: Key, op: u64, id: &mut impl FnMut() -> u64) -> Joined {
        c.join(k, (10, 100), op, now(), id)
    }

    #[test]
    fn transfers_of_one_region_share_one_check_released_after_the_last() {
        let (mut c, mut id) = (Checks::default(), ids());
        let k = (7, 42, false);
        assert_eq!(
            c.join(k, (4096, 65536), 1, now(), &mut id),
            Joined::Ask(101)
        );
        assert_eq!(
            c.join(k, (65536, 65536), 2, now(), &mut id),
            Joined::Wait(101)
        );
        assert_eq!(c.answer(7, 101, true), Some(vec![1, 2]));
        assert_eq!(
            c.join(k, (8192, 65536), 3, now(), &mut id),
            Joined::Post(101)
        );
        assert_eq!(c.leave(101), None);
        assert_eq!(c.leave(101), None);
        assert_eq!(c.leave(101), Some(7), "the last one releases it");
        assert_eq!(c.len(), 0);
        assert_eq!(
            c.join(k, (4096, 65536), 4, now(), &mut id),
            Joined::Ask(102)
        );
    }

    #[test]
    fn a_transfer_past_the_checked_bytes_or_the_other_way_or_region_has_its_own() {
        let (mut c, mut id) = (Checks::default(), ids());
        assert_eq!(
            c.join((7, 42, false), (4096, 4096), 1, now(), &mut id),
            Joined::Ask(101)
        );
        assert_eq!(
            c.join((7, 42, false), (8192, 8192), 2, now(), &mut id),
            Joined::Ask(102)
        );
        assert_eq!(
            c.join((7, 42, true), (10, 8192), 3, now(), &mut id),
            Joined::Ask(103)
        );
        assert_eq!(
            c.join((8, 42, false), (10, 8192), 4, now(), &mut id),
            Joined::Ask(104)
        );
        assert_eq!(
            c.join((7, 43, false), (10, 8192), 5, now(), &mut id),
            Joined::Ask(105)
        );
        // The first is no longer joined, but still ends its lease when its transfer does.
        assert_eq!(c.answer(7, 101, true), Some(vec![1]));
        assert_eq!(c.leave(101), Some(7));
        assert_eq!(
            c.join((7, 42, false), (10, 8192), 6, now(), &mut id),
            Joined::Wait(102)
        );
    }

    /// Refused by the owner, or never sent: its waiters fail, it is joined no more, and
    /// leaving it releases nothing (no grant was had).
    #[test]
    fn a_refused_or_unsent_check_fails_its_waiters_is_not_joined_and_releases_nothing() {
        for refused in [true, false] {
            let (mut c, mut id) = (Checks::default(), ids());
            let k = (7, 42, false);
            join(&mut c, k, 1, &mut id);
            join(&mut c, k, 2, &mut id);
            match refused {
                true => assert_eq!(c.answer(7, 101, false), Some(vec![1, 2])),
                false => {
                    assert_eq!(c.fail(101), vec![1, 2]);
                    assert_eq!(c.fail(101), Vec::<u64>::new());
                    assert_eq!(c.fail(999), Vec::<u64>::new(), "no such check");
                }
            }
            assert_eq!(join(&mut c, k, 3, &mut id), Joined::Ask(102));
            assert_eq!(c.leave(101), None);
            assert_eq!(c.leave(101), None, "no grant: nothing to release");
            assert_eq!(c.len(), 1);
        }
    }

    #[test]
    fn only_its_peer_answers_a_check_and_only_once() {
        let (mut c, mut id) = (Checks::default(), ids());
        join(&mut c, (7, 42, false), 1, &mut id);
        assert_eq!(
            c.answer(8, 101, true),
            None,
            "another peer's answer is not its"
        );
        assert_eq!(c.answer(7, 999, true), None, "not a shared check");
        assert_eq!(c.answer(7, 101, true), Some(vec![1]));
        assert_eq!(
            c.answer(7, 101, false),
            Some(vec![]),
            "a second answer changes nothing"
        );
        assert_eq!(join(&mut c, (7, 42, false), 2, &mut id), Joined::Post(101));
    }

    #[test]
    fn a_check_left_by_all_before_its_answer_is_gone() {
        let (mut c, mut id) = (Checks::default(), ids());
        join(&mut c, (7, 42, false), 1, &mut id);
        assert_eq!(
            c.leave(101),
            None,
            "unanswered: its grant is released on arrival"
        );
        assert_eq!(c.answer(7, 101, true), None);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_lost_peers_checks_take_no_transfer_and_an_abandoned_one_releases_nothing() {
        let (mut c, mut id) = (Checks::default(), ids());
        let k = (7, 42, false);
        join(&mut c, k, 1, &mut id);
        join(&mut c, k, 2, &mut id);
        join(&mut c, (8, 42, false), 3, &mut id);
        c.answer(7, 101, true);
        c.retire_peer(7);
        assert_eq!(join(&mut c, k, 4, &mut id), Joined::Ask(103));
        assert_eq!(join(&mut c, (8, 42, false), 5, &mut id), Joined::Wait(102));
        c.abandon(101);
        assert_eq!(c.leave(101), None, "a piece of it is still out: no release");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_check_older_than_join_for_takes_no_new_transfer() {
        let (mut c, mut id) = (Checks::default(), ids());
        let k = (7, 42, false);
        assert_eq!(join(&mut c, k, 1, &mut id), Joined::Ask(101));
        let later = now() + JOIN_FOR;
        assert_eq!(c.join(k, (10, 100), 2, later, &mut id), Joined::Ask(102));
        assert_eq!(c.answer(7, 101, true), Some(vec![1]));
        assert_eq!(c.leave(101), Some(7), "the old one still ends its lease");
    }

    #[test]
    fn a_check_carries_at_most_max_joins_transfers() {
        let (mut c, mut id) = (Checks::default(), ids());
        let k = (7, 42, false);
        assert_eq!(join(&mut c, k, 0, &mut id), Joined::Ask(101));
        c.answer(7, 101, true);
        for op in 1..MAX_JOINS {
            assert_eq!(join(&mut c, k, op as u64, &mut id), Joined::Post(101));
        }
        assert_eq!(join(&mut c, k, 9999, &mut id), Joined::Ask(102));
    }
}
