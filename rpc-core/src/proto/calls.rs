//! Calls awaiting their answers: tags and deadlines, with time passed in.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

struct Entry<T> {
    deadline: Option<Instant>,
    value: T,
}

/// The calls in flight, keyed by the tag their answer will carry.
pub struct CallTable<T> {
    next_tag: u64,
    calls: HashMap<u64, Entry<T>>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl<T> Default for CallTable<T> {
    fn default() -> Self {
        CallTable {
            next_tag: 0,
            calls: HashMap::default(),
            deadlines: BTreeSet::new(),
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
            self.deadlines.insert((d, tag));
        }
        self.calls.insert(tag, Entry { deadline, value });
        tag
    }

    /// The call's value, while it is in flight.
    pub fn get_mut(&mut self, tag: u64) -> Option<&mut T> {
        self.calls.get_mut(&tag).map(|e| &mut e.value)
    }

    /// The call's value, while it is in flight.
    pub fn get(&self, tag: u64) -> Option<&T> {
        self.calls.get(&tag).map(|e| &e.value)
    }

    /// Replaces a call's deadline (`None`: no deadline); false if it is not in flight.
    pub fn set_deadline(&mut self, tag: u64, deadline: Option<Instant>) -> bool {
        let Some(e) = self.calls.get_mut(&tag) else {
            return false;
        };
        if let Some(d) = e.deadline.take() {
            self.deadlines.remove(&(d, tag));
        }
        if let Some(d) = deadline {
            self.deadlines.insert((d, tag));
        }
        e.deadline = deadline;
        true
    }

    /// Ends a call (answered, failed or canceled); `None` if it had already ended, so that
    /// of two racing outcomes only the first counts.
    pub fn finish(&mut self, tag: u64) -> Option<T> {
        let e = self.calls.remove(&tag)?;
        if let Some(d) = e.deadline {
            self.deadlines.remove(&(d, tag));
        }
        Some(e.value)
    }

    /// The earliest deadline of a call in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Ends and returns every call whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        while let Some(&(d, tag)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(e) = self.calls.remove(&tag) {
                out.push((tag, e.value));
            }
        }
        out
    }

    /// The tags of every call in flight.
    pub fn tags(&self) -> Vec<u64> {
        self.calls.keys().copied().collect()
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

    #[test]
    fn the_first_outcome_wins() {
        let mut t = CallTable::default();
        let a = t.insert(Instant::now(), Some(Duration::ZERO), 1);
        assert_eq!(t.finish(a), Some(1));
        assert_eq!(t.finish(a), None);
        assert!(t.expire(Instant::now() + Duration::from_secs(1)).is_empty());
    }
}
