//! The caller's side of operations in flight: [`Call`] (an RPC) and [`Transfer`] (a bulk
//! pull or push). Both are futures under any executor that also block, time out and cancel.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::RpcError;
use crate::driver::Shared;
use crate::endpoint::Endpoint;
use crate::mode::ProgressMode;
use crate::proto::decode_answer;
use crate::slot::{Answer, Slot};
use crate::spin::{Spinning, YIELD_WAIT, yield_until};

/// An operation in the engine's table, seen from its caller.
struct Op {
    shared: Arc<Shared>,
    tag: u64,
    slot: Arc<Slot<Answer>>,
}

impl Op {
    /// Waits for the answer; a transfer's waiter (`stream`: its completions come in a
    /// stream, chunk after chunk and transfer after transfer) yields before it sleeps.
    fn wait(&self, stream: bool) -> Option<Answer> {
        match self.shared.mode {
            ProgressMode::Thread => crate::pool::waiting(|| {
                let _waiting = Waiting::enter(&self.shared);
                self.shared.drive_for(|| self.slot.is_done());
                let b = &self.shared.yield_backoff;
                // A zero spin window (`EngineBuilder::spin_window`) means no yielding either.
                if stream
                    && !self.shared.spin.is_zero()
                    && !self.slot.is_done()
                    && !b.skip()
                    && let Some(_yielding) = Spinning::enter()
                {
                    b.outcome(yield_until(|| self.slot.is_done(), YIELD_WAIT));
                }
                self.shared.poll_for(|| self.slot.is_done());
                self.slot.wait()
            }),
            ProgressMode::Manual | ProgressMode::BusyPoll => loop {
                if let Some(a) = self.slot.try_take() {
                    break Some(a);
                }
                self.shared.drive_once();
            },
        }
    }

    fn cancel(&self) {
        self.shared
            .end_call(self.tag, Err(RpcError::Canceled), true);
        // A caller holding the poll may be asleep in it waiting for this very call,
        // completed here, not on its passes: let it look (else it naps its nap out).
        if self.shared.drivers.poll_held() {
            self.shared.plugin.wake();
        }
    }

    fn set_timeout(&self, t: Duration) {
        self.shared.set_deadline(self.tag, t);
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if !self.slot.is_done() {
            self.cancel();
        }
    }
}

/// A caller counted in [`Shared::waiters`] while it waits.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn enter(shared: &'a Shared) -> Waiting<'a> {
        shared.waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks the engine as one whose futures wait (see [`Shared::poll_for`]).
fn pending<T>(shared: &Shared, p: Poll<T>) -> Poll<T> {
    if p.is_pending() {
        shared.waits_unseen();
    }
    p
}

/// Waits for a one-way request's send (see `oneway`).
pub(crate) fn wait_sent(
    shared: Arc<Shared>,
    tag: u64,
    slot: Arc<Slot<Answer>>,
) -> Result<(), RpcError> {
    Op { shared, tag, slot }
        .wait(false)
        .ok_or_else(taken)?
        .map(drop)
}

fn bulk_context(e: RpcError) -> RpcError {
    match e {
        RpcError::Timeout { rpc, peer } if rpc.is_empty() => RpcError::Timeout {
            rpc: "bulk transfer".into(),
            peer,
        },
        e => e,
    }
}

fn taken() -> RpcError {
    RpcError::InvalidArgument("result already taken".into())
}

/// A call in flight. Await it under any executor, or [`Call::wait`] for it. Dropping it
/// unfinished cancels the call; a late answer is then discarded.
#[must_use = "a dropped Call is canceled"]
pub struct Call<Out> {
    op: Op,
    rpc: &'static str,
    target: Endpoint,
    _out: PhantomData<fn() -> Out>,
}

impl<Out: DeserializeOwned> Call<Out> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        tag: u64,
        slot: Arc<Slot<Answer>>,
        rpc: &'static str,
        target: &Endpoint,
    ) -> Self {
        Call {
            op: Op { shared, tag, slot },
            rpc,
            target: target.clone(),
            _out: PhantomData,
        }
    }

    /// The result, its errors naming this call's RPC and peer.
    fn finish(&self, answer: Option<Answer>) -> Result<Out, RpcError> {
        self.op
            .shared
            .count_answer(decode::<Out>(answer))
            .map_err(|e| e.in_call(self.rpc, self.target.addr(), std::any::type_name::<Out>()))
    }

    /// Fails the call with [`RpcError::Timeout`] if it is not answered `t` from now
    /// (the deadline it was started with is replaced; a call whose peer was lost meanwhile
    /// still fails with the loss at the end of its grace, if that is sooner).
    pub fn timeout(self, t: Duration) -> Self {
        self.op.set_timeout(t);
        self
    }

    /// Blocks until the answer, an error, the timeout, or cancellation.
    pub fn wait(self) -> Result<Out, RpcError> {
        let a = self.op.wait(false);
        self.finish(a)
    }

    /// Cancels the call: it completes with [`RpcError::Canceled`] unless it completed
    /// already.
    pub fn cancel(&self) {
        self.op.cancel();
    }

    /// Whether the call has completed (its result is ready or taken).
    pub fn is_done(&self) -> bool {
        self.op.slot.is_done()
    }
}

/// Decodes an answer. The outer error is one the engine already counted (transport,
/// timeout, cancel); the inner one comes from the answer itself.
fn decode<Out: DeserializeOwned>(
    answer: Option<Answer>,
) -> Result<Result<Out, RpcError>, RpcError> {
    let msg = answer.ok_or_else(taken)??;
    let out = decode_answer(&msg)
        .and_then(|body| rmp_serde::from_slice(body).map_err(|e| RpcError::Decode(e.to_string())));
    na::buf::give(msg);
    Ok(out)
}

impl<Out: DeserializeOwned> Future for Call<Out> {
    type Output = Result<Out, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let a = std::task::ready!(pending(&self.op.shared, self.op.slot.poll(cx)));
        Poll::Ready(self.finish(a))
    }
}

/// A bulk transfer in flight, borrowing its local handle until it ends. Await it, or
/// [`Transfer::wait`]. Dropping it unfinished cancels it; the transport then no longer
/// touches the local memory.
#[must_use = "a dropped Transfer is canceled"]
pub struct Transfer<'b> {
    op: Op,
    _local: PhantomData<&'b mut ()>,
}

impl Transfer<'_> {
    pub(crate) fn new(shared: Arc<Shared>, tag: u64, slot: Arc<Slot<Answer>>) -> Self {
        Transfer {
            op: Op { shared, tag, slot },
            _local: PhantomData,
        }
    }

    /// Fails the transfer with [`RpcError::Timeout`] if it is not over `t` from now
    /// (it has the engine's default timeout otherwise).
    pub fn timeout(self, t: Duration) -> Self {
        self.op.set_timeout(t);
        self
    }

    /// Blocks until the transfer is over.
    pub fn wait(self) -> Result<(), RpcError> {
        self.op
            .wait(true)
            .ok_or_else(taken)?
            .map(drop)
            .map_err(bulk_context)
    }

    /// Cancels the transfer.
    pub fn cancel(&self) {
        self.op.cancel();
    }

    /// Whether the transfer is over.
    pub fn is_done(&self) -> bool {
        self.op.slot.is_done()
    }
}

impl Future for Transfer<'_> {
    type Output = Result<(), RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        pending(&self.op.shared, self.op.slot.poll(cx))
            .map(|a| a.ok_or_else(taken)?.map(drop).map_err(bulk_context))
    }
}
