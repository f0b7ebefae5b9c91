//! Reads and writes answered where they arrive: over a backend that keeps file data in
//! memory ([`Backend::answers_now`]: an I/O node's write-behind and read-ahead), a write
//! whose bytes the request carries, and a read answered inline, are taken on the thread
//! that dispatched them ([`Engine::register_responder_inline`]), with no worker woken and
//! no task switch. The caller is admitted within its bounds as on every path (a refusal
//! is answered there: it costs nothing). One the backend cannot serve without waiting
//! (memory short, a write-out due, a journal to sync, bytes not in memory), and every
//! other error, goes to a worker as any request does, still admitted.

use std::sync::Arc;

use rpc_core::{Engine, Responder, Rpc, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::answer::{Body, Later, twins};
use super::backend::{Backend, MAX_OFFSET, Who};
use super::service::Service;
use crate::proto::*;

/// What the backend answers at once, if it can (`None`: the worker path decides).
type Quick<B, In, Out> = fn(&Service<B>, &Who, &In) -> Option<Out>;

/// Registers [`READ`] and [`WRITE`] (and their [`forwarded`] twins) to be answered
/// inline where the backend can.
pub(super) fn register<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    inline_first(e, s, WRITE, write_now, &|s, w, c, r| s.write(w, c, r))?;
    inline_first(e, s, READ, read_now, &|s, w, c, r| s.read(w, c, &r))
}

fn inline_first<B, In, Out>(
    e: &Engine,
    s: &Arc<Service<B>>,
    rpc: Rpc<In, Reply<Out>>,
    quick: Quick<B, In, Out>,
    body: &'static Body<B, In, Out>,
) -> Result<(), RpcError>
where
    B: Backend,
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + 'static,
{
    let s = s.clone();
    twins(e, rpc, true, move |r, fwd, input| {
        s.answer_now(rpc.name(), r, fwd, input, quick, body)
    })
}

impl<B: Backend> Service<B> {
    /// Admits the request, then answers it here if `quick` can, or on a worker with
    /// `body`, the admission kept until that answer.
    fn answer_now<In, Out>(
        self: &Arc<Self>,
        rpc: &'static str,
        r: Responder<Reply<Out>>,
        fwd: Option<Option<Principal>>,
        input: In,
        quick: Quick<B, In, Out>,
        body: &'static Body<B, In, Out>,
    ) where
        In: Send + 'static,
        Out: Serialize + 'static,
    {
        let Some((r, who, admitted)) = self.admit(rpc, r, fwd) else {
            return;
        };
        if let Some(out) = quick(self, &who, &input) {
            r.respond(&Ok(out));
            return drop(admitted);
        }
        // (Dropped with the job, run or refused: the admission ends with it.)
        let counted: Later<B, Out> = Later::counting(self.clone(), admitted);
        let s = self.clone();
        r.defer(move |r| {
            s.answer_admitted(rpc, r, &who, input, body);
            drop(counted);
        });
    }
}

/// A write of bytes the request carries, at an offset, that the backend buffers now.
fn write_now<B: Backend>(s: &Service<B>, who: &Who, w: &WriteReq) -> Option<Written> {
    let (WriteData::Inline(data), Some(off)) = (&w.data, w.offset) else {
        return None;
    };
    // (Offsets the worker path refuses are refused there.)
    let end = off.checked_add(data.len() as u64)?;
    if end > MAX_OFFSET {
        return None;
    }
    let f = s.file(who, w.fh).ok()?;
    s.backend.write_now(who, &f, off, data)
}

/// A read answered inline that the backend has in memory.
fn read_now<B: Backend>(s: &Service<B>, who: &Who, r: &ReadReq) -> Option<ReadData> {
    if r.dest.is_some() {
        return None;
    }
    let room = MAX_OFFSET.checked_sub(r.offset)?;
    let len = r.len.min(MAX_INLINE_READ).min(room);
    let f = s.file(who, r.fh).ok()?;
    let mut buf = vec![0u8; len as usize];
    let n = s.backend.read_now(who, &f, r.offset, &mut buf)?;
    buf.truncate(n);
    Some(ReadData::Inline(ByteBuf::from(buf)))
}
