//! A call's outcome handed to a closure on the thread that completes it ([`Call::then`]):
//! a handler that calls another server answers its own caller from that completion,
//! without a thread waiting on the call (an I/O node's worker slept and was woken for
//! every backend call it made).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use serde::de::DeserializeOwned;

use crate::{Call, RpcError};

/// The call and what to do with its outcome, until it comes.
struct Then<Out, F> {
    pending: Mutex<Option<(Call<Out>, F)>>,
}

impl<Out, F> Then<Out, F>
where
    Out: DeserializeOwned + Send + 'static,
    F: FnOnce(Result<Out, RpcError>) + Send + 'static,
{
    /// Polls the call; once it is over, runs the closure (outside the lock).
    fn poll_once(self: &Arc<Self>) {
        let mut g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some((call, _)) = g.as_mut() else {
            return;
        };
        let waker = Waker::from(self.clone());
        let outcome = match Pin::new(call).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(r) => r,
            Poll::Pending => return,
        };
        let Some((_, f)) = g.take() else { return };
        drop(g);
        // A closure that panics must not take the thread that completes calls with it
        // (the engine's progress thread, usually).
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(outcome))).is_err() {
            tracing::error!("a call's continuation panicked");
        }
    }
}

impl<Out, F> Wake for Then<Out, F>
where
    Out: DeserializeOwned + Send + 'static,
    F: FnOnce(Result<Out, RpcError>) + Send + 'static,
{
    fn wake(self: Arc<Self>) {
        self.poll_once();
    }
}

impl<Out: DeserializeOwned + Send + 'static> Call<Out> {
    /// Runs `f` with the call's outcome once it comes, on the thread that completes it
    /// (for an answer the progress thread, or a caller of the engine that drives or holds
    /// the poll while it waits, see [`crate::ProgressMode::Thread`]; the caller's for an
    /// outcome already there): it must not take a lock that a waiting caller holds;
    /// `f` must not block; a panic in it is caught and logged. The call is not canceled
    /// meanwhile (it times out as any call); an engine that stops completes it with an
    /// error, which `f` gets. In the manual and busy-poll modes the answer comes only
    /// while something drives progress (`Engine::progress`, a waiting call).
    pub fn then(self, f: impl FnOnce(Result<Out, RpcError>) + Send + 'static) {
        let t = Arc::new(Then {
            pending: Mutex::new(Some((self, f))),
        });
        t.poll_once();
    }
}
