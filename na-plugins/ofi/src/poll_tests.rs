//! An idle engine over a provider without a wait object (shm) wakes rarely, and a new
//! operation wakes it from a long sleep: the policy of `poll.rs`, seen through a real
//! plugin's progress. Counted in polls, not timed: a loaded machine only makes each
//! sleep longer.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use na::Plugin;

use crate::poll::{DEEP_AFTER, IDLE_POLL, Poll};
use crate::{OfiConfig, OfiPlugin};

fn shm(idle_poll_max: Duration) -> Arc<OfiPlugin> {
    let cfg = OfiConfig {
        idle_poll_max,
        ..OfiConfig::default()
    };
    let p = OfiPlugin::with_config(&"ofi+shm://auto".parse().unwrap(), cfg).unwrap();
    assert!(!p.has_wait_fd(), "shm has no wait object");
    Arc::new(p)
}

/// Idles `p` (progress with nothing to do) until it has polled `polls` times; returns the
/// interval its next sleep takes.
fn idle_until(p: &OfiPlugin, polls: u64) -> Duration {
    while p.stats().queue_polls < polls {
        p.progress(Some(Duration::from_millis(20))).unwrap();
    }
    Duration::from_nanos(Poll::unpack(p.poll.load(Relaxed)).next_ns)
}

#[test]
fn an_idle_shm_queue_is_polled_rarely_once_idle_and_as_before_when_asked() {
    // Past the 0.1 s at 200 µs and the growth after it (some 30 polls to 5 ms).
    let settled = u64::from(DEEP_AFTER) + 60;
    let deep = shm(Duration::from_millis(5));
    assert_eq!(idle_until(&deep, settled), Duration::from_millis(5));
    // Where asked (a busy-polling engine's setting), 200 µs however long it idles.
    let shallow = shm(IDLE_POLL);
    assert_eq!(idle_until(&shallow, settled), IDLE_POLL);
    // And a second of idling at the deep interval costs about 200 polls, not 5 000.
    let before = deep.stats().queue_polls;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        deep.progress(Some(Duration::from_millis(100))).unwrap();
    }
    let n = deep.stats().queue_polls - before;
    assert!(n <= 300, "{n} polls in a second of deep idling");
}

#[test]
fn a_new_operation_wakes_a_deep_sleep() {
    let p = shm(Duration::from_secs(1));
    idle_until(&p, u64::from(DEEP_AFTER) + 60);
    let peer = p.lookup(p.self_addr()).unwrap();
    let sleeper = {
        let p = p.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            // Nothing completes: only a wake-up ends this call before its 5 s.
            p.progress(Some(Duration::from_secs(5))).unwrap();
            start.elapsed()
        })
    };
    // Once it sleeps deep (its mark up), post a receive: it must not wait for the sleep.
    while !p.deep_asleep.load(Relaxed) {
        std::thread::yield_now();
    }
    let op = p.recv_expected(peer, 7).unwrap();
    let slept = sleeper.join().unwrap();
    assert!(
        slept < Duration::from_secs(3),
        "the progress call slept {slept:?} past a new operation"
    );
    assert!(p.cancel(op));
}
