//! What an initiator makes of its owners: answers to checked transfers are taken only from
//! that owner and only in the form asked for (real shm endpoints; the owner never
//! progresses, the test answers in its name, or lies), and a transfer to an owner gone
//! since it was reached fails as a lost peer.

use na::{Access, Event, NaError, NaResult, OpId, Plugin, Segment};

use crate::{OfiPlugin, wire};

fn shm() -> OfiPlugin {
    OfiPlugin::new(&"ofi+shm://auto".parse().unwrap()).unwrap()
}

/// Delivers to `to` an answer of `kind` to op `op` as if `from` sent it.
fn answer(to: &OfiPlugin, from: &OfiPlugin, kind: wire::Kind, op: OpId, ok: bool, data: &[u8]) {
    let mut m = wire::header(kind, 0, &from.self_raw, 0);
    match kind {
        wire::Kind::Grant => m.extend_from_slice(&wire::encode_grant(op.0, ok)),
        _ => wire::encode_carried(&mut m, op.0, |b| {
            b.extend_from_slice(data);
            ok
        }),
    }
    to.handle_unexpected(&m);
    to.poll_cq(true);
}

/// `from` sends `to` a first message while `to` progresses: the provider connects a pair
/// once the receiver progresses (the tests then keep `to` still).
fn say_hello(from: &OfiPlugin, to_peer: na::PeerId, to: &std::sync::Arc<OfiPlugin>) {
    let to2 = to.clone();
    let t = std::thread::spawn(move || {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < end {
            to2.progress(Some(std::time::Duration::from_millis(1)))
                .unwrap();
            if std::iter::from_fn(|| to2.poll_event())
                .any(|e| matches!(e, Event::Unexpected { .. }))
            {
                return;
            }
        }
    });
    from.send_unexpected(to_peer, 1, b"hello".to_vec()).unwrap();
    t.join().unwrap();
}

/// Registers `theirs` at `b` and `mine` at `a`, for reading and writing.
fn register_pair(
    a: &dyn Plugin,
    b: &dyn Plugin,
    theirs: &mut [u8],
    mine: &mut [u8],
) -> (na::MemHandle, na::MemHandle) {
    // SAFETY: the tests keep both buffers alive, and write them only through the
    // endpoints, until their end.
    unsafe {
        (
            b.register(&[Segment::from_slice(theirs)], Access::ReadWrite)
                .unwrap(),
            a.register(&[Segment::from_slice(mine)], Access::ReadWrite)
                .unwrap(),
        )
    }
}

fn outcome(p: &OfiPlugin, op: OpId) -> Option<NaResult<Vec<u8>>> {
    std::iter::from_fn(|| p.poll_event()).find_map(|e| match e {
        Event::Done { op: o, result } if o == op => Some(result),
        _ => None,
    })
}

#[test]
fn answers_come_from_the_owner_in_the_form_asked() {
    let (a, b, other) = (shm(), std::sync::Arc::new(shm()), shm());
    assert!(
        a.provider().checked_rma,
        "shm transfers are checked by the owner"
    );
    let pb = a.lookup(b.self_addr()).unwrap();
    say_hello(&a, pb, &b);
    let mut theirs = vec![5u8; 64];
    let mut mine = vec![0u8; 64];
    let (hb, ha) = register_pair(&a, &*b, &mut theirs, &mut mine);
    let misbehaved =
        |r: Option<NaResult<Vec<u8>>>| matches!(r, Some(Err(NaError::PeerMisbehaved(_))));

    let get = a.get(pb, &ha, 0, &hb.remote, 0, 16).unwrap();
    answer(&a, &other, wire::Kind::Carried, get, true, &[9; 16]);
    answer(
        &a,
        &b,
        wire::Kind::Carried,
        OpId(get.0 + 1000),
        true,
        &[9; 16],
    );
    assert!(
        outcome(&a, get).is_none(),
        "answers from another peer or for no op are ignored"
    );
    answer(&a, &b, wire::Kind::Grant, get, true, &[]);
    assert!(
        misbehaved(outcome(&a, get)),
        "a grant where the bytes were asked for"
    );

    let get = a.get(pb, &ha, 0, &hb.remote, 0, 16).unwrap();
    answer(&a, &b, wire::Kind::Carried, get, true, &[9; 15]);
    assert!(misbehaved(outcome(&a, get)), "fewer bytes than asked");
    let get = a.get(pb, &ha, 0, &hb.remote, 0, 16).unwrap();
    answer(&a, &b, wire::Kind::Carried, get, false, &[]);
    assert!(matches!(
        outcome(&a, get),
        Some(Err(NaError::AccessDenied(_)))
    ));
    let put = a.put(pb, &ha, 0, &hb.remote, 0, 16).unwrap();
    answer(&a, &b, wire::Kind::Carried, put, true, &[9; 16]);
    assert!(misbehaved(outcome(&a, put)), "bytes for a put");
    assert!(mine.iter().all(|&x| x == 0), "nothing taken from lies");
    let get = a.get(pb, &ha, 0, &hb.remote, 0, 16).unwrap();
    assert!(a.cancel(get));
    answer(&a, &b, wire::Kind::Carried, get, true, &[9; 16]);
    assert_eq!(outcome(&a, get), Some(Err(NaError::Canceled)));
    assert!(
        mine.iter().all(|&x| x == 0),
        "a carried answer after its cancel writes nothing"
    );

    let get = a.get(pb, &ha, 8, &hb.remote, 0, 16).unwrap();
    answer(&a, &b, wire::Kind::Carried, get, true, &[9; 16]);
    assert_eq!(outcome(&a, get), Some(Ok(Vec::new())));
    assert_eq!(
        &mine[..],
        &[[0u8; 8].as_slice(), &[9; 16], &[0; 40]].concat()[..]
    );
}

