//! Read-ahead data kept for one file, charged to a budget shared by all files, so that
//! no number of readers makes the node hold more than `--readahead-total`, and split
//! fairly among them: a file holds at most its share (the total over the files holding
//! windows), so that 64 sequential readers with 8 MiB windows and a 256 MiB budget each
//! read ahead 4 MiB rather than fetch 8 MiB windows that nobody can keep (each read then
//! missed and fetched again: a 4 KiB client read cost an 8 MiB backend read).

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
    /// Files holding windows.
    files: AtomicU64,
}

impl Budget {
    /// At most `max` bytes.
    pub fn new(max: u64) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            max,
            files: AtomicU64::new(0),
        })
    }

    /// The most a file may hold: the total split among the files holding windows (a file
    /// not holding any yet counted among them).
    pub fn share(&self, holds: bool) -> u64 {
        let files = self.files.load(Ordering::Acquire) + u64::from(!holds);
        self.max / files.max(1)
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
    /// Bytes of those windows.
    bytes: u64,
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
            bytes: 0,
            budget,
        }
    }

    /// The largest window worth fetching for this file now (what it may keep).
    pub fn share(&self) -> u64 {
        self.budget.share(self.bytes > 0)
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

    /// Keeps `data` read at `at`, dropping this file's windows older than `ttl` (no
    /// longer served, they would hold its share) and its oldest ones to stay within its
    /// share and make room; not kept (false) if the budget has no room even then.
    pub fn keep(&mut self, at: u64, data: Vec<u8>, ttl: Duration) -> bool {
        let n = data.len() as u64;
        // (Before anything is evicted: a window that cannot be kept must not cost the
        // file the windows it has.)
        if n == 0 || n > self.share() {
            return false;
        }
        while self
            .windows
            .front()
            .is_some_and(|(_, _, t)| t.elapsed() >= ttl)
        {
            self.pop();
        }
        // (The share moves as other files come and go: looked at again each turn.)
        while !self.windows.is_empty()
            && (self.windows.len() >= WINDOWS || self.bytes + n > self.share())
        {
            self.pop();
        }
        if n == 0 || n > self.share() {
            return false;
        }
        while !self.budget.take(n) {
            if self.windows.is_empty() {
                return false;
            }
            self.pop();
        }
        if self.bytes == 0 {
            self.budget.files.fetch_add(1, Ordering::AcqRel);
        }
        self.bytes += n;
        self.windows.push_back((at, Arc::new(data), Instant::now()));
        true
    }

    fn pop(&mut self) {
        if let Some((_, d, _)) = self.windows.pop_front() {
            let n = d.len() as u64;
            self.budget.give(n);
            self.bytes -= n;
            if self.bytes == 0 {
                self.budget.files.fetch_sub(1, Ordering::AcqRel);
            }
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

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn windows_are_charged_to_the_shared_budget_and_given_back() {
        let b = Budget::new(100);
        let ttl = Duration::from_secs(60);
        let mut a = Kept::new(b.clone());
        let mut c = Kept::new(b.clone());
        assert!(a.keep(0, vec![1; 60], TTL));
        assert!(
            !c.keep(0, vec![2; 60], TTL),
            "over its share (50 of 100 for two files)"
        );
        assert!(c.find(0, 1, ttl).is_none(), "not kept");
        assert_eq!(b.used(), 60);
        assert!(a.keep(100, vec![3; 50], TTL));
        assert_eq!(b.used(), 50, "the file's own oldest window made room");
        assert!(a.find(0, 1, ttl).is_none());
        assert_eq!(a.find(120, 10, ttl).map(|w| w.0), Some(100));
        assert!(a.find(120, 40, ttl).is_none(), "only reads wholly inside");
        drop(a);
        assert_eq!(b.used(), 0);
        for i in 0..40 {
            c.keep(i, vec![0; 1], TTL);
        }
        assert_eq!(b.used(), WINDOWS as u64, "at most WINDOWS per file");
    }

    #[test]
    fn windows_past_their_time_give_their_share_back() {
        let b = Budget::new(100);
        let mut a = Kept::new(b.clone());
        assert!(a.keep(0, vec![1; 40], TTL));
        assert!(
            a.keep(40, vec![2; 40], Duration::ZERO),
            "the old one is past a zero ttl"
        );
        assert_eq!(b.used(), 40);
        assert!(a.find(0, 1, TTL).is_none() && a.find(40, 1, TTL).is_some());
    }

    #[test]
    fn readers_share_the_budget_fairly() {
        let b = Budget::new(400);
        let ttl = Duration::from_secs(60);
        let mut files: Vec<Kept> = (0..4).map(|_| Kept::new(b.clone())).collect();
        assert_eq!(files[0].share(), 400, "one reader may use it all");
        for (i, f) in files.iter_mut().enumerate() {
            // Each keeps windows of what its share is when it reads.
            let w = f.share().min(100) as usize;
            assert!(
                f.keep(0, vec![i as u8; w], TTL),
                "file {i} keeps its first window"
            );
        }
        assert_eq!(b.share(true), 100, "four readers: a quarter each");
        assert_eq!(b.share(false), 80, "a fifth would get a fifth");
        for f in &mut files {
            assert!(
                f.keep(100, vec![9; 100], TTL),
                "a reader moving on replaces its window"
            );
            assert!(f.find(0, 1, ttl).is_none(), "its old window made room");
            assert!(f.find(150, 10, ttl).is_some());
        }
        assert_eq!(b.used(), 400);
        let mut late = Kept::new(b.clone());
        assert!(
            !late.keep(0, vec![0; 80], TTL),
            "no room until others shrink to the new share"
        );
        assert!(
            files[0].keep(200, vec![1; 80], TTL),
            "a file over the new share gives back"
        );
        assert!(late.keep(0, vec![0; 20], TTL));
        files.clear();
        drop(late);
        assert_eq!((b.used(), b.files.load(Ordering::Relaxed)), (0, 0));
    }
}
