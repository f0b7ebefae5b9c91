//! What a posix-ship server stores files in: the [`Backend`] trait a [`super::Service`]
//! serves the protocol over, and what each call is given: the caller ([`Who`]), its
//! targets with handles resolved ([`On`]), a write's data ([`Payload`]).

use std::sync::Arc;

use rpc_core::{Caller, Descriptor, Identity};
use rustix::io::Errno;
use serde_bytes::ByteBuf;

use super::clients::{ClientId, User};
use crate::bulk_io::{pull_from, pull_then};
use crate::proto::*;

/// An operation's outcome at the backend.
pub type R<T> = Result<T, Errno>;

/// Where an operation answered later (`Backend::open_then` and kin) puts its outcome.
pub type Done<T> = Box<dyn FnOnce(R<T>) + Send>;

/// The largest file offset (the kernel's `loff_t` is signed).
pub const MAX_OFFSET: u64 = i64::MAX as u64;

/// Who a request is from.
#[derive(Clone, Debug)]
pub struct Who {
    /// The connection.
    pub client: ClientId,
    /// The user it acts for: verified by the transport, or named by a trusted forwarder
    /// (`None`: anonymous).
    pub identity: Option<Identity>,
    /// Served where it was dispatched, the backend having said it begins without waiting
    /// ([`Backend::begins_now`]): the body must not wait.
    pub inline: bool,
}

impl Who {
    /// The uid the request counts against.
    pub fn uid(&self) -> User {
        self.identity.as_ref().map(|i| i.uid)
    }

    /// The identity as a forwarder passes it on.
    pub fn principal(&self) -> Option<Principal> {
        self.identity.as_ref().map(|i| Principal {
            uid: i.uid,
            gid: i.gid,
            groups: i.groups.clone(),
        })
    }
}

/// A call answered through a callback, as [`Backend::begins_now`] is asked about it.
#[derive(Clone, Copy, Debug)]
pub enum Begin<'a> {
    /// [`Backend::stat_then`] of `path`, following a final symlink if `follow`.
    #[allow(missing_docs)]
    Stat { path: &'a [u8], follow: bool },
    /// [`Backend::open_then`].
    Open(&'a OpenReq),
    /// [`Backend::unlink_then`].
    Unlink(&'a [u8]),
    /// [`Backend::change_then`].
    Change,
}

/// A change to the namespace ([`Backend::change_then`]), paths beneath the export.
#[derive(Clone, Debug)]
pub enum Change {
    /// A directory, with a mode.
    Mkdir(ByteBuf, u32),
    /// An empty directory removed.
    Rmdir(ByteBuf),
    /// `renameat2` from the first path to the second (flags 0: `rename`).
    Rename(ByteBuf, ByteBuf, u32),
    /// A hard link at the second path to the first.
    Link(ByteBuf, ByteBuf),
    /// A symbolic link at the second path holding the first (its target, stored as given).
    Symlink(ByteBuf, ByteBuf),
}

/// What a metadata operation applies to, handles resolved to the backend's files.
pub enum On<'a, F> {
    /// A path beneath the export.
    Path(&'a [u8]),
    /// One of the caller's open files.
    File(&'a Arc<F>),
}

/// What a call answered later applies to: an [`On`] that owns its path.
pub enum Owned<F> {
    /// A path beneath the export.
    Path(ByteBuf),
    /// One of the caller's open files.
    File(Arc<F>),
}

impl<F> Owned<F> {
    /// Borrowed, as the calls answered at once take it.
    pub fn on(&self) -> On<'_, F> {
        match self {
            Owned::Path(p) => On::Path(p),
            Owned::File(f) => On::File(f),
        }
    }
}

impl<F> Clone for Owned<F> {
    fn clone(&self) -> Self {
        match self {
            Owned::Path(p) => Owned::Path(p.clone()),
            Owned::File(f) => Owned::File(f.clone()),
        }
    }
}

/// One attribute changed ([`Backend::attr_then`]), as its own call names it.
#[derive(Clone, Copy, Debug)]
pub enum AttrChange {
    /// Permission bits (`chmod`).
    Mode(u32),
    /// Length (`truncate`).
    Size(u64),
    /// Owner and group (`chown`; `None`: unchanged).
    Owner(Option<u32>, Option<u32>),
    /// Access and modification times (`utimensat`), following a final symlink if the
    /// flag says so.
    Times(SetTime, SetTime, bool),
}

/// [`SETATTR`] made of the calls it names, in its order: owner, mode, size, times, then
/// the attributes after (the first that fails is the answer).
pub fn set_attr<B: Backend + ?Sized>(b: &B, who: &Who, t: On<'_, B::File>, a: SetAttr) -> R<Attr> {
    let on = || match &t {
        On::Path(p) => On::Path(p),
        On::File(f) => On::File(f),
    };
    if a.uid.is_some() || a.gid.is_some() {
        b.chown(who, on(), a.uid, a.gid)?;
    }
    if let Some(m) = a.mode {
        b.chmod(who, on(), m & 0o7777)?;
    }
    if let Some(len) = a.size {
        b.truncate(who, on(), len)?;
    }
    if a.atime.is_some() || a.mtime.is_some() {
        let (at, mt) = (
            a.atime.unwrap_or(SetTime::Omit),
            a.mtime.unwrap_or(SetTime::Omit),
        );
        b.utimens(who, on(), at, mt, false)?;
    }
    b.stat(who, on(), false)
}

/// The data of a write: inline, or in the caller's memory until asked for.
pub enum Payload<'a> {
    /// Carried by the request.
    Inline(Vec<u8>),
    /// The first `len` bytes of `src` in the caller's memory (`len` within the staging
    /// bounds).
    Bulk {
        /// The caller.
        caller: &'a Caller,
        /// Its buffer.
        src: Descriptor,
        /// The bytes granted.
        len: u64,
    },
}

impl Payload<'_> {
    /// How many bytes it holds.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Inline(v) => v.len() as u64,
            Payload::Bulk { len, .. } => *len,
        }
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes (pulled from the caller's memory if they are not here yet).
    pub fn bytes(self) -> R<Vec<u8>> {
        match self {
            Payload::Inline(v) => Ok(v),
            Payload::Bulk { caller, src, len } => {
                pull_from(caller, &src, len).map_err(Errno::from_raw_os_error)
            }
        }
    }

    /// [`Payload::bytes`] without waiting: `f` gets them here if the request carried
    /// them, else on the thread that completes the pull (the engine's progress thread,
    /// usually: `f` must not block; [`rpc_core::Engine::execute`] takes what may).
    pub fn bytes_then(self, f: impl FnOnce(R<Vec<u8>>) + Send + 'static) {
        match self {
            Payload::Inline(v) => f(Ok(v)),
            Payload::Bulk { caller, src, len } => pull_then(caller, &src, len, move |r| {
                f(r.map_err(Errno::from_raw_os_error))
            }),
        }
    }
}

