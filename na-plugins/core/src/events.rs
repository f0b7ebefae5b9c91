//! A plugin's queue of events for the engine, with a count read without its lock, so
//! that a spinning progress pass that finds it empty (the common case) takes no lock.
//!
//! The count is a hint: it is written under the lock, so a reader that sees zero may miss
//! an event pushed an instant ago, exactly as a reader taking the lock an instant earlier
//! would have. Producers that must not be missed wake the poller.
//!
//! A progress pass whose caller takes the events at once ([`EventQueue::direct`]) keeps
//! what it makes on its own thread, off the queue: no lock, no wake-up, handed over at
//! the end of the pass. Used by every plugin (one implementation).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::Event;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Events waiting for the engine.
#[derive(Default)]
pub struct EventQueue {
    q: Mutex<VecDeque<Event>>,
    len: AtomicUsize,
}

thread_local! {
    /// The queue whose direct pass runs on this thread (0: none).
    static OWNER: Cell<usize> = const { Cell::new(0) };
    /// The events that pass made.
    static MADE: RefCell<Vec<Event>> = const { RefCell::new(Vec::new()) };
}

/// Ends a direct pass, even one that unwinds: later events of this thread queue again,
/// and what a pass that unwound had made goes to its queue (not to the next pass, which
/// may be another plugin's).
struct PassEnd<'a>(&'a EventQueue);

impl Drop for PassEnd<'_> {
    fn drop(&mut self) {
        OWNER.set(0);
        if std::thread::panicking() {
            let made = MADE.try_with(|m| m.try_borrow_mut().map(|mut m| std::mem::take(&mut *m)));
            if let Ok(Ok(made)) = made {
                self.0.queue(made);
            }
        }
    }
}

/// Events taken out to be handed over and not handed yet: queued again if the handing
/// unwinds (their callers' completions among them).
struct Unhanded<'a, I: Iterator<Item = Event>>(&'a EventQueue, I);

impl<I: Iterator<Item = Event>> Drop for Unhanded<'_, I> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.queue(self.1.by_ref());
        }
    }
}

impl EventQueue {
    fn id(&self) -> usize {
        self as *const Self as usize
    }

    /// Runs `pass` (a progress pass over this queue's plugin) and hands every event to
    /// `f`: the queue's, then those `pass` made on this thread, straight from it (another
    /// thread's may have been queued while the pass ran: the order across threads is not
    /// kept, as between two threads draining the queue), inside what `around` makes of
    /// them (kept until they are handed). Events `f` causes are queued, for the next
    /// call. A pass nested in another's (it makes events of its own for the outer one)
    /// keeps to the queue. If `pass` or `f` unwinds, the events not handed yet are queued
    /// (without a wake-up: the caller that catches it takes them at its next call).
    /// Returns `pass`'s result and how many events `f` took.
    pub fn direct<R, G>(
        &self,
        pass: impl FnOnce() -> R,
        around: impl FnOnce(&[Event]) -> G,
        f: &mut dyn FnMut(Event),
    ) -> (R, usize) {
        // Nested: the plain way, through the queue. (So is, in effect, a pass on a thread
        // whose thread-locals are being torn down, at a program's exit: every look at
        // `MADE` below and in `extend` falls back to the queue when it is gone.)
        if OWNER.get() != 0 {
            let r = pass();
            return (r, self.drain(f));
        }
        OWNER.set(self.id());
        let r = {
            let _end = PassEnd(self);
            pass()
        };
        // (An empty pass, the common case when spinning, takes nothing out.)
        let mut made = MADE
            .try_with(|m| match m.try_borrow_mut() {
                Ok(mut m) if !m.is_empty() => std::mem::take(&mut *m),
                _ => Vec::new(),
            })
            .unwrap_or_default();
        if made.capacity() == 0 {
            return (r, self.drain(f));
        }
        let n = {
            // (Whatever `f` has not taken when it unwinds is queued, not lost.)
            let n = made.len();
            let mut rest = Unhanded(self, made.drain(..));
            let n = self.drain(f) + n;
            let around = around(rest.1.as_slice());
            for ev in rest.1.by_ref() {
                f(ev);
            }
            drop(rest);
            drop(around);
            n
        };
        // The vector is kept for the next pass (unless `f` ran a pass that kept one).
        let _ = MADE.try_with(|m| {
            if let Ok(mut m) = m.try_borrow_mut()
                && m.capacity() == 0
            {
                *m = made;
            }
        });
        (r, n)
    }

    /// Appends `evs`; returns whether any were added to the queue (none when this
    /// thread's direct pass kept them: its caller takes them when the pass ends).
    pub fn extend(&self, evs: impl IntoIterator<Item = Event>) -> bool {
        if OWNER.get() == self.id() {
            let mut evs = Some(evs);
            let _ = MADE.try_with(|m| {
                if let Ok(mut m) = m.try_borrow_mut()
                    && let Some(evs) = evs.take()
                {
                    m.extend(evs);
                }
            });
            let Some(evs) = evs else { return false };
            return self.queue(evs);
        }
        self.queue(evs)
    }

    fn queue(&self, evs: impl IntoIterator<Item = Event>) -> bool {
        let mut q = lock(&self.q);
        let before = q.len();
        q.extend(evs);
        self.len.store(q.len(), Ordering::Release);
        q.len() > before
    }

