//! Liveness: a peer an operation waits on that stays silent is probed and, when its
//! probes go unanswered for `probe_timeout` (or cannot go out at all for six times that),
//! declared lost with a reason that says which; a peer that answers its probes is waited
//! on for as long as the operation takes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use na::{NaError, Plugin};
use qs_tests::conformance::Driven;

use crate::liveness::Probing;
use crate::{OfiConfig, OfiPlugin};

fn quick(addr: &str) -> Arc<OfiPlugin> {
    let cfg = OfiConfig {
        probe_after: Duration::from_millis(50),
        probe_timeout: Duration::from_millis(400),
        ..OfiConfig::default()
    };
    Arc::new(OfiPlugin::with_config(&addr.parse().unwrap(), cfg).unwrap())
}

const ADDRS: [&str; 3] = [
    "ofi+tcp://127.0.0.1:0",
    "ofi+sockets://127.0.0.1:0",
    "ofi+shm://auto",
];

#[test]
fn a_silent_peer_is_declared_lost_by_the_check_its_provider_reaches() {
    for addr in ADDRS {
        let mut a = Driven::new(quick(addr));
        // The peer exists (shm: its process is alive) but never progresses: nothing of
        // it answers.
        let b = quick(addr);
        let pb = a.p.lookup(b.self_addr()).unwrap();
        let t = Instant::now();
        let op = a.p.recv_expected(pb, 7).unwrap();
        let r = a.done_within(op, Duration::from_secs(20));
        let waited = t.elapsed();
        // Over tcp and shm the pair is not connected until the silent peer progresses, so
        // the provider has no room for any probe: lost after six probe timeouts, the probes
        // counted as refused. Over sockets the probes go out and stay unanswered: lost after
        // one.
        let (path, bound) = match addr.starts_with("ofi+sockets") {
            true => ("went unanswered for", Duration::from_millis(400)),
            false => (
                "no liveness probe could be sent",
                Duration::from_millis(2400),
            ),
        };
        match r {
            Some(Err(NaError::Unreachable(m) | NaError::Disconnected(m))) => {
                assert!(m.contains(path), "{addr}: {m}");
            }
            other => panic!("{addr}: {other:?} after {waited:?}"),
        }
        assert!(
            waited >= bound,
            "{addr}: lost after {waited:?}, before {bound:?}"
        );
        assert!(
            waited < bound + Duration::from_secs(5),
            "{addr}: lost only after {waited:?}"
        );
    }
}

#[test]
fn a_peer_that_answers_its_probes_is_waited_on() {
    for addr in ADDRS {
        // Probed every 0.1 s, lost after 1.5 s unanswered: room for a loaded machine.
        let relaxed = || {
            let cfg = OfiConfig {
                probe_after: Duration::from_millis(100),
                probe_timeout: Duration::from_millis(1500),
                ..OfiConfig::default()
            };
            Arc::new(OfiPlugin::with_config(&addr.parse().unwrap(), cfg).unwrap())
        };
        let ap = relaxed();
        let mut a = Driven::new(ap.clone());
        let b = relaxed();
        let pb = a.p.lookup(b.self_addr()).unwrap();
        let pa = b.lookup(a.p.self_addr()).unwrap();
        // `b` progresses (and so answers probes) but sends what `a` waits for only after
        // two probe timeouts.
        let b2 = b.clone();
        let t0 = Instant::now();
        let t = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                b2.progress(Some(Duration::from_millis(5))).unwrap();
                while b2.poll_event().is_some() {}
            }
            let op = b2.send_expected(pa, 7, b"late".to_vec()).unwrap();
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                b2.progress(Some(Duration::from_millis(5))).unwrap();
                if std::iter::from_fn(|| b2.poll_event())
                    .any(|e| matches!(e, na::Event::Done { op: o, .. } if o == op))
                {
                    return;
                }
            }
        });
        let op = a.p.recv_expected(pb, 7).unwrap();
        let r = a.done_within(op, Duration::from_secs(20));
        t.join().unwrap();
        assert_eq!(r, Some(Ok(b"late".to_vec())), "{addr}");
        // Silent but for liveness traffic (our probes answered, or its own) for twice the
        // probe timeout.
        assert!(t0.elapsed() >= Duration::from_secs(3), "{addr}");
        assert!(
            ap.stats().probes + b.stats().probes > 0,
            "{addr}: probes went"
        );
    }
}

