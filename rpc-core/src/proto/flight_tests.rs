//! The table of calls and transfers driven without I/O: operations are numbers a fake
//! fabric hands out, completions come in any order we choose, time is virtual.

use std::time::{Duration, Instant};

use bulk::ChunkConfig;
use na::{Access, MemHandle, NaError, OpId, PeerId, RemoteMem};
use proptest::prelude::*;

use super::*;

/// A fabric that records each chunk posted as (op, offset, length).
#[derive(Default)]
struct Fabric {
    next: u64,
    posted: Vec<(OpId, u64, u64)>,
    /// Refuse the post with this number (counting from 0).
    refuse: Option<usize>,
}

impl Fabric {
    fn post(&mut self) -> impl FnMut(&Route, u64, u64) -> NaResult<OpId> + '_ {
        move |r, off, n| {
            assert_eq!(r.peer, PeerId(7));
            if self.refuse == Some(self.posted.len()) {
                self.refuse = None;
                return Err(NaError::InvalidArgument("refused".into()));
            }
            self.next += 1;
            self.posted.push((OpId(self.next), off, n));
            Ok(OpId(self.next))
        }
    }
}

fn route() -> Route {
    let remote = RemoteMem {
        key: 1,
        len: 1 << 20,
        access: Access::ReadWrite,
        extra: Default::default(),
    };
    Route {
        peer: PeerId(7),
        is_get: true,
        local: MemHandle {
            id: 1,
            remote: remote.clone(),
        },
        local_off: 0,
        remote,
        remote_off: 0,
    }
}

fn cfg(size: u64, depth: usize) -> ChunkConfig {
    ChunkConfig { size, depth }
}

#[test]
fn a_call_ends_once_with_its_answer() {
    let mut f = Flight::default();
    let tag = f.call(None, Some(PeerId(7)), "a");
    assert!(f.awaits(tag, OpId(1)));
    assert!(!f.awaits(tag, OpId(2)), "a call waits on one operation");
    assert_eq!(f.owner(OpId(1)), Owner::Call(tag));
    assert_eq!(f.owner(OpId(2)), Owner::Nobody);
    let (t, e) = f.answered(OpId(1)).unwrap();
    assert_eq!((t, e.value), (tag, "a"));
    assert!(f.answered(OpId(1)).is_none());
    assert_eq!(f.owner(OpId(1)), Owner::Nobody);
    assert!(!f.awaits(tag, OpId(3)), "an ended call takes no operation");
    assert!(f.is_empty());
    assert_eq!(f.ops_tracked(), 0);
}

#[test]
fn a_local_call_waits_on_nothing_and_ends_by_finish() {
    let mut f = Flight::default();
    let tag = f.call(None, None, 1);
    assert_eq!(f.peer(tag), None);
    assert_eq!(f.finish(tag).map(|e| e.ops().count()), Some(0));
    assert!(f.finish(tag).is_none(), "the first outcome wins");
}

#[test]
fn a_stub_answer_becomes_a_pull_that_keeps_the_call_and_its_deadline() {
    let t0 = Instant::now();
    let mut fab = Fabric::default();
    let mut f = Flight::default();
    let tag = f.call(
        Some(t0 + Duration::from_millis(10)),
        Some(PeerId(7)),
        "call",
    );
    assert!(f.awaits(tag, OpId(100)));
    assert_eq!(f.stub(OpId(100)), Some((tag, Some(PeerId(7)))));
    assert_eq!(f.ops_tracked(), 0);
    assert!(f.stub(OpId(100)).is_none());
    let over = f
        .pull_into(tag, (route(), 25, cfg(10, 2)), |v| *v = "pull", fab.post())
        .unwrap();
    assert!(over.is_none());
    assert_eq!(fab.posted, [(OpId(1), 0, 10), (OpId(2), 10, 10)]);
    assert!(
        f.pull_into(tag, (route(), 25, cfg(10, 2)), |v| *v = "again", fab.post())
            .is_none(),
        "a transfer is not turned into another"
    );
    assert_eq!(f.owner(OpId(2)), Owner::Transfer(tag));
    assert!(f.answered(OpId(2)).is_none(), "a chunk is not an answer");
    assert!(f.stub(OpId(2)).is_none());
    // The deadline set for the call ends the pull, with its chunks.
    let gone = f.expire(t0 + Duration::from_millis(10));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].1.value, "pull");
    assert_eq!(gone[0].1.ops().collect::<Vec<_>>(), [OpId(1), OpId(2)]);
    assert_eq!(f.ops_tracked(), 0);
    assert!(f.chunk_done(OpId(1), Ok(()), fab.post()).is_none());
    assert_eq!(fab.posted.len(), 2, "a late completion posts nothing");
}

