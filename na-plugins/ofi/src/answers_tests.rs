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
    let mut m = wire::header(kind, 0, &from.self_raw);
    m.extend_from_slice(&match kind {
        wire::Kind::Grant => wire::encode_grant(op.0, ok),
        _ => wire::encode_carried(op.0, ok, data),
    });
    to.handle_unexpected(&m);
    to.poll_cq(true);
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
    // The provider connects a pair once the owner progresses: let it, for a first message.
    let b2 = b.clone();
    let t = std::thread::spawn(move || {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < end {
            b2.progress(Some(std::time::Duration::from_millis(1)))
                .unwrap();
            if std::iter::from_fn(|| b2.poll_event()).any(|e| matches!(e, Event::Unexpected { .. }))
            {
                return;
            }
        }
    });
    a.send_unexpected(pb, 1, b"hello".to_vec()).unwrap();
    t.join().unwrap();
    let mut theirs = vec![5u8; 64];
    let mut mine = vec![0u8; 64];
    // SAFETY: both buffers outlive the endpoints' use of them (the test's end).
    let (hb, ha) = unsafe {
        let hb = b.register(&[Segment::from_slice(&mut theirs)], Access::ReadWrite);
        (
            hb.unwrap(),
            a.register(&[Segment::from_slice(&mut mine)], Access::ReadWrite),
        )
    };
    let ha = ha.unwrap();
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
        let open = || std::sync::Arc::new(OfiPlugin::new(&addr.parse().unwrap()).unwrap());
        let mut a = Driven::new(open());
        let b = Driven::new(open());
        let pb = a.p.lookup(b.p.self_addr()).unwrap();
        let mut theirs = vec![5u8; 1 << 20];
        let mut mine = vec![0u8; 1 << 20];
        // SAFETY: the buffers outlive both endpoints' use of them.
        let (hb, ha) = unsafe {
            let hb =
                b.p.register(&[Segment::from_slice(&mut theirs)], Access::ReadWrite);
            (
                hb.unwrap(),
                a.p.register(&[Segment::from_slice(&mut mine)], Access::ReadWrite),
            )
        };
        let ha = ha.unwrap();
        let op = a.p.get(pb, &ha, 0, &hb.remote, 0, 1 << 20).unwrap();
        a.done(op).unwrap();
        drop(b);
        let r =
            a.p.get(pb, &ha, 0, &hb.remote, 0, 1 << 20)
                .and_then(|op| a.done(op));
        assert!(matches!(r, Err(NaError::Disconnected(_))), "{addr}: {r:?}");
    }
}