#[test]
fn a_probe_that_went_out_is_timed_from_when_it_went() {
    let (t0, s) = (Instant::now(), Duration::from_secs(1));
    let mut p = Probing::new(t0);
    p.record(false, t0);
    p.record(true, t0 + s);
    assert_eq!(p.verdict(t0 + 10 * s, 10 * s), None);
    let why = p
        .verdict(t0 + 11 * s, 10 * s)
        .expect("lost 10 s after the probe went");
    assert!(
        why.contains("unanswered for 10.0 s (1 sent, 1 refused"),
        "{why}"
    );
}

#[test]
fn a_peer_no_probe_can_reach_is_lost_only_after_six_timeouts() {
    let (t0, s) = (Instant::now(), Duration::from_secs(1));
    let mut p = Probing::new(t0);
    for k in 0..120 {
        p.record(false, t0 + s / 2 * k);
    }
    assert_eq!(
        p.verdict(t0 + 10 * s, 10 * s),
        None,
        "a full queue is not silence"
    );
    assert_eq!(p.verdict(t0 + 59 * s, 10 * s), None);
    let why = p.verdict(t0 + 60 * s, 10 * s).expect("lost after 60 s");
    assert!(
        why.contains("for 60.0 s (the provider had no room for any of 120)"),
        "{why}"
    );
}

/// A probing left from a silence the peer stopped being watched in does not judge a later
/// one: the peer is probed afresh and lost only a full probe timeout after the new wait.
#[test]
fn a_new_wait_on_a_peer_is_judged_from_its_own_start() {
    let addr = "ofi+sockets://127.0.0.1:0";
    let cfg = OfiConfig {
        probe_after: Duration::from_millis(50),
        probe_timeout: Duration::from_millis(400),
        watch_idle: Duration::from_millis(300),
        ..OfiConfig::default()
    };
    let mut a = Driven::new(Arc::new(
        OfiPlugin::with_config(&addr.parse().unwrap(), cfg).unwrap(),
    ));
    let b = quick(addr);
    let pb = a.p.lookup(b.self_addr()).unwrap();
    // A send that completes makes the silent peer watched (probed) for `watch_idle`,
    // shorter than the probe timeout: the probing ends unjudged.
    let op = a.p.send_expected(pb, 1, b"x".to_vec()).unwrap();
    assert_eq!(
        a.done_within(op, Duration::from_secs(5)),
        Some(Ok(Vec::new()))
    );
    let _ = a.done_within(na::OpId(u64::MAX), Duration::from_millis(1000));
    let t = Instant::now();
    let op = a.p.recv_expected(pb, 7).unwrap();
    let r = a.done_within(op, Duration::from_secs(20));
    let waited = t.elapsed();
    assert!(
        matches!(&r, Some(Err(NaError::Unreachable(m) | NaError::Disconnected(m))) if m.contains("went unanswered")),
        "{r:?}"
    );
    assert!(
        waited >= Duration::from_millis(400),
        "lost {waited:?} into the new wait, by the old probing"
    );
}

/// An owner that probes quickly and a peer over `addr`, the owner's `buf` registered and
/// the peer's check of a write into all of it granted (as the peer sends it): leased.
fn leased(addr: &str, buf: &mut [u8]) -> (OfiPlugin, OfiPlugin, na::MemHandle) {
    let cfg = OfiConfig {
        probe_after: Duration::from_millis(50),
        probe_timeout: Duration::from_millis(400),
        watch_idle: Duration::from_millis(100),
        ..OfiConfig::default()
    };
    let addr = addr.parse().unwrap();
    let owner = OfiPlugin::with_config(&addr, cfg).unwrap();
    let peer = OfiPlugin::new(&addr).unwrap();
    // SAFETY: the callers' buffers outlive the registration (deregistered in each test).
    let h =
        unsafe { owner.register(&[na::Segment::from_slice(buf)], na::Access::ReadWrite) }.unwrap();
    let mut m = crate::wire::header(crate::wire::Kind::Check, 0, &peer.self_raw, 33);
    let check = crate::wire::Check {
        op: 1,
        key: h.remote.key,
        off: 0,
        len: buf.len() as u64,
        write: true,
    };
    m.extend_from_slice(&check.encode());
    owner.handle_unexpected(&m);
    assert!(
        crate::plugin::lock(&owner.state).leases.held(h.id),
        "granted under a lease"
    );
    (owner, peer, h)
}

