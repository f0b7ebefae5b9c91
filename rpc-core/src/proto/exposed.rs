//! Overflow answers exposed for their callers to pull: a server answers a call whose
//! answer is too large for a message with a descriptor of the exposed memory and a
//! release id; the memory is kept until the caller releases it (only the peer it was for
//! may), its deadline passes, or the peer is lost. Time comes in as arguments.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

struct Item<P, V> {
    peer: P,
    deadline: Instant,
    value: V,
}

/// The exposed answers, by release id; `P` names peers, `V` is what is kept.
pub struct Exposed<P, V> {
    next: u64,
    items: HashMap<u64, Item<P, V>>,
    deadlines: BTreeSet<(Instant, u64)>,
}

impl<P, V> Default for Exposed<P, V> {
    fn default() -> Self {
        Exposed {
            next: 0,
            items: HashMap::default(),
            deadlines: BTreeSet::new(),
        }
    }
}

impl<P: PartialEq, V> Exposed<P, V> {
    /// Keeps `value` for `peer` until `ttl` after `now`; returns its release id.
    pub fn expose(&mut self, peer: P, now: Instant, ttl: Duration, value: V) -> u64 {
        self.next += 1;
        let id = self.next;
        let deadline = now
            .checked_add(ttl)
            .unwrap_or(now + Duration::from_secs(3600));
        self.deadlines.insert((deadline, id));
        self.items.insert(
            id,
            Item {
                peer,
                deadline,
                value,
            },
        );
        id
    }

    /// `from` released `id`: what was kept, if `id` was exposed for `from` (anyone else's
    /// release, or a second one, changes nothing).
    pub fn release(&mut self, id: u64, from: Option<&P>) -> Option<V> {
        if self.items.get(&id).is_none_or(|i| Some(&i.peer) != from) {
            return None;
        }
        let i = self.items.remove(&id)?;
        self.deadlines.remove(&(i.deadline, id));
        Some(i.value)
    }

    /// Takes out every answer whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<V> {
        let mut out = Vec::new();
        while let Some(&(d, id)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.deadlines.pop_first();
            out.extend(self.items.remove(&id).map(|i| i.value));
        }
        out
    }

    /// The peer is gone: takes out every answer exposed for it.
    pub fn peer_lost(&mut self, peer: &P) -> Vec<V> {
        let ids: Vec<u64> = (self.items.iter())
            .filter(|(_, i)| &i.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        (ids.into_iter())
            .filter_map(|id| self.release(id, Some(peer)))
            .collect()
    }

    /// When the next answer expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Answers exposed.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is exposed.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes out everything (the engine stops).
    pub fn clear(&mut self) {
        self.items.clear();
        self.deadlines.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn only_the_peer_an_answer_is_for_releases_it_and_only_once() {
        let t0 = Instant::now();
        let mut e = Exposed::default();
        let a = e.expose(1u64, t0, S, "a");
        assert_eq!(e.release(a, Some(&2)), None, "another peer");
        assert_eq!(e.release(a, None), None, "a local caller");
        assert_eq!(e.release(a + 1, Some(&1)), None, "an id never given");
        assert_eq!(e.release(a, Some(&1)), Some("a"));
        assert_eq!(e.release(a, Some(&1)), None, "twice");
        assert!(e.is_empty() && e.next_deadline().is_none());
    }

    #[test]
    fn unreleased_answers_expire_in_order() {
        let t0 = Instant::now();
        let mut e = Exposed::default();
        let _a = e.expose(1u64, t0, 2 * S, "a");
        let b = e.expose(1u64, t0, S, "b");
        let _c = e.expose(2u64, t0, 3 * S, "c");
        assert_eq!(e.next_deadline(), Some(t0 + S));
        assert!(e.expire(t0).is_empty());
        assert_eq!(e.expire(t0 + 2 * S), vec!["b", "a"]);
        assert_eq!(e.release(b, Some(&1)), None, "expired");
        assert_eq!(e.next_deadline(), Some(t0 + 3 * S));
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn a_lost_peer_frees_its_answers_only() {
        let t0 = Instant::now();
        let mut e = Exposed::default();
        e.expose(1u64, t0, S, "a");
        let b = e.expose(2u64, t0, S, "b");
        e.expose(1u64, t0, S, "c");
        let mut lost = e.peer_lost(&1);
        lost.sort();
        assert_eq!(lost, vec!["a", "c"]);
        assert_eq!(e.len(), 1);
        assert_eq!(e.expire(t0 + S), vec!["b"]);
        assert_eq!(e.release(b, Some(&2)), None);
    }
}
