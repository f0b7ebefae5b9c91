//! The peer table: a peer is its fabric address (`fi_addr_t`), inserted in the provider's
//! address vector the first time its raw address is seen, and found again by that raw
//! address (the last one found first: messages come in runs from one peer).

use std::time::Instant;

use libfabric_sys as fi;
use na::{NaError, NaResult, PeerId};

use crate::fabric;
use crate::plugin::{OfiPlugin, Peer, State};

impl OfiPlugin {
    /// The fabric address of `peer`, if it is one of ours.
    pub(crate) fn fi_addr(&self, s: &State, peer: PeerId) -> NaResult<u64> {
        if s.peers.contains_key(&peer.0) {
            Ok(peer.0)
        } else {
            Err(NaError::InvalidArgument(format!("unknown peer {peer:?}")))
        }
    }

    /// The peer for a raw address, inserted into the address vector when new.
    pub(crate) fn peer_for(&self, s: &mut State, raw: &[u8]) -> NaResult<PeerId> {
        if let Some(p) = known_peer(s, raw) {
            return Ok(p);
        }
        let a = fabric_insert(self, raw)?;
        if let Some(me) = self.local {
            crate::local::inserted(me, raw);
        }
        s.by_addr.insert(raw.to_vec(), PeerId(a));
        s.last_peer = Some(PeerId(a));
        s.peers.insert(
            a,
            Peer {
                raw: raw.to_vec(),
                contacted: false,
                last_heard: Instant::now(),
                heard: false,
                last_active: Instant::now(),
                active: false,
                probing: None,
                last_probe: None,
                pending: 0,
                lost: false,
            },
        );
        Ok(PeerId(a))
    }
}

fn fabric_insert(p: &OfiPlugin, raw: &[u8]) -> NaResult<u64> {
    let mut out: fi::fi_addr_t = fi::FI_ADDR_NOTAVAIL;
    // SAFETY: raw holds one address in the provider's format; out receives one entry.
    let n = unsafe {
        fi::fi_av_insert(
            p.av.0,
            raw.as_ptr().cast(),
            1,
            &mut out,
            0,
            std::ptr::null_mut(),
        )
    };
    if n != 1 || out == fi::FI_ADDR_NOTAVAIL {
        return Err(NaError::Unreachable(format!(
            "the provider refused the address ({})",
            if n < 0 {
                fabric::strerror(n as i64)
            } else {
                "not inserted".into()
            }
        )));
    }
    Ok(out)
}

/// The peer of raw address `raw` if it is known (the last one found first).
pub(crate) fn known_peer(s: &mut State, raw: &[u8]) -> Option<PeerId> {
    if let Some(p) = s.last_peer
        && s.peers.get(&p.0).is_some_and(|q| q.raw == raw)
    {
        return Some(p);
    }
    let p = *s.by_addr.get(raw)?;
    s.last_peer = Some(p);
    Some(p)
}

#[cfg(test)]
mod tests {
    use na::Plugin;

    use crate::OfiPlugin;

    /// Lookups keep the last address parsed: a peer looked up again is the same peer,
    /// alternating between two gives each its own, and an address that differs only in
    /// its port is another peer, not the one just looked up.
    #[test]
    fn each_address_is_its_own_peer_however_lookups_alternate() {
        let open = || OfiPlugin::new(&"ofi+tcp://127.0.0.1:0".parse().unwrap()).unwrap();
        let (a, b, c) = (open(), open(), open());
        let pb = a.lookup(b.self_addr()).unwrap();
        let pc = a.lookup(c.self_addr()).unwrap();
        assert_ne!(pb, pc);
        for _ in 0..3 {
            assert_eq!(a.lookup(b.self_addr()).unwrap(), pb);
            assert_eq!(a.lookup(b.self_addr()).unwrap(), pb);
            assert_eq!(a.lookup(c.self_addr()).unwrap(), pc);
        }
        let bad: na::Address = "ofi+tcp://127.0.0.1:notaport".parse().unwrap();
        assert!(
            a.lookup(&bad).is_err(),
            "not taken for the address before it"
        );
        assert_eq!(a.lookup(c.self_addr()).unwrap(), pc);
    }
}
