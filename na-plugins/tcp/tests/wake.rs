//! A wake-up is for a pass that sleeps (`na_stream::bell`): a pass that does not sleep, a
//! caller spinning, neither takes it nor waits behind a pass asleep in the kernel's poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use na::Plugin;

#[allow(dead_code)] // (this test builds no frame by hand)
mod common;
use common::plugin;

#[test]
fn a_wake_up_is_kept_for_the_next_pass_that_sleeps() {
    let a = plugin();
    a.wake();
    // Passes that do not sleep: with a one-edge wake-up the first took it.
    for _ in 0..3 {
        a.progress(Some(Duration::ZERO)).unwrap();
    }
    let t = Instant::now();
    a.progress(Some(Duration::from_secs(5))).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the pass that sleeps slept through the wake-up ({:?})",
        t.elapsed()
    );
    // That pass took it: the next one sleeps.
    let t = Instant::now();
    a.progress(Some(Duration::from_millis(200))).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_spinning_pass_does_not_wait_behind_a_sleeping_one_which_a_wake_up_ends() {
    let a = plugin();
    let slept = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sleeper = s.spawn(|| {
            let t = Instant::now();
            a.progress(Some(Duration::from_secs(10))).unwrap();
            slept.store(true, Ordering::Release);
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        for _ in 0..100 {
            a.progress(Some(Duration::ZERO)).unwrap();
        }
        let spun = t.elapsed();
        let asleep_meanwhile = !slept.load(Ordering::Acquire);
        a.wake();
        let sleep = sleeper.join().unwrap();
        assert!(asleep_meanwhile, "the sleeper returned early ({sleep:?})");
        assert!(
            spun < Duration::from_secs(2),
            "the spinning passes waited ({spun:?})"
        );
        assert!(
            sleep < Duration::from_secs(5),
            "the wake-up was lost ({sleep:?})"
        );
    });
}
