//! Checks shared by the transfers of one region ([`crate::checks`]), on real endpoints:
//! transfers of one region in one direction cost one check, the owner's lease ends once
//! the last of them has, a new batch checks again, and a forged segment table is
//! refused with the memory untouched.

use na::{Access, MemHandle, NaError, OpId, Plugin, Segment};
use qs_tests::conformance::Driven;

use crate::{OfiPlugin, wire};

/// Above the carried size (`OfiConfig::carry_max`, 4 KiB): checked transfers.
const PIECE: usize = 16 << 10;
const PIECES: usize = 16;

type Arc = std::sync::Arc<OfiPlugin>;

/// Two endpoints at `addr`, the first driven, and its peer id of the second; `theirs`
/// registered at the second and `mine` at the first.
fn pair(
    addr: &str,
    theirs: &mut [u8],
    mine: &mut [u8],
) -> (Arc, Arc, Driven, na::PeerId, [MemHandle; 2]) {
    let open = || Arc::new(OfiPlugin::new(&addr.parse().unwrap()).unwrap());
    let (oa, ob) = (open(), open());
    let a = Driven::new(oa.clone());
    let pb = a.p.lookup(ob.self_addr()).unwrap();
    // SAFETY: the tests declare both buffers before the endpoints (so they are dropped
    // after them) and read them only when no transfer of them is in flight.
    let handles = unsafe {
        [
            ob.register(&[Segment::from_slice(theirs)], Access::ReadWrite)
                .unwrap(),
            oa.register(&[Segment::from_slice(mine)], Access::ReadWrite)
                .unwrap(),
        ]
    };
    (oa, ob, a, pb, handles)
}

#[test]
fn transfers_of_one_region_share_a_check_and_its_lease_ends_with_the_last() {
    for addr in ["ofi+shm://auto", "ofi+tcp://127.0.0.1:0"] {
        let mut theirs: Vec<u8> = (0..PIECES * PIECE).map(|i| (i % 251) as u8 + 1).collect();
        let mut mine = vec![0u8; PIECES * PIECE];
        let (oa, ob, mut a, pb, [hb, ha]) = pair(addr, &mut theirs, &mut mine);
        let leased = || crate::plugin::lock(&ob.state).leases.held(hb.id);
        let checks = || oa.stats().checks;
        // The owner is driven only once every get is posted, so that no grant comes
        // before the last joins (a fast owner may otherwise answer, and the first get
        // end, before the next is posted: that one checks again).
        let gets = |a: &mut Driven| {
            let ops: Vec<OpId> = (0..PIECES)
                .map(|i| {
                    let at = (i * PIECE) as u64;
                    a.p.get(pb, &ha, at, &hb.remote, at, PIECE as u64).unwrap()
                })
                .collect();
            let _b = Driven::new(ob.clone());
            for op in ops {
                assert_eq!(a.done(op), Ok(Vec::new()), "{addr}");
            }
        };
        gets(&mut a);
        assert_eq!(
            checks(),
            1,
            "{addr}: {PIECES} gets of one region, one check"
        );
        assert_eq!(mine, theirs, "{addr}");
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while leased() && std::time::Instant::now() < end {
            ob.progress(Some(std::time::Duration::from_millis(1)))
                .unwrap();
        }
        assert!(!leased(), "{addr}: the lease ended with the last get");
        gets(&mut a);
        assert_eq!(
            checks(),
            2,
            "{addr}: a batch after the last ended checks again"
        );
        let _b = Driven::new(ob.clone());
        let put = a.p.put(pb, &ha, 0, &hb.remote, 0, PIECE as u64).unwrap();
        assert_eq!(a.done(put), Ok(Vec::new()), "{addr}");
        assert_eq!(checks(), 3, "{addr}: a put is checked apart from the gets");

        // A segment table claiming twice the region: the owner refuses its check.
        let mut forged = hb.remote.clone();
        let mut segs = wire::decode_segs(&forged.extra).unwrap();
        segs[0].len *= 2;
        forged.extra = wire::encode_segs(&segs).into();
        forged.len *= 2;
        mine.fill(0);
        let far = (PIECES * PIECE) as u64;
        let bad = [
            a.p.get(pb, &ha, 0, &forged, far, PIECE as u64).unwrap(),
            a.p.get(pb, &ha, 0, &forged, 0, PIECE as u64).unwrap(),
        ];
        for op in bad {
            let r = a.done(op);
            assert!(matches!(r, Err(NaError::AccessDenied(_))), "{addr}: {r:?}");
        }
        assert!(
            mine.iter().all(|&x| x == 0),
            "{addr}: nothing read through it"
        );
    }
}

/// A transfer canceled while it waits for the check it shares is dropped from it: the
/// others complete, and the lease ends once they have.
#[test]
fn a_transfer_canceled_while_its_shared_check_is_out_leaves_the_others_going() {
    for addr in ["ofi+shm://auto", "ofi+tcp://127.0.0.1:0"] {
        let mut theirs = vec![3u8; 4 * PIECE];
        let mut mine = vec![0u8; 4 * PIECE];
        let (oa, ob, mut a, pb, [hb, ha]) = pair(addr, &mut theirs, &mut mine);
        let ops: Vec<OpId> = (0..4)
            .map(|i| {
                let at = (i * PIECE) as u64;
                a.p.get(pb, &ha, at, &hb.remote, at, PIECE as u64).unwrap()
            })
            .collect();
        assert!(a.p.cancel(ops[1]), "{addr}: still waiting, so canceled");
        let b = Driven::new(ob.clone());
        assert_eq!(a.done(ops[1]), Err(NaError::Canceled), "{addr}");
        for op in [ops[0], ops[2], ops[3]] {
            assert_eq!(a.done(op), Ok(Vec::new()), "{addr}");
        }
        assert_eq!(oa.stats().checks, 1, "{addr}");
        assert!(
            mine[PIECE..2 * PIECE].iter().all(|&x| x == 0),
            "{addr}: not read"
        );
        assert!(mine[2 * PIECE..].iter().all(|&x| x == 3), "{addr}");
        drop(b);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let leased = || crate::plugin::lock(&ob.state).leases.held(hb.id);
        while leased() && std::time::Instant::now() < end {
            ob.progress(Some(std::time::Duration::from_millis(1)))
                .unwrap();
        }
        assert!(!leased(), "{addr}: released once the three others ended");
    }
}
