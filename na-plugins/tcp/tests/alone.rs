//! A plugin with one connection, spinning, reads it straight on most passes and asks the
//! kernel's poll on the others (`StreamPlugin::read_alone`): what the connection brings
//! arrives, and so does a second peer, whose connection ends the straight reads.

use std::time::{Duration, Instant};

use na::{Event, PeerId, Plugin};
use na_tcp::StreamPlugin;

#[allow(dead_code)] // (this test builds no frame by hand)
mod common;
use common::plugin;

/// One zero-timeout pass of `b`: the (peer, tag) of the requests it brought.
fn one_pass(b: &StreamPlugin) -> Vec<(PeerId, u64)> {
    let mut got = Vec::new();
    b.progress_events(Some(Duration::ZERO), &mut |ev| {
        if let Event::Unexpected { peer, tag, .. } = ev {
            got.push((peer, tag));
        }
    })
    .unwrap();
    got
}

/// Spins every plugin in `ps` with zero-timeout passes until `b` brings `n` requests;
/// returns their (peer, tag) in order of arrival.
fn spin_until(ps: &[&StreamPlugin], b: &StreamPlugin, n: usize) -> Vec<(PeerId, u64)> {
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while got.len() < n {
        assert!(
            Instant::now() < until,
            "spinning passes brought {got:?} of {n}"
        );
        for p in ps {
            p.progress(Some(Duration::ZERO)).unwrap();
        }
        got.extend(one_pass(b));
    }
    got
}

#[test]
fn a_lone_connection_read_by_spinning_passes_and_a_second_peer_still_let_in() {
    let (a, b, c) = (plugin(), plugin(), plugin());
    let pb = a.lookup(b.self_addr()).unwrap();
    a.send_quiet(pb, false, 1, vec![1]).unwrap();
    let first = spin_until(&[&a], &b, 1);
    let pa = first[0].0;
    // B has A alone: one message at a time, each answered, as a ping-pong runs; one that
    // has landed is taken by B's next pass, whichever kind of pass that is.
    for t in 2..50u64 {
        a.send_quiet(pb, false, t, vec![t as u8]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(one_pass(&b), [(pa, t)], "one pass after it landed");
        b.send_quiet(pa, true, t, vec![0]).unwrap();
        a.progress(Some(Duration::ZERO)).unwrap();
    }
    // A second peer: only the kernel's poll sees it come, and B only spins.
    let pc = c.lookup(b.self_addr()).unwrap();
    c.send_quiet(pc, false, 100, vec![9]).unwrap();
    let from_c = spin_until(&[&a, &c], &b, 1);
    assert_eq!(from_c[0].1, 100);
    assert_ne!(from_c[0].0, pa);
    // Two connections now: both are heard.
    a.send_quiet(pb, false, 101, vec![1]).unwrap();
    c.send_quiet(pc, false, 102, vec![2]).unwrap();
    let mut both: Vec<u64> = spin_until(&[&a, &c], &b, 2)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    both.sort();
    assert_eq!(both, [101, 102]);
}

#[test]
fn a_lone_peer_that_hangs_up_is_noticed_by_spinning_passes() {
    let (a, b) = (plugin(), plugin());
    let pb = a.lookup(b.self_addr()).unwrap();
    a.send_quiet(pb, false, 1, vec![1]).unwrap();
    let pa = spin_until(&[&a], &b, 1)[0].0;
    drop(a);
    // The read that finds the end closes the connection (and republishes the table from
    // inside the pass that reads it); a send to the peer then fails at once.
    let until = Instant::now() + Duration::from_secs(10);
    while b.send_quiet(pa, true, 2, vec![0]).is_ok() {
        assert!(Instant::now() < until, "the hang-up went unnoticed");
        b.progress(Some(Duration::ZERO)).unwrap();
    }
    // Passes after it, of both kinds, with no connection left: nothing to read, no error.
    for _ in 0..8 {
        b.progress(Some(Duration::ZERO)).unwrap();
    }
}
