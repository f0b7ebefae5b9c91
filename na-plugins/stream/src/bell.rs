//! The plugin's wake-up: a mark that only a pass about to sleep takes, and an eventfd
//! written only while a pass sleeps.
//!
//! The eventfd is one edge in epoll: whichever pass polls next takes it. Wake-ups are
//! meant for a pass that sleeps (the progress thread, to look at a new deadline or its
//! stop, or to hand over events another thread queued); a pass that does not sleep, a
//! caller spinning, could take the edge and leave the sleeper asleep until its deadline,
//! holding the poll lock. So a wake-up is a mark: a pass about to sleep marks itself
//! asleep and takes the mark, under the poll lock, and does not sleep if it was set;
//! [`Bell::ring`] sets the mark, and writes the eventfd only while a pass is marked
//! asleep (or, `outside`, while someone waits on the plugin's fd). (Both
//! marks are one atomic changed by read-modify-writes, so a ring and a sleep are
//! ordered.) The edge itself may still be taken by another pass (one written just after
//! the sleeper's epoll returned, before it cleared its mark): that is harmless, since
//! the mark stays until a sleeping pass takes it. A ring while a pass sleeps is also left
//! marked: the next sleeping pass polls once without sleeping, which is cheap, and a
//! second pass waiting for the poll lock while the first slept is not put to sleep
//! through it.
//!
//! Model-checked: `RUSTFLAGS="--cfg loom" cargo test -p na-stream --release --lib loom_models`.

use crate::sync::{AtomicBool, AtomicU8, Ordering::*};

/// How a wake-up reaches a sleeping poll (the eventfd in epoll).
pub(crate) trait Edge: Send + Sync {
    fn raise(&self);
}

impl Edge for mio::Waker {
    fn raise(&self) {
        if let Err(e) = self.wake() {
            tracing::warn!(error = %e, "waking the poll failed");
        }
    }
}

pub(crate) struct Bell<E: Edge = mio::Waker> {
    edge: E,
    /// [`RUNG`] and [`ASLEEP`], changed together so that a ring and a sleep are ordered.
    state: AtomicU8,
    /// Someone waits on the poll's fd outside `progress` (`poll_fd`): every ring raises
    /// the edge.
    outside: AtomicBool,
}

/// Rung since a sleeping pass last looked.
const RUNG: u8 = 1;
/// A pass sleeps in the poll (set and cleared under the poll lock).
const ASLEEP: u8 = 2;

impl<E: Edge> Bell<E> {
    pub(crate) fn new(edge: E) -> Self {
        Bell {
            edge,
            state: AtomicU8::new(0),
            outside: AtomicBool::new(false),
        }
    }

    /// Makes a pass that sleeps, or is about to, return.
    pub(crate) fn ring(&self) {
        let was = self.state.fetch_or(RUNG, AcqRel);
        if was & ASLEEP != 0 || self.outside.load(Relaxed) {
            self.edge.raise();
        }
    }

    /// Every ring raises the edge from now on (a waiter outside `progress`).
    pub(crate) fn ring_outside(&self) {
        self.outside.store(true, Relaxed);
    }

    /// Called with the poll lock held by a pass about to sleep: returns `None` when a ring
    /// came since the last sleeping pass looked (then it must not sleep; the ring is
    /// taken), else marks it asleep until the guard drops (still under the lock).
    pub(crate) fn sleep(&self) -> Option<Asleep<'_, E>> {
        let was = self
            .state
            .fetch_update(AcqRel, Acquire, |s| match s & RUNG {
                0 => Some(s | ASLEEP),
                _ => Some(s & !RUNG),
            })
            .unwrap_or_else(|s| s);
        (was & RUNG == 0).then_some(Asleep(self))
    }
}

/// A pass marked asleep; the mark ends with it.
pub(crate) struct Asleep<'a, E: Edge>(&'a Bell<E>);

impl<E: Edge> Drop for Asleep<'_, E> {
    fn drop(&mut self) {
        self.0.state.fetch_and(!ASLEEP, AcqRel);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! A sleeper in the poll (holding the poll lock; its sleep ends only with an edge), a
    //! spinning pass that takes any edge it finds, and a ring: the sleeper always wakes.
    //! (Mutants checked by hand, as loom aborts the process on a deadlock rather than
    //! failing the test: raising the edge unconditionally but letting the sleeper sleep
    //! through a set mark, or taking the mark before the poll lock, deadlock here.)
    use super::*;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    #[derive(Default)]
    struct Eventfd {
        up: Mutex<bool>,
        cv: Condvar,
    }

    impl Edge for Arc<Eventfd> {
        fn raise(&self) {
            *self.up.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    #[test]
    fn a_ring_is_not_lost_to_a_pass_that_does_not_sleep() {
        loom::model(|| {
            let fd = Arc::new(Eventfd::default());
            let bell = Arc::new(Bell::new(fd.clone()));
            let poll = Arc::new(Mutex::new(()));
            let (b2, p2, fd2) = (bell.clone(), poll.clone(), fd.clone());
            let sleeper = thread::spawn(move || {
                let _p = p2.lock().unwrap();
                let asleep = b2.sleep();
                let mut up = fd2.up.lock().unwrap();
                if asleep.is_some() {
                    while !*up {
                        up = fd2.cv.wait(up).unwrap();
                    }
                }
                *up = false;
            });
            let (p3, fd3) = (poll.clone(), fd.clone());
            let spinner = thread::spawn(move || {
                let _p = p3.lock().unwrap();
                *fd3.up.lock().unwrap() = false;
            });
            bell.ring();
            spinner.join().unwrap();
            sleeper.join().unwrap();
        });
    }
}