#[test]
fn a_pull_into_a_call_still_waiting_is_refused() {
    let mut fab = Fabric::default();
    let mut f = Flight::default();
    let tag = f.call(None, Some(PeerId(7)), "call");
    assert!(f.awaits(tag, OpId(100)));
    let mut refused = |f: &mut Flight<&str>, tag| {
        let spec = (route(), 5, cfg(10, 2));
        f.pull_into(tag, spec, |v| *v = "changed", fab.post())
            .is_none()
    };
    assert!(refused(&mut f, tag));
    assert!(refused(&mut f, 99));
    assert_eq!(
        f.value_mut(tag),
        Some(&mut "call"),
        "a refused pull changes nothing"
    );
    assert!(fab.posted.is_empty());
}

#[test]
fn a_chunk_completion_does_not_end_a_call() {
    let mut fab = Fabric::default();
    let mut f = Flight::default();
    let tag = f.call(None, Some(PeerId(7)), ());
    assert!(f.awaits(tag, OpId(100)));
    assert!(f.chunk_done(OpId(100), Ok(()), fab.post()).is_none());
    assert_eq!(f.owner(OpId(100)), Owner::Call(tag));
}

#[test]
fn an_empty_transfer_is_over_at_once() {
    let mut fab = Fabric::default();
    let mut f = Flight::default();
    let (_, over) = f.transfer(None, route(), 0, cfg(10, 2), "x", fab.post());
    let (e, outcome) = over.unwrap();
    assert_eq!((e.value, outcome), ("x", Ok(())));
    assert!(f.is_empty() && fab.posted.is_empty());
}

#[test]
fn a_failed_chunk_stops_new_ones_and_ends_after_those_in_flight() {
    let mut fab = Fabric::default();
    let mut f = Flight::default();
    let (tag, over) = f.transfer(None, route(), 100, cfg(10, 3), (), fab.post());
    assert!(over.is_none());
    assert_eq!(fab.posted.len(), 3);
    let lost = NaError::Disconnected("gone".into());
    assert!(
        f.chunk_done(OpId(2), Err(lost.clone()), fab.post())
            .is_none()
    );
    assert!(f.chunk_done(OpId(1), Ok(()), fab.post()).is_none());
    assert_eq!(fab.posted.len(), 3, "nothing new after a failure");
    let (_, outcome) = f.chunk_done(OpId(3), Ok(()), fab.post()).unwrap();
    assert_eq!(outcome, Err(lost));
    assert!(f.value_mut(tag).is_none());
    assert_eq!(f.ops_tracked(), 0);
}

#[test]
fn a_chunk_the_transport_refuses_fails_the_transfer() {
    let mut fab = Fabric {
        refuse: Some(1),
        ..Fabric::default()
    };
    let mut f = Flight::default();
    let (_, over) = f.transfer(None, route(), 100, cfg(10, 3), (), fab.post());
    assert!(over.is_none(), "the first chunk is still in flight");
    assert_eq!(fab.posted.len(), 1);
    let (_, outcome) = f.chunk_done(OpId(1), Ok(()), fab.post()).unwrap();
    assert!(matches!(outcome, Err(NaError::InvalidArgument(_))));
}

