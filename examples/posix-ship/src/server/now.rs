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

use rpc_core::{Access, Caller, Engine, Responder, RpcError, Seg};
use rustix::io::Errno;
use serde_bytes::ByteBuf;

use super::answer::{Later, twins};
use super::backend::{Backend, Done, MAX_OFFSET, Payload, Who};
use super::clients::{ClientId, User};
use super::service::Service;
use crate::bulk_io::{BULK_TIMEOUT, errno};
use crate::proto::*;

/// Registers [`READ`] and [`WRITE`] (and their [`forwarded`] twins) to be answered
/// inline where the backend can.
pub(super) fn register<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    let w = s.clone();
    twins(e, WRITE, s.backend.answers_now(), move |r, fwd, input| {
        w.answer_write(r, fwd, input)
    })?;
    let s = s.clone();
    twins(e, READ, true, move |r, fwd, input| {
        s.answer_read(r, fwd, input)
    })
}

impl<B: Backend> Service<B> {
    /// A write: answered here if the backend buffers the bytes the request carries at
    /// once ([`Backend::write_now`]), else on a worker ([`Backend::write_then`]), which
    /// pulls the bytes from the caller's buffer and may leave the backend's answer to a
    /// completion; the admission kept until the answer.
    fn answer_write(
        self: &Arc<Self>,
        r: Responder<Reply<Written>>,
        fwd: Option<Option<Principal>>,
        input: WriteReq,
    ) {
        let Some((r, who, admitted)) = self.admit(WRITE.name(), r, fwd) else {
            return;
        };
        let here = self.backend.answers_now();
        if here && let Some(out) = write_now(self, &who, &input) {
            r.respond(&Ok(out));
            return drop(admitted);
        }
        let mut later: Later<B, Written> = Later::counting(self.clone(), admitted);
        let s = self.clone();
        let on_worker = move |r: Responder<Reply<Written>>| {
            let caller = r.caller();
            later.r = Some(r);
            s.begin_with(&who.clone(), later, |done| {
                s.write_then(who, &caller, input, done)
            });
        };
        match here {
            // (Dispatched here: to a worker now.)
            true => r.defer(on_worker),
            false => on_worker(r),
        }
    }

    /// `pwrite`, or an append: inline, or pulled from the caller's buffer (short under
    /// staging-memory pressure; the client writes the rest next), the staging memory
    /// held until the backend answers.
    fn write_then(self: &Arc<Self>, who: Who, caller: &Caller, r: WriteReq, done: Done<Written>) {
        let f = match self.file(&who, r.fh) {
            Ok(f) => f,
            Err(e) => return done(Err(e)),
        };
        let (data, staged) = match r.data {
            WriteData::Inline(b) => (Payload::Inline(b.into_vec()), None),
            WriteData::Bulk(src) => {
                if src.len() > MAX_IO {
                    return done(Err(Errno::INVAL));
                }
                let st = self.clients.stage(who.client, who.uid(), src.len());
                let len = st.len;
                let staged = Staging(self.clone(), st.keep());
                (Payload::Bulk { caller, src, len }, Some(staged))
            }
        };
        // As the kernel: a negative offset is EINVAL, a write past the largest one EFBIG.
        if let Some(off) = r.offset {
            let Some(end) = off.checked_add(data.len()) else {
                return done(Err(Errno::FBIG));
            };
            if off > MAX_OFFSET {
                return done(Err(Errno::INVAL));
            }
            if end > MAX_OFFSET {
                return done(Err(Errno::FBIG));
            }
        }
        let done: Done<Written> = Box::new(move |out| {
            drop(staged);
            done(out)
        });
        self.backend
            .clone()
            .write_then(who, f, r.offset, data, done);
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
