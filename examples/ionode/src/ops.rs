//! What the I/O node does for each operation: data calls go through the shared files'
//! write-behind and read-ahead; metadata calls are passed to the backend the path routes
//! to, made for the client, after a barrier that flushes the files they could observe.

use std::io;
use std::sync::Arc;

use posix_ship::bulk_io::{pull_from, push_to};
use posix_ship::client::RemoteFs;
use posix_ship::proto::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::backing::Backing;
use crate::files::{SharedFile, Writer};
use crate::node::{Handle, Node, Req, lock};
use crate::stats::Counters;

type R<T> = Result<T, i32>;

/// The largest file offset (the kernel's `loff_t` is signed).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// The smallest read-ahead window (it doubles with each sequential read).
const FIRST_WINDOW: usize = 256 << 10;

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Node {
    /// Calls `rpc` on a backend, counted.
    fn call<In: Serialize + Clone, Out: DeserializeOwned>(
        &self,
        fs: &RemoteFs,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        input: In,
    ) -> R<Out> {
        self.stats.request_out(rpc.name());
        fs.call(rpc, &input).map_err(|e| {
            let e = errno(e);
            if [libc::ECONNRESET, libc::ECONNREFUSED, libc::ETIMEDOUT].contains(&e) {
                Counters::add(&self.stats.backend_errors, 1);
            }
            e
        })
    }

    /// Calls `rpc` on `h`'s backend handle, counted, once more with the file opened
    /// again if the backend has forgotten the handle.
    fn on_fh<In: Serialize + Clone, Out: DeserializeOwned>(
        &self,
        h: &Handle,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        mut input: impl FnMut(Fh) -> In,
    ) -> R<Out> {
        h.backing
            .with(|fh| {
                self.stats.request_out(rpc.name());
                h.backing.fs.call(rpc, &input(fh))
            })
            .map_err(errno)
    }

    /// The backend `path` routes to, acting for the caller, and the backend's path.
    fn route(&self, r: &Req, path: &[u8]) -> R<(usize, RemoteFs, ByteBuf)> {
        let (b, inner) = self.routes.route(path).ok_or(libc::ENOENT)?;
        Ok((
            b,
            self.backends[b].acting_for(r.user.clone()),
            ByteBuf::from(inner),
        ))
    }

    fn handle(&self, r: &Req, fh: Fh) -> R<Arc<Handle>> {
        self.clients.get(r.peer, fh).map_err(|e| e.raw_os_error())
    }

    /// Writes out buffered writes of every file `path` names on backend `b`.
    fn barrier(&self, b: usize, path: &[u8]) {
        for f in self.files.by_path(b, path) {
            self.flush(&f);
        }
    }

    pub(crate) fn flush(&self, f: &SharedFile) {
        self.files.flush(f);
    }

    /// Before a change the journal does not record (a truncate, an append, a large
    /// write): the file flushed, and its Clean marker durable, so that a replay cannot
    /// put older bytes over the change.
    fn before_change(&self, f: &SharedFile) {
        self.flush(f);
        if let Some(j) = &self.files.journal
            && let Err(e) = j.sync()
        {
            tracing::warn!(error = %e, "journal: cannot sync");
        }
    }

    pub(crate) fn stat(&self, r: &Req, t: Target, follow: bool) -> R<Attr> {
        match t {
            Target::Path(p) => {
                let (b, fs, p) = self.route(r, &p)?;
                let mut open_here = self.files.by_path(b, &p);
                open_here.retain(|f| f.busy());
                if open_here.is_empty() {
                    if let Some(a) = self.attrs.get(b, &p, follow, &r.user) {
                        Counters::add(&self.stats.attr_hits, 1);
                        return a;
                    }
                } else {
                    // Written through this node: its size and times are the backend's
                    // once the buffered bytes are there.
                    for f in open_here {
                        self.flush(&f);
                    }
                }
                let epoch = self.attrs.epoch();
                let a = self.call(&fs, STAT, (Target::Path(p.clone()), follow));
                self.attrs.put(epoch, b, &p, follow, &r.user, a);
                a
            }
            Target::Handle(fh) => {
                let h = self.handle(r, fh)?;
                if let Some(f) = &h.file {
                    self.flush(f);
                }
                self.on_fh(&h, STAT, |fh| (Target::Handle(fh), follow))
            }
        }
    }

    pub(crate) fn open(&self, r: &Req, mut o: OpenReq) -> R<Opened> {
        let (b, fs, path) = self.route(r, &o.path)?;
        let trunc = o.flags & libc::O_TRUNC != 0;
        if trunc {
            // Written out first (the truncating open then cuts them, as it would have);
            // nothing is dropped before the backend has checked this caller may truncate.
            for f in self.files.by_path(b, &path) {
                self.before_change(&f);
            }
        }
        o.path = path.clone();
        let epoch = self.attrs.epoch();
        let opened = self.call(&fs, OPEN, o.clone());
        if o.flags & (libc::O_CREAT | libc::O_TRUNC) != 0 {
            self.attrs.changed(b, &path);
        }
        let opened = opened?;
        let follow = o.flags & libc::O_NOFOLLOW == 0;
        let epoch = if o.flags & (libc::O_CREAT | libc::O_TRUNC) != 0 {
            self.attrs.epoch()
        } else {
            epoch
        };
        self.attrs
            .put(epoch, b, &path, follow, &r.user, Ok(opened.attr));
        let writable = o.flags & libc::O_ACCMODE != libc::O_RDONLY;
        let mut token = [0u8; 8];
        getrandom::fill(&mut token).map_err(|_| libc::EIO)?;
        let token = u64::from_le_bytes(token);
        let id = (opened.attr.dev, opened.attr.ino);
        let backing = Arc::new(Backing::new(fs, &path, o.flags, opened.fh, id));
        let file = opened.attr.is_file().then(|| {
            let f = self.files.get((b, opened.attr.dev, opened.attr.ino));
            // An O_APPEND handle writes where the file ends: never a flush's way in.
            let w = (writable && o.flags & libc::O_APPEND == 0).then(|| Writer {
                token,
                backing: backing.clone(),
            });
            f.opened(w, &path);
            if trunc {
                self.files.truncate(&f, 0);
            }
            f
        });
        let h = Arc::new(Handle {
            backend: b,
            wrote: std::sync::atomic::AtomicBool::new(false),
            path: path.to_vec(),
            backing,
            file,
            writable,
            append: o.flags & libc::O_APPEND != 0,
            token,
            seq: std::sync::Mutex::new((0, 0)),
        });
        let mut attr = opened.attr;
        attr.size = attr
            .size
            .max(h.file.as_ref().map_or(0, |f| f.buffered_end()));
        match self
            .clients
            .insert(r.peer, r.user.as_ref().map(|u| u.uid), h.clone())
        {
            Ok(fh) => Ok(Opened { fh, attr }),
            Err(e) => {
                let _ = self.release(&h);
                Err(e.raw_os_error())
            }
        }
    }

    /// Drops `h` as a writer, flushing the file if it was the last one, and closes its
    /// backend handle; the file's deferred write error, if any. While other writers
    /// remain, buffered bytes stay (every read through the node sees them; fsync and the
    /// last close write them out): N-to-1 writers closing one by one would otherwise
    /// flush a file full of holes as many small writes.
    fn release(&self, h: &Handle) -> R<()> {
        let detached = self.detach(h);
        detached.and(self.backend_close(h))
    }

    pub(crate) fn backend_close(&self, h: &Handle) -> R<()> {
        self.call(&h.backing.fs, CLOSE, h.backing.fh())
    }

    /// `release` but for the backend's close.
    fn detach(&self, h: &Handle) -> R<()> {
        let mut error = None;
        if let Some(f) = &h.file
            && h.writable
        {
            if f.closing(h.token) {
                self.flush(f);
                // What a failed flush kept has no writer left to go through: dropped
                // (the error is this close's), so that memory and the journal are freed.
                self.files.abandon(f, h.token);
            }
            // Before `closed` forgets this handle's errors.
            error = f.take_error(h.token);
            f.closed(h.token);
        }
        if h.wrote.load(std::sync::atomic::Ordering::Acquire) {
            self.attrs.changed(h.backend, &h.path);
        }
        error.map_or(Ok(()), Err)
    }

    /// `close`: answered once the file's buffered bytes are written (if this was its last
    /// writer) with any deferred error; the backend's own close follows in the background
    /// (the data is on the backend by then; only its handle remains to be let go).
    pub(crate) fn close(&self, r: &Req, fh: Fh) -> R<()> {
        let h = self
            .clients
            .remove(r.peer, fh)
            .map_err(|e| e.raw_os_error())?;
        let detached = self.detach(&h);
        if let Err(std::sync::mpsc::SendError(crate::node::Behind::Close(h))) =
            lock(&self.closer).send(crate::node::Behind::Close(h))
        {
            let _ = self.backend_close(&h);
        }
        detached
    }

    /// The client `peer` is gone: close what it held.
    pub(crate) fn lost(&self, peer: u64) {
        for h in self.clients.lost(peer) {
            if let Err(e) = self.release(&h) {
                tracing::debug!(peer, errno = e, "closing a lost client's file");
            }
        }
    }

    pub(crate) fn read(&self, r: &Req, q: ReadReq) -> R<ReadData> {
        let h = self.handle(r, q.fh)?;
        let mut len = q.len.min(MAX_IO);
        // As the kernel: a negative offset is EINVAL; reads end at the largest offset.
        let room = MAX_OFFSET.checked_sub(q.offset).ok_or(libc::EINVAL)?;
        len = len.min(room);
        let uid = r.user.as_ref().map(|u| u.uid);
        let _staged = match &q.dest {
            Some(d) if d.len() < len => return Err(libc::EINVAL),
            None => {
                len = len.min(MAX_INLINE_READ);
                None
            }
            // Short under the client's or the user's staging bound, as POSIX allows.
            Some(_) => {
                let s = self.clients.stage(r.peer, uid, len);
                len = s.len;
                Some(s)
            }
        };
        let mut buf = vec![0u8; len as usize];
        let fetch = |off: u64, b: &mut [u8]| {
            self.stats.request_out("posix.read");
            h.backing.with(|fh| h.backing.fs.pread(fh, b, off))
        };
        let n = match &h.file {
            Some(f) => {
                let (window, next) = self.window(&h, q.offset, buf.len());
                let (n, fetched) = self
                    .files
                    .read(f, q.offset, &mut buf, window, fetch)
                    .map_err(errno)?;
                let mut s = lock(&h.seq);
                s.0 = q.offset + n as u64;
                if fetched {
                    s.1 = next;
                }
                n
            }
            None => fetch(q.offset, &mut buf).map_err(errno)?,
        };
        buf.truncate(n);
        let Some(dest) = &q.dest else {
            return Ok(ReadData::Inline(ByteBuf::from(buf)));
        };
        push_to(&r.caller, &mut buf, dest)?;
        Ok(ReadData::Pushed(n as u64))
    }

    /// The read-ahead window for a read of `len` at `off` if it misses, and the window
    /// to keep if it does: it doubles with each backend read while reads are sequential,
    /// up to `readahead_max`, and falls to nothing at a seek.
    fn window(&self, h: &Handle, off: u64, len: usize) -> (usize, usize) {
        let s = lock(&h.seq);
        let max = self.cfg.readahead_max;
        let w = if off == s.0 && max > 0 {
            (s.1 * 2).clamp(FIRST_WINDOW, max)
        } else {
            0
        };
        (w.max(len), w)
    }

    pub(crate) fn write(&self, r: &Req, q: WriteReq) -> R<Written> {
        let h = self.handle(r, q.fh)?;
        if !h.writable {
            return Err(libc::EBADF);
        }
        h.wrote.store(true, std::sync::atomic::Ordering::Release);
        let data = match q.data {
            WriteData::Inline(b) => b.into_vec(),
            WriteData::Bulk(src) => {
                if src.len() > MAX_IO {
                    return Err(libc::EINVAL);
                }
                // Short under the staging bounds: the client writes the rest next.
                let uid = r.user.as_ref().map(|u| u.uid);
                let staged = self.clients.stage(r.peer, uid, src.len());
                pull_from(&r.caller, &src, staged.len)?
            }
        };
        let n = data.len() as u64;
        // As the kernel: a negative offset is EINVAL, a write past the largest one EFBIG.
        if let Some(off) = q.offset {
            let end = off.checked_add(n).ok_or(libc::EFBIG)?;
            if off > MAX_OFFSET {
                return Err(libc::EINVAL);
            }
            if end > MAX_OFFSET {
                return Err(libc::EFBIG);
            }
        }
        if let (Some(off), false, Some(f)) = (q.offset, h.append, &h.file)
            && self.files.budget > 0
            && n < self.files.file_max / 2
            && self.files.buffer(f, off, &data, &h.path, &r.user)
        {
            return Ok(Written { n, end: off + n });
        }
        // Through: appends, large writes, no memory. After what is buffered, in order.
        if let Some(f) = &h.file {
            self.before_change(f);
        }
        Counters::add(&self.stats.write_through, 1);
        self.stats.request_out("posix.write");
        let end = h
            .backing
            .with(|fh| h.backing.fs.pwrite(fh, &data, q.offset));
        // After the write: a read between could otherwise keep the old bytes.
        if let Some(f) = &h.file {
            f.invalidate();
        }
        let end = end.map_err(errno)?;
        Counters::add(&self.stats.bytes_in, n);
        Counters::add(&self.stats.bytes_out, n);
        Ok(Written { n, end })
    }

    pub(crate) fn truncate(&self, r: &Req, t: Target, len: u64) -> R<()> {
        match t {
            Target::Path(p) => {
                let (b, fs, p) = self.route(r, &p)?;
                for f in self.files.by_path(b, &p) {
                    self.before_change(&f);
                }
                let out = self.call(&fs, TRUNCATE, (Target::Path(p.clone()), len));
                self.attrs.changed(b, &p);
                for f in self.files.by_path(b, &p) {
                    f.invalidate();
                }
                out
            }
            Target::Handle(fh) => {
                let h = self.handle(r, fh)?;
                if let Some(f) = &h.file {
                    self.before_change(f);
                }
                let out = self.on_fh(&h, TRUNCATE, |fh| (Target::Handle(fh), len));
                self.attrs.changed(h.backend, &h.path);
                if let Some(f) = &h.file {
                    f.invalidate();
                }
                out
            }
        }
    }

    /// `fallocate`: after the file's buffered bytes (a punched hole must not be filled
    /// by an older buffered write), passed to the backend.
    pub(crate) fn fallocate(&self, r: &Req, fh: Fh, mode: i32, off: u64, len: u64) -> R<()> {
        let h = self.handle(r, fh)?;
        if let Some(f) = &h.file {
            self.before_change(f);
        }
        let out = self.on_fh(&h, FALLOCATE, |fh| (fh, mode, off, len));
        h.wrote.store(true, std::sync::atomic::Ordering::Release);
        if let Some(f) = &h.file {
            f.invalidate();
        }
        out
    }

    pub(crate) fn fsync(&self, r: &Req, fh: Fh, data_only: bool) -> R<()> {
        let h = self.handle(r, fh)?;
        if let Some(f) = &h.file {
            self.flush(f);
        }
        let synced = self.on_fh(&h, FSYNC, |fh| (fh, data_only));
        match h.file.as_ref().and_then(|f| f.take_error(h.token)) {
            Some(e) => Err(e),
            None => synced,
        }
    }

    pub(crate) fn on_path<Out: DeserializeOwned>(
        &self,
        r: &Req,
        rpc: rpc_core::Rpc<ByteBuf, Reply<Out>>,
        p: ByteBuf,
    ) -> R<Out> {
        let (b, fs, p) = self.route(r, &p)?;
        let out = self.call(&fs, rpc, p.clone());
        self.after(rpc.name(), b, &p);
        out
    }

    /// After an operation on `path`: forget what the node knew of it if it changes it.
    fn after(&self, op: &str, b: usize, path: &[u8]) {
        const READS: [&str; 6] = [
            "posix.readlink",
            "posix.statfs",
            "posix.access",
            "posix.getxattr",
            "posix.listxattr",
            "posix.stat",
        ];
        if !READS.contains(&op) {
            self.attrs.changed(b, path);
        }
    }

    pub(crate) fn on_path_with<A: Serialize + Clone, Out: DeserializeOwned>(
        &self,
        r: &Req,
        rpc: rpc_core::Rpc<(ByteBuf, A), Reply<Out>>,
        p: ByteBuf,
        a: A,
    ) -> R<Out> {
        let (b, fs, p) = self.route(r, &p)?;
        let out = self.call(&fs, rpc, (p.clone(), a));
        self.after(rpc.name(), b, &p);
        out
    }

    pub(crate) fn symlink(&self, r: &Req, target: ByteBuf, p: ByteBuf) -> R<()> {
        let (b, fs, p) = self.route(r, &p)?;
        let out = self.call(&fs, SYMLINK, (target, p.clone()));
        self.attrs.changed(b, &p);
        out
    }

    /// `rename` and `link`: both paths on one backend, else `EXDEV`.
    pub(crate) fn two_paths(
        &self,
        r: &Req,
        rpc: rpc_core::Rpc<(ByteBuf, ByteBuf), Reply<()>>,
        a: ByteBuf,
        b: ByteBuf,
    ) -> R<()> {
        self.on_pair(r, a, b, |fs, a, b| self.call(fs, rpc, (a, b)))
    }

    /// A call on two paths of one backend (`EXDEV` across backends); both forgotten by
    /// the attribute cache after.
    fn on_pair(
        &self,
        r: &Req,
        a: ByteBuf,
        b: ByteBuf,
        call: impl FnOnce(&RemoteFs, ByteBuf, ByteBuf) -> R<()>,
    ) -> R<()> {
        let (ba, fs, a) = self.route(r, &a)?;
        let (bb, _, b) = self.route(r, &b)?;
        if ba != bb {
            return Err(libc::EXDEV);
        }
        let out = call(&fs, a.clone(), b.clone());
        self.attrs.changed(ba, &a);
        self.attrs.changed(ba, &b);
        out
    }

    /// `renameat2`: both paths on one backend, else `EXDEV`.
    pub(crate) fn rename2(&self, r: &Req, a: ByteBuf, b: ByteBuf, flags: u32) -> R<()> {
        self.on_pair(r, a, b, |fs, a, b| self.call(fs, RENAME2, (a, b, flags)))
    }

    pub(crate) fn readdir(&self, r: &Req, mut q: ReaddirReq) -> R<DirPage> {
        let h = self.handle(r, q.fh)?;
        self.on_fh(&h, READDIR, |fh| {
            q.fh = fh;
            q.clone()
        })
    }

    /// A call on a path or handle: the backend's path or handle put in its place by
    /// `with`. Buffered writes of the file are flushed first (its times and size).
    pub(crate) fn on_target<In: Serialize + Clone, Out: DeserializeOwned>(
        &self,
        r: &Req,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        t: Target,
        with: impl FnOnce(Target) -> In,
    ) -> R<Out> {
        let (fs, t, b, path) = match t {
            Target::Path(p) => {
                let (b, fs, p) = self.route(r, &p)?;
                self.barrier(b, &p);
                (fs, Target::Path(p.clone()), b, p.into_vec())
            }
            Target::Handle(fh) => {
                let h = self.handle(r, fh)?;
                if let Some(f) = &h.file {
                    self.flush(f);
                }
                // (Not reopened: the next data call on the handle does that.)
                let fh = h.backing.fh();
                (
                    h.backing.fs.clone(),
                    Target::Handle(fh),
                    h.backend,
                    h.path.clone(),
                )
            }
        };
        let out = self.call(&fs, rpc, with(t));
        self.after(rpc.name(), b, &path);
        out
    }
}