    /// Whether the queue looks empty (a hint: see the module docs).
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// The oldest queued event.
    pub fn pop(&self) -> Option<Event> {
        if self.is_empty() {
            return None;
        }
        let mut q = lock(&self.q);
        let ev = q.pop_front();
        self.len.store(q.len(), Ordering::Release);
        ev
    }

    /// Hands every queued event to `f`, taking the lock twice per batch (not per event):
    /// events `f` causes wait for the next call. Returns how many it handed.
    pub fn drain(&self, f: &mut dyn FnMut(Event)) -> usize {
        if self.is_empty() {
            return 0;
        }
        let mut batch = {
            let mut q = lock(&self.q);
            self.len.store(0, Ordering::Release);
            std::mem::take(&mut *q)
        };
        let n = batch.len();
        let mut rest = Unhanded(self, batch.drain(..));
        for ev in rest.1.by_ref() {
            f(ev);
        }
        drop(rest);
        // Give the allocation back if nothing came meanwhile.
        let mut q = lock(&self.q);
        if q.is_empty() {
            *q = batch;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpId;

    fn done(n: u64) -> Event {
        Event::Done {
            op: OpId(n),
            result: Ok(Vec::new()),
        }
    }

    fn op(e: &Event) -> u64 {
        match e {
            Event::Done { op, .. } => op.0,
            _ => u64::MAX,
        }
    }

    #[test]
    fn events_come_out_in_order_singly_or_in_batches() {
        let q = EventQueue::default();
        assert!(q.is_empty() && q.pop().is_none());
        assert!(!q.extend(None));
        assert!(q.extend((1..=3).map(done)));
        assert_eq!(q.pop().as_ref().map(op), Some(1));
        let mut seen = Vec::new();
        assert_eq!(q.drain(&mut |e| seen.push(op(&e))), 2);
        assert_eq!(seen, [2, 3]);
        assert!(q.is_empty());
        assert_eq!(q.drain(&mut |_| panic!("empty")), 0);
        // Events pushed while a batch is handled wait for the next call.
        q.extend([done(4)]);
        let mut n = 0;
        q.drain(&mut |_| {
            n += 1;
            q.extend([done(5)]);
        });
        assert_eq!(n, 1);
        assert_eq!(q.pop().as_ref().map(op), Some(5));
    }

    /// A direct pass hands what it made on its own thread to its caller, never through the
    /// queue; another thread's events, and the other queues', still queue; what the caller
    /// causes waits for the next call; and after the pass (even one that panicked) this
    /// thread's events queue again.
    #[test]
    fn a_direct_pass_hands_its_own_events_over_and_queues_the_rest() {
        let (q, other) = (EventQueue::default(), EventQueue::default());
        q.extend([done(1)]);
        let mut seen = Vec::new();
        let (r, n) = q.direct(
            || {
                assert!(!q.extend([done(2)]), "kept on this thread, no wake-up");
                assert!(
                    other.extend([done(9)]),
                    "another queue's events still queue"
                );
                std::thread::scope(|s| {
                    s.spawn(|| assert!(q.extend([done(3)])));
                });
                assert_eq!(
                    q.len.load(Ordering::Acquire),
                    2,
                    "1 and 3 in the queue, not 2"
                );
                "passed"
            },
            |_| (),
            &mut |e| {
                seen.push(op(&e));
                q.extend([done(10 + op(&e))]);
            },
        );
        assert_eq!((r, n), ("passed", 3));
        assert_eq!(seen, [1, 3, 2]);
        assert_eq!(other.pop().as_ref().map(op), Some(9));
        let mut next = Vec::new();
        q.drain(&mut |e| next.push(op(&e)));
        assert_eq!(next, [11, 13, 12]);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let pass = || {
                q.extend([done(6)]);
                panic!("a pass that fails")
            };
            q.direct(pass, |_| (), &mut |_| {})
        }));
        assert!(unwound.is_err());
        assert!(q.extend([done(4)]), "queued again after the pass");
        let mut after = Vec::new();
        other.direct(|| (), |_| (), &mut |e| after.push(op(&e)));
        assert!(after.is_empty(), "another queue's pass gets none of it");
        q.drain(&mut |e| after.push(op(&e)));
        assert_eq!(
            after,
            [6, 4],
            "what the failed pass made is queued, not lost"
        );
    }

    /// A caller whose handling of a direct pass's events unwinds loses none of the rest:
    /// they are queued for its next call (another caller's completions among them),
    /// whether it unwinds on one the queue held or on one the pass made.
    #[test]
    fn events_left_when_the_caller_unwinds_are_queued() {
        let q = EventQueue::default();
        let all = [1, 2, 11, 12, 13];
        for (at, fail_on) in all.iter().enumerate() {
            q.extend([done(1), done(2)]);
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                q.direct(|| q.extend((11..=13).map(done)), |_| (), &mut |e| {
                    assert_ne!(op(&e), *fail_on, "the caller fails")
                })
            }));
            assert!(unwound.is_err());
            let mut rest = Vec::new();
            q.drain(&mut |e| rest.push(op(&e)));
            rest.sort();
            assert_eq!(rest, all[at + 1..], "failing on {fail_on}");
            assert!(q.extend([done(4)]), "and later events queue as before");
            q.drain(&mut |_| ());
        }
    }
}
