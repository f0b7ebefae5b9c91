//! What the I/O node does for each operation: data calls go through the shared files'
//! write-behind and read-ahead; metadata calls are passed to the backend the path routes
//! to, made for the client, after a barrier that flushes the files they could observe.

use std::io;
use std::sync::Arc;

use posix_ship::client::{Pending, RemoteFs};
use posix_ship::proto::*;
use posix_ship::server::{Begin, On, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::files::SharedFile;
use crate::node::{Handle, Node, Req, lock};
use crate::stats::Counters;
use crate::writes::Began;

pub(crate) type R<T> = Result<T, i32>;

/// The smallest read-ahead window (it doubles with each sequential read).
const FIRST_WINDOW: usize = 256 << 10;

pub(crate) fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A `stat` to ask the backend (`Node::stat_begin`).
pub(crate) struct Asking {
    epoch: u64,
    user: Option<Principal>,
    b: usize,
    /// The backend, acting for the caller.
    pub fs: RemoteFs,
    /// The backend's path.
    pub p: ByteBuf,
    /// Whether a final link is followed.
    pub follow: bool,
}

/// Where a `stat` stands once begun.
pub(crate) enum Lookup {
    /// Answered here.
    Known(R<Attr>),
    /// The backend is to be asked.
    Ask(Asking),
}

impl Node {
    /// Calls `rpc` on a backend, counted.
    pub(crate) fn call<In: Serialize + Clone + 'static, Out: DeserializeOwned>(
        &self,
        fs: &RemoteFs,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        input: In,
    ) -> R<Out> {
        self.stats.request_out(rpc.name());
        fs.call(rpc, &input).map_err(|e| self.backend_errno(e))
    }

    /// [`Node::call`] without waiting: [`Node::landed`] gives its outcome.
    pub(crate) fn start<In: Serialize + Clone + 'static, Out: DeserializeOwned>(
        &self,
        fs: &RemoteFs,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        input: In,
    ) -> Pending<Out> {
        self.stats.request_out(rpc.name());
        fs.start(rpc, &input)
    }

    /// The outcome of a call [`Node::start`] made (a server at its bound of requests in
    /// flight answers `EAGAIN`: [`Node::call`] waits that out).
    pub(crate) fn landed<Out: DeserializeOwned>(&self, p: Pending<Out>) -> R<Out> {
        p.wait().map_err(|e| self.backend_errno(e))
    }

    /// A backend call's errno, counted if the backend could not be reached.
    pub(crate) fn backend_errno(&self, e: std::io::Error) -> i32 {
        let e = errno(e);
        if [libc::ECONNRESET, libc::ECONNREFUSED, libc::ETIMEDOUT].contains(&e) {
            Counters::add(&self.stats.backend_errors, 1);
        }
        e
    }

    /// Calls `rpc` on `h`'s backend handle, counted, once more with the file opened
    /// again if the backend has forgotten the handle.
    pub(crate) fn on_fh<In: Serialize + Clone + 'static, Out: DeserializeOwned>(
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
    pub(crate) fn route(&self, r: &Req, path: &[u8]) -> R<(usize, RemoteFs, ByteBuf)> {
        let (b, inner) = self.routes.route(path).ok_or(libc::ENOENT)?;
        Ok((
            b,
            self.backends[b].acting_for(r.user.clone()),
            ByteBuf::from(inner),
        ))
    }

    /// Whether a `stat`, `open`, `unlink` or change to the namespace begins without
    /// waiting, so that it may begin on the progress thread (the begin then skips what it would wait for: [`Req`]'s
    /// `inline`): all do but a path's `stat` while this node holds writes to that file
    /// (written out first) and a truncating open of a file open here (written out, and
    /// the journal synced, first), and none with a journal (its writers hold a file's
    /// state while they write the log). Nothing here waits: a file whose state is held
    /// counts as holding writes.
    pub(crate) fn begins_now(&self, what: Begin<'_>) -> bool {
        if self.files.journal.is_some() {
            return false;
        }
        let writes_out = |path: &[u8], busy_only: bool| {
            self.routes.route(path).is_some_and(|(b, p)| {
                let open_here = self.files.by_path(b, &p);
                open_here.iter().any(|f| !busy_only || f.busy_now())
            })
        };
        match what {
            Begin::Stat { path, .. } => !writes_out(path, true),
            Begin::Open(o) => o.flags & libc::O_TRUNC == 0 || !writes_out(&o.path, false),
            Begin::Unlink(_) | Begin::Change => true,
        }
    }

    /// Counts a metadata call begun where it was dispatched.
    pub(crate) fn begun(&self, r: &Req) {
        if r.inline {
            Counters::add(&self.stats.begun_inline, 1);
        }
    }

    /// The files `path` names on backend `b` that this node holds state for: those opened
    /// by that name, or else, while this node holds writes, the one the backend says the
    /// name is (another name for it: `//f`, `d/./f`, a hard link), found by its identity
    /// (one backend `stat`). Before a change that must come after their writes (a
    /// truncating open needs none: it cuts the file it opened, found by identity, once
    /// the backend allowed it).
    pub(crate) fn named(
        &self,
        fs: &RemoteFs,
        b: usize,
        path: &[u8],
        follow: bool,
    ) -> Vec<Arc<SharedFile>> {
        let by_name = self.files.by_path(b, path);
        if !by_name.is_empty() || !self.files.holds_writes() {
            return by_name;
        }
        let target = (Target::Path(ByteBuf::from(path.to_vec())), follow);
        match self.call(fs, STAT, target) {
            Ok(a) => self.files.find((b, a.dev, a.ino)).into_iter().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Writes out buffered writes of every file `path` names on backend `b`.
    pub(crate) fn barrier(&self, b: usize, path: &[u8]) {
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
    pub(crate) fn before_change(&self, f: &SharedFile) {
        self.flush(f);
        if let Some(j) = &self.files.journal
            && let Err(e) = j.sync()
        {
            tracing::warn!(error = %e, "journal: cannot sync");
        }
    }

    pub(crate) fn stat(&self, r: &Req, t: On<'_, Handle>, follow: bool) -> R<Attr> {
        if let Some(a) = self.virtual_attr(&t) {
            return Ok(a);
        }
        match t {
            On::Path(p) => match self.stat_begin(r, p, follow)? {
                Lookup::Known(a) => a,
                Lookup::Ask(q) => {
                    let a = self.call(&q.fs, STAT, (Target::Path(q.p.clone()), follow));
                    self.stat_answered(&q, a)
                }
            },
            On::File(h) => {
                if let Some(f) = &h.file {
                    self.flush(f);
                }
                self.on_fh(h, STAT, |fh| (Target::Handle(fh), follow))
            }
        }
    }

    /// A path's `stat` up to its backend call: answered from the cache, or to ask (the
    /// buffered bytes of a file written through this node written out first).
    pub(crate) fn stat_begin(&self, r: &Req, p: &[u8], follow: bool) -> R<Lookup> {
        let (b, fs, p) = self.route(r, p)?;
        // (Begun inline, none held writes when `begins_now` looked: writes buffered since
        // are concurrent with this stat, which may answer without them.)
        let open_here = match r.inline {
            true => Vec::new(),
            false => {
                let mut v = self.files.by_path(b, &p);
                v.retain(|f| f.busy());
                v
            }
        };
        if open_here.is_empty() {
            if let Some(a) = self.attrs.get(b, &p, follow, &r.user) {
                Counters::add(&self.stats.attr_hits, 1);
                return Ok(Lookup::Known(a.map(|a| self.with_held(b, a))));
            }
        } else {
            // Written through this node: its size and times are the backend's once the
            // buffered bytes are there.
            for f in open_here {
                self.flush(&f);
            }
        }
        Ok(Lookup::Ask(Asking {
            epoch: self.attrs.epoch(),
            user: r.user.clone(),
            b,
            fs,
            p,
            follow,
        }))
    }

    /// A path's `stat` after the backend's answer (kept for the next).
    pub(crate) fn stat_answered(&self, q: &Asking, a: R<Attr>) -> R<Attr> {
        self.attrs.put(q.epoch, q.b, &q.p, q.follow, &q.user, a);
        a.map(|a| self.with_held(q.b, a))
    }

    /// A backend's attributes of a file with the writes this node holds for it: a file
    /// reached by another name than the one it was opened by (`//f`, `d/./f`, a hard
    /// link) had its buffered writes neither written out before the `stat` nor counted
    /// in its size. Found by the file's identity (backend, device, inode); looked at
    /// without waiting (a file whose state is held keeps the backend's size).
    fn with_held(&self, b: usize, mut a: Attr) -> Attr {
        // (Nothing held anywhere, the common case: no look at the file table.)
        if !self.files.holds_writes() {
            return a;
        }
        if let Some(end) = self
            .files
            .find((b, a.dev, a.ino))
            .and_then(|f| f.buffered_end_now())
        {
            a.size = a.size.max(end);
        }
        a
    }

    /// Closes `h`'s backend handle (see `release`: only once its last user is gone).
    pub(crate) fn backend_close(&self, h: &Handle) -> R<()> {
        self.call(&h.backing.fs, CLOSE, h.backing.fh())
    }

    /// `h` no longer uses its backend handle: closes that too if `h` was its last user.
    pub(crate) fn release(&self, h: &Handle) -> R<()> {
        if self.opens.release(&h.backing) {
            self.backend_close(h)
        } else {
            Ok(())
        }
    }

    /// Drops `h` as a writer, flushing the file if it was the last one; the file's
    /// deferred write error, if any. While other writers remain, buffered bytes stay
    /// (every read through the node sees them; fsync and the last close write them out):
    /// N-to-1 writers closing one by one would otherwise flush a file full of holes as
    /// many small writes. The backend handle is closed apart (`close`, `behind`).
    pub(crate) fn detach(&self, h: &Handle) -> R<()> {
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
    pub(crate) fn close(&self, h: Arc<Handle>) -> R<()> {
        let detached = self.detach(&h);
        if let Err(std::sync::mpsc::SendError(crate::behind::Behind::Close(h))) =
            lock(&self.closer).send(crate::behind::Behind::Close(h))
        {
            let _ = self.release(&h);
        }
        detached
    }

    /// [`Node::close`] if it needs no waiting (no journal, nothing of the file buffered,
    /// no write-out of it in progress: see [`crate::files::SharedFile::close_now`]), as
    /// the progress thread may make it; `None` otherwise, with nothing changed.
    pub(crate) fn close_now(&self, h: &Arc<Handle>) -> Option<R<()>> {
        if self.files.journal.is_some() {
            return None;
        }
        let error = match &h.file {
            Some(f) if h.writable => f.close_now(h.token)?,
            _ => None,
        };
        if h.wrote.load(std::sync::atomic::Ordering::Acquire) {
            self.attrs.changed(h.backend, &h.path);
        }
        if let Err(std::sync::mpsc::SendError(crate::behind::Behind::Close(h))) =
            lock(&self.closer).send(crate::behind::Behind::Close(h.clone()))
        {
            // (The thread behind is gone: the node is stopping. Let go here.)
            let _ = self.release(&h);
        }
        Counters::add(&self.stats.answered_inline, 1);
        Some(error.map_or(Ok(()), Err))
    }

    /// A read through the file's buffered writes and read-ahead.
    pub(crate) fn read(&self, h: &Handle, off: u64, buf: &mut [u8]) -> R<usize> {
        let fetch = |off: u64, b: &mut [u8]| {
            self.stats.request_out("posix.read");
            h.backing.with(|fh| h.backing.fs.pread(fh, b, off))
        };
        match &h.file {
            Some(f) => {
                let (window, next) = self.window(h, off, buf.len());
                let (n, fetched) = self.files.read(f, off, buf, window, fetch).map_err(errno)?;
                let mut s = lock(&h.seq);
                s.0 = off + n as u64;
                if fetched {
                    s.1 = next;
                }
                Ok(n)
            }
            None => fetch(off, buf).map_err(errno),
        }
    }

    /// The read-ahead window for a read of `len` at `off` if it misses, and the window
    /// to keep if it does: it doubles with each backend read while reads are sequential,
    /// up to `readahead_max`, and falls to nothing at a seek.
    pub(crate) fn window(&self, h: &Handle, off: u64, len: usize) -> (usize, usize) {
        let s = lock(&h.seq);
        let max = self.cfg.readahead_max;
        let w = if off == s.0 && max > 0 {
            (s.1 * 2).clamp(FIRST_WINDOW, max)
        } else {
            0
        };
        (w.max(len), w)
    }

    pub(crate) fn write(
        &self,
        r: &Req,
        h: &Handle,
        offset: Option<u64>,
        data: Payload<'_>,
    ) -> R<Written> {
        let data = match self.write_begin(r, h, offset, data) {
            Began::Answered(out) => return out,
            Began::Through(data) => data,
        };
        let end = h.backing.with(|fh| h.backing.fs.pwrite(fh, &data, offset));
        self.write_end(h, data.len() as u64, end.map_err(errno))
    }

    /// A write, its bytes pulled from the caller: buffered (answered), or to be written
    /// through (appends, large writes, no memory) after what is buffered of the file,
    /// which is written out here first.
    pub(crate) fn write_begin(
        &self,
        r: &Req,
        h: &Handle,
        offset: Option<u64>,
        data: Payload<'_>,
    ) -> Began {
        if !h.writable {
            return Began::Answered(Err(libc::EBADF));
        }
        h.wrote.store(true, std::sync::atomic::Ordering::Release);
        let mut data = match data.bytes() {
            Ok(d) => d,
            Err(e) => return Began::Answered(Err(e.raw_os_error())),
        };
        let n = data.len() as u64;
        if let (Some(off), Some(f)) = (offset, self.buffers(h, n)) {
            match self.files.buffer(f, off, data, &h.path, &r.user) {
                Ok(()) => return Began::Answered(Ok(Written { n, end: off + n })),
                Err(d) => data = d,
            }
        }
        if let Some(f) = &h.file {
            self.before_change(f);
        }
        Counters::add(&self.stats.write_through, 1);
        self.stats.request_out("posix.write");
        Began::Through(data)
    }

    /// A write of `n` bytes through to the backend ended at `end`.
    pub(crate) fn write_end(&self, h: &Handle, n: u64, end: R<u64>) -> R<Written> {
        // After the write: a read between could otherwise keep the old bytes.
        if let Some(f) = &h.file {
            f.invalidate();
        }
        let end = end?;
        Counters::add(&self.stats.bytes_in, n);
        Counters::add(&self.stats.bytes_out, n);
        Ok(Written { n, end })
    }

    /// The shared file a write of `n` bytes through `h` is buffered in, if writes like it
    /// are (not appends, not large ones, and only with write-behind memory).
    fn buffers<'h>(&self, h: &'h Handle, n: u64) -> Option<&'h Arc<SharedFile>> {
        let f = h.file.as_ref().filter(|_| !h.append)?;
        (self.files.budget > 0 && n < self.files.file_max / 2).then_some(f)
    }

    /// [`Node::write`]'s buffered case, if it needs no waiting; `None` otherwise.
    pub(crate) fn write_now(&self, h: &Handle, off: u64, data: &[u8]) -> Option<Written> {
        let n = data.len() as u64;
        let f = self.buffers(h, n).filter(|_| h.writable)?;
        if !self.files.buffer_now(f, off, data) {
            return None;
        }
        h.wrote.store(true, std::sync::atomic::Ordering::Release);
        Counters::add(&self.stats.answered_inline, 1);
        Some(Written { n, end: off + n })
    }

    /// [`Node::read`] of bytes all in memory (kept read-ahead data, with what is
    /// buffered over it), if that needs no waiting; `None` otherwise.
    pub(crate) fn read_now(&self, h: &Handle, off: u64, buf: &mut [u8]) -> Option<usize> {
        let n = self.files.read_now(h.file.as_ref()?, off, buf)?;
        lock(&h.seq).0 = off + n as u64;
        Counters::add(&self.stats.answered_inline, 1);
        Some(n)
    }

    pub(crate) fn truncate(&self, r: &Req, t: On<'_, Handle>, len: u64) -> R<()> {
        match t {
            On::Path(p) => {
                let (b, fs, p) = self.route(r, p)?;
                for f in self.named(&fs, b, &p, true) {
                    self.before_change(&f);
                }
                let out = self.call(&fs, TRUNCATE, (Target::Path(p.clone()), len));
                self.attrs.changed(b, &p);
                for f in self.files.by_path(b, &p) {
                    f.invalidate();
                }
                out
            }
            On::File(h) => {
                if let Some(f) = &h.file {
                    self.before_change(f);
                }
                let out = self.on_fh(h, TRUNCATE, |fh| (Target::Handle(fh), len));
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
    pub(crate) fn fallocate(&self, h: &Handle, mode: i32, off: u64, len: u64) -> R<()> {
        if let Some(f) = &h.file {
            self.before_change(f);
        }
        let out = self.on_fh(h, FALLOCATE, |fh| (fh, mode, off, len));
        h.wrote.store(true, std::sync::atomic::Ordering::Release);
        if let Some(f) = &h.file {
            f.invalidate();
        }
        out
    }

    pub(crate) fn fsync(&self, h: &Handle, data_only: bool) -> R<()> {
        if let Some(f) = &h.file {
            self.flush(f);
        }
        let synced = self.on_fh(h, FSYNC, |fh| (fh, data_only));
        self.fsync_answered(h, synced)
    }

    /// An `fsync`'s answer once the backend's came: a write of the file's that failed
    /// behind, reported to this handle, first (as NFS reports it).
    pub(crate) fn fsync_answered(&self, h: &Handle, synced: R<()>) -> R<()> {
        match h.file.as_ref().and_then(|f| f.take_error(h.token)) {
            Some(e) => Err(e),
            None => synced,
        }
    }
}
