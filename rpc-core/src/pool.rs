//! The worker pool that runs handlers, so that a handler may block without stalling
//! progress. With zero workers, handlers run inline in the progress loop (lowest latency;
//! such handlers must not block).
//!
//! A handler that waits on the engine (a bulk transfer with its caller, a call to another
//! server) does not take a worker from everyone else while it waits: the pool starts a
//! stand-in thread, up to a bound, so that `workers` threads stay free to run handlers.
//! A caller whose memory never answers thus delays its own requests, not other clients'.
//! Stand-ins leave once idle for a while with enough workers free.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

type Job = Box<dyn FnOnce() + Send>;

/// How long a stand-in waits for work before it considers leaving.
const STAND_IN_IDLE: Duration = Duration::from_secs(2);

/// A set of worker threads fed by one channel, grown while workers wait.
pub(crate) struct Pool {
    tx: Sender<Option<Job>>,
    inline: bool,
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Inner {
    rx: Receiver<Option<Job>>,
    workers: usize,
    max_stand_ins: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Threads alive (workers and stand-ins).
    threads: usize,
    /// Threads inside a handler waiting on the engine.
    waiting: usize,
    stand_ins: usize,
    stopping: bool,
}

thread_local! {
    static POOL: RefCell<Option<Weak<Inner>>> = const { RefCell::new(None) };
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn run(self: Arc<Self>, stand_in: bool) {
        POOL.with(|p| *p.borrow_mut() = Some(Arc::downgrade(&self)));
        loop {
            let job = if stand_in {
                match self.rx.recv_timeout(STAND_IN_IDLE) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => {
                        let mut s = lock(&self.state);
                        if s.threads - s.waiting > self.workers {
                            s.threads -= 1;
                            s.stand_ins -= 1;
                            return;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                }
            } else {
                self.rx.recv().ok().flatten()
            };
            let Some(job) = job else {
                let mut s = lock(&self.state);
                s.threads -= 1;
                s.stand_ins -= usize::from(stand_in);
                return;
            };
            job();
        }
    }

    /// A thread of this pool starts waiting: keep `workers` threads free if allowed.
    fn enter_wait(self: &Arc<Self>) {
        let mut s = lock(&self.state);
        s.waiting += 1;
        if s.threads - s.waiting >= self.workers || s.stand_ins >= self.max_stand_ins || s.stopping
        {
            return;
        }
        s.threads += 1;
        s.stand_ins += 1;
        drop(s);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("qs-worker-standin".into())
            .spawn(move || me.run(true));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a stand-in worker");
            let mut s = lock(&self.state);
            s.threads -= 1;
            s.stand_ins -= 1;
        }
    }

    fn leave_wait(&self) {
        lock(&self.state).waiting -= 1;
    }
}

/// Runs `f`, which waits on the engine; on a pool thread, lets a stand-in take its place
/// meanwhile.
pub(crate) fn waiting<T>(f: impl FnOnce() -> T) -> T {
    // A thread whose locals are gone (an exit handler closing a file) is no worker.
    let inner = POOL
        .try_with(|p| p.borrow().as_ref().and_then(Weak::upgrade))
        .ok()
        .flatten();
    let Some(inner) = inner else { return f() };
    inner.enter_wait();
    let r = f();
    inner.leave_wait();
    r
}

impl Pool {
    /// `workers` threads, and at most `max_stand_ins` more while workers wait.
    pub(crate) fn new(workers: usize, max_stand_ins: usize) -> std::io::Result<Pool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Option<Job>>();
        let inner = Arc::new(Inner {
            rx,
            workers,
            max_stand_ins,
            state: Mutex::new(State::default()),
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let me = inner.clone();
            lock(&inner.state).threads += 1;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("qs-worker-{i}"))
                    .spawn(move || me.run(false))?,
            );
        }
        Ok(Pool {
            tx,
            inline: workers == 0,
            inner,
            threads: Mutex::new(threads),
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

    /// Stand-in threads alive now.
    pub(crate) fn stand_ins(&self) -> usize {
        lock(&self.inner.state).stand_ins
    }

    /// Lets queued jobs finish, then stops the threads and joins the workers.
    pub(crate) fn shutdown(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let alive = {
            let mut s = lock(&self.inner.state);
            s.stopping = true;
            s.threads
        };
        for _ in 0..alive {
            let _ = self.tx.send(None);
        }
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn waiting_workers_get_stand_ins_up_to_the_bound() {
        let pool = Pool::new(2, 3).unwrap();
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        // Five handlers wait: two workers and three stand-ins; the bound stops there.
        for _ in 0..5 {
            let rx = release_rx.clone();
            pool.execute(move || waiting(|| rx.recv().unwrap()));
        }
        let until = Instant::now() + Duration::from_secs(5);
        while pool.stand_ins() < 3 {
            assert!(Instant::now() < until);
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pool.stand_ins(), 3, "bounded");
        // All threads wait now: a new job runs only once a waiter lets go.
        let (tx, rx) = mpsc::channel();
        pool.execute(move || tx.send(()).unwrap());
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        release_tx.send(()).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        for _ in 0..4 {
            release_tx.send(()).unwrap();
        }
        pool.shutdown();
    }

    #[test]
    fn a_waiting_worker_does_not_hold_up_other_jobs() {
        let pool = Pool::new(1, 8).unwrap();
        let (hold_tx, hold_rx) = crossbeam_channel::unbounded::<()>();
        pool.execute(move || waiting(|| hold_rx.recv().unwrap()));
        let (tx, rx) = mpsc::channel();
        let t = Instant::now();
        pool.execute(move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(1));
        hold_tx.send(()).unwrap();
        pool.shutdown();
    }
}
