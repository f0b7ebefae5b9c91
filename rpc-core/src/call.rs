//! The caller's side of a call: a future that also blocks, times out and cancels.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;

use crate::RpcError;
use crate::driver::Shared;
use crate::engine::ProgressMode;
use crate::proto::decode_answer;
use crate::slot::Slot;

/// What a call's slot receives: the raw answer message, or why there is none.
pub(crate) type Answer = Result<Vec<u8>, RpcError>;

/// A call in flight. Await it under any executor, or [`Call::wait`] for it. Dropping it
/// unfinished cancels the call; a late answer is then discarded.
#[must_use = "a dropped Call is canceled"]
pub struct Call<Out> {
    shared: Arc<Shared>,
    tag: u64,
    slot: Arc<Slot<Answer>>,
    _out: PhantomData<fn() -> Out>,
}

impl<Out: DeserializeOwned> Call<Out> {
    pub(crate) fn new(shared: Arc<Shared>, tag: u64, slot: Arc<Slot<Answer>>) -> Self {
        Call {
            shared,
            tag,
            slot,
            _out: PhantomData,
        }
    }

    /// Blocks until the answer, an error, the timeout, or cancellation.
    pub fn wait(self) -> Result<Out, RpcError> {
        let answer = match self.shared.mode {
            ProgressMode::Thread => self.slot.wait(),
            ProgressMode::Manual | ProgressMode::BusyPoll => loop {
                if let Some(a) = self.slot.try_take() {
                    break Some(a);
                }
                self.shared.drive_once();
            },
        };
        self.shared.count_answer(decode::<Out>(answer))
    }

    /// Cancels the call: it completes with [`RpcError::Canceled`] unless it completed
    /// already.
    pub fn cancel(&self) {
        self.shared
            .end_call(self.tag, Err(RpcError::Canceled), true);
    }

    /// Whether the call has completed (its result is ready or taken).
    pub fn is_done(&self) -> bool {
        self.slot.is_done()
    }
}

/// Decodes an answer. The outer error is one the engine already counted (transport,
/// timeout, cancel); the inner one comes from the answer itself.
fn decode<Out: DeserializeOwned>(
    answer: Option<Answer>,
) -> Result<Result<Out, RpcError>, RpcError> {
    let msg =
        answer.ok_or_else(|| RpcError::InvalidArgument("call result already taken".into()))??;
    Ok(decode_answer(&msg)
        .and_then(|body| rmp_serde::from_slice(body).map_err(|e| RpcError::Decode(e.to_string()))))
}

impl<Out: DeserializeOwned> Future for Call<Out> {
    type Output = Result<Out, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = self.shared.clone();
        self.slot
            .poll(cx)
            .map(|a| shared.count_answer(decode::<Out>(a)))
    }
}

impl<Out> Drop for Call<Out> {
    fn drop(&mut self) {
        if !self.slot.is_done() {
            self.shared
                .end_call(self.tag, Err(RpcError::Canceled), true);
        }
    }
}
