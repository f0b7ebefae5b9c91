//! A peer to call, as resolved by an engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use na::{Address, PeerId};

/// A peer to call: an address resolved by [`crate::Engine::lookup`]. Endpoints are equal (and
/// hash) by address.
#[derive(Clone, Debug)]
pub struct Endpoint {
    target: Arc<Target>,
}

/// An address, and the transport's peer for it in the engine that resolved it (so that a
/// call does not look the address up again).
#[derive(Debug)]
struct Target {
    addr: Address,
    /// The id of the engine that resolved it (unique in the process).
    engine: u64,
    /// Its [`PeerId`] there; [`SELF`] for the engine itself. Replaced when the connection
    /// it named ended and a call dialled again.
    peer: AtomicU64,
}

/// The peer of an endpoint naming its own engine.
const SELF: u64 = u64::MAX;

impl Endpoint {
    /// The peer's address.
    pub fn addr(&self) -> &Address {
        &self.target.addr
    }

    /// `addr` resolved by engine `engine` to `peer` (`None`: the engine itself).
    pub(crate) fn resolved(addr: Address, engine: u64, peer: Option<PeerId>) -> Self {
        let peer = AtomicU64::new(peer.map_or(SELF, |p| p.0));
        Endpoint {
            target: Arc::new(Target { addr, engine, peer }),
        }
    }

    /// Whether it names engine `engine`, listening on `self_addr`, itself.
    pub(crate) fn is_local_to(&self, engine: u64, self_addr: &Address) -> bool {
        if self.target.engine == engine {
            return self.target.peer.load(Ordering::Relaxed) == SELF;
        }
        self.target.addr == *self_addr
    }

    /// The peer resolved for it in engine `engine`, if it was resolved there.
    pub(crate) fn peer_in(&self, engine: u64) -> Option<PeerId> {
        let p = self.target.peer.load(Ordering::Relaxed);
        (self.target.engine == engine && p != SELF).then_some(PeerId(p))
    }

    /// Remembers the peer a call in engine `engine` resolved it to.
    pub(crate) fn remember(&self, engine: u64, peer: PeerId) {
        if self.target.engine == engine && peer.0 != SELF {
            self.target.peer.store(peer.0, Ordering::Relaxed);
        }
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.addr() == other.addr()
    }
}

impl Eq for Endpoint {}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.addr().hash(h)
    }
}
