//! Bounds on what peers may hold of a server: a quantity (bytes, requests) counted per
//! peer and in total, taken before the thing is allocated and given back when it goes.

use rustc_hash::FxHashMap as HashMap;

use na::PeerId;

/// Which bound a request for more would cross.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Over {
    /// The peer's own share.
    Peer,
    /// Everyone's together.
    Total,
}

/// A quantity bounded per peer (`None`: calls to oneself) and in total.
#[derive(Debug)]
pub struct Budget {
    per_peer: u64,
    total: u64,
    used: HashMap<Option<PeerId>, u64>,
    sum: u64,
}

impl Budget {
    /// At most `per_peer` for any one peer, `total` for all.
    pub fn new(per_peer: u64, total: u64) -> Budget {
        Budget {
            per_peer,
            total,
            used: HashMap::default(),
            sum: 0,
        }
    }

    /// Takes `n` for `peer`, or says which bound it would cross (taking nothing).
    pub fn take(&mut self, peer: Option<PeerId>, n: u64) -> Result<(), Over> {
        let mine = self.used.get(&peer).copied().unwrap_or(0);
        if mine.saturating_add(n) > self.per_peer {
            return Err(Over::Peer);
        }
        if self.sum.saturating_add(n) > self.total {
            return Err(Over::Total);
        }
        *self.used.entry(peer).or_default() += n;
        self.sum += n;
        Ok(())
    }

    /// Gives back `n` that `peer` took.
    pub fn give(&mut self, peer: Option<PeerId>, n: u64) {
        if let Some(u) = self.used.get_mut(&peer) {
            let n = n.min(*u);
            *u -= n;
            self.sum -= n;
            if *u == 0 {
                self.used.remove(&peer);
            }
        }
    }

    /// What `peer` holds.
    pub fn used(&self, peer: Option<PeerId>) -> u64 {
        self.used.get(&peer).copied().unwrap_or(0)
    }

    /// What everyone holds.
    pub fn held(&self) -> u64 {
        self.sum
    }

    /// The bounds, per peer and in total.
    pub fn limits(&self) -> (u64, u64) {
        (self.per_peer, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_bound_holds_and_giving_back_frees() {
        let (a, b) = (Some(PeerId(1)), Some(PeerId(2)));
        let mut g = Budget::new(10, 15);
        assert_eq!(g.take(a, 8), Ok(()));
        assert_eq!(g.take(a, 3), Err(Over::Peer));
        assert_eq!(g.take(b, 8), Err(Over::Total));
        assert_eq!(g.take(b, 7), Ok(()));
        assert_eq!((g.used(a), g.held()), (8, 15));
        g.give(a, 8);
        assert_eq!(g.take(b, 3), Ok(()));
        assert_eq!(g.take(None, 5), Ok(()));
        assert_eq!(g.held(), 15);
    }

    proptest! {
        /// Whatever the order of takes and gives, no bound is ever exceeded and the total
        /// is the sum of the shares.
        #[test]
        fn bounds_are_never_exceeded(ops in proptest::collection::vec((0u64..4, 0u64..20, any::<bool>()), 0..200)) {
            let mut g = Budget::new(25, 60);
            let mut held: Vec<(Option<PeerId>, u64)> = Vec::new();
            for (p, n, take) in ops {
                let peer = (p > 0).then_some(PeerId(p));
                if take {
                    if g.take(peer, n).is_ok() { held.push((peer, n)); }
                } else if let Some(i) = held.iter().position(|h| h.0 == peer) {
                    let (peer, n) = held.swap_remove(i);
                    g.give(peer, n);
                }
                prop_assert!(g.held() <= 60);
                for q in 0..4 {
                    let peer = (q > 0).then_some(PeerId(q));
                    prop_assert!(g.used(peer) <= 25);
                }
                prop_assert_eq!(g.held(), held.iter().map(|h| h.1).sum::<u64>());
            }
        }
    }
}
