//! The connections a memory-polling plugin looks at in every spinning pass: a snapshot
//! republished when one comes or goes, read through a per-thread copy. A pass finds its
//! snapshot with plain loads (the generation, then the thread's copy of it): no locked
//! instruction, where the `arc-swap` load took two and about fifty instructions in each
//! pass, most of a spinning pass that finds nothing.
//!
//! Generations are unique in the process (one counter for every plugin), so a copy never
//! passes for another plugin's. A thread keeps copies of the last [`SLOTS`] snapshots it
//! used (one thread may drive several engines): a connection closed since stays
//! allocated (its wire already shut down) until those threads pass again or end.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::conn::Conn;

/// Snapshots a thread keeps copies of.
const SLOTS: usize = 4;

/// The next generation, for every plugin of the process.
static NEXT: AtomicU64 = AtomicU64::new(1);

type Conns = Arc<Vec<Arc<Conn>>>;

/// A thread's copies: (generation, snapshot), and the slot to replace next.
type Copies = ([(u64, Option<Conns>); SLOTS], usize);

thread_local! {
    static COPIES: RefCell<Copies> = const { RefCell::new(([const { (0, None) }; SLOTS], 0)) };
}

/// A plugin's snapshot of the connections it polls.
pub(crate) struct Snapshot {
    current: arc_swap::ArcSwap<Vec<Arc<Conn>>>,
    generation: AtomicU64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            current: arc_swap::ArcSwap::default(),
            generation: AtomicU64::new(NEXT.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

impl Snapshot {
    /// Publishes `conns` (callers serialize: the connection table's lock).
    pub(crate) fn publish(&self, conns: Vec<Arc<Conn>>) {
        self.current.store(Arc::new(conns));
        // After the store: a pass that reads this generation reads this snapshot or a
        // later one.
        let g = NEXT.fetch_add(1, Ordering::Relaxed);
        self.generation.store(g, Ordering::Release);
    }

    /// Runs `f` over the snapshot (this thread's copy of the current generation; the
    /// shared one if `f` runs inside another `with` or the thread is ending).
    pub(crate) fn with<R>(&self, mut f: impl FnMut(&[Arc<Conn>]) -> R) -> R {
        let g = self.generation.load(Ordering::Acquire);
        let mut out = None;
        let _ = COPIES.try_with(|c| {
            let Ok(mut c) = c.try_borrow_mut() else {
                return;
            };
            let (slots, next) = &mut *c;
            let i = match slots.iter().position(|(s, _)| *s == g) {
                Some(i) => i,
                None => {
                    let i = *next;
                    *next = (i + 1) % SLOTS;
                    slots[i] = (g, Some(self.current.load_full()));
                    i
                }
            };
            if let Some(conns) = slots[i].1.as_deref() {
                out = Some(f(conns));
            }
        });
        match out {
            Some(r) => r,
            None => f(&self.current.load()),
        }
    }
}
