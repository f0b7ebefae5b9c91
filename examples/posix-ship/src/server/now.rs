//! Reads and writes answered where they arrive: over a backend that keeps file data in
//! memory ([`Backend::answers_now`]: an I/O node's write-behind and read-ahead), a write
//! whose bytes the request carries, and a read answered inline, are taken on the thread
//! that dispatched them ([`Engine::register_responder_inline`]), with no worker woken and
//! no task switch. One the backend cannot serve without waiting (memory short, a
//! write-out due, a journal to sync, bytes not in memory) goes to a worker as any request
//! does, and so does every refusal: one path for errors.

use std::sync::Arc;

use rpc_core::{Engine, Responder, Rpc, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::backend::{Backend, MAX_OFFSET, R, Who};
use super::service::Service;
use crate::proto::*;

/// A request handed back to the worker path: its responder, the principal a forwarder
/// named, its input.
type Back<In, Out> = (Responder<Reply<Out>>, Option<Option<Principal>>, In);

/// What a request needs to be answered here: the caller, the file, and the backend's
/// answer if it has one without waiting.
type Quick<B, In, Out> = fn(&Service<B>, &Who, &In) -> Option<R<Out>>;

/// Registers [`READ`] and [`WRITE`] (and their [`forwarded`] twins) to be answered
/// inline where the backend can.
pub(super) fn register<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    inline_first(e, s, WRITE, write_now, |s, w, c, r| s.write(w, c, r))?;
    inline_first(e, s, READ, read_now, |s, w, c, r| s.read(w, c, &r))
}

fn inline_first<B, In, Out>(
    e: &Engine,
    s: &Arc<Service<B>>,
    rpc: Rpc<In, Reply<Out>>,
    quick: Quick<B, In, Out>,
    body: fn(&Service<B>, &Who, &rpc_core::Caller, In) -> R<Out>,
) -> Result<(), RpcError>
where
    B: Backend,
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + 'static,
{
    let s = s.clone();
    let answer = Arc::new(move |r, fwd, input| {
        let Some((r, fwd, input)) = s.answer_now(rpc.name(), r, fwd, input, quick) else {
            return;
        };
        let s = s.clone();
        r.defer(move |r| s.answer(rpc.name(), r, fwd, input, &body));
    });
    let a = answer.clone();
    e.register_responder_inline(rpc, move |input: In, r| a(r, None, input))?;
    e.register_responder_inline(
        forwarded(rpc),
        move |(p, input): (Option<Principal>, In), r| answer(r, Some(p), input),
    )
}

impl<B: Backend> Service<B> {
    /// Answers here if `quick` can; otherwise hands the request back untouched.
    fn answer_now<In, Out: Serialize + 'static>(
        &self,
        rpc: &'static str,
        r: Responder<Reply<Out>>,
        fwd: Option<Option<Principal>>,
        input: In,
        quick: Quick<B, In, Out>,
    ) -> Option<Back<In, Out>> {
        let Ok(who) = self.who(&r, fwd.clone()) else {
            return Some((r, fwd, input));
        };
        let Ok(admitted) = self.clients.admit(who.client, who.uid()) else {
            return Some((r, fwd, input));
        };
        let Some(out) = quick(self, &who, &input) else {
            drop(admitted);
            return Some((r, fwd, input));
        };
        self.backend.request_in(rpc);
        r.respond(&out.map_err(|e| e.raw_os_error()));
        drop(admitted);
        None
    }
}

/// A write of bytes the request carries, at an offset, that the backend buffers now.
fn write_now<B: Backend>(s: &Service<B>, who: &Who, w: &WriteReq) -> Option<R<Written>> {
    let (WriteData::Inline(data), Some(off)) = (&w.data, w.offset) else {
        return None;
    };
    let end = off.checked_add(data.len() as u64)?;
    if end > MAX_OFFSET {
        return None;
    }
    let f = s.file(who, w.fh).ok()?;
    s.backend.write_now(who, &f, off, data)
}

/// A read answered inline that the backend has in memory.
fn read_now<B: Backend>(s: &Service<B>, who: &Who, r: &ReadReq) -> Option<R<ReadData>> {
    if r.dest.is_some() {
        return None;
    }
    let room = MAX_OFFSET.checked_sub(r.offset)?;
    let len = r.len.min(MAX_INLINE_READ).min(room);
    let f = s.file(who, r.fh).ok()?;
    let mut buf = vec![0u8; len as usize];
    let n = s.backend.read_now(who, &f, r.offset, &mut buf)?;
    Some(n.map(|n| {
        buf.truncate(n);
        ReadData::Inline(ByteBuf::from(buf))
    }))
}
