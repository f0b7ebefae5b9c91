//! The hand-off between callers that drive progress themselves and the progress thread
//! (thread mode, see `Shared::drive_for`): while a caller drives, the progress thread
//! must not sleep in the transport's poll (it would hold the transport while the caller
//! waits), and a caller that starts driving while the progress thread is going to sleep
//! must wake it.
//!
//! The protocol, a Dekker pair over the calls lock: the caller counts itself a driver
//! *then* reads, under the lock, whether the progress thread sleeps (and wakes it if so);
//! the progress thread reads, under the same lock, whether any caller drives *then*
//! marks itself asleep. Either the caller sees it asleep or it sees the caller. The loom
//! model below checks this with the wake-up as the transport's is (sticky, like an
//! eventfd), and that the reverse order loses the wake-up.
//!
//! A caller of an engine that serves nothing may also *take the poll* (sleep in it
//! itself, `Shared::poll_for`): the same pair, the flag set by a compare-and-swap (one
//! holder at a time) before the caller reads whether the progress thread sleeps; the
//! progress thread, reading the flag under the lock, does not sleep in the poll while a
//! caller holds it (modelled below too, with its mutant).

use std::time::Duration;

use crate::sync::{AtomicBool, AtomicU32, Ordering};

/// Callers driving progress now, and whether one holds the poll (sleeps in it itself,
/// `Shared::poll_for`): the same hand-off, with the holder the one thread that may sleep.
#[derive(Default)]
pub(crate) struct Drivers(AtomicU32, AtomicBool);

impl Drivers {
    /// A caller starts driving; whether the progress thread must be woken, as
    /// `sleeping` (which reads the flag under the calls lock) says.
    pub(crate) fn enter(&self, sleeping: impl FnOnce() -> bool) -> bool {
        self.0.fetch_add(1, Ordering::SeqCst);
        sleeping()
    }

    /// The caller stops driving; whether it was the last.
    pub(crate) fn leave(&self) -> bool {
        self.0.fetch_sub(1, Ordering::SeqCst) == 1
    }

    /// Whether a caller drives.
    pub(crate) fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }

    /// A caller takes the poll, if nobody holds it: `Some(wake)`, whether the progress
    /// thread must be woken, as `sleeping` (read under the calls lock) says.
    pub(crate) fn take_poll(&self, sleeping: impl FnOnce() -> bool) -> Option<bool> {
        self.1
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::Relaxed)
            .ok()?;
        Some(sleeping())
    }

    /// The holder lets the poll go.
    pub(crate) fn release_poll(&self) {
        self.1.store(false, Ordering::SeqCst);
    }

    /// Whether a caller holds the poll.
    pub(crate) fn poll_held(&self) -> bool {
        self.1.load(Ordering::SeqCst)
    }

    /// How long a thread may sleep in the poll (`wait`, or not at all while a caller
    /// drives, or while a caller holds the poll and this is not that caller, `holder`);
    /// called under the calls lock, before it marks itself asleep there.
    pub(crate) fn sleep_for(&self, wait: Option<Duration>, holder: bool) -> Option<Duration> {
        if self.any() || (!holder && self.poll_held()) {
            Some(Duration::ZERO)
        } else {
            wait
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Run with `RUSTFLAGS="--cfg loom" cargo test -p rpc-core --lib --release handoff`.
    use super::*;
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    /// The progress thread going to sleep with no deadline while a caller starts driving.
    /// The transport's wake-up is sticky (an eventfd written before the poll ends it), so
    /// the wake-up is lost exactly when the progress thread sleeps and nobody rings:
    /// checked in every interleaving.
    fn model(caller: fn(&Drivers, &Mutex<bool>, &AtomicBool)) {
        loom::model(move || {
            let (d, asleep, rung) = (
                Arc::new(Drivers::default()),
                Arc::new(Mutex::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let (d2, a2) = (d.clone(), asleep.clone());
            let progress = thread::spawn(move || {
                let wait = {
                    let mut a = a2.lock().unwrap();
                    let w = d2.sleep_for(None, false);
                    *a = true;
                    w
                };
                let sleeps = wait != Some(Duration::ZERO);
                if !sleeps {
                    // A poll that does not sleep returns by itself; one with no deadline
                    // returns only when woken, so its flag stays up here.
                    *a2.lock().unwrap() = false;
                }
                sleeps
            });
            caller(&d, &asleep, &rung);
            let slept = progress.join().unwrap();
            assert!(
                !slept || rung.load(Ordering::SeqCst),
                "the progress thread slept through a caller's drive or poll"
            );
        });
    }

    #[test]
    fn a_caller_that_starts_driving_never_leaves_the_progress_thread_asleep() {
        model(|d, asleep, rung| {
            if d.enter(|| *asleep.lock().unwrap()) {
                rung.store(true, Ordering::SeqCst);
            }
        });
    }

    #[test]
    fn a_caller_that_takes_the_poll_never_leaves_the_progress_thread_asleep_in_it() {
        model(|d, asleep, rung| {
            if d.take_poll(|| *asleep.lock().unwrap()) == Some(true) {
                rung.store(true, Ordering::SeqCst);
            }
            assert!(d.sleep_for(None, true).is_none(), "the holder may sleep");
        });
    }

    /// The mutant: the caller reads the flag before it takes the poll.
    #[test]
    #[should_panic(expected = "slept through")]
    fn reading_the_flag_before_taking_the_poll_loses_the_wake_up() {
        model(|d, asleep, rung| {
            let sleeping = *asleep.lock().unwrap();
            d.take_poll(|| false);
            if sleeping {
                rung.store(true, Ordering::SeqCst);
            }
        });
    }

    /// The mutant: the caller reads the flag before it counts itself. The progress thread
    /// can then read no driver and sleep, and nobody wakes it.
    #[test]
    #[should_panic(expected = "slept through")]
    fn reading_the_flag_before_counting_loses_the_wake_up() {
        model(|d, asleep, rung| {
            let sleeping = *asleep.lock().unwrap();
            d.enter(|| false);
            if sleeping {
                rung.store(true, Ordering::SeqCst);
            }
        });
    }
}
