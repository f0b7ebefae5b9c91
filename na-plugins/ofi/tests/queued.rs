//! Messages the provider queues as unexpected (they arrive while every pool receive is
//! taken) are all delivered, to the right receive, on every provider. libfabric 1.17's
//! `shm` lost them when the pool was a wildcard tagged receive (its unexpected queue
//! matches with a stale ignore mask): this test failed there with 8 of 100 delivered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use na::{Event, Plugin};
use na_ofi::{OfiConfig, OfiPlugin};
use qs_tests::conformance::Driven;

/// `b` (a pool of 4 receives, progressed by hand) gets a burst of 100 requests sent while
/// it was not progressing, after 8 exact receives completed (their entries are what the
/// provider reuses for queued messages).
fn a_burst_beyond_the_pool_is_delivered(addr: &str) {
    let cfg = OfiConfig {
        recv_pool: 4,
        ..OfiConfig::default()
    };
    let b = OfiPlugin::with_config(&addr.parse().unwrap(), cfg).unwrap();
    let mut a = Driven::new(Arc::new(OfiPlugin::new(&addr.parse().unwrap()).unwrap()));
    let pa = b.lookup(a.p.self_addr()).unwrap();
    let events = |want: usize| -> Vec<Event> {
        let (mut got, end) = (Vec::new(), Instant::now() + Duration::from_secs(10));
        while got.len() < want && Instant::now() < end {
            b.progress(Some(Duration::from_millis(5))).unwrap();
            got.extend(std::iter::from_fn(|| b.poll_event()));
        }
        got
    };

    // Exact receives first, answered by `a` once it knows `b`.
    let recvs: Vec<_> = (0..8u64)
        .map(|i| (b.recv_expected(pa, 100 + i).unwrap(), 100 + i))
        .collect();
    let hello = b.send_unexpected(pa, 1, b"hello".to_vec()).unwrap();
    // (A first send to a peer may wait in `b`'s backlog until `b` progresses.)
    let mut early = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let (pb, _, _) = loop {
        b.progress(Some(Duration::from_millis(1))).unwrap();
        early.extend(std::iter::from_fn(|| b.poll_event()));
        if let Some(x) = a.next_unexpected_within(Duration::from_millis(1)) {
            break x;
        }
        assert!(Instant::now() < end, "hello never arrived");
    };
    for (_, tag) in &recvs {
        let s =
            a.p.send_expected(pb, *tag, tag.to_le_bytes().to_vec())
                .unwrap();
        a.done(s).unwrap();
    }
    let mut answers = BTreeMap::new();
    let hello_done = early
        .iter()
        .any(|e| matches!(e, Event::Done { op, .. } if *op == hello));
    for ev in early.into_iter().chain(events(9 - usize::from(hello_done))) {
        if let Event::Done { op, result } = ev {
            answers.insert(op, result.unwrap());
        }
    }
    assert!(answers.remove(&hello).is_some(), "hello sent");
    for (op, tag) in &recvs {
        assert_eq!(
            answers.get(op),
            Some(&tag.to_le_bytes().to_vec()),
            "exact receive {tag}"
        );
    }

    // The burst, all sent before `b` progresses again.
    for i in 0..100u64 {
        let s =
            a.p.send_unexpected(pb, 1 << 40 | i, i.to_le_bytes().to_vec())
                .unwrap();
        a.done(s).unwrap();
    }
    let mut got = BTreeMap::new();
    for ev in events(100) {
        if let Event::Unexpected { tag, data, .. } = ev {
            assert!(
                got.insert(tag, data).is_none(),
                "tag {tag:#x} delivered twice"
            );
        }
    }
    assert_eq!(got.len(), 100, "requests delivered");
    for (tag, data) in got {
        assert_eq!(data, (tag & 0xff).to_le_bytes().to_vec());
    }
}

#[test]
fn shm_delivers_a_queued_burst() {
    a_burst_beyond_the_pool_is_delivered("ofi+shm://auto");
}

#[test]
fn tcp_delivers_a_queued_burst() {
    a_burst_beyond_the_pool_is_delivered("ofi+tcp://127.0.0.1:0");
}

#[test]
fn sockets_delivers_a_queued_burst() {
    a_burst_beyond_the_pool_is_delivered("ofi+sockets://127.0.0.1:0");
}