#[test]
fn a_transfer_ended_early_lets_go_of_its_operations() {
    let mut fab = Fabric::default();
    let mut f = Flight::default();
    let (tag, _) = f.transfer(None, route(), 100, cfg(10, 2), (), fab.post());
    let e = f.finish(tag).unwrap();
    assert_eq!(e.ops().collect::<Vec<_>>(), [OpId(1), OpId(2)]);
    assert_eq!(f.owner(OpId(1)), Owner::Nobody);
    assert!(f.chunk_done(OpId(1), Ok(()), fab.post()).is_none());
    assert_eq!(fab.posted.len(), 2);
    assert!(f.finish(tag).is_none());
}

/// A finished transfer's box serves the next one: nothing of the old one (its plan, its
/// operations) shows through, whether it ended well or failed.
#[test]
fn a_transfer_after_finished_ones_starts_afresh() {
    let mut fab = Fabric::default();
    let mut f = Flight::default();
    let (_, over) = f.transfer(None, route(), 20, cfg(10, 1), 1, fab.post());
    assert!(over.is_none());
    assert!(f.chunk_done(OpId(1), Ok(()), fab.post()).is_none());
    assert_eq!(f.chunk_done(OpId(2), Ok(()), fab.post()).unwrap().1, Ok(()));
    let (_, over) = f.transfer(None, route(), 10, cfg(10, 1), 2, fab.post());
    assert!(over.is_none());
    let lost = NaError::Disconnected("gone".into());
    let (e, outcome) = f
        .chunk_done(OpId(3), Err(lost.clone()), fab.post())
        .unwrap();
    assert_eq!((e.value, outcome, e.ops().count()), (2, Err(lost), 0));
    let (tag, over) = f.transfer(None, route(), 30, cfg(10, 2), 3, fab.post());
    assert!(over.is_none());
    assert_eq!(
        &fab.posted[3..],
        [(OpId(4), 0, 10), (OpId(5), 10, 10)],
        "a fresh plan, its own window"
    );
    assert_eq!(f.owner(OpId(4)), Owner::Transfer(tag));
    assert_eq!(f.owner(OpId(1)), Owner::Nobody);
    assert_eq!(f.ops_tracked(), 2);
}

#[test]
fn deadlines_move_and_expire_only_what_is_due() {
    let t0 = Instant::now();
    let mut fab = Fabric::default();
    let mut f = Flight::default();
    let a = f.call(Some(t0 + Duration::from_millis(5)), None, "a");
    let (b, _) = f.transfer(None, route(), 10, cfg(10, 1), "b", fab.post());
    assert!(f.set_deadline(b, Some(t0 + Duration::from_millis(3))));
    assert_eq!(f.next_deadline(), Some(t0 + Duration::from_millis(3)));
    let tags: Vec<u64> = f
        .expire(t0 + Duration::from_millis(4))
        .iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(tags, [b]);
    assert_eq!(f.tags(), [a]);
    assert!(!f.set_deadline(b, None));
}

proptest! {
    /// Chunks completing in any order, some failing: the window is never exceeded, no
    /// byte is posted twice, every byte is posted unless a chunk failed, the outcome
    /// comes once (after every chunk posted has completed) and is the first error.
    #[test]
    fn chunks_in_any_order(
        len in 0u64..200,
        size in 1u64..40,
        depth in 1usize..5,
        picks in proptest::collection::vec((any::<usize>(), any::<bool>()), 0..64),
    ) {
        let mut fab = Fabric::default();
        let mut f = Flight::default();
        let (_, mut over) = f.transfer(None, route(), len, cfg(size, depth), (), fab.post());
        let mut inflight: Vec<OpId> = fab.posted.iter().map(|p| p.0).collect();
        let mut first_err = None;
        let mut picks = picks.into_iter();
        while over.is_none() {
            prop_assert!(!inflight.is_empty() && inflight.len() <= depth);
            let (i, fail) = picks.next().unwrap_or((0, false));
            let op = inflight.remove(i % inflight.len());
            let r = if fail {
                let e = NaError::Disconnected(format!("{op:?}"));
                first_err.get_or_insert(e.clone());
                Err(e)
            } else {
                Ok(())
            };
            let before = fab.posted.len();
            over = f.chunk_done(op, r, fab.post());
            inflight.extend(fab.posted[before..].iter().map(|p| p.0));
            prop_assert!(first_err.is_none() || fab.posted.len() == before);
        }
        let (_, outcome) = over.unwrap();
        prop_assert!(inflight.is_empty());
        prop_assert_eq!(outcome, first_err.clone().map_or(Ok(()), Err));
        let mut next = 0;
        for &(_, off, n) in &fab.posted {
            prop_assert_eq!(off, next);
            prop_assert!(n > 0 && n <= size);
            next += n;
        }
        prop_assert!(next <= len && (first_err.is_some() || next == len));
        prop_assert!(f.is_empty() && f.ops_tracked() == 0);
    }
}

