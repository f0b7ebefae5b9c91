//! Dense blocks fetched from completions: a read that misses near the file's last read,
//! while blocks are worth it ([`super::dense`]), has the aligned block around it asked of
//! the backend without a thread waiting; the reads that miss in the same block meanwhile
//! join it, and are answered from the block once it is kept (or made the blocking way if
//! it is not). Only where nothing would wait (`Files::miss`); the block kept is the
//! backend's bytes, what the file buffers laid over them as each read is answered.

use super::{DENSE, Files, SharedFile, lock};

/// A read waiting for the block it missed in: called with whether the block was kept.
pub type Waiter = Box<dyn FnOnce(bool) + Send>;

/// What a read that misses asks of the backend ([`Files::miss`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// Just its bytes; the file's generation.
    Plain(u64),
    /// A sequential reader's read-ahead window of this many bytes at its offset, to keep
    /// ([`Files::keep_window`]); the generation.
    Window(usize, u64),
    /// The dense block around it, fetched or being fetched.
    Near(Near),
}

/// What a near miss does.
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
    /// A near miss of `len` at `off` (its file's state held by [`Files::miss`]): joins
    /// the fetch of its block under way, or fetches it (registered as under way if
    /// `begin`).
    pub(super) fn near_begin(
        &self,
        f: &SharedFile,
        (off, len): (u64, usize),
        generation: u64,
        begin: bool,
    ) -> Near {
        let at = off - off % DENSE;
        let mut out = lock(&f.near_out);
        if out.iter().any(|(a, _)| *a == at) {
            return Near::Join(at);
        }
        if begin {
            out.push((at, Vec::new()));
        }
        Near::Fetch {
            at,
            len: (DENSE as usize).max((off - at) as usize + len),
            generation,
        }
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
