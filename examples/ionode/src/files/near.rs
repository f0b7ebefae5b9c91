//! Dense blocks fetched from completions: a read that misses near the file's last read,
//! while blocks are worth it ([`super::dense`]), has the aligned block around it asked of
//! the backend without a thread waiting; the reads that miss in the same block meanwhile
//! join it, and are answered from the block once it is kept (or made the blocking way if
//! it is not). Only where nothing would wait: no write-out of the file in progress, its
//! state not held (as a plain miss, `Files::plain_miss`); the block kept is the
//! backend's bytes, what the file buffers laid over them as each read is answered.

use super::io::{near_miss, writing};
use super::{DENSE, Files, READAHEAD_TTL, SharedFile, lock};
use crate::stats::Counters;

/// A read waiting for the block it missed in: called with whether the block was kept.
pub type Waiter = Box<dyn FnOnce(bool) + Send>;

/// What a near miss does ([`Files::near_miss`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Near {
    /// Fetches the block of `len` bytes at `at` ([`Files::near_fetched`] with what came).
    Fetch {
        /// Where the block begins.
        at: u64,
        /// Its length.
        len: usize,
        /// The file's generation, to keep the block only if it did not change.
        generation: u64,
    },
    /// Joins the fetch of the block at this offset ([`Files::near_join`]).
    Join(u64),
}

impl Files {
    /// Whether a read of `len` at `off` (`window` as [`Files::read`] takes it) is a near
    /// miss to serve from a dense block fetched from a completion, and how; `None` if not
    /// or if anything would wait. `begin`: it begins now (a fetch is then under way, and
    /// the read is the file's last).
    pub fn near_miss(
        &self,
        f: &SharedFile,
        (off, len): (u64, usize),
        window: usize,
        begin: bool,
    ) -> Option<Near> {
        if window > len {
            return None;
        }
        let _no_flush = f.flushing.try_read().ok()?;
        let mut s = f.state.try_lock().ok()?;
        if !near_miss(&s, off, len)
            || writing(&s)
            || s.cache.find(off, len, READAHEAD_TTL).is_some()
        {
            return None;
        }
        let at = off - off % DENSE;
        let mut out = lock(&f.near_out);
        let near = match out.iter().any(|(a, _)| *a == at) {
            true => Near::Join(at),
            false if s.dense.fetches() => Near::Fetch {
                at,
                len: (DENSE as usize).max((off - at) as usize + len),
                generation: s.generation,
            },
            false => return None,
        };
        if begin {
            s.last_read = off;
            if let Near::Fetch { .. } = near {
                out.push((at, Vec::new()));
                Counters::add(&self.stats.readahead_fetches, 1);
            }
        }
        Some(near)
    }

    /// Waits (`w`) for the fetch of the block at `at`; gives `w` back if that fetch is
    /// over already.
    pub fn near_join(&self, f: &SharedFile, at: u64, w: Waiter) -> Result<(), Waiter> {
        let mut out = lock(&f.near_out);
        match out.iter_mut().find(|(a, _)| *a == at) {
            Some((_, waiting)) => {
                waiting.push(w);
                Ok(())
            }
            None => Err(w),
        }
    }

    /// The fetch of the block at `at` ended with `data` (`None`: it failed): kept if the
    /// file has not changed since `generation`. Whether it was, and the reads that
    /// joined it.
    pub fn near_fetched(
        &self,
        f: &SharedFile,
        at: u64,
        data: Option<Vec<u8>>,
        generation: u64,
    ) -> (bool, Vec<Waiter>) {
        let kept = match data {
            Some(d) => {
                let kept = self.keep_window(f, at, d, generation);
                if let Ok(mut s) = f.state.try_lock() {
                    s.dense.fetched();
                }
                kept
            }
            None => false,
        };
        let mut out = lock(&f.near_out);
        let waiting = match out.iter().position(|(a, _)| *a == at) {
            Some(i) => out.swap_remove(i).1,
            None => Vec::new(),
        };
        (kept, waiting)
    }
}
