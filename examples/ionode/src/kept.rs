//! Read-ahead data kept for one file, charged to a budget shared by all files, so that
//! no number of readers makes the node hold more than `--readahead-total`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Windows kept per file.
const WINDOWS: usize = 16;

/// Bytes kept for all files together.
#[derive(Debug)]
pub struct Budget {
    used: AtomicU64,
    max: u64,
}

impl Budget {
    /// At most `max` bytes.
    pub fn new(max: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            max,
        })
    }

    /// Bytes kept now.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.max).then_some(u + n)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// One file's windows, oldest first.
#[derive(Debug)]
pub struct Kept {
    windows: VecDeque<(u64, Arc<Vec<u8>>, Instant)>,
    budget: Arc<Budget>,
}

impl Default for Kept {
    fn default() -> Self {
        Kept::new(Budget::new(0))
    }
}

impl Kept {
    /// Nothing kept yet, charged to `budget`.
    pub fn new(budget: Arc<Budget>) -> Kept {
        Kept {
            windows: VecDeque::new(),
            budget,
        }
    }

    /// The newest window younger than `ttl` holding all of `[off, off + len)`.
    pub fn find(&self, off: u64, len: usize, ttl: Duration) -> Option<(u64, Arc<Vec<u8>>)> {
        let end = off + len as u64;
        self.windows
            .iter()
            .rev()
            .find(|(o, d, t)| *o <= off && end <= o + d.len() as u64 && t.elapsed() < ttl)
            .map(|(o, d, _)| (*o, d.clone()))
    }

    /// Keeps `data` read at `at`, dropping this file's oldest windows to make room; not
    /// kept if the budget has no room even then.
    pub fn keep(&mut self, at: u64, data: Vec<u8>) {
        let n = data.len() as u64;
        while self.windows.len() >= WINDOWS {
            self.pop();
        }
        while !self.budget.take(n) {
            if self.windows.is_empty() {
                return;
            }
            self.pop();
        }
        self.windows.push_back((at, Arc::new(data), Instant::now()));
    }

    fn pop(&mut self) {
        if let Some((_, d, _)) = self.windows.pop_front() {
            self.budget.give(d.len() as u64);
        }
    }

    /// Drops every window.
    pub fn clear(&mut self) {
        while !self.windows.is_empty() {
            self.pop();
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_charged_to_the_shared_budget_and_given_back() {
        let b = Budget::new(100);
        let ttl = Duration::from_secs(60);
        let mut a = Kept::new(b.clone());
        let mut c = Kept::new(b.clone());
        a.keep(0, vec![1; 60]);
        c.keep(0, vec![2; 60]);
        assert!(c.find(0, 1, ttl).is_none(), "no room: not kept");
        assert_eq!(b.used(), 60);
        a.keep(100, vec![3; 50]);
        assert_eq!(b.used(), 50, "the file's own oldest window made room");
        assert!(a.find(0, 1, ttl).is_none());
        assert_eq!(a.find(120, 10, ttl).map(|w| w.0), Some(100));
        assert!(a.find(120, 40, ttl).is_none(), "only reads wholly inside");
        drop(a);
        assert_eq!(b.used(), 0);
        for i in 0..40 {
            c.keep(i, vec![0; 1]);
        }
        assert_eq!(b.used(), WINDOWS as u64, "at most WINDOWS per file");
    }
}
