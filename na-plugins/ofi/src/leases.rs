//! Transfers an owner has granted and not yet seen end, on providers whose RMA the owner
//! checks (`Provider::checked_rma`). A transfer granted just before the owner deregisters
//! the region would reach it after: `shm` performs it anyway (the initiator's own
//! `process_vm_writev`/`readv` where CMA works, else the owner's provider, which checks no
//! key), `tcp;ofi_rxm` refuses it by closing the connection. So the initiator tells the
//! owner when the transfer's last piece came back (a [`crate::wire::Kind::Release`]), and
//! a deregistration waits for the region's leases to end (or their peer to be lost):
//! memory handed back to the program is not written (or read) afterwards. Pure
//! bookkeeping, tested here.

use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;

/// Leases one peer may hold at once: a grant beyond it is refused (the transfer fails as
/// a refused one), so a peer that never releases cannot grow the table. Far above what a
/// program keeps in flight (`qs-bw` keeps 64 transfers per RPC).
pub const MAX_PER_PEER: usize = 16 << 10;

/// Leases all peers may hold at once (about 10 MiB of table): a peer is whatever address
/// a message names, so one that forges addresses is bounded here, not by its share.
pub const MAX_TOTAL: usize = 256 << 10;

/// Granted transfers by (peer, the initiator's operation), and how many each region has.
#[derive(Default)]
pub struct Leases {
    /// (Keyed by the peer's fabric address, ours, and the peer's op id. The address is
    /// the one the message names, which a peer may forge: see [`MAX_TOTAL`].)
    by_op: FxHashMap<(u64, u64), u64>,
    per_region: FxHashMap<u64, u32>,
    per_peer: FxHashMap<u64, usize>,
}

impl Leases {
    /// Records the grant of `peer`'s transfer `op` of `region`; false (grant it not) when the
    /// peer holds [`MAX_PER_PEER`] leases already, or all peers [`MAX_TOTAL`]. A check
    /// repeated for one op holds one lease.
    pub fn grant(&mut self, peer: u64, op: u64, region: u64) -> bool {
        let full = self.per_peer.get(&peer).copied().unwrap_or(0) >= MAX_PER_PEER
            || self.by_op.len() >= MAX_TOTAL;
        match self.by_op.entry((peer, op)) {
            Entry::Occupied(e) => *e.get() == region,
            Entry::Vacant(_) if full => false,
            Entry::Vacant(e) => {
                e.insert(region);
                *self.per_region.entry(region).or_default() += 1;
                *self.per_peer.entry(peer).or_default() += 1;
                true
            }
        }
    }

    /// `peer` says its transfer `op` is over (unknown ones are ignored: a release may follow
    /// a refusal, or come twice).
    pub fn release(&mut self, peer: u64, op: u64) {
        if let Some(region) = self.by_op.remove(&(peer, op)) {
            self.drop_one(peer, region);
        }
    }

    /// `peer` is lost: its transfers are over (its process is gone, or silent past the
    /// probe timeout).
    pub fn forget_peer(&mut self, peer: u64) {
        if self.per_peer.contains_key(&peer) {
            self.forget_where(|p, _| p == peer);
        }
    }

    /// Ends `peer`'s leases of `region` (a deregistration gave up waiting for them).
    pub fn forget_holder(&mut self, peer: u64, region: u64) {
        if self.per_peer.contains_key(&peer) {
            self.forget_where(|p, r| p == peer && r == region);
        }
    }

    /// Ends every lease whose (peer, region) `gone` says.
    fn forget_where(&mut self, gone: impl Fn(u64, u64) -> bool) {
        let mut ended = Vec::new();
        self.by_op.retain(|&(p, _), r| {
            let end = gone(p, *r);
            if end {
                ended.push((p, *r));
            }
            !end
        });
        for (p, r) in ended {
            self.drop_one(p, r);
        }
    }

    /// Whether `peer` holds leases.
    pub fn holds(&self, peer: u64) -> bool {
        self.per_peer.contains_key(&peer)
    }

    /// Whether a granted transfer of `region` may still be under way.
    pub fn held(&self, region: u64) -> bool {
        self.per_region.contains_key(&region)
    }