/// A peer holding a lease on our memory (we granted its transfer) that goes away without
/// a word is watched past `watch_idle`: it is probed, found gone, declared lost, and its
/// leases end, so a deregistration of the region does not wait for it.
#[test]
fn a_peer_holding_a_lease_is_watched_until_it_is_lost() {
    let mut buf = vec![0u8; 1 << 20];
    let (owner, gone, h) = leased("ofi+tcp://127.0.0.1:0", &mut buf);
    let held = || crate::plugin::lock(&owner.state).leases.held(h.id);
    drop(gone);
    let end = Instant::now() + Duration::from_secs(10);
    while held() {
        assert!(
            Instant::now() < end,
            "the silent peer's lease still held: it stopped being watched"
        );
        owner.progress(Some(Duration::from_millis(10))).unwrap();
    }
    let t = Instant::now();
    owner.deregister(&h).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

/// Over `shm` a peer's copies into our memory pass no key check, so a peer declared lost
/// while its process is there (stopped, say) keeps its leases: a deregistration waits for
/// it while it exists, and ends once its process (its shm region) is gone.
#[test]
fn a_silent_shm_peer_that_still_exists_holds_the_deregistration_until_it_is_gone() {
    let mut buf = vec![0u8; 1 << 20];
    let (owner, still, h) = leased("ofi+shm://auto", &mut buf);
    let held = || crate::plugin::lock(&owner.state).leases.held(h.id);
    // `still` never progresses: its probes go unanswered and it is declared lost.
    let end = Instant::now() + Duration::from_secs(10);
    while owner.stats().peers_lost == 0 {
        assert!(
            Instant::now() < end,
            "the silent peer was never declared lost"
        );
        owner.progress(Some(Duration::from_millis(10))).unwrap();
    }
    assert!(
        held(),
        "a lost shm peer whose process exists keeps its lease"
    );
    let bound = Duration::from_millis(50 + 400 + 1000);
    std::thread::scope(|sc| {
        let t = Instant::now();
        let dereg = sc.spawn(|| owner.deregister(&h));
        std::thread::sleep(bound + Duration::from_millis(500));
        assert!(
            !dereg.is_finished(),
            "the deregistration gave up on a live holder"
        );
        drop(still);
        assert!(dereg.join().unwrap().is_ok());
        let took = t.elapsed();
        assert!(took < bound + Duration::from_secs(3), "{took:?}");
    });
    assert!(!held());
}

#[test]
fn a_quiet_message_makes_no_event_and_one_that_fails_is_the_loss_of_its_peer() {
    // (Over shm a peer's queue stays open after it is gone from this process: a quiet
    // message to it waits in the backlog until `GIVE_UP`. Over tcp it waits there for
    // room until the backlog's check finds the peer's port closed.)
    // Probes only after a minute: what reports the loss is the failed message.
    let unprobed = |addr: &str| {
        let cfg = OfiConfig {
            probe_after: Duration::from_secs(60),
            ..OfiConfig::default()
        };
        Arc::new(OfiPlugin::with_config(&addr.parse().unwrap(), cfg).unwrap())
    };
    for addr in &ADDRS[..2] {
        let mut a = Driven::new(unprobed(addr));
        let mut b = Driven::new(unprobed(addr));
        let pb = a.p.lookup(b.p.self_addr()).unwrap();
        a.p.send_quiet(pb, false, 7, b"request".to_vec()).unwrap();
        let (pa, tag, data) = b.next_unexpected().unwrap();
        assert_eq!((tag, &data[..]), (7, &b"request"[..]), "{addr}");
        // Larger than either provider injects (rxm over tcp: 16 KiB): an answer sent
        // with a completion.
        let answer = vec![5u8; 32 << 10];
        let recv = a.p.recv_expected(pb, 9).unwrap();
        b.p.send_quiet(pa, true, 9, answer.clone()).unwrap();
        assert_eq!(a.done(recv).unwrap(), answer, "{addr}");
        // Neither side reports anything else: no event for a quiet message.
        for d in [&mut a, &mut b] {
            assert!(
                d.next_unexpected_within(Duration::from_millis(200))
                    .is_none()
            );
            assert_eq!((d.unclaimed(), d.lost.len()), (0, 0), "{addr}");
        }
        // The requester goes away: the answers to it fail, and so it is lost. Over tcp
        // the provider takes them and fails them later (completions, or posts given up
        // in the backlog: either reports it, so the test fails only with both broken);
        // over sockets it refuses one at once, which is the report.
        drop(a);
        let end = Instant::now() + Duration::from_secs(20);
        let mut refused = false;
        while !b.lost.contains(&pa) {
            assert!(Instant::now() < end, "{addr}: the peer was never lost");
            if let Err(u) = b.p.send_quiet(pa, true, 9, answer.clone()) {
                assert_eq!(u.error.fault(), na::Fault::Network, "{addr}: {:?}", u.error);
                refused = true;
                break;
            }
            b.next_unexpected_within(Duration::from_millis(50));
        }
        if addr.starts_with("ofi+tcp") {
            assert!(!refused && b.lost.contains(&pa), "{addr}: refused at once");
        }
    }
}

#[test]
fn a_requester_gone_while_its_handler_ran_is_found_lost() {
    // A peer is watched closely while active lately (200 ms here); the handler runs
    // longer, but a peer once contacted stays watched at the idle pace (300 ms here), so
    // it is still watched when it goes (over shm its region goes with it: the first
    // silent look finds it dead), and no answer, injected with no completion, is needed
    // for that.
    let quick_idle = || {
        let cfg = OfiConfig {
            probe_after: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(400),
            watch_idle: Duration::from_millis(200),
            idle_probe_after: Duration::from_millis(300),
            ..OfiConfig::default()
        };
        Arc::new(OfiPlugin::with_config(&"ofi+shm://auto".parse().unwrap(), cfg).unwrap())
    };
    let a = Driven::new(quick_idle());
    let mut b = Driven::new(quick_idle());
    let pb = a.p.lookup(b.p.self_addr()).unwrap();
    a.p.send_quiet(pb, false, 7, b"request".to_vec()).unwrap();
    let (pa, _, _) = b.next_unexpected().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(b.lost.is_empty(), "lost while it was there");
    drop(a);
    let end = Instant::now() + Duration::from_secs(10);
    while !b.lost.contains(&pa) {
        assert!(Instant::now() < end, "the requester was never found lost");
        b.next_unexpected_within(Duration::from_millis(50));
    }
}

/// A peer that is idle (nothing but its answers to our probes, and its own probes, for
/// `watch_idle`) is probed at the idle pace, not every `probe_after` for ever; it is not
/// lost for that.
#[test]
fn an_idle_peer_is_probed_at_the_idle_pace() {
    let addr = "ofi+tcp://127.0.0.1:0";
    let make = || {
        let cfg = OfiConfig {
            probe_after: Duration::from_millis(50),
            probe_timeout: Duration::from_millis(1500),
            watch_idle: Duration::from_millis(200),
            idle_probe_after: Duration::from_millis(1000),
            ..OfiConfig::default()
        };
        Arc::new(OfiPlugin::with_config(&addr.parse().unwrap(), cfg).unwrap())
    };
    let (a, b) = (make(), make());
    let pa = b.lookup(a.self_addr()).unwrap();
    b.send_quiet(pa, false, 7, b"hello".to_vec()).unwrap();
    let progress = |p: &OfiPlugin, until: Instant| {
        let mut lost = false;
        while Instant::now() < until {
            p.progress(Some(Duration::from_millis(5))).unwrap();
            while let Some(e) = p.poll_event() {
                lost |= matches!(e, na::Event::PeerLost { .. });
            }
        }
        lost
    };
    let t0 = Instant::now();
    let b2 = b.clone();
    let t = std::thread::spawn(move || progress(&b2, t0 + Duration::from_millis(2600)));
    // Active for 200 ms, then idle: probes every 50 ms at first, then one a second.
    assert!(!progress(&a, t0 + Duration::from_millis(600)), "lost");
    let early = a.stats().probes;
    assert!(!progress(&a, t0 + Duration::from_millis(2600)), "lost");
    let late = a.stats().probes - early;
    assert!(!t.join().unwrap(), "b lost a");
    assert!(early > 0, "never probed while active");
    assert!(late <= 3, "{late} probes in 2 s of idleness, after {early}");
}
