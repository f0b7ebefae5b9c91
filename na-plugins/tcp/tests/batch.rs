//! Requests that one pass brings from one peer are a batch: the peer's connection is held
//! while they are handled, and their answers leave together. A handler of the batch that
//! needs that peer meanwhile (here, an RMA read of the requester's memory, which travels
//! on the held connection) is not stuck behind the hold.

use std::time::{Duration, Instant};

use na::{Access, Event, OpId, Plugin, Segment};

#[allow(dead_code)] // (this test builds no frame by hand)
mod common;
use common::{drive, plugin};

#[test]
fn a_batch_is_answered_and_its_handler_may_reach_the_held_peer() {
    let (a, b) = (plugin(), plugin());
    let pb = a.lookup(b.self_addr()).unwrap();
    let mut src = vec![7u8; 4096];
    let mut dst = vec![0u8; 4096];
    // SAFETY: both buffers outlive their registrations (deregistered below) and are not
    // touched meanwhile.
    let (theirs, mine) = unsafe {
        (
            a.register(&[Segment::from_slice(&mut src)], Access::ReadOnly)
                .unwrap(),
            b.register(&[Segment::from_slice(&mut dst)], Access::ReadWrite)
                .unwrap(),
        )
    };
    // The connection made: B has A's first request.
    a.send_quiet(pb, false, 1, vec![1]).unwrap();
    let mut first = None;
    drive(&[&a, &b], || {
        while let Some(ev) = b.poll_event() {
            if let Event::Unexpected { peer, tag, .. } = ev {
                first = Some((peer, tag));
            }
        }
        first.is_some()
    });
    let (pa, _) = first.unwrap();
    b.send_quiet(pa, true, 1, b"one".to_vec()).unwrap();
    // Three requests in B's socket before its next pass: one batch.
    for t in 2..=4 {
        a.send_quiet(pb, false, t, vec![t as u8]).unwrap();
    }
    a.progress(Some(Duration::ZERO)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let (mut batch, mut read) = (Vec::new(), None::<OpId>);
    let (mut copied, mut nested) = (false, 0);
    let handled = b.progress_events(Some(Duration::from_millis(100)), &mut |ev| {
        let Event::Unexpected { peer, tag, .. } = ev else {
            return;
        };
        if read.is_none() {
            // Reach the held peer and wait for it, driving progress meanwhile (A's side
            // too: this test is one thread).
            let op = b.get(peer, &mine, 0, &theirs.remote, 0, 4096).unwrap();
            read = Some(op);
            let until = Instant::now() + Duration::from_secs(5);
            while !copied {
                assert!(Instant::now() < until, "the read waited behind the hold");
                a.progress(Some(Duration::ZERO)).unwrap();
                b.progress_events(Some(Duration::from_millis(1)), &mut |e| {
                    nested += 1;
                    if let Event::Done { op: o, result } = e {
                        copied = o == op && result.is_ok();
                    }
                })
                .unwrap();
            }
        }
        b.send_quiet(peer, true, tag, format!("answer {tag}").into_bytes())
            .unwrap();
        batch.push(tag);
    });
    assert_eq!(handled.unwrap(), 3);
    assert_eq!(batch, [2, 3, 4], "one pass brought the three requests");
    assert!(copied && nested > 0);
    assert!(dst.iter().all(|&x| x == 7));
    // Every answer arrives, in order (A posted no receive: they come unposted).
    let mut answers = Vec::new();
    drive(&[&a, &b], || {
        while let Some(ev) = a.poll_event() {
            if let Event::Expected { tag, data, .. } = ev {
                answers.push((tag, data));
            }
        }
        answers.len() == 4
    });
    let want: Vec<(u64, Vec<u8>)> = (1..=4)
        .map(|t| match t {
            1 => (1, b"one".to_vec()),
            t => (t, format!("answer {t}").into_bytes()),
        })
        .collect();
    assert_eq!(answers, want);
    a.deregister(&theirs).unwrap();
    b.deregister(&mine).unwrap();
}

/// Another thread's send onto a connection a batch holds wakes a pass that sleeps: it
/// leaves although the batch's own thread makes no pass meanwhile.
#[test]
fn a_send_onto_a_held_connection_wakes_a_sleeping_pass() {
    let (a, b) = (plugin(), plugin());
    let pb = a.lookup(b.self_addr()).unwrap();
    a.send_quiet(pb, false, 1, vec![1]).unwrap();
    let mut pa = None;
    drive(&[&a, &b], || {
        while let Some(ev) = b.poll_event() {
            if let Event::Unexpected { peer, .. } = ev {
                pa = Some(peer);
            }
        }
        pa.is_some()
    });
    let pa = pa.unwrap();
    for t in 2..=3 {
        a.send_quiet(pb, false, t, vec![t as u8]).unwrap();
    }
    a.progress(Some(Duration::ZERO)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut arrived = false;
    /// Stops the progress thread, also when the test fails (its scope joins it).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool, &'a na_tcp::StreamPlugin);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Release);
            self.1.wake();
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&stop, &b);
        let mut first = true;
        b.progress_events(Some(Duration::from_millis(100)), &mut |ev| {
            let Event::Unexpected { .. } = ev else { return };
            if !std::mem::take(&mut first) {
                return;
            }
            // B's connection to A is held by this batch. A progress thread sleeps on B...
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    b.progress(None).unwrap();
                }
            });
            // ... when another thread sends on the held connection.
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                b.send_quiet(pa, true, 99, b"from elsewhere".to_vec())
                    .unwrap();
            });
            let until = Instant::now() + Duration::from_secs(3);
            while !arrived {
                assert!(Instant::now() < until, "the send waited behind the hold");
                a.progress(Some(Duration::from_millis(5))).unwrap();
                while let Some(ev) = a.poll_event() {
                    arrived |= matches!(ev, Event::Expected { tag: 99, .. });
                }
            }
        })
        .unwrap();
    });
    assert!(arrived);
}