    /// The peers holding leases of `region`, each once.
    pub fn holders(&self, region: u64) -> Vec<u64> {
        if !self.held(region) {
            return Vec::new();
        }
        let mut peers: Vec<u64> = self
            .by_op
            .iter()
            .filter(|&(_, &r)| r == region)
            .map(|(&(p, _), _)| p)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    fn drop_one(&mut self, peer: u64, region: u64) {
        self.drop_peer(peer);
        self.drop_region(region);
    }

    fn drop_peer(&mut self, peer: u64) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    fn drop_region(&mut self, region: u64) {
        if let Some(n) = self.per_region.get_mut(&region) {
            *n -= 1;
            if *n == 0 {
                self.per_region.remove(&region);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_held_until_each_of_its_puts_is_released() {
        let mut l = Leases::default();
        assert!(l.grant(1, 10, 7) && l.grant(2, 10, 7) && l.grant(1, 11, 8));
        assert!(l.held(7) && l.held(8));
        l.release(1, 10);
        assert!(l.held(7), "peer 2's put is still under way");
        l.release(2, 10);
        assert!(!l.held(7) && l.held(8));
        l.release(1, 11);
        assert!(!l.held(8));
        assert!(l.by_op.is_empty() && l.per_peer.is_empty() && l.per_region.is_empty());
    }

    #[test]
    fn unknown_and_repeated_releases_change_nothing() {
        let mut l = Leases::default();
        assert!(l.grant(1, 10, 7));
        l.release(1, 99);
        l.release(2, 10);
        assert!(l.held(7), "another peer cannot release peer 1's put");
        l.release(1, 10);
        l.release(1, 10);
        assert!(!l.held(7));
    }

    #[test]
    fn a_repeated_check_holds_one_lease() {
        let mut l = Leases::default();
        assert!(l.grant(1, 10, 7) && l.grant(1, 10, 7));
        assert!(!l.grant(1, 10, 8), "one op, another region: refused");
        l.release(1, 10);
        assert!(!l.held(7));
    }

    #[test]
    fn a_lost_peer_releases_everything_it_held() {
        let mut l = Leases::default();
        assert!(l.grant(1, 10, 7) && l.grant(1, 11, 7) && l.grant(2, 10, 8));
        l.forget_peer(1);
        assert!(!l.held(7) && l.held(8));
        l.release(1, 11);
        assert!(l.held(8));
        l.forget_peer(2);
        assert!(!l.held(8) && l.by_op.is_empty() && l.per_region.is_empty());
    }

    #[test]
    fn a_regions_holders_are_named_once_each() {
        let mut l = Leases::default();
        assert!(l.grant(3, 10, 7) && l.grant(1, 11, 7) && l.grant(3, 12, 7) && l.grant(2, 1, 8));
        assert!(l.grant(3, 13, 9));
        assert_eq!(l.holders(7), vec![1, 3]);
        assert_eq!(l.holders(8), vec![2]);
        l.forget_holder(3, 7);
        assert_eq!(l.holders(7), vec![1]);
        assert_eq!(l.holders(9), vec![3]);
        assert!(l.holds(3), "its lease of another region stays");
    }

    #[test]
    fn a_region_given_up_on_holds_nothing_after() {
        let mut l = Leases::default();
        assert!(l.grant(1, 10, 7) && l.grant(2, 11, 7) && l.grant(1, 12, 8));
        for p in l.holders(7) {
            l.forget_holder(p, 7);
        }
        assert!(!l.held(7) && l.held(8));
        assert_eq!(l.per_peer.get(&1), Some(&1));
        assert_eq!(l.per_peer.get(&2), None);
        l.release(2, 11);
        l.release(1, 12);
        assert!(l.by_op.is_empty() && l.per_peer.is_empty() && l.per_region.is_empty());
    }

    #[test]
    fn forged_peers_together_cannot_grow_the_table_past_its_bound() {
        let mut l = Leases::default();
        let per = MAX_PER_PEER as u64;
        for peer in 0..(MAX_TOTAL as u64).div_ceil(per) {
            for op in 0..per {
                l.grant(peer, op, 7);
            }
        }
        assert_eq!(l.by_op.len(), MAX_TOTAL);
        assert!(!l.grant(u64::MAX, 0, 7), "a new address gets nothing more");
    }

    #[test]
    fn a_peer_cannot_hold_more_than_its_share() {
        let mut l = Leases::default();
        for op in 0..MAX_PER_PEER as u64 {
            assert!(l.grant(1, op, 7));
        }
        assert!(!l.grant(1, u64::MAX, 7), "one more is refused");
        assert!(l.grant(2, 0, 7), "another peer still gets its own");
        l.release(1, 0);
        assert!(l.grant(1, u64::MAX, 7), "room again after a release");
    }
}
