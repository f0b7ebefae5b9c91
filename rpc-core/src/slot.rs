//! The completion slot between the thread that finishes a call (progress thread, handler,
//! timeout, cancel) and the caller (blocking `wait`, a future, or a spinning waiter).
//! The first completion wins; later ones are refused and reported.
//!
//! Cost on the hot path: a waiter that polls (busy and manual modes, a spinning `wait`)
//! reads one atomic flag until it is set, and takes the lock once to take the value; the
//! completer takes the lock once and calls into the kernel only when a waiter is asleep
//! (the count of sleepers lives under the lock, so a waiter cannot fall asleep unseen).

use std::task::{Context, Poll, Waker};

use crate::RpcError;
use crate::sync::{AtomicBool, Condvar, Mutex, Ordering};

/// What an operation's slot receives: the raw answer message (empty for transfers), or
/// why there is none.
pub(crate) type Answer = Result<Vec<u8>, RpcError>;

enum State<T> {
    Pending(Option<Waker>),
    Ready(T),
    Taken,
}

struct Inner<T> {
    state: State<T>,
    /// Threads blocked in [`Slot::wait`] (changed and read only under the lock).
    sleepers: u32,
}

/// A one-shot result cell.
pub struct Slot<T> {
    inner: Mutex<Inner<T>>,
    cv: Condvar,
    /// Set, under the lock, once the state left `Pending`: read without the lock.
    done: AtomicBool,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            inner: Mutex::new(Inner {
                state: State::Pending(None),
                sleepers: 0,
            }),
            cv: Condvar::new(),
            done: AtomicBool::new(false),
        }
    }
}

impl<T> Slot<T> {
    /// Stores the result unless one is there already; wakes the waiter. Returns whether
    /// this call completed the slot.
    pub fn complete(&self, value: T) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let waker = match &mut g.state {
            State::Pending(w) => w.take(),
            _ => return false,
        };
        g.state = State::Ready(value);
        self.done.store(true, Ordering::Release);
        let sleepers = g.sleepers;
        drop(g);
        if sleepers > 0 {
            self.cv.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Whether a result is waiting or was taken.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Takes the result if it is there.
    pub fn try_take(&self) -> Option<T> {
        if !self.is_done() {
            return None;
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Self::take_ready(&mut g.state)
    }

    fn take_ready(s: &mut State<T>) -> Option<T> {
        match std::mem::replace(s, State::Taken) {
            State::Ready(v) => Some(v),
            other => {
                *s = other;
                None
            }
        }
    }

    /// Blocks until the result is there and takes it. Returns `None` if it was taken
    /// already.
    pub fn wait(&self) -> Option<T> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &g.state {
                State::Pending(_) => {
                    g.sleepers += 1;
                    g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                    g.sleepers -= 1;
                }
                State::Ready(_) => return Self::take_ready(&mut g.state),
                State::Taken => return None,
            }
        }
    }

    /// Future-style poll: takes the result, or records the waker.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &mut g.state {
            State::Pending(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            State::Ready(_) => Poll::Ready(Self::take_ready(&mut g.state)),
            State::Taken => Poll::Ready(None),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_completion_wins_and_wait_returns_it() {
        let s = Arc::new(Slot::default());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.complete(1));
        assert_eq!(s.wait(), Some(1));
        assert!(t.join().unwrap());
        assert!(!s.complete(2));
        assert_eq!(s.try_take(), None);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! Run with `RUSTFLAGS="--cfg loom" cargo test -p rpc-core --lib --release slot`.
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// An answer and a timeout (or cancel) race to complete a call while the caller
    /// blocks: exactly one wins, and the caller gets the winner's value and never hangs.
    #[test]
    fn answer_and_timeout_race_with_a_blocking_waiter() {
        loom::model(|| {
            let s = Arc::new(Slot::default());
            let (a, b) = (s.clone(), s.clone());
            let t1 = thread::spawn(move || a.complete(1));
            let t2 = thread::spawn(move || b.complete(2));
            let got = s.wait().unwrap();
            let (w1, w2) = (t1.join().unwrap(), t2.join().unwrap());
            assert!(w1 ^ w2, "exactly one completion wins");
            assert_eq!(got, if w1 { 1 } else { 2 });
        });
    }

    /// A caller that polls (spinning or as a future) sees the value exactly once.
    #[test]
    fn completion_handoff_to_a_polling_waiter() {
        loom::model(|| {
            let s = Arc::new(Slot::default());
            let a = s.clone();
            let t = thread::spawn(move || {
                a.complete(7);
            });
            let first = s.try_take();
            t.join().unwrap();
            let second = s.try_take();
            assert_eq!(first.or(second), Some(7));
            assert!(first.is_none() || second.is_none());
            assert!(s.is_done());
        });
    }
}
