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
//! caller holds it (modelled below too, with its mutant). The holder, in turn, does not
//! sleep in the poll while the progress thread is still marked asleep: the wake-up it
//! rang is taken by the first pass that sleeps, and must be the progress thread's
//! (modelled below with the wake-up as the stream plugins' is, a mark).

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
    /// called under the calls lock, before it marks itself asleep there. The holder does
    /// not sleep either while the progress thread is still marked asleep (`progress`):
    /// the wake-up the holder rang for it is taken by whichever pass sleeps first, and
    /// must be the progress thread's, else that one sleeps on through it, holding the
    /// poll (modelled below, with the wake-up as the stream plugins' bell is).
    pub(crate) fn sleep_for(
        &self,
        wait: Option<Duration>,
        holder: bool,
        progress: bool,
    ) -> Option<Duration> {
        if self.any() || (!holder && self.poll_held()) || (holder && progress) {
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
                    let w = d2.sleep_for(None, false, false);
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
            assert!(
                d.sleep_for(None, true, false).is_none(),
                "the holder may sleep"
            );
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

    /// The holder of the poll and the progress thread, each with a sleeping pass, on a
    /// wake-up that is a mark the first sleeping pass takes (`na_stream::bell`; the
    /// holder's nap ends by itself, the progress thread's, with no deadline, only by the
    /// mark). The holder waits for the progress thread to be out before it sleeps, so the
    /// mark it rang is the progress thread's. (Mutant checked by hand, as loom aborts the
    /// process on a deadlock: a holder that sleeps at once takes the mark, and the
    /// progress thread sleeps for ever.)
    #[test]
    fn the_holder_never_takes_the_wake_up_meant_for_the_progress_thread() {
        loom::model(|| {
            let d = Arc::new(Drivers::default());
            let asleep = Arc::new(Mutex::new(false));
            let bell = Arc::new((Mutex::new(false), loom::sync::Condvar::new()));
            let (d2, a2, b2) = (d.clone(), asleep.clone(), bell.clone());
            let progress = thread::spawn(move || {
                let sleeps = {
                    let mut a = a2.lock().unwrap();
                    let s = d2.sleep_for(None, false, false) != Some(Duration::ZERO);
                    *a = s;
                    s
                };
                if sleeps {
                    let mut m = b2.0.lock().unwrap();
                    while !*m {
                        m = b2.1.wait(m).unwrap();
                    }
                    *m = false;
                    drop(m);
                    *a2.lock().unwrap() = false;
                }
            });
            if d.take_poll(|| *asleep.lock().unwrap()) == Some(true) {
                *bell.0.lock().unwrap() = true;
                bell.1.notify_all();
            }
            loop {
                let nap = Some(Duration::from_millis(10));
                let w = d.sleep_for(nap, true, *asleep.lock().unwrap());
                if w != Some(Duration::ZERO) {
                    // Its nap: takes the mark if it is there, and ends by itself.
                    *bell.0.lock().unwrap() = false;
                    break;
                }
                thread::yield_now();
            }
            progress.join().unwrap();
        });
    }
}