/// A transfer posted to a peer that was reached before and has since gone fails as a lost
/// peer (`Disconnected`), not as an address never reached, whichever check notices first
/// (the provider refusing the post, or the liveness probe).
#[test]
fn a_transfer_to_a_peer_gone_since_is_a_disconnection() {
    use qs_tests::conformance::Driven;
    for addr in ["ofi+sockets://127.0.0.1:0", "ofi+tcp://127.0.0.1:0"] {
        let mut a = Driven::new(open(addr));
        let b = Driven::new(open(addr));
        let pb = a.p.lookup(b.p.self_addr()).unwrap();
        let mut theirs = vec![5u8; 1 << 20];
        let mut mine = vec![0u8; 1 << 20];
        let (hb, ha) = register_pair(&*a.p, &*b.p, &mut theirs, &mut mine);
        let op = a.p.get(pb, &ha, 0, &hb.remote, 0, 1 << 20).unwrap();
        a.done(op).unwrap();
        drop(b);
        let r =
            a.p.get(pb, &ha, 0, &hb.remote, 0, 1 << 20)
                .and_then(|op| a.done(op));
        assert!(matches!(r, Err(NaError::Disconnected(_))), "{addr}: {r:?}");
    }
}

/// Carried transfers held for a peer that has gone since it was reached leave in a bundle
/// when the hold goes, and each fails as a lost peer: none waits for an answer that
/// cannot come (the bundle's send may fail at once, or be taken and lost with its peer).
#[test]
fn held_transfers_to_a_peer_gone_since_each_fail() {
    use qs_tests::conformance::Driven;
    const PIECE: usize = 4096;
    const N: usize = 16;
    // Providers whose transfers the owner checks (the ones that carry and bundle). Over
    // shm the peer is another endpoint of this process, which lingers once dropped
    // (`local`): without that, the bundle's send crashed the process.
    for addr in ["ofi+tcp://127.0.0.1:0", "ofi+shm://auto"] {
        let oa = open(addr);
        let mut a = Driven::new(oa.clone());
        let b = Driven::new(open(addr));
        let pb = a.p.lookup(b.p.self_addr()).unwrap();
        let mut theirs = vec![5u8; N * PIECE];
        let mut mine = vec![0u8; N * PIECE];
        let (hb, ha) = register_pair(&*a.p, &*b.p, &mut theirs, &mut mine);
        let op = a.p.get(pb, &ha, 0, &hb.remote, 0, PIECE as u64).unwrap();
        a.done(op).unwrap();
        drop(b);
        let before = bundles_sent(&oa);
        a.p.hold(pb, true);
        let gets: Vec<NaResult<OpId>> = (0..N)
            .map(|i| {
                let at = (i * PIECE) as u64;
                a.p.get(pb, &ha, at, &hb.remote, at, PIECE as u64)
            })
            .collect();
        a.p.hold(pb, false);
        for g in gets {
            let r = g.and_then(|op| a.done(op));
            assert!(matches!(r, Err(NaError::Disconnected(_))), "{addr}: {r:?}");
        }
        assert!(
            crate::plugin::lock(&oa.state).awaiting.is_empty(),
            "{addr}: no transfer is left waiting for its owner's answer"
        );
        assert!(
            bundles_sent(&oa) > before,
            "{addr}: the held gets left bundled"
        );
        assert!(
            mine[PIECE..].iter().all(|&x| x == 0),
            "{addr}: nothing landed"
        );
    }
}