/// Answers handed over unposted are taken only for a call waiting on no receive, from
/// the peer it called: not from another peer, not for a local call, a transfer, a call
/// on a posted receive or one that ended.
#[test]
fn an_unposted_answer_is_taken_only_from_the_peer_called() {
    let (a, b) = (PeerId(1), PeerId(2));
    let mut f: Flight<&str> = Flight::default();
    let to_a = f.call(None, Some(a), "to a");
    let local = f.call(None, None, "local");
    let posted = f.call(None, Some(a), "posted");
    assert!(f.awaits(posted, OpId(90)));
    let mut fabric = Fabric::default();
    let (moving, _) = f.transfer(None, route(), 4096, cfg(4096, 1), "pull", fabric.post());
    assert!(f.awaits_from(to_a, a));
    assert!(!f.awaits_from(to_a, b), "another peer's answer");
    assert!(!f.awaits_from(local, a), "a local call");
    assert!(!f.awaits_from(posted, a), "a call on a posted receive");
    assert!(!f.awaits_from(moving, PeerId(7)), "a transfer");
    assert!(!f.awaits_from(12345, a), "no such call");
    assert_eq!(f.awaiting_from(a), vec![to_a]);
    assert!(f.awaiting_from(b).is_empty());
    assert_eq!(f.finish(to_a).map(|e| e.value), Some("to a"));
    assert!(!f.awaits_from(to_a, a), "a call that ended");
    assert!(f.awaiting_from(a).is_empty());
}

/// A lost peer's calls on no posted receive fail with the loss at the grace's end (or
/// their own deadline, if sooner), unless their answer comes first; others are untouched.
#[test]
fn a_lost_peers_calls_fail_with_the_loss_after_a_grace_unless_answered() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let (a, b) = (PeerId(1), PeerId(2));
    let mut f: Flight<&str> = Flight::default();
    let late = f.call(Some(ms(100)), Some(a), "due late");
    let soon = f.call(Some(ms(5)), Some(a), "due soon");
    let answered = f.call(None, Some(a), "answered in the grace");
    let other = f.call(None, Some(b), "another peer's");
    let why = NaError::Disconnected("reset".into());
    assert_eq!(f.lose(a, ms(10), &why), 3);
    assert_eq!(f.next_deadline(), Some(ms(5)));
    assert!(f.awaits_from(answered, a), "an answer may still come");
    // A new timeout does not take a lost call past its grace, nor off the clock.
    assert!(f.set_deadline(late, Some(ms(1000))));
    assert!(f.set_deadline(other, None));
    assert_eq!(
        f.finish(answered).map(|e| e.value),
        Some("answered in the grace")
    );
    let mut gone: Vec<(u64, Option<NaError>)> = f
        .expire(ms(10))
        .into_iter()
        .map(|(t, _, lost)| (t, lost))
        .collect();
    gone.sort_by_key(|g| g.0);
    assert_eq!(gone, [(late, Some(why.clone())), (soon, Some(why))]);
    assert_eq!(f.tags(), [other]);
    assert!(f.expire(ms(1000)).is_empty());
}
