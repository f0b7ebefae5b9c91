//! List I/O: many ranges of one file in one request ([`READ_MANY`], [`WRITE_MANY`]), as
//! IOFSL's and PVFS's list I/O: what an I/O node asks for many clients' small reads of a
//! file, or writes out of a file whose buffered extents did not merge (random writers
//! of a file larger than its memory), one backend request, with its latency, for many.
//! Every range is checked before any byte is read or written; the lists' bounds are kept
//! while they are decoded ([`Bounded`]).

use std::sync::Arc;

use rpc_core::{Caller, Engine, RpcError};
use rustix::io::Errno;
use serde_bytes::ByteBuf;

use super::answer::serve;
use super::backend::{Backend, MAX_OFFSET, Payload, R, Who};
use super::service::Service;
use crate::bulk_io::{pull_from, push_to};
use crate::proto::*;

/// Registers both.
pub(super) fn register<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    serve(e, s, READ_MANY, read_many)?;
    serve(e, s, WRITE_MANY, write_many)
}

/// [`READ_MANY`]: the ranges read in order; into the caller's buffer as far as its
/// staging memory allows (at least the first range, or its first part).
fn read_many<B: Backend>(
    s: &Service<B>,
    who: &Who,
    caller: &Caller,
    r: ReadManyReq,
) -> R<ManyRead> {
    let most = if r.dest.is_some() {
        MAX_IO
    } else {
        MAX_INLINE_READ
    };
    let total = checked(s, &r.ranges.0, false)?;
    if total > most {
        return Err(Errno::INVAL);
    }
    let f = s.file(who, r.fh)?;
    // Into `buf`, short of the largest offset: the bytes read.
    let read = |off: u64, buf: &mut [u8]| {
        let room = (MAX_OFFSET - off).min(buf.len() as u64) as usize;
        s.backend.read(who, &f, off, &mut buf[..room])
    };
    let Some(dest) = r.dest else {
        let each = |&(off, len): &(u64, u32)| {
            let mut buf = vec![0u8; len as usize];
            let n = read(off, &mut buf)?;
            buf.truncate(n);
            Ok(ByteBuf::from(buf))
        };
        return r
            .ranges
            .0
            .iter()
            .map(each)
            .collect::<R<_>>()
            .map(ManyRead::Inline);
    };
    if dest.len() < total {
        return Err(Errno::INVAL);
    }
    let st = s.clients.stage(who.client, who.uid(), total);
    let mut out = vec![0u8; st.len as usize];
    let (mut at, mut lens) = (0usize, Vec::new());
    for &(off, len) in &r.ranges.0 {
        let want = (len as usize).min(out.len() - at);
        if want == 0 && len > 0 {
            break;
        }
        let n = read(off, &mut out[at..at + want])?;
        lens.push(n as u32);
        at += len as usize;
        if want < len as usize {
            break;
        }
    }
    push_to(caller, &dest, &out[..at.min(out.len())]).map_err(Errno::from_raw_os_error)?;
    Ok(ManyRead::Pushed(lens))
}

/// [`WRITE_MANY`]: the bytes (pulled from the caller's buffer as far as its staging
/// memory allows) written range after range; the bytes written, the ranges before them
/// whole. A failure after some bytes is a short count, as the kernel's.
fn write_many<B: Backend>(
    s: &Service<B>,
    who: &Who,
    caller: &Caller,
    r: WriteManyReq,
) -> R<Written> {
    let total = checked(s, &r.segs.0, true)?;
    let carried = match &r.data {
        WriteData::Inline(b) => b.len() as u64,
        WriteData::Bulk(src) => src.len(),
    };
    if total != carried || total > MAX_IO {
        return Err(Errno::INVAL);
    }
    let f = s.file(who, r.fh)?;
    let (bytes, _staged) = match r.data {
        WriteData::Inline(b) => (b.into_vec(), None),
        WriteData::Bulk(src) => {
            let st = s.clients.stage(who.client, who.uid(), total);
            let bytes = pull_from(caller, &src, st.len).map_err(Errno::from_raw_os_error)?;
            (bytes, Some(st))
        }
    };
    let (mut at, mut end) = (0usize, 0u64);
    for &(off, len) in &r.segs.0 {
        let take = (len as usize).min(bytes.len() - at);
        if take == 0 && len > 0 {
            break;
        }
        let data = Payload::Inline(bytes[at..at + take].to_vec());
        match s.backend.write(who, &f, Some(off), data) {
            Ok(w) => {
                at += w.n as usize;
                end = w.end;
                if w.n < take as u64 {
                    break;
                }
            }
            Err(e) if at == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(Written { n: at as u64, end })
}

/// The bytes `ranges` add up to, once list I/O is served and each offset passes a read's
/// or a write's checks: a negative offset is `EINVAL`; a write ending past the largest,
/// `EFBIG` (reads end there).
fn checked<B: Backend>(s: &Service<B>, ranges: &[(u64, u32)], write: bool) -> R<u64> {
    if !s.backend.list_io() {
        return Err(Errno::NOSYS);
    }
    let mut total = 0u64;
    for &(off, len) in ranges {
        total += u64::from(len);
        if off > MAX_OFFSET {
            return Err(Errno::INVAL);
        }
        if write && off + u64::from(len) > MAX_OFFSET {
            return Err(Errno::FBIG);
        }
    }
    Ok(total)
}