/// An owner asked (by a hostile or differently configured initiator) to carry a read whose
/// answer would not fit in a message refuses it, and says so: the transfer fails
/// `AccessDenied` instead of waiting for an answer that cannot be sent.
#[test]
fn an_owner_refuses_to_carry_more_than_a_message_holds() {
    use qs_tests::conformance::Driven;
    let (a, b) = (std::sync::Arc::new(shm()), std::sync::Arc::new(shm()));
    let pb = a.lookup(b.self_addr()).unwrap();
    let pa = b.lookup(a.self_addr()).unwrap();
    let mut driven = Driven::new(a.clone());
    say_hello(&a, pb, &b);
    b.send_unexpected(pa, 1, b"hello".to_vec()).unwrap();
    driven.next_unexpected().expect("hello from the owner");
    let mut theirs = vec![5u8; 1 << 20];
    let mut mine = vec![0u8; 1 << 20];
    // SAFETY: both buffers outlive the endpoints' use of them.
    let (hb, ha) = unsafe {
        let hb = b.register(&[Segment::from_slice(&mut theirs)], Access::ReadWrite);
        (
            hb.unwrap(),
            a.register(&[Segment::from_slice(&mut mine)], Access::ReadWrite),
        )
    };
    let ha = ha.unwrap();
    // A carried get the owner does not see yet; then, in its name, one of 1 MiB.
    let op = a.get(pb, &ha, 0, &hb.remote, 0, 16).unwrap();
    let big = wire::Check {
        op: op.0,
        key: hb.remote.key,
        off: 0,
        len: 1 << 20,
        write: false,
    };
    let mut m = wire::header(wire::Kind::Carry, 0, &a.self_raw, 0);
    m.extend_from_slice(&big.encode());
    b.handle_unexpected(&m);
    assert!(matches!(driven.done(op), Err(NaError::AccessDenied(_))));
    assert!(mine.iter().all(|&x| x == 0), "nothing carried");
}

/// A bundle's messages count only as their sender's: one naming another sender inside
/// it, a bundle inside it, or a bundle cut short is dropped; the rest act as if alone.
#[test]
fn bundled_answers_count_only_as_the_bundle_senders() {
    let (a, b, other) = (shm(), std::sync::Arc::new(shm()), shm());
    let pb = a.lookup(b.self_addr()).unwrap();
    say_hello(&a, pb, &b);
    let mut theirs = vec![5u8; 64];
    let mut mine = vec![0u8; 64];
    let (hb, ha) = register_pair(&a, &*b, &mut theirs, &mut mine);
    let carried = |from: &OfiPlugin, op: OpId, byte: u8| {
        let mut m = wire::header(wire::Kind::Carried, 0, &from.self_raw, 0);
        wire::encode_carried(&mut m, op.0, |out| {
            out.extend_from_slice(&[byte; 16]);
            true
        });
        m
    };
    let deliver = |msgs: &[Vec<u8>], cut: usize| {
        let mut m = wire::header(wire::Kind::Bundle, 0, &b.self_raw, 0);
        for x in msgs {
            wire::bundle(&mut m, x);
        }
        m.truncate(m.len() - cut);
        a.handle_unexpected(&m);
        a.poll_cq(true);
    };
    let get = a.get(pb, &ha, 0, &hb.remote, 0, 16).unwrap();
    let mut inner = wire::header(wire::Kind::Bundle, 0, &b.self_raw, 0);
    wire::bundle(&mut inner, &carried(&b, get, 1));
    deliver(&[carried(&other, get, 2), inner], 0);
    deliver(&[carried(&b, get, 3)], 1);
    assert!(
        outcome(&a, get).is_none(),
        "another sender's, a nested and a cut bundle are dropped"
    );
    let get2 = a.get(pb, &ha, 16, &hb.remote, 0, 16).unwrap();
    deliver(&[carried(&b, get, 4), carried(&b, get2, 5)], 0);
    assert_eq!(outcome(&a, get), Some(Ok(Vec::new())));
    assert_eq!(outcome(&a, get2), Some(Ok(Vec::new())));
    assert_eq!(&mine[..32], &[[4u8; 16], [5u8; 16]].concat()[..]);
}

