//! Calls awaiting their answers: tags and deadlines, with time passed in.
//!
//! Deadlines are a heap whose entries are let go lazily: a call that ends (most do, long
//! before their deadline) only leaves a stale entry behind, dropped when it reaches the
//! top or when stale entries outnumber live ones (then all at once), so a call costs one
//! push, not an ordered insertion and removal.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

struct Entry<T> {
    deadline: Option<Instant>,
    /// Which of the heap's entries for this call is its deadline (moves make others).
    version: u32,
    value: T,
}

/// The calls in flight, keyed by the tag their answer will carry.
pub struct CallTable<T> {
    next_tag: u64,
    calls: HashMap<u64, Entry<T>>,
    /// Every live deadline, and stale ones (of calls that ended or moved).
    deadlines: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    /// How many entries of `deadlines` are stale.
    stale: usize,
}

impl<T> Default for CallTable<T> {
    fn default() -> Self {
        CallTable {
            next_tag: 0,
            calls: HashMap::default(),
            deadlines: BinaryHeap::new(),
            stale: 0,
        }
    }
}

impl<T> CallTable<T> {
    /// Adds a call that times out `timeout` after `now` (never, if `None`); returns its tag.
    #[must_use]
    pub fn insert(&mut self, now: Instant, timeout: Option<Duration>, value: T) -> u64 {
        self.insert_due(timeout.and_then(|t| now.checked_add(t)), value)
    }