/// A file system the protocol is served over. Every call is made for `who`; a backend
/// that acts with more rights than the caller checks them itself (a local export takes
/// the caller's credentials in [`Backend::run`], an I/O node passes the identity on).
#[allow(missing_docs)]
pub trait Backend: Send + Sync + 'static {
    /// What an open handle stands for.
    type File: Send + Sync + 'static;

    /// Runs one request's body (with the caller's rights, if the backend takes them).
    fn run<T>(&self, _who: &Who, body: impl FnOnce() -> R<T>) -> R<T> {
        body()
    }
    /// A request for `rpc` arrived (for the backend's counters).
    fn request_in(&self, _rpc: &'static str) {}
    /// Whether an open file may be shared by handles of several clients
    /// ([`LEND`]/[`ADOPT`]): only if closing one handle leaves the file to the others
    /// (the file closes when its last `Arc` goes). A backend whose close acts on the
    /// file (a relay closing it upstream, an I/O node flushing it) answers `ENOSYS`, and
    /// children open by path.
    fn lends(&self) -> bool {
        false
    }
    /// What [`SERVER_STATS`] answers, from the service's own counters.
    fn stats(&self, s: ServerStats) -> ServerStats {
        s
    }

    fn open(&self, who: &Who, r: &OpenReq) -> R<(Self::File, Attr)>;
    /// `open`, answered through `done` (by default at once, by [`Backend::open`]). A
    /// backend that calls another server answers from that call's completion, so that
    /// no thread waits on it; `done` is then called once, from any thread.
    fn open_then(self: Arc<Self>, who: Who, r: OpenReq, done: Done<(Self::File, Attr)>) {
        done(self.open(&who, &r))
    }
    /// `unlink`, answered through `done` (see [`Backend::open_then`]).
    fn unlink_then(self: Arc<Self>, who: Who, path: ByteBuf, done: Done<()>) {
        done(self.unlink(&who, &path))
    }
    /// `stat` of a path or an open file, answered through `done` (see
    /// [`Backend::open_then`]): a path's may begin where the request was dispatched
    /// ([`Begin::Stat`]), an open file's begins on a worker (what is buffered of it may
    /// be written out first).
    fn stat_then(self: Arc<Self>, who: Who, t: Owned<Self::File>, follow: bool, done: Done<Attr>) {
        done(self.stat(&who, t.on(), follow))
    }
    /// With [`Backend::answers_now`]: whether the `*_then` call for `what` would begin
    /// without waiting (its answer coming from a completion, or at once); it is then made
    /// where the request was dispatched (the progress thread), else on a worker. Called
    /// there, outside [`Backend::run`]: it must not block.
    fn begins_now(&self, _who: &Who, _what: Begin<'_>) -> bool {
        false
    }
    /// The caller closed `f` (its handle is gone already).
    fn close(&self, who: &Who, f: Arc<Self::File>) -> R<()>;
    /// With [`Backend::answers_now`]: [`Backend::close`] made where the request was
    /// dispatched (the progress thread) if it needs no waiting; `None` (the default) to
    /// make it on a worker. Must not block.
    fn close_now(&self, _who: &Who, _f: &Arc<Self::File>) -> Option<R<()>> {
        None
    }
    /// A client is gone: these were its files. Called on the transport's progress
    /// thread: anything slow is for the backend to do elsewhere.
    fn lost(&self, files: Vec<Arc<Self::File>>) {
        drop(files);
    }
    /// Reads into `buf` at `off`: the bytes read (fewer only at the end of the file).
    fn read(&self, who: &Who, f: &Arc<Self::File>, off: u64, buf: &mut [u8]) -> R<usize>;
    /// A read of up to `len` bytes at `off`, answered through `done` with the bytes
    /// (fewer only at the end of the file): by default [`Backend::read`] at once; a
    /// backend that reads another server answers from that call's completion, so that no
    /// worker waits on it (see [`Backend::open_then`]).
    fn read_then(
        self: Arc<Self>,
        who: Who,
        f: Arc<Self::File>,
        off: u64,
        len: usize,
        done: Done<Vec<u8>>,
    ) {
        let mut buf = vec![0u8; len];
        done(self.read(&who, &f, off, &mut buf).map(|n| {
            buf.truncate(n);
            buf
        }))
    }
    /// Writes `data` at `off` (`None`: at the file's position, or appended).
    fn write(
        &self,
        who: &Who,
        f: &Arc<Self::File>,
        off: Option<u64>,
        data: Payload<'_>,
    ) -> R<Written>;
    /// [`Backend::write`], answered through `done` (see [`Backend::open_then`]); begun on
    /// a worker, which pulls the bytes (`data` lives no longer than this call). By
    /// default the write at once.
    fn write_then(
        self: Arc<Self>,
        who: Who,
        f: Arc<Self::File>,
        off: Option<u64>,
        data: Payload<'_>,
        done: Done<Written>,
    ) {
        done(self.write(&who, &f, off, data))
    }
    /// Whether [`READ_MANY`] and [`WRITE_MANY`] are served (through [`Backend::read`] and
    /// [`Backend::write`], a range at a time); `ENOSYS` otherwise, as from a server built
    /// before them.
    fn list_io(&self) -> bool {
        true
    }
    /// Whether [`Backend::write_now`] and [`Backend::read_now`] may answer: [`WRITE`] and
    /// [`READ`] requests are then dispatched where they arrive, and made on a worker only
    /// when these say `None`.
    fn answers_now(&self) -> bool {
        false
    }
    /// A write at `off` of bytes the request carried, if it completes without waiting
    /// (buffered in memory); `None` if it would wait (the service then makes it with
    /// [`Backend::write`] on a worker). Called where requests are dispatched (the
    /// progress thread), outside [`Backend::run`]: it must not block.
    fn write_now(
        &self,
        _who: &Who,
        _f: &Arc<Self::File>,
        _off: u64,
        _data: &[u8],
    ) -> Option<Written> {
        None
    }
    /// A read into `buf` at `off`, if the bytes are in memory (see [`Backend::write_now`]):
    /// the bytes read.
    fn read_now(
        &self,
        _who: &Who,
        _f: &Arc<Self::File>,
        _off: u64,
        _buf: &mut [u8],
    ) -> Option<usize> {
        None
    }
    /// With [`Backend::answers_now`]: whether [`Backend::read_then`] of `len` bytes at
    /// `off` would begin without waiting (asked of another server); it is then made where
    /// the request was dispatched, with [`Who::inline`] set, else on a worker. Called
    /// there: it must not block.
    fn read_begins_now(&self, _who: &Who, _f: &Arc<Self::File>, _off: u64, _len: u64) -> bool {
        false
    }
    fn fsync(&self, who: &Who, f: &Arc<Self::File>, data_only: bool) -> R<()>;
    /// `fsync`, answered through `done` (see [`Backend::open_then`]); begun on a worker
    /// (what is buffered may be written out first), so that a backend that calls another
    /// server holds no worker while that server syncs.
    fn fsync_then(self: Arc<Self>, who: Who, f: Arc<Self::File>, data_only: bool, done: Done<()>) {
        done(self.fsync(&who, &f, data_only))
    }
    fn fallocate(&self, who: &Who, f: &Arc<Self::File>, mode: i32, off: u64, len: u64) -> R<()>;
    fn readdir(&self, who: &Who, f: &Arc<Self::File>, restart: bool, max: u32) -> R<DirPage>;
    /// A page of at most `max` entries (at most [`MAX_DIR_PLUS_PAGE`]) with their
    /// attributes, and (`xattrs`) whether each has extended attributes; by default no
    /// attributes (the caller looks each entry up).
    fn readdir_plus(
        &self,
        who: &Who,
        f: &Arc<Self::File>,
        restart: bool,
        max: u32,
        _xattrs: bool,
    ) -> R<DirPagePlus> {
        let p = self.readdir(who, f, restart, max)?;
        let entries = p.entries.into_iter().map(|e| (e, None)).collect();
        Ok(DirPagePlus {
            entries,
            end: p.end,
        })
    }

    fn stat(&self, who: &Who, t: On<'_, Self::File>, follow: bool) -> R<Attr>;
    fn truncate(&self, who: &Who, t: On<'_, Self::File>, len: u64) -> R<()>;
    /// One attribute change (`chmod`, `truncate`, `chown`, `utimens`), answered through
    /// `done` (see [`Backend::open_then`]); begun on a worker. By default the call at
    /// once.
    fn attr_then(self: Arc<Self>, who: Who, t: Owned<Self::File>, c: AttrChange, done: Done<()>) {
        done(match c {
            AttrChange::Mode(m) => self.chmod(&who, t.on(), m),
            AttrChange::Size(len) => self.truncate(&who, t.on(), len),
            AttrChange::Owner(u, g) => self.chown(&who, t.on(), u, g),
            AttrChange::Times(a, m, follow) => self.utimens(&who, t.on(), a, m, follow),
        })
    }
    /// [`SETATTR`], answered through `done` (see [`Backend::open_then`]); begun on a
    /// worker. By default the calls it names, one by one ([`set_attr`]); a backend that
    /// calls another server passes it on whole, one request where there were up to five.
    fn setattr_then(self: Arc<Self>, who: Who, t: Owned<Self::File>, a: SetAttr, done: Done<Attr>) {
        done(set_attr(&*self, &who, t.on(), a))
    }
    fn chmod(&self, who: &Who, t: On<'_, Self::File>, mode: u32) -> R<()>;
    fn utimens(
        &self,
        who: &Who,
        t: On<'_, Self::File>,
        atime: SetTime,
        mtime: SetTime,
        follow: bool,
    ) -> R<()>;
    fn chown(&self, who: &Who, t: On<'_, Self::File>, uid: Option<u32>, gid: Option<u32>) -> R<()>;
    fn getxattr(&self, who: &Who, t: On<'_, Self::File>, name: &[u8]) -> R<ByteBuf>;
    fn setxattr(
        &self,
        who: &Who,
        t: On<'_, Self::File>,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> R<()>;
    fn listxattr(&self, who: &Who, t: On<'_, Self::File>) -> R<Vec<ByteBuf>>;
    fn removexattr(&self, who: &Who, t: On<'_, Self::File>, name: &[u8]) -> R<()>;

    fn unlink(&self, who: &Who, path: &[u8]) -> R<()>;
    /// A change to the namespace, answered through `done` (see [`Backend::open_then`]):
    /// a local file system makes it at once; a backend that calls another server
    /// answers from that call's completion.
    fn change_then(self: Arc<Self>, who: Who, c: Change, done: Done<()>);
    fn readlink(&self, who: &Who, path: &[u8]) -> R<ByteBuf>;
    fn statfs(&self, who: &Who, path: &[u8]) -> R<FsStat>;
    fn access(&self, who: &Who, path: &[u8], mode: i32) -> R<()>;
    /// A call passed on as asked, answered through `done` (see [`Backend::open_then`]);
    /// begun on a worker. By default the call at once ([`super::query`]).
    fn query_then(
        self: Arc<Self>,
        who: Who,
        q: super::Query<Self::File>,
        done: Done<super::Found>,
    ) {
        done(super::query(&*self, &who, q))
    }
}
