//! Reads and writes answered where they arrive: over a backend that keeps file data in
//! memory ([`Backend::answers_now`]: an I/O node's write-behind and read-ahead), a write
//! whose bytes the request carries, and a read answered inline, are taken on the thread
//! that dispatched them ([`Engine::register_responder_inline`]), with no worker woken and
//! no task switch. The caller is admitted within its bounds as on every path (a refusal
//! is answered there: it costs nothing). One the backend cannot serve without waiting
//! (memory short, a write-out due, a journal to sync, bytes not in memory), and every
//! other error, goes to a worker as any request does, still admitted. Every read, over
//! any backend, is then answered from completions: the backend's read
//! ([`Backend::read_then`]), then the push of its bytes into the caller's buffer.

use std::sync::Arc;

use rpc_core::{Access, Caller, Engine, Responder, Rpc, RpcError, Seg};
use rustix::io::Errno;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::answer::{Body, Later, serve, twins};
use super::backend::{Backend, Done, MAX_OFFSET, Who};
use super::clients::{ClientId, User};
use super::service::Service;
use crate::bulk_io::{BULK_TIMEOUT, errno};
use crate::proto::*;

/// What the backend answers at once, if it can (`None`: the worker path decides).
type Quick<B, In, Out> = fn(&Service<B>, &Who, &In) -> Option<Out>;

/// Registers [`READ`] and [`WRITE`] (and their [`forwarded`] twins) to be answered
/// inline where the backend can.
pub(super) fn register<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    if s.backend.answers_now() {
        inline_first(e, s, WRITE, write_now, &|s, w, c, r| s.write(w, c, r))?;
    } else {
        serve(e, s, WRITE, |s, w, c, r| s.write(w, c, r))?;
    }
    let s = s.clone();
    twins(e, READ, true, move |r, fwd, input| {
        s.answer_read(r, fwd, input)
    })
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

impl<B: Backend> Service<B> {
    /// A read: answered here if the backend has the bytes in memory, else begun on a
    /// worker and answered from the backend's completion ([`Backend::read_then`]), the
    /// bytes then pushed into the caller's buffer by a transfer that answers as it ends:
    /// no thread waits on the backend or on the caller meanwhile.
    fn answer_read(
        self: &Arc<Self>,
        r: Responder<Reply<ReadData>>,
        fwd: Option<Option<Principal>>,
        input: ReadReq,
    ) {
        let Some((r, mut who, admitted)) = self.admit(READ.name(), r, fwd) else {
            return;
        };
        // (Looked up once, for all three ways below.)
        let f = match self.file(&who, input.fh) {
            Ok(f) => f,
            Err(e) => {
                r.respond(&Err(e.raw_os_error()));
                return drop(admitted);
            }
        };
        if let Some(out) = read_now(self, &who, &f, &input) {
            r.respond(&Ok(out));
            return drop(admitted);
        }
        let mut later: Later<B, ReadData> = Later::counting(self.clone(), admitted);
        if read_begins_now(self, &who, &f, &input) {
            // Asked of another server from here: no worker woken to ask it.
            who.inline = true;
            let caller = r.caller();
            later.r = Some(r);
            let w = who.clone();
            let body = |done| self.read_then(who, caller, f, input, done);
            return self.begin_with(&w, later, body);
        }
        let s = self.clone();
        r.defer(move |r| {
            let caller = r.caller();
            later.r = Some(r);
            s.begin_with(&who.clone(), later, |done| {
                s.read_then(who, caller, f, input, done)
            });
        });
    }

    /// `pread` through [`Backend::read_then`]: inline (at most [`MAX_INLINE_READ`]), or
    /// pushed into the caller's buffer (short under staging-memory pressure), the staging
    /// memory held until the push is over.
    fn read_then(
        self: &Arc<Self>,
        who: Who,
        caller: Caller,
        f: Arc<B::File>,
        r: ReadReq,
        done: Done<ReadData>,
    ) {
        // As the kernel: a negative offset is EINVAL; reads end at the largest offset.
        let Some(room) = MAX_OFFSET.checked_sub(r.offset) else {
            return done(Err(Errno::INVAL));
        };
        let len = r.len.min(MAX_IO).min(room);
        let (len, staged) = match &r.dest {
            Some(d) if d.len() < len => return done(Err(Errno::INVAL)),
            None => (len.min(MAX_INLINE_READ), None),
            Some(_) => {
                let st = self.clients.stage(who.client, who.uid(), len);
                (st.len, Some(Staging(self.clone(), st.keep())))
            }
        };
        // (The staging memory is given back before the answer goes, or when whatever
        // holds it is dropped unrun.)
        let pushed = move |data: Vec<u8>, done: Done<ReadData>| {
            let (Some(dest), Some(staged)) = (r.dest, staged) else {
                return done(Ok(ReadData::Inline(ByteBuf::from(data))));
            };
            let n = data.len() as u64;
            if n == 0 {
                drop(staged);
                return done(Ok(ReadData::Pushed(0)));
            }
            let src = caller
                .engine()
                .expose(vec![Seg::from(data)], Access::ReadOnly);
            let mut set = caller.transfers().timeout(BULK_TIMEOUT);
            match src {
                Ok(src) => set.push(src, 0, &dest, 0, n),
                Err(e) => {
                    drop(staged);
                    return done(Err(Errno::from_raw_os_error(errno(e))));
                }
            }
            set.then(move |_, out| {
                drop(staged);
                done(match out {
                    Ok(()) => Ok(ReadData::Pushed(n)),
                    Err(e) => Err(Errno::from_raw_os_error(errno(e))),
                })
            });
        };
        self.backend.clone().read_then(
            who,
            f,
            r.offset,
            len as usize,
            Box::new(move |out| match out {
                Ok(data) => pushed(data, done),
                Err(e) => {
                    drop(pushed);
                    done(Err(e))
                }
            }),
        );
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

/// Staging memory a read holds until its push is over, given back when dropped.
struct Staging<B: Backend>(Arc<Service<B>>, (ClientId, User, u64));

impl<B: Backend> Drop for Staging<B> {
    fn drop(&mut self) {
        self.0.clients.unstage(self.1);
    }
}

/// Whether the backend begins a read that missed its memory without waiting.
fn read_begins_now<B: Backend>(s: &Service<B>, who: &Who, f: &Arc<B::File>, r: &ReadReq) -> bool {
    let len = r.len.min(MAX_IO);
    s.backend.answers_now()
        && MAX_OFFSET.checked_sub(r.offset).is_some()
        && s.backend.read_begins_now(who, f, r.offset, len)
}

/// A read answered inline that the backend has in memory.
fn read_now<B: Backend>(
    s: &Service<B>,
    who: &Who,
    f: &Arc<B::File>,
    r: &ReadReq,
) -> Option<ReadData> {
    if r.dest.is_some() || !s.backend.answers_now() {
        return None;
    }
    let room = MAX_OFFSET.checked_sub(r.offset)?;
    let len = r.len.min(MAX_INLINE_READ).min(room);
    let mut buf = vec![0u8; len as usize];
    let n = s.backend.read_now(who, f, r.offset, &mut buf)?;
    buf.truncate(n);
    Some(ReadData::Inline(ByteBuf::from(buf)))
}