    /// Adds a call that times out at `deadline` (never, if `None`); returns its tag.
    #[must_use]
    pub fn insert_due(&mut self, deadline: Option<Instant>, value: T) -> u64 {
        self.next_tag = self.next_tag.wrapping_add(1);
        let tag = self.next_tag;
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, tag, 0)));
        }
        let version = 0;
        self.calls.insert(
            tag,
            Entry {
                deadline,
                version,
                value,
            },
        );
        tag
    }

    /// Whether the heap's entry for `tag` of `version` is that call's deadline now.
    fn live(&self, tag: u64, version: u32) -> bool {
        self.calls.get(&tag).is_some_and(|e| e.version == version)
    }

    /// Counts one more stale entry (see [`CallTable::compact`]).
    fn went_stale(&mut self) {
        self.stale += 1;
        self.compact();
    }

    /// Drops every stale entry once they outnumber the live ones (and are more than a
    /// few): the heap holds at most twice the live deadlines, plus 33.
    fn compact(&mut self) {
        if self.stale > 32 && self.stale * 2 > self.deadlines.len() {
            let calls = &self.calls;
            self.deadlines
                .retain(|Reverse((_, tag, v))| calls.get(tag).is_some_and(|e| e.version == *v));
            self.stale = 0;
        }
    }

    /// The call's value, while it is in flight.
    pub fn get_mut(&mut self, tag: u64) -> Option<&mut T> {
        self.calls.get_mut(&tag).map(|e| &mut e.value)
    }

    /// The call's value, while it is in flight.
    pub fn get(&self, tag: u64) -> Option<&T> {
        self.calls.get(&tag).map(|e| &e.value)
    }

    /// A call's deadline (`None`: none, or not in flight).
    pub fn deadline(&self, tag: u64) -> Option<Instant> {
        self.calls.get(&tag).and_then(|e| e.deadline)
    }

    /// Replaces a call's deadline (`None`: no deadline); false if it is not in flight.
    pub fn set_deadline(&mut self, tag: u64, deadline: Option<Instant>) -> bool {
        let Some(e) = self.calls.get_mut(&tag) else {
            return false;
        };
        let old = std::mem::replace(&mut e.deadline, deadline);
        e.version = e.version.wrapping_add(1);
        if let Some(d) = deadline {
            self.deadlines.push(Reverse((d, tag, e.version)));
        }
        if old.is_some() {
            self.went_stale();
        }
        true
    }

    /// Ends a call (answered, failed or canceled); `None` if it had already ended, so that
    /// of two racing outcomes only the first counts.
    pub fn finish(&mut self, tag: u64) -> Option<T> {
        let e = self.calls.remove(&tag)?;
        if e.deadline.is_some() {
            self.went_stale();
        }
        Some(e.value)
    }

    /// A lower bound of the earliest deadline in flight, looked up without dropping stale
    /// entries (see [`CallTable::next_deadline`] for the exact one).
    pub fn earliest(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((d, _, _))| *d)
    }

    /// The earliest deadline of a call in flight (stale entries on top are dropped).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((d, tag, v))) = self.deadlines.peek() {
            if self.live(tag, v) {
                return Some(d);
            }
            self.deadlines.pop();
            self.stale = self.stale.saturating_sub(1);
        }
        None
    }

    /// Ends and returns every call whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        while let Some(&Reverse((d, tag, v))) = self.deadlines.peek() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if !self.live(tag, v) {
                self.stale = self.stale.saturating_sub(1);
                continue;
            }
            if let Some(e) = self.calls.remove(&tag) {
                out.push((tag, e.value));
            }
        }
        // Live entries left; the stale ones may now outnumber them.
        self.compact();
        out
    }

    /// The tags of every call in flight.
    pub fn tags(&self) -> Vec<u64> {
        self.calls.keys().copied().collect()
    }

    /// Every call in flight, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.calls.iter().map(|(&t, e)| (t, &e.value))
    }

    /// Calls in flight.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Against a plain map of deadlines: any sequence of inserts, ends, moved deadlines
        /// and expiries gives the same next deadline and the same expired calls, and stale
        /// entries never outnumber the live ones by more than the slack.
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec((0u8..5, 0u64..50, any::<usize>()), 0..300)) {
            let t0 = Instant::now();
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            let mut t = CallTable::default();
            let mut model: BTreeMap<u64, Option<u64>> = BTreeMap::new();
            let mut now = 0u64;
            for (op, ms, pick) in ops {
                let tags: Vec<u64> = model.keys().copied().collect();
                let some = (!tags.is_empty()).then(|| tags[pick % tags.len()]);
                match op {
                    0 => {
                        let due = (ms % 7 != 0).then_some(now + ms);
                        let tag = t.insert_due(due.map(at), ());
                        model.insert(tag, due);
                    }
                    1 => if let Some(tag) = some {
                        prop_assert!(t.finish(tag).is_some());
                        model.remove(&tag);
                    },
                    2 => if let Some(tag) = some {
                        // Few distinct values, so that a call moves back to a deadline it had.
                        let due = (ms % 5 != 0).then_some(now + ms % 3);
                        prop_assert!(t.set_deadline(tag, due.map(at)));
                        model.insert(tag, due);
                    },
                    3 => {
                        now += ms;
                        let mut got: Vec<u64> = t.expire(at(now)).into_iter().map(|x| x.0).collect();
                        got.sort_unstable();
                        let want: Vec<u64> = model.iter().filter(|(_, d)| d.is_some_and(|d| d <= now)).map(|(t, _)| *t).collect();
                        want.iter().for_each(|t| { model.remove(t); });
                        prop_assert_eq!(got, want);
                    }
                    _ => {}
                }
                let next = model.values().filter_map(|d| *d).min().map(at);
                prop_assert_eq!(t.next_deadline(), next);
                let live = model.values().filter(|d| d.is_some()).count();
                prop_assert!(t.deadlines.len() <= 2 * live + 34, "{} entries for {live}", t.deadlines.len());
                prop_assert_eq!(t.len(), model.len());
            }
        }
    }

    #[test]
    fn deadlines_expire_in_order_and_only_once() {
        let t0 = Instant::now();
        let mut t = CallTable::default();
        let a = t.insert(t0, Some(Duration::from_millis(20)), "a");
        let b = t.insert(t0, Some(Duration::from_millis(10)), "b");
        let _c = t.insert(t0, None, "c");
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(t.expire(t0 + Duration::from_millis(5)).is_empty());
        assert_eq!(t.expire(t0 + Duration::from_millis(15)), vec![(b, "b")]);
        assert_eq!(t.finish(a), Some("a"));
        assert!(t.expire(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn deadlines_can_be_moved() {
        let t0 = Instant::now();
        let mut t = CallTable::default();
        let a = t.insert(t0, None, 1);
        assert!(t.set_deadline(a, Some(t0 + Duration::from_millis(5))));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(5)));
        assert!(t.set_deadline(a, Some(t0 + Duration::from_millis(9))));
        assert!(t.expire(t0 + Duration::from_millis(6)).is_empty());
        assert_eq!(t.expire(t0 + Duration::from_millis(9)), vec![(a, 1)]);
        assert!(!t.set_deadline(a, None));
    }

    /// Expiring live entries can leave the stale ones outnumbering those left: they go.
    #[test]
    fn expiry_keeps_stale_entries_bounded() {
        let t0 = Instant::now();
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        let mut t = CallTable::default();
        for _ in 0..40 {
            let _ = t.insert_due(at(1), ());
        }
        let _ = t.insert_due(at(30), ());
        let late: Vec<u64> = (0..40).map(|_| t.insert_due(at(40), ())).collect();
        late.into_iter()
            .for_each(|tag| assert!(t.finish(tag).is_some()));
        assert_eq!(t.expire(t0 + Duration::from_millis(1)).len(), 40);
        assert!(
            t.deadlines.len() <= 2 + 33,
            "{} entries for 1",
            t.deadlines.len()
        );
        assert_eq!(t.next_deadline(), at(30));
    }

    #[test]
    fn the_first_outcome_wins() {
        let mut t = CallTable::default();
        let a = t.insert(Instant::now(), Some(Duration::ZERO), 1);
        assert_eq!(t.finish(a), Some(1));
        assert_eq!(t.finish(a), None);
        assert!(t.expire(Instant::now() + Duration::from_secs(1)).is_empty());
    }
}
