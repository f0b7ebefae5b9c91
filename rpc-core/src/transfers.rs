//! Transfers with a caller that own their buffers and hand their outcome to a closure
//! ([`Caller::transfers`]). A handler that moves bulk data then answers from the last
//! transfer's completion, on the thread that completes it, with no thread waiting on the
//! transfers meanwhile: registered inline ([`crate::Engine::register_responder_inline`]),
//! a request, its transfers and its answer are handled by the progress thread alone, as
//! Mercury's handlers are from their bulk callbacks.
//!
//! What a set costs beyond its transfers: one atomic decrement per transfer as it ends
//! (a lock only for a failure's error), and one closure run when the last one ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bulk::{Bulk, Descriptor};

use crate::RpcError;
use crate::caller::Caller;
use crate::driver::lock;
use crate::expose::pull_now;
use crate::transfer::Then;

/// What a set's closure is given: its buffers, in the order added, and the first error
/// of its transfers (`Ok` if every one succeeded).
type Outcome = Box<dyn FnOnce(Vec<Bulk<'static>>, Result<(), RpcError>) + Send>;

/// Transfers with a caller, each owning its local buffer, whose outcome goes to one
/// closure ([`Transfers::then`]). Their requests leave together, as a [`crate::Batch`]'s
/// do. Dropped without `then`, the transfers go on and the buffers are freed when the
/// last one ends (never while the transport may touch them).
///
/// ```no_run
/// # use rpc_core::{Bulk, Descriptor, Responder};
/// # fn f(r: Responder<()>, bufs: Vec<Bulk<'static>>, d: &Descriptor) {
/// let caller = r.caller();
/// let mut set = caller.transfers();
/// for b in bufs {
///     set.pull(b, 0, d, 0, 4096);
/// }
/// set.then(move |_bufs, outcome| match outcome {
///     Ok(()) => r.respond(&()),
///     Err(e) => r.fail(e),
/// });
/// # }
/// ```
pub struct Transfers {
    caller: Caller,
    bufs: Vec<Bulk<'static>>,
    state: Arc<State>,
    then_given: bool,
    /// How long each transfer added may take (`None`: the engine's default).
    timeout: Option<std::time::Duration>,
}

struct State {
    /// Transfers not over yet, plus one until the closure is given.
    left: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    error: Option<RpcError>,
    bufs: Vec<Bulk<'static>>,
    then: Option<Outcome>,
}

impl State {
    /// One transfer (or the giving of the closure) is over; the last runs the closure.
    fn one_done(&self, r: Result<(), RpcError>) {
        if let Err(e) = r {
            lock(&self.inner).error.get_or_insert(e);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Inner { error, bufs, then } = std::mem::take(&mut *lock(&self.inner));
        let Some(f) = then else { return };
        let outcome = error.map_or(Ok(()), Err);
        // A closure that panics must not take the completing thread (the engine's
        // progress thread, usually) with it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(bufs, outcome))).is_err() {
            tracing::error!("a transfer set's continuation panicked");
        }
    }
}

impl Caller {
    /// Transfers with the caller that own their buffers and end in a closure (see
    /// [`Transfers`]).
    pub fn transfers(&self) -> Transfers {
        if let Some(p) = self.peer {
            self.engine.shared.plugin.hold(p, true);
        }
        Transfers {
            caller: self.clone(),
            bufs: Vec::new(),
            state: Arc::new(State {
                left: AtomicUsize::new(1),
                inner: Mutex::new(Inner::default()),
            }),
            then_given: false,
            timeout: None,
        }
    }
}

impl Transfers {
    /// Fails each transfer added from now on with [`RpcError::Timeout`] unless it is over
    /// `t` after it is posted (a caller that stopped reading, say), not the engine's
    /// default (each such transfer then also takes the engine's table lock once, to set
    /// its deadline).
    pub fn timeout(mut self, t: std::time::Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Adds a pull from the caller's `remote` region into `local` (as [`Caller::pull`]).
    pub fn pull(
        &mut self,
        mut local: Bulk<'static>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) {
        match pull_now(&mut local, local_off, remote, remote_off, len) {
            Some(r) => self.ended_now(local, r),
            None => self.post(true, local, (local_off, remote, remote_off, len)),
        }
    }

    /// Adds a push of `local` into the caller's `remote` region (as [`Caller::push`]).
    pub fn push(
        &mut self,
        local: Bulk<'static>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) {
        self.post(false, local, (local_off, remote, remote_off, len));
    }

    /// Lets the requests go; `f` runs once every transfer is over, on the thread that
    /// ends the last one (at once if they all are), with the buffers in the order added
    /// and the first error. `f` must not block; a panic in it is caught and logged.
    pub fn then(
        mut self,
        f: impl FnOnce(Vec<Bulk<'static>>, Result<(), RpcError>) + Send + 'static,
    ) {
        self.give(Box::new(f));
    }

    fn post(&mut self, is_get: bool, local: Bulk<'static>, at: (u64, &Descriptor, u64, u64)) {
        let state = self.state.clone();
        state.left.fetch_add(1, Ordering::Relaxed);
        let then = Then::Notify(Box::new(move |r| state.one_done(r)));
        let engine = &self.caller.engine;
        engine.shared.waits_unseen();
        // The buffer is kept here, then in the state, until the last transfer is over.
        let posted = engine.post(self.caller.peer, is_get, &local, at, then, None);
        if let (Ok(tag), Some(t)) = (&posted, self.timeout) {
            engine.shared.set_deadline(*tag, t);
        }
        if let Err(e) = posted {
            self.state.one_done(Err(e));
        }
        self.bufs.push(local);
    }

    /// A transfer over before it was posted.
    fn ended_now(&mut self, local: Bulk<'static>, r: Result<(), RpcError>) {
        if let Err(e) = r {
            lock(&self.state.inner).error.get_or_insert(e);
        }
        self.bufs.push(local);
    }

    fn give(&mut self, f: Outcome) {
        self.then_given = true;
        {
            let mut inner = lock(&self.state.inner);
            inner.bufs = std::mem::take(&mut self.bufs);
            inner.then = Some(f);
        }
        if let Some(p) = self.caller.peer {
            self.caller.engine.shared.plugin.hold(p, false);
        }
        self.state.one_done(Ok(()));
    }
}

impl Drop for Transfers {
    fn drop(&mut self) {
        if !self.then_given {
            self.give(Box::new(|_, _| {}));
        }
    }
}