fn open(addr: &str) -> std::sync::Arc<OfiPlugin> {
    std::sync::Arc::new(OfiPlugin::new(&addr.parse().unwrap()).unwrap())
}

/// Two endpoints over `addr`, each also driven, and the first's peer id of the second.
fn driven_pair(
    addr: &str,
) -> (
    std::sync::Arc<OfiPlugin>,
    std::sync::Arc<OfiPlugin>,
    qs_tests::conformance::Driven,
    qs_tests::conformance::Driven,
    na::PeerId,
) {
    use qs_tests::conformance::Driven;
    let (oa, ob) = (open(addr), open(addr));
    let a = Driven::new(oa.clone());
    let b = Driven::new(ob.clone());
    let pb = a.p.lookup(b.p.self_addr()).unwrap();
    (oa, ob, a, b, pb)
}

fn bundles_sent(p: &OfiPlugin) -> u64 {
    p.bundles_sent.load(std::sync::atomic::Ordering::Relaxed)
}

/// Checks of puts made while their peer is held leave in one bundle, and the owner takes
/// each check of a bundle as if it came alone, answering them bundled: every put lands,
/// and one with a forged key fails alone, its bytes not written.
#[test]
fn held_checks_leave_bundled_and_each_is_answered() {
    // Above the carried size (`OfiConfig::carry_max`, 4 KiB): checked puts.
    const PIECE: usize = 16 << 10;
    const _: () = assert!(PIECE > 4096);
    for addr in ["ofi+shm://auto", "ofi+tcp://127.0.0.1:0"] {
        let (oa, ob, mut a, b, pb) = driven_pair(addr);
        let bundles = || (bundles_sent(&oa), bundles_sent(&ob));
        let mut theirs = vec![0u8; 4 * PIECE];
        let mut mine: Vec<u8> = (0..4 * PIECE).map(|i| (i % 251) as u8 + 1).collect();
        let (hb, ha) = register_pair(&*a.p, &*b.p, &mut theirs, &mut mine);
        let mut forged = hb.remote.clone();
        forged.key = forged.key.wrapping_add(1);
        let before = bundles();
        a.p.hold(pb, true);
        let puts: Vec<OpId> = (1..4)
            .map(|i| {
                let at = (i * PIECE) as u64;
                a.p.put(pb, &ha, at, &hb.remote, at, PIECE as u64).unwrap()
            })
            .collect();
        let bad = a.p.put(pb, &ha, 0, &forged, 0, PIECE as u64).unwrap();
        a.p.hold(pb, false);
        for op in puts {
            assert_eq!(a.done(op), Ok(Vec::new()), "{addr}");
        }
        assert!(
            matches!(a.done(bad), Err(NaError::AccessDenied(_))),
            "{addr}: the forged put is refused"
        );
        let after = bundles();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (1, 1),
            "{addr}: the checks (one the three puts share, one of the forged key) left as one \
             bundle, and their grants came back as one"
        );
        drop(b);
        assert!(
            theirs[..PIECE].iter().all(|&x| x == 0),
            "{addr}: nothing forged written"
        );
        assert_eq!(&theirs[PIECE..], &mine[PIECE..], "{addr}");
    }
}

