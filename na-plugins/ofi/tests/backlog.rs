//! A post the provider refuses for now (its queue, or the peer's, is full) does not block
//! the caller: it waits in the plugin's backlog and goes out, in order, as progress makes
//! room. Two endpoints driven by one thread is the case that needs it (the receiver
//! progresses only when the sender's call returns): before the backlog, the sender's post
//! spun on `-FI_EAGAIN` for 10 s and failed.

use std::time::{Duration, Instant};

use na::{Event, NaError, OpId, Plugin};
use na_ofi::OfiPlugin;

const N: u64 = 4000;
const MORE: u64 = 100;

fn plugin(addr: &str) -> OfiPlugin {
    OfiPlugin::new(&addr.parse().unwrap()).unwrap()
}

/// Drives `p` once without waiting and collects its events.
fn pass(p: &OfiPlugin, into: &mut Vec<Event>) {
    p.progress(Some(Duration::ZERO)).unwrap();
    into.extend(std::iter::from_fn(|| p.poll_event()));
}

/// `a` sends `N` requests to `b`, which does not progress meanwhile; then one thread
/// drives both until `b` has them all. Returns whether any post waited in the backlog.
fn a_burst_to_a_stalled_peer_arrives_in_order(addr: &str) -> bool {
    let (a, b) = (plugin(addr), plugin(addr));
    let pb = a.lookup(b.self_addr()).unwrap();
    let body = vec![7u8; 1024];
    let start = Instant::now();
    let mut sends: Vec<OpId> = (0..N)
        .map(|i| a.send_unexpected(pb, i, body.clone()).unwrap())
        .collect();
    let posting = start.elapsed();
    assert!(
        posting < Duration::from_secs(5),
        "posting {N} sends took {posting:?}: a post waited for the stalled peer"
    );
    // `b` makes room now and then while `a` sends more without progressing: the new
    // sends must not overtake those still in the backlog.
    let (mut at_a, mut at_b) = (Vec::new(), Vec::new());
    for i in N..N + MORE {
        pass(&b, &mut at_b);
        sends.push(a.send_unexpected(pb, i, body.clone()).unwrap());
    }
    let n = N + MORE;
    let end = Instant::now() + Duration::from_secs(60);
    let arrived = |evs: &[Event]| {
        evs.iter()
            .filter(|e| matches!(e, Event::Unexpected { .. }))
            .count() as u64
    };
    while (arrived(&at_b) < n || at_a.len() < sends.len()) && Instant::now() < end {
        pass(&a, &mut at_a);
        pass(&b, &mut at_b);
    }
    let tags: Vec<u64> = at_b
        .iter()
        .filter_map(|e| match e {
            Event::Unexpected { tag, data, .. } => {
                assert_eq!(data, &body);
                Some(*tag)
            }
            _ => None,
        })
        .collect();
    assert_eq!(tags.len() as u64, n, "requests delivered");
    assert!(
        tags.windows(2).all(|w| w[0] < w[1]),
        "requests from one peer delivered out of order"
    );
    for e in &at_a {
        if let Event::Done { result, .. } = e {
            assert!(result.is_ok(), "a send failed: {result:?}");
        }
    }
    assert_eq!(at_a.len(), sends.len(), "every send completed once");
    a.stats().backlogged > 0
}

#[test]
fn shm_backlogs_posts_to_a_stalled_peer() {
    // shm refuses a post once the peer's command queue is full: the backlog is used.
    assert!(a_burst_to_a_stalled_peer_arrives_in_order("ofi+shm://auto"));
}

#[test]
fn tcp_keeps_order_to_a_stalled_peer() {
    a_burst_to_a_stalled_peer_arrives_in_order("ofi+tcp://127.0.0.1:0");
}

/// libfabric 1.17's `sockets` provider stops delivering part-way through this burst in
/// about one run in 20 to 60 (e.g. 3 219 of 4 100 arrived, then nothing for 60 s, the
/// sender's posts refused throughout); not understood yet, and `sockets` is libfabric's
/// own deprecated test provider (tcp and shm pass every run). Run with `--ignored`.
#[test]
#[ignore = "libfabric 1.17 sockets: a 4 100-message burst to a stalled receiver stops part-way in ~1 of 20-60 runs"]
fn sockets_keeps_order_to_a_stalled_peer() {
    a_burst_to_a_stalled_peer_arrives_in_order("ofi+sockets://127.0.0.1:0");
}

/// In the child process of the test below: an endpoint that never progresses.
const STALLED_CHILD: &str = "QS_BACKLOG_STALLED_CHILD";

/// A send waiting in the backlog for a peer that dies fails soon (the front checks its peer
/// every 5 ms), not after the 10 s give-up; canceling one drops it unposted. The peer is
/// another process (an endpoint of this one shares its region with ours).
#[test]
fn shm_backlogged_sends_fail_when_their_peer_dies_and_cancel() {
    if std::env::var_os(STALLED_CHILD).is_some() {
        let b = plugin("ofi+shm://auto");
        println!("\nADDR {}", b.self_addr());
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let me = "shm_backlogged_sends_fail_when_their_peer_dies_and_cancel";
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", me, "--nocapture", "--test-threads=1"])
        .env(STALLED_CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let addr = std::iter::from_fn(|| {
        let mut l = String::new();
        (std::io::BufRead::read_line(&mut out, &mut l).ok()? > 0).then_some(l)
    })
    .find_map(|l| l.strip_prefix("ADDR ").map(|a| a.trim().to_string()))
    .expect("the child's address");

    let a = plugin("ofi+shm://auto");
    let pb = a.lookup(&addr.parse().unwrap()).unwrap();
    let sends: Vec<OpId> = (0..N)
        .map(|i| a.send_unexpected(pb, i, vec![1u8; 1024]).unwrap())
        .collect();
    assert!(a.stats().backlogged > 0, "the peer's queue never filled");
    let last = *sends.last().unwrap();
    assert!(a.cancel(last), "a backlogged send can be canceled");
    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    let mut done = Vec::new();
    while done.len() < sends.len() && start.elapsed() < Duration::from_secs(30) {
        pass(&a, &mut done);
    }
    let took = start.elapsed();
    let mut results = std::collections::HashMap::new();
    for e in done {
        if let Event::Done { op, result } = e {
            assert!(
                results.insert(op, result).is_none(),
                "{op:?} completed twice"
            );
        }
    }
    assert_eq!(results.len(), sends.len(), "every send completed");
    assert_eq!(results[&last], Err(NaError::Canceled));
    let failed = results
        .values()
        .filter(|r| matches!(r, Err(NaError::Disconnected(_) | NaError::Unreachable(_))))
        .count();
    assert!(failed > 0, "no send failed for the dead peer");
    assert!(
        took < Duration::from_secs(8),
        "the backlog waited {took:?} for a dead peer"
    );
}
