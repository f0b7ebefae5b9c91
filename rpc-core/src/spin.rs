//! When a waiting caller spins (drives progress itself) and when it sleeps instead.
//!
//! Spinning wins when the answer comes within microseconds and a core is free; it loses
//! badly when waiting threads outnumber cores (64 clients on 2 cores measured 10x slower
//! with every caller spinning: `qs-fwd --shapes fpp`). So a caller spins only within a
//! short window, only while few callers of the process spin, and not at all for a while
//! after its engine's last spin went unanswered.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest a caller drives while it waits: a small call's answer comes well within
/// it on every transport (sm 2 µs, tcp 12 µs); one that does not is not worth spinning for.
pub(crate) const CALLER_SPIN: Duration = Duration::from_micros(50);

/// How long a transfer's waiter whose transfer is not over yet, after its drive (or
/// instead of it), yields the CPU before it sleeps (one such waiter per half core at a
/// time, as for drives). Completions that come in a stream (a handler waiting on 64
/// transfers in turn) are then taken without a futex wake and a task switch each.
/// Measured with alternated binaries (`qs-bw -t sm -y 4096 -z 4096`, docs/performance-log.md): a modest
/// gain on this noisy 2-core VM (median 768 -> 847 MB/s over six rounds). Yielding, not
/// spinning: a thread with work on this core runs first. Where completions come further
/// apart (tcp, 64 KiB transfers: 26 µs each) yielding only took time from the threads
/// doing the work (10 % fewer MB/s), so an engine whose yielding waits go unanswered
/// skips the next ones, as drives do ([`Backoff`]). Calls do not yield here: an answer
/// comes once, and 64 client threads and an I/O node's workers waiting on calls measured
/// 7 % fewer metadata operations/s with it (`qs-fwd --shapes md -f 64`, seven pairs).
/// (A client's caller that holds the poll, `Shared::poll_for`, does yield between its
/// passes within the spin window, as the progress thread it stands in for did.)
pub(crate) const YIELD_WAIT: Duration = Duration::from_micros(20);

/// Yields the CPU until `done` or for `window`; returns `done()`.
pub(crate) fn yield_until(done: impl Fn() -> bool, window: Duration) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() >= window {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// When driving is not worth it: after a drive that ends without its answer, the next
/// calls of this engine do not drive (1, 3, 7 … up to 255 of them), so that waits that
/// are long on a busy machine (more waiting threads than cores, a slow server) cost no
/// CPU; a drive that ends with its answer starts over.
#[derive(Default)]
pub(crate) struct Backoff {
    level: AtomicU32,
    skip: AtomicU32,
}

impl Backoff {
    /// Whether this wait should not drive (and count it).
    pub(crate) fn skip(&self) -> bool {
        // Races between callers only make the count approximate.
        let s = self.skip.load(Ordering::Relaxed);
        if s == 0 {
            return false;
        }
        self.skip.store(s - 1, Ordering::Relaxed);
        true
    }

    pub(crate) fn outcome(&self, answered: bool) {
        if answered {
            self.level.store(0, Ordering::Relaxed);
            return;
        }
        let l = (self.level.load(Ordering::Relaxed) * 2 + 1).min(255);
        self.level.store(l, Ordering::Relaxed);
        self.skip.store(l, Ordering::Relaxed);
    }
}

/// Callers spinning in `Shared::drive_for` (progress.rs), in the whole process (all engines).
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// A caller's place among the spinning ones. A caller spins only while fewer than half
/// the cores' worth of callers do (at least one): with many waiting threads (64 clients,
/// each with its own engine, on 2 cores) spinning would take the CPU from the threads and
/// processes that must answer them; the others sleep until their answer completes.
pub(crate) struct Spinning;

impl Spinning {
    pub(crate) fn enter() -> Option<Spinning> {
        static BUDGET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let budget = *BUDGET.get_or_init(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        take(&SPINNING, budget).then_some(Spinning)
    }
}

/// Takes a place in `count` if fewer than `budget` are taken.
fn take(count: &AtomicUsize, budget: usize) -> bool {
    if count.fetch_add(1, Ordering::AcqRel) < budget {
        return true;
    }
    count.fetch_sub(1, Ordering::AcqRel);
    false
}

impl Drop for Spinning {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_spin_skips_ever_more_waits_and_an_answered_one_resets() {
        let b = Backoff::default();
        assert!(!b.skip(), "spins at first");
        b.outcome(false);
        assert!(b.skip());
        assert!(!b.skip(), "one wait skipped after the first miss");
        b.outcome(false);
        assert_eq!((0..4).filter(|_| b.skip()).count(), 3, "then three");
        for _ in 0..20 {
            b.outcome(false);
        }
        assert_eq!((0..300).filter(|_| b.skip()).count(), 255, "bounded");
        b.outcome(true);
        b.outcome(false);
        assert_eq!(
            (0..4).filter(|_| b.skip()).count(),
            1,
            "an answer starts over"
        );
    }

    #[test]
    fn a_yielding_wait_ends_at_done_or_at_its_window() {
        let t = Instant::now();
        assert!(yield_until(|| true, Duration::from_secs(10)));
        assert!(t.elapsed() < Duration::from_secs(1), "done at once");
        let t = Instant::now();
        assert!(!yield_until(|| false, Duration::from_millis(5)));
        assert!(t.elapsed() >= Duration::from_millis(5), "the whole window");
        let n = std::cell::Cell::new(0);
        let third = || {
            n.set(n.get() + 1);
            n.get() >= 3
        };
        assert!(yield_until(third, Duration::from_secs(10)));
        assert_eq!(n.get(), 3, "looked at until done");
    }

    #[test]
    fn only_a_budget_of_callers_spin_at_once() {
        let n = AtomicUsize::new(0);
        assert!(take(&n, 2) && take(&n, 2));
        assert!(!take(&n, 2), "over the budget");
        assert_eq!(n.load(Ordering::Relaxed), 2, "a refusal takes nothing");
        n.fetch_sub(1, Ordering::AcqRel);
        assert!(take(&n, 2), "given back");
    }
}
