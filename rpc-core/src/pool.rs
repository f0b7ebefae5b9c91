//! The worker pool that runs handlers, so that a handler may block without stalling
//! progress. With zero workers, handlers run inline in the progress loop (lowest latency;
//! such handlers must not block).

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of worker threads fed by one channel.
pub(crate) struct Pool {
    tx: Sender<Option<Job>>,
    inline: bool,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    pub(crate) fn new(workers: usize) -> std::io::Result<Pool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Option<Job>>();
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx: Receiver<Option<Job>> = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("qs-worker-{i}"))
                    .spawn(move || {
                        while let Ok(Some(job)) = rx.recv() {
                            job();
                        }
                    })?,
            );
        }
        Ok(Pool {
            tx,
            inline: workers == 0,
            threads: std::sync::Mutex::new(threads),
        })
    }

    /// Runs `job` on a worker, or here if there are none.
    pub(crate) fn execute(&self, job: impl FnOnce() + Send + 'static) {
        if self.inline {
            return job();
        }
        if let Err(e) = self.tx.send(Some(Box::new(job))) {
            // Only after shutdown: run it here rather than lose the answer.
            if let Some(job) = e.0 {
                job();
            }
        }
    }

    /// Lets queued jobs finish, then stops and joins the workers.
    pub(crate) fn shutdown(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for _ in &threads {
            let _ = self.tx.send(None);
        }
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}
