//! The data path of [`RemoteFs`]: reads and writes of raw handles, inline or by bulk
//! transfer straight between the caller's buffers and the server's, blocking or
//! answered through a callback.

use std::io;

use rpc_core::{Access, Bulk, Seg};
use serde_bytes::ByteBuf;

use super::{Answered, Pending, RemoteFs, errno, rpc_err};
use crate::proto::*;

/// A write in flight ([`RemoteFs::pwrite_parts_start`]), its buffers borrowed until it
/// is waited for.
#[must_use = "a dropped write's outcome is discarded"]
pub struct PendingWrite<'a> {
    call: Pending<Written>,
    len: u64,
    _src: Option<Bulk<'a>>,
}

impl PendingWrite<'_> {
    /// Blocks until the server answers: what it wrote (a server claiming more than it
    /// was sent is `EIO`).
    pub fn wait(self) -> io::Result<Written> {
        let w = self.call.wait()?;
        if w.n > self.len {
            return Err(errno(libc::EIO));
        }
        Ok(w)
    }
}

impl RemoteFs {
    /// `pread` into `buf`: fills it unless the file ends first or the server answers short
    /// (under staging pressure, as POSIX allows); returns the bytes read.
    /// Small reads come back inline; larger ones are pushed into `buf` by bulk.
    pub fn pread(&self, fh: Fh, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let want = (buf.len() - done).min(MAX_IO as usize);
            let part = &mut buf[done..done + want];
            let n = self.pread_once(fh, part, offset + done as u64)?;
            done += n;
            if n < want {
                break;
            }
        }
        Ok(done)
    }

    fn pread_once(&self, fh: Fh, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let len = buf.len() as u64;
        if buf.len() <= self.inner.inline_max {
            let r = self.call(
                READ,
                &ReadReq {
                    fh,
                    offset,
                    len,
                    dest: None,
                },
            )?;
            // More than asked is a server that lies: nothing of it is taken.
            let ReadData::Inline(data) = r else {
                return Err(errno(libc::EIO));
            };
            let Some(dst) = buf.get_mut(..data.len()) else {
                return Err(errno(libc::EIO));
            };
            dst.copy_from_slice(&data);
            return Ok(data.len());
        }
        let e = &self.inner.engine;
        let dest = e
            .expose(vec![Seg::from(&mut buf[..])], Access::WriteOnly)
            .map_err(rpc_err)?;
        let req = ReadReq {
            fh,
            offset,
            len,
            dest: Some(dest.descriptor()),
        };
        match self.call(READ, &req)? {
            ReadData::Pushed(n) if n <= len => Ok(n as usize),
            _ => Err(errno(libc::EIO)),
        }
    }

    /// `pread` of each of `ranges` (`(offset, length)`; at most [`MAX_READ_MANY`], their
    /// lengths at most [`MAX_IO`] in all) in one request ([`READ_MANY`]), without
    /// waiting: `f` gets each range's bytes, in order, on the thread that completes the
    /// call (fewer only where the file ends), answered inline when small, else pushed
    /// into a buffer of ours; of the first ranges only (at least one) when the server's
    /// staging memory is short: the rest were not read. A server that answers more
    /// ranges or bytes than asked, or none, is `EIO`; one that does not know the
    /// request, `ENOSYS`.
    pub fn pread_many_then(
        &self,
        fh: Fh,
        ranges: Vec<(u64, u32)>,
        f: impl FnOnce(io::Result<Vec<Vec<u8>>>) + Send + 'static,
    ) {
        let lens: Vec<u32> = ranges.iter().map(|r| r.1).collect();
        let total: u64 = lens.iter().map(|&l| u64::from(l)).sum();
        if total > MAX_IO {
            return f(Err(errno(libc::EINVAL)));
        }
        let dest = if total <= MAX_INLINE_READ {
            None
        } else {
            let buf = vec![0u8; total as usize];
            match self
                .inner
                .engine
                .expose(vec![Seg::from(buf)], Access::WriteOnly)
            {
                Ok(d) => Some(d),
                Err(e) => return f(Err(rpc_err(e))),
            }
        };
        let req = ReadManyReq {
            fh,
            ranges: Bounded(ranges),
            dest: dest.as_ref().map(Bulk::descriptor),
        };
        // At least one range, no more than asked, none longer than asked.
        let fits = move |got: &mut dyn ExactSizeIterator<Item = usize>| {
            (1..=lens.len()).contains(&got.len()) && got.zip(&lens).all(|(d, &l)| d <= l as usize)
        };
        self.start(READ_MANY, &req).then(move |a| {
            f(match (a, dest) {
                (Answered::Busy, _) => Err(errno(libc::EAGAIN)),
                (Answered::Done(Err(e)), _) => Err(e),
                (Answered::Done(Ok(ManyRead::Inline(got))), None)
                    if got.len() == req.ranges.0.len()
                        && fits(&mut got.iter().map(|d| d.len())) =>
                {
                    Ok(got.into_iter().map(ByteBuf::into_vec).collect())
                }
                (Answered::Done(Ok(ManyRead::Pushed(got))), Some(d))
                    if fits(&mut got.iter().map(|&n| n as usize)) =>
                {
                    let buf = d.into_vec();
                    let mut at = 0usize;
                    let mut out = Vec::with_capacity(got.len());
                    for (&n, &(_, len)) in got.iter().zip(&req.ranges.0) {
                        out.push(buf[at..at + n as usize].to_vec());
                        at += len as usize;
                    }
                    Ok(out)
                }
                // More than asked, none, or another form: a server that lies.
                _ => Err(errno(libc::EIO)),
            })
        });
    }

    /// `pread` of up to `len` bytes at `offset` (at most [`MAX_IO`]) without waiting:
    /// `f` gets the bytes on the thread that completes the call (it must not block);
    /// fewer at the end of the file, or if the server answers short (its staging
    /// memory). A server at its bound of requests in flight answers `EAGAIN`, which the
    /// blocking [`RemoteFs::pread`] would have waited out.
    pub fn pread_then(
        &self,
        fh: Fh,
        len: usize,
        offset: u64,
        f: impl FnOnce(io::Result<Vec<u8>>) + Send + 'static,
    ) {
        let len = len.min(MAX_IO as usize);
        let mut req = ReadReq {
            fh,
            offset,
            len: len as u64,
            dest: None,
        };
        let dest = if len <= self.inner.inline_max {
            None
        } else {
            let e = &self.inner.engine;
            match e.expose(vec![Seg::from(vec![0u8; len])], Access::WriteOnly) {
                Ok(d) => Some(d),
                Err(e) => return f(Err(rpc_err(e))),
            }
        };
        req.dest = dest.as_ref().map(Bulk::descriptor);
        self.start(READ, &req).then(move |a| {
            f(match (a, dest) {
                (Answered::Busy, _) => Err(errno(libc::EAGAIN)),
                (Answered::Done(Err(e)), _) => Err(e),
                (Answered::Done(Ok(ReadData::Inline(d))), None) if d.len() <= len => {
                    Ok(d.into_vec())
                }
                (Answered::Done(Ok(ReadData::Pushed(n))), Some(d)) if n <= len as u64 => {
                    let mut v = d.into_vec();
                    v.truncate(n as usize);
                    Ok(v)
                }
                // More than asked, or another form: a server that lies.
                _ => Err(errno(libc::EIO)),
            })
        });
    }

    /// One write of `data` (at most [`MAX_IO`]) at `offset` (`None`: append), answered
    /// through `f` with no thread waiting: what the server wrote (perhaps fewer bytes),
    /// and the bytes given back, to write the rest or again (empty only after an error
    /// in exposing them, which is neither `EAGAIN` nor `EBADF`). A server at its bound
    /// of requests in flight answers `EAGAIN`.
    pub fn pwrite_then(
        &self,
        fh: Fh,
        data: Vec<u8>,
        offset: Option<u64>,
        f: impl FnOnce(io::Result<Written>, Vec<u8>) + Send + 'static,
    ) {
        let len = data.len() as u64;
        if len > MAX_IO {
            return f(Err(errno(libc::EINVAL)), data);
        }
        let (req, src, kept) = if data.len() <= self.inner.inline_max {
            let inline = WriteData::Inline(ByteBuf::from(data.clone()));
            (
                WriteReq {
                    fh,
                    offset,
                    data: inline,
                },
                None,
                data,
            )
        } else {
            let e = &self.inner.engine;
            match e.expose(vec![Seg::from(data)], Access::ReadOnly) {
                Ok(src) => {
                    let data = WriteData::Bulk(src.descriptor());
                    (WriteReq { fh, offset, data }, Some(src), Vec::new())
                }
                Err(e) => return f(Err(rpc_err(e)), Vec::new()),
            }
        };
        self.start(WRITE, &req).then(move |a| {
            let data = src.map_or(kept, Bulk::into_vec);
            let out = match a {
                Answered::Busy => Err(errno(libc::EAGAIN)),
                Answered::Done(Ok(w)) if w.n > len => Err(errno(libc::EIO)),
                Answered::Done(w) => w,
            };
            f(out, data)
        });
    }

    /// `pwrite` of all of `data` at `offset` (`None`: append). Returns the offset just
    /// past the data. Large writes are pulled by the server from `data` by bulk.
    pub fn pwrite(&self, fh: Fh, data: &[u8], offset: Option<u64>) -> io::Result<u64> {
        self.pwrite_parts(fh, &[data], offset)
    }

    /// [`RemoteFs::pwrite`] of `parts` one after another, gathered: the server pulls
    /// them from where they are, as one region (no copy into one buffer here).
    pub fn pwrite_parts(&self, fh: Fh, parts: &[&[u8]], offset: Option<u64>) -> io::Result<u64> {
        match self.pwrite_loop(fh, parts, offset)? {
            (w, None) => Ok(w.end),
            (_, Some(e)) => Err(e),
        }
    }

    /// As [`RemoteFs::pwrite`], but a write cut short answers as the kernel's `write`
    /// does: with what landed ([`Written::n`] under `data.len()`) once something did,
    /// the error only when nothing did (an interposed `write` of an append returns this
    /// count; after an error it could not tell what to write again).
    pub fn pwrite_some(&self, fh: Fh, data: &[u8], offset: Option<u64>) -> io::Result<Written> {
        match self.pwrite_loop(fh, &[data], offset)? {
            (w, Some(e)) if w.n == 0 => Err(e),
            (w, _) => Ok(w),
        }
    }

    /// Writes `parts` in requests of at most [`MAX_IO`] until all landed or one fails:
    /// what landed (`end` past the last byte that did, `offset` if none), and the error
    /// that stopped it. A server claiming more than it was sent is an error outright.
    fn pwrite_loop(
        &self,
        fh: Fh,
        parts: &[&[u8]],
        offset: Option<u64>,
    ) -> io::Result<(Written, Option<io::Error>)> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut landed = Written {
            n: 0,
            end: offset.unwrap_or(0),
        };
        loop {
            let done = landed.n as usize;
            let part = slice_parts(parts, done, MAX_IO as usize);
            let len: usize = part.iter().map(|p| p.len()).sum();
            let w = match self.pwrite_once(fh, &part, offset.map(|o| o + done as u64)) {
                Ok(w) => w,
                Err(e) => return Ok((landed, Some(e))),
            };
            if w.n > len as u64 {
                // A server claiming more than it was sent lies about what landed.
                return Err(errno(libc::EIO));
            }
            landed = Written {
                n: landed.n + w.n,
                end: w.end,
            };
            if landed.n as usize >= total {
                return Ok((landed, None));
            }
            if w.n == 0 {
                // The disk took nothing more.
                return Ok((landed, Some(errno(libc::ENOSPC))));
            }
        }
    }

    fn pwrite_once(&self, fh: Fh, parts: &[&[u8]], offset: Option<u64>) -> io::Result<Written> {
        let (req, _src) = self.write_req(fh, parts, offset)?;
        self.call(WRITE, &req)
    }

    /// Starts one `pwrite` of `parts` (at most [`MAX_IO`] bytes, else `EINVAL`) without
    /// waiting: many may be in flight from one thread (an I/O node writing out a file's
    /// extents). The server may write less than all (then write the rest); a server at
    /// its bound of requests in flight answers `EAGAIN`, which [`RemoteFs::pwrite_parts`]
    /// would have waited out.
    pub fn pwrite_parts_start<'a>(
        &self,
        fh: Fh,
        parts: &[&'a [u8]],
        offset: Option<u64>,
    ) -> io::Result<PendingWrite<'a>> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len as u64 > MAX_IO {
            return Err(errno(libc::EINVAL));
        }
        let (req, src) = self.write_req(fh, parts, offset)?;
        Ok(PendingWrite {
            call: self.start(WRITE, &req),
            len: len as u64,
            _src: src,
        })
    }

    /// Starts one list write ([`WRITE_MANY`]) of `writes`, each `(offset, parts)` (at most
    /// [`MAX_WRITE_MANY`] of them, each under 4 GiB, [`MAX_IO`] bytes in all, else
    /// `EINVAL`) without waiting, as [`RemoteFs::pwrite_parts_start`]: the bytes written
    /// are those of the first writes, whole, then part of the next at most. A server
    /// that does not know the request answers `ENOSYS`.
    pub fn pwrite_many_start<'a>(
        &self,
        fh: Fh,
        writes: &[(u64, Vec<&'a [u8]>)],
    ) -> io::Result<PendingWrite<'a>> {
        let mut segs = Vec::with_capacity(writes.len());
        for (off, parts) in writes {
            let len: usize = parts.iter().map(|p| p.len()).sum();
            segs.push((*off, u32::try_from(len).map_err(|_| errno(libc::EINVAL))?));
        }
        let parts: Vec<&'a [u8]> = writes.iter().flat_map(|w| w.1.iter().copied()).collect();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len as u64 > MAX_IO || segs.len() > MAX_WRITE_MANY {
            return Err(errno(libc::EINVAL));
        }
        let (data, src) = self.write_data(&parts)?;
        let req = WriteManyReq {
            fh,
            segs: Bounded(segs),
            data,
        };
        Ok(PendingWrite {
            call: self.start(WRITE_MANY, &req),
            len: len as u64,
            _src: src,
        })
    }

    /// A write request for `parts` (see [`RemoteFs::write_data`]).
    fn write_req<'a>(
        &self,
        fh: Fh,
        parts: &[&'a [u8]],
        offset: Option<u64>,
    ) -> io::Result<(WriteReq, Option<Bulk<'a>>)> {
        let (data, src) = self.write_data(parts)?;
        Ok((WriteReq { fh, offset, data }, src))
    }

    /// The bytes of `parts`: inline if small, else naming them as one region (the
    /// handle, to keep until the server has them).
    fn write_data<'a>(&self, parts: &[&'a [u8]]) -> io::Result<(WriteData, Option<Bulk<'a>>)> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len <= self.inner.inline_max {
            return Ok((WriteData::Inline(ByteBuf::from(parts.concat())), None));
        }
        let segs = parts.iter().map(|p| Seg::from(*p)).collect();
        let src = self
            .inner
            .engine
            .expose(segs, Access::ReadOnly)
            .map_err(rpc_err)?;
        Ok((WriteData::Bulk(src.descriptor()), Some(src)))
    }
}

/// The bytes of `parts` (one after another) from byte `from`, at most `max` of them (the
/// rest of a gathered write the server took part of).
pub fn slice_parts<'a>(parts: &[&'a [u8]], from: usize, max: usize) -> Vec<&'a [u8]> {
    let (mut skip, mut left) = (from, max);
    let mut out = Vec::new();
    for p in parts {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        let take = (p.len() - skip).min(left);
        if take > 0 {
            out.push(&p[skip..skip + take]);
        }
        (skip, left) = (0, left - take);
        if left == 0 {
            break;
        }
    }
    out
}
