//! A file's write-out lock (`SharedFile::flushing`): held (write) by a write-out, and
//! (read) by a read made the blocking way, which so never misses bytes a write-out has
//! taken from the buffer but not written yet. A read begun from completions does not
//! wait for it on a thread: it is begun again by the thread that ends the write-out
//! ([`SharedFile::after_write_out`]). Every holder of the write side lets go through
//! [`WriteOut`], which then runs what waited.

use std::sync::{RwLockWriteGuard, TryLockError};

use super::SharedFile;
use crate::node::lock;

/// What waits for the end of a file's write-out.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// The write side of a file's write-out lock. Dropped, it lets go, then runs the jobs
/// that found it held.
pub(super) struct WriteOut<'a> {
    f: &'a SharedFile,
    held: Option<RwLockWriteGuard<'a, ()>>,
}

impl Drop for WriteOut<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        // Taken after letting go, under the lock the jobs are queued under: a job queued
        // before found the lock held and is here; one looking after finds it free.
        let jobs = std::mem::take(&mut *lock(&self.f.after_flush));
        for job in jobs {
            // One that panics must not take the others, nor the thread that wrote out.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            if ran.is_err() {
                tracing::error!("a job waiting for a write-out panicked");
            }
        }
    }
}

impl SharedFile {
    /// The write side, waited for.
    pub(super) fn write_out_lock(&self) -> WriteOut<'_> {
        let held = self.flushing.write().unwrap_or_else(|e| e.into_inner());
        WriteOut {
            f: self,
            held: Some(held),
        }
    }

    /// The write side, if no one holds either side.
    pub(super) fn try_write_out_lock(&self) -> Option<WriteOut<'_>> {
        let held = self.flushing.try_write().ok()?;
        Some(WriteOut {
            f: self,
            held: Some(held),
        })
    }

    /// Whether a write-out of the file is in progress (or about to begin).
    pub fn writing_out(&self) -> bool {
        matches!(self.flushing.try_read(), Err(TryLockError::WouldBlock))
    }

    /// Has `job` run by the thread that ends the write-out of the file in progress
    /// (`Ok`), or gives it back if none is (`Err`: it ended meanwhile).
    pub fn after_write_out<J: FnOnce() + Send + 'static>(&self, job: J) -> Result<(), J> {
        let mut waiting = lock(&self.after_flush);
        if !self.writing_out() {
            return Err(job);
        }
        waiting.push(Box::new(job));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::files::Files;
    use crate::stats::Counters;

    fn files() -> Files {
        Files::new(16 << 20, 0, None, Arc::new(Counters::default()))
    }

    #[test]
    fn a_job_waits_for_the_write_out_in_progress_and_runs_as_it_ends() {
        let files = files();
        let f = files.get((0, 1, 1));
        let ran = Arc::new(AtomicUsize::new(0));
        let job = |ran: &Arc<AtomicUsize>| {
            let ran = ran.clone();
            move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        };
        assert!(!f.writing_out());
        assert!(f.after_write_out(job(&ran)).is_err(), "none in progress");
        let out = f.write_out_lock();
        assert!(f.writing_out());
        assert!(f.after_write_out(job(&ran)).is_ok());
        assert!(f.after_write_out(job(&ran)).is_ok());
        assert_eq!(ran.load(Ordering::SeqCst), 0, "not before it ends");
        drop(out);
        assert_eq!(ran.load(Ordering::SeqCst), 2, "both, as it ended");
        assert!(!f.writing_out());
        let held = f.try_write_out_lock().expect("free");
        assert!(f.try_write_out_lock().is_none(), "held");
        assert!(f.after_write_out(job(&ran)).is_ok());
        drop(held);
        assert_eq!(ran.load(Ordering::SeqCst), 3, "a try's end runs them too");
    }

    #[test]
    fn a_job_queued_from_another_thread_runs_once_whatever_the_timing() {
        let files = files();
        let f = files.get((0, 1, 2));
        for _ in 0..200 {
            let ran = Arc::new(AtomicUsize::new(0));
            let out = f.write_out_lock();
            let (f2, r2) = (f.clone(), ran.clone());
            let t = std::thread::spawn(move || {
                let r3 = r2.clone();
                if let Err(job) = f2.after_write_out(move || {
                    r3.fetch_add(1, Ordering::SeqCst);
                }) {
                    job();
                }
            });
            drop(out);
            t.join().unwrap();
            assert_eq!(
                ran.load(Ordering::SeqCst),
                1,
                "run once: by the end or by the caller"
            );
        }
    }
}
