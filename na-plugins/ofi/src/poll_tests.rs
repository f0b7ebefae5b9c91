//! An idle engine over a provider without a wait object (shm) wakes rarely: the policy of
//! `poll.rs`, seen through a real plugin's progress.

use std::time::{Duration, Instant};

use na::Plugin;

use crate::{OfiConfig, OfiPlugin};

/// Progress with nothing to do for `total`, in calls that may each wait `each`; the
/// queue polls it took.
fn idle_polls(cfg: OfiConfig, total: Duration, each: Duration) -> u64 {
    let p = OfiPlugin::with_config(&"ofi+shm://auto".parse().unwrap(), cfg).unwrap();
    assert!(!p.has_wait_fd(), "shm has no wait object");
    let start = Instant::now();
    while start.elapsed() < total {
        p.progress(Some(each)).unwrap();
    }
    p.stats().queue_polls
}

#[test]
fn an_idle_shm_queue_is_polled_rarely_once_idle_and_as_before_when_asked() {
    let total = Duration::from_millis(1500);
    // At 200 µs throughout (what a busy-polling engine keeps): 7 500 polls in 1.5 s at
    // most (about 5 000 here: sleeps run long, never short).
    let shallow = OfiConfig {
        idle_poll_max: Duration::from_micros(200),
        ..OfiConfig::default()
    };
    let before = idle_polls(shallow, total, Duration::from_millis(100));
    // The default: about 500 polls over the first 0.1 s, then fewer and fewer, to one
    // per 5 ms (some 300 more in the rest of the time: about 800 here). On a loaded
    // machine sleeps run longer, and both counts shrink: the deep one stays the smaller.
    let deep = OfiConfig {
        idle_poll_max: Duration::from_millis(5),
        ..OfiConfig::default()
    };
    let now = idle_polls(deep, total, Duration::from_millis(100));
    assert!(now <= 1000, "{now} polls in 1.5 s of idling");
    assert!(
        before > now + now / 2,
        "{before} polls at 200 µs against {now}"
    );
}
