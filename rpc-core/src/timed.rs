//! A table with deadlines behind a lock whose earliest deadline is published in an atomic
//! each time the lock is let go, so that a progress pass that finds nothing due takes no
//! lock to learn it.
//!
//! The published value is a lower bound of the earliest deadline (a table may count an
//! entry that ended as still due until it looks): a pass that trusts it may look in vain,
//! never too late. It is stored while the lock is held, so a thread that takes the lock
//! after an insertion also sees its deadline published.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// An instant as the tables publish their deadlines.
#[derive(Copy, Clone)]
pub(crate) struct Stamp(u64);

impl Stamp {
    pub(crate) fn of(t: Instant) -> Stamp {
        Stamp(since_epoch(Some(t)))
    }
}

/// A table that knows (a lower bound of) its earliest deadline.
pub(crate) trait Earliest {
    fn earliest(&self) -> Option<Instant>;
}

/// A table behind a lock, with its earliest deadline readable without it.
pub(crate) struct Timed<T> {
    /// The table, and the deadline last published (published again only if it changed).
    table: Mutex<(T, Option<Instant>)>,
    /// Nanoseconds since [`epoch`] of the earliest deadline; `u64::MAX`: none.
    due: AtomicU64,
}

/// The locked table; publishes its earliest deadline when dropped.
pub(crate) struct TimedGuard<'a, T: Earliest> {
    guard: MutexGuard<'a, (T, Option<Instant>)>,
    due: &'a AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `t` as nanoseconds since the epoch (earlier instants count as the epoch itself, so
/// they are due at once); `None` as never.
fn since_epoch(t: Option<Instant>) -> u64 {
    t.map_or(u64::MAX, |t| {
        let n = t.saturating_duration_since(epoch()).as_nanos();
        n.min(u128::from(u64::MAX - 1)) as u64
    })
}

impl<T: Earliest> Timed<T> {
    pub(crate) fn new(table: T) -> Self {
        epoch();
        let first = table.earliest();
        Timed {
            table: Mutex::new((table, first)),
            due: AtomicU64::new(since_epoch(first)),
        }
    }

    pub(crate) fn lock(&self) -> TimedGuard<'_, T> {
        TimedGuard {
            guard: self.table.lock().unwrap_or_else(|e| e.into_inner()),
            due: &self.due,
        }
    }

    /// Whether something may be due at `now` (from [`Stamp::of`]: one conversion of
    /// the clock serves several tables).
    pub(crate) fn may_be_due(&self, now: Stamp) -> bool {
        now.0 >= self.due.load(Ordering::Acquire)
    }

    /// The earliest deadline as last published (a lower bound).
    pub(crate) fn earliest(&self) -> Option<Instant> {
        match self.due.load(Ordering::Acquire) {
            u64::MAX => None,
            n => Some(epoch() + Duration::from_nanos(n)),
        }
    }
}

impl<T: Earliest> Deref for TimedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard.0
    }
}

impl<T: Earliest> DerefMut for TimedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard.0
    }
}

impl<T: Earliest> Drop for TimedGuard<'_, T> {
    fn drop(&mut self) {
        // Before the lock goes (the guard field drops after this body).
        let (table, published) = &mut *self.guard;
        let now = table.earliest();
        if now != *published {
            *published = now;
            self.due.store(since_epoch(now), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One(Option<Instant>);
    impl Earliest for One {
        fn earliest(&self) -> Option<Instant> {
            self.0
        }
    }

    #[test]
    fn the_earliest_deadline_is_published_when_the_lock_goes() {
        let t0 = Instant::now();
        let t = Timed::new(One(None));
        let due = |t: &Timed<One>, ms| t.may_be_due(Stamp::of(t0 + Duration::from_millis(ms)));
        assert!(!due(&t, 3_600_000));
        assert_eq!(t.earliest(), None);
        {
            let mut g = t.lock();
            g.0 = Some(t0 + Duration::from_millis(5));
            assert!(!due(&t, 10), "not before it goes");
        }
        assert!(!due(&t, 4));
        assert!(due(&t, 5));
        assert_eq!(
            t.earliest(),
            Some(t0 + Duration::from_millis(5)),
            "exact, in ns"
        );
        t.lock().0 = None;
        assert!(!due(&t, 3_600_000));
    }
}