/// Carried puts made while their peer is held are written straight into the held bundles,
/// as many as they fill: every put lands, one with a forged key fails alone with its bytes
/// not written, and the owner answers each bundle with one.
#[test]
fn held_carried_puts_fill_bundles_and_each_lands() {
    // At the carried size (`OfiConfig::carry_max`), enough for three bundles.
    const PIECE: usize = 4096;
    const N: usize = 40;
    const FORGED: usize = 7;
    for addr in ["ofi+shm://auto", "ofi+tcp://127.0.0.1:0"] {
        let (oa, ob, mut a, b, pb) = driven_pair(addr);
        let bundles = || (bundles_sent(&oa), bundles_sent(&ob));
        let msg = wire::header_len(&oa.self_raw) + 33 + PIECE;
        let per = oa.max_eager / (wire::BUNDLED + msg);
        let expected = N.div_ceil(per) as u64;
        assert!(expected >= 3, "{addr}: {per} per bundle");
        let mut theirs = vec![0u8; N * PIECE];
        let mut mine: Vec<u8> = (0..N * PIECE).map(|i| (i % 251) as u8 + 1).collect();
        let (hb, ha) = register_pair(&*a.p, &*b.p, &mut theirs, &mut mine);
        let mut forged = hb.remote.clone();
        forged.key = forged.key.wrapping_add(1);
        let before = bundles();
        a.p.hold(pb, true);
        let puts: Vec<OpId> = (0..N)
            .map(|i| {
                let at = (i * PIECE) as u64;
                let remote = if i == FORGED { &forged } else { &hb.remote };
                a.p.put(pb, &ha, at, remote, at, PIECE as u64).unwrap()
            })
            .collect();
        a.p.hold(pb, false);
        for (i, op) in puts.into_iter().enumerate() {
            match a.done(op) {
                Err(NaError::AccessDenied(_)) if i == FORGED => {}
                r => assert_eq!(r, Ok(Vec::new()), "{addr}: put {i}"),
            }
        }
        let after = bundles();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (expected, expected),
            "{addr}: {N} carried puts in {expected} bundles, answered one for one"
        );
        drop(b);
        let forged_at = FORGED * PIECE..(FORGED + 1) * PIECE;
        assert!(
            theirs[forged_at.clone()].iter().all(|&x| x == 0),
            "{addr}: nothing forged written"
        );
        theirs[forged_at.clone()].copy_from_slice(&mine[forged_at]);
        assert_eq!(theirs, mine, "{addr}");
    }
}

/// An owner's answers never wait behind its own holds of the peer: while `a` holds `b`
/// (a batch of its own being posted), `b`'s checked and carried transfers of `a`'s memory
/// are answered at once (a hold kept while waiting for `b` would otherwise stall both).
#[test]
fn an_owners_answers_do_not_wait_for_its_own_holds() {
    use qs_tests::conformance::Driven;
    for addr in ["ofi+shm://auto", "ofi+tcp://127.0.0.1:0"] {
        let a = Driven::new(open(addr));
        let mut b = Driven::new(open(addr));
        let pa = b.p.lookup(a.p.self_addr()).unwrap();
        let pb = a.p.lookup(b.p.self_addr()).unwrap();
        let mut theirs = vec![7u8; 64 << 10];
        let mut mine = vec![0u8; 64 << 10];
        let (ha, hb) = register_pair(&*b.p, &*a.p, &mut theirs, &mut mine);
        a.p.hold(pb, true);
        for len in [16u64, 32 << 10] {
            let op = b.p.get(pa, &hb, 0, &ha.remote, 0, len).unwrap();
            // (Held, it would wait for the hold, kept until after the loop: any wait shows it.)
            let r = b.done_within(op, std::time::Duration::from_secs(10));
            assert_eq!(r, Some(Ok(Vec::new())), "{addr}: a {len}-byte get answered");
        }
        a.p.hold(pb, false);
        assert!(mine[..32 << 10].iter().all(|&x| x == 7), "{addr}");
    }
}

/// Runs `step` until `done` or 10 s; whether `done` came.
fn until(mut step: impl FnMut(), done: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        if std::time::Instant::now() > end {
            return false;
        }
        step();
    }
    true
}

/// A grant that comes for a transfer canceled while it waited is released all the same:
/// the owner leased the region for it, and its deregistration would wait for the release
/// (up to the probe timeout) otherwise.
#[test]
fn a_grant_for_a_transfer_canceled_before_it_came_is_released() {
    let (a, b) = (shm(), std::sync::Arc::new(shm()));
    let pb = a.lookup(b.self_addr()).unwrap();
    say_hello(&a, pb, &b);
    let mut theirs = vec![5u8; 64 << 10];
    let mut mine = vec![0u8; 64 << 10];
    let (hb, ha) = register_pair(&a, &*b, &mut theirs, &mut mine);
    let leased = || crate::plugin::lock(&b.state).leases.held(hb.id);
    // Beyond what is carried: a check, which the owner grants under a lease.
    let put = a.put(pb, &ha, 0, &hb.remote, 0, 64 << 10).unwrap();
    assert!(until(|| b.poll_cq(true), leased), "the owner leased it");
    assert!(a.cancel(put));
    assert_eq!(outcome(&a, put), Some(Err(NaError::Canceled)));
    let both = || {
        a.poll_cq(true);
        b.poll_cq(true);
    };
    assert!(
        until(both, || !leased()),
        "the grant that came after the cancel was released"
    );
    assert!(mine.iter().all(|&x| x == 0) && theirs.iter().all(|&x| x == 5));
}
