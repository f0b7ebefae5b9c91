//! The client library: a remote file system with methods mirroring `std::fs`.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use posix_ship::client::RemoteFs;
//!
//! let fs = RemoteFs::connect("tcp://127.0.0.1:7000")?;
//! fs.create_dir("/results")?;
//! fs.create("/results/run1.txt")?.write_all(b"42\n")?;
//! let mut s = String::new();
//! fs.open("/results/run1.txt")?.read_to_string(&mut s)?;
//! assert_eq!(s, "42\n");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Errors are [`std::io::Error`]s carrying the server's `errno` (`raw_os_error()`), so
//! `ErrorKind::NotFound` and friends work as with local files. Transport failures map to
//! `ECONNRESET` (server gone), `ETIMEDOUT` or `EIO`. A server at its bound of requests in
//! flight answers "busy": blocking calls wait that out and try again (up to 60 s); a call
//! started with [`RemoteFs::start`] reports it as `EAGAIN`.

pub mod attrs;
mod data;
mod file;
mod lookup;
pub mod readahead;
mod stream;
pub mod writebehind;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{Endpoint, Engine, Rpc, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

pub use data::{PendingWrite, slice_parts};
pub use file::RemoteFile;

use crate::proto::*;

/// Reads and writes up to this size travel inline in the RPC by default; larger ones go
/// by bulk transfer straight between the two buffers (measured: `posix-ship-bench`).
pub const DEFAULT_INLINE_MAX: usize = 32 << 10;

/// A connection to a posix-ship server. Cheap to clone.
#[derive(Clone)]
pub struct RemoteFs {
    inner: Arc<Inner>,
    /// Set on a forwarder's view ([`RemoteFs::acting_for`]): whom its calls are for.
    for_user: Option<Arc<Option<Principal>>>,
}

struct Inner {
    engine: Engine,
    peer: Endpoint,
    inline_max: usize,
    /// The server answered `ENOSYS` to [`READDIR_PLUS_XATTRS`] (built before it).
    no_xattrs_listing: std::sync::atomic::AtomicBool,
    /// Attributes by path, if the client keeps them ([`ClientOptions::attr_timeout`]).
    attrs: Option<attrs::Attrs>,
}

/// How long a blocking call tries again while the server says it is busy (at its bound
/// of requests in flight), waiting 0.1 ms doubling to 10 ms between tries.
const BUSY_WAIT: Duration = Duration::from_secs(60);

/// An operation in flight ([`RemoteFs::start`]): wait for it or await it; its outcome
/// is the server's value, or its `errno` (the transport's failure as one).
#[must_use = "a dropped call's answer is discarded"]
pub struct Pending<Out> {
    call: rpc_core::Call<Reply<Out>>,
    /// For a call that may change attributes: ends the change when dropped.
    changing: Option<Changing>,
}

/// A change in flight, as the attribute cache counts it ([`attrs::Attrs::change_ends`]
/// when dropped).
struct Changing(Arc<Inner>);

impl Drop for Changing {
    fn drop(&mut self) {
        if let Some(a) = &self.0.attrs {
            a.change_ends();
        }
    }
}

impl<Out: DeserializeOwned> Pending<Out> {
    /// Blocks until the answer comes.
    pub fn wait(self) -> io::Result<Out> {
        self.call.wait().map_err(rpc_err)?.map_err(errno)
    }

    /// Runs `f` with the outcome once it comes, on the thread that completes it (see
    /// [`rpc_core::Call::then`]: `f` must not block).
    pub fn then(self, f: impl FnOnce(Answered<Out>) + Send + 'static)
    where
        Out: Send + 'static,
    {
        let changing = self.changing;
        self.call.then(move |r| {
            drop(changing);
            f(match r {
                Err(RpcError::Busy(_)) => Answered::Busy,
                r => Answered::Done(r.map_err(rpc_err).and_then(|r| r.map_err(errno))),
            })
        })
    }

    /// Fails with `ETIMEDOUT` unless answered `t` from now.
    pub fn timeout(self, t: Duration) -> Self {
        Pending {
            call: self.call.timeout(t),
            changing: self.changing,
        }
    }
}

impl<Out: DeserializeOwned> std::future::Future for Pending<Out> {
    type Output = io::Result<Out>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let out = std::task::ready!(std::pin::Pin::new(&mut self.call).poll(cx));
        std::task::Poll::Ready(out.map_err(rpc_err).and_then(|r| r.map_err(errno)))
    }
}

/// What [`Pending::then`] hands over.
pub enum Answered<Out> {
    /// The server's value, or its `errno` (the transport's failure as one).
    Done(io::Result<Out>),
    /// The server was at its bound of requests in flight and did not take the call: make
    /// it again later (a blocking call waits that out itself).
    Busy,
}

/// Turns an RPC failure into the `errno` a POSIX caller would see.
pub fn rpc_errno(e: &RpcError) -> i32 {
    match e {
        RpcError::Timeout { .. } => libc::ETIMEDOUT,
        RpcError::Busy(_) => libc::EAGAIN,
        RpcError::Shutdown => libc::ESHUTDOWN,
        RpcError::Canceled => libc::ECANCELED,
        // A server older than this client: it lacks the operation.
        RpcError::UnknownRpc { .. } => libc::ENOSYS,
        RpcError::Transport(rpc_core::NaError::AccessDenied(_)) => libc::EACCES,
        // Never connected (nobody listens there): not a reset.
        RpcError::Transport(rpc_core::NaError::Unreachable(_)) => libc::ECONNREFUSED,
        RpcError::Transport(rpc_core::NaError::InvalidAddress { .. }) => libc::EINVAL,
        RpcError::Transport(_) => libc::ECONNRESET,
        RpcError::InvalidArgument(_) | RpcError::TooLarge { .. } => libc::EINVAL,
        _ => libc::EIO,
    }
}

fn rpc_err(e: RpcError) -> io::Error {
    tracing::debug!(error = %e, "call failed");
    io::Error::from_raw_os_error(rpc_errno(&e))
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn path(p: &str) -> ByteBuf {
    ByteBuf::from(p.as_bytes().to_vec())
}

/// How a client connects.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Reads and writes up to this many bytes travel inside the request; larger ones by bulk.
    pub inline_max: usize,
    /// Per-call timeout.
    pub timeout: Option<Duration>,
    /// The proof shown to a tcp server that demands one; `None`: `QS_AUTH`, else none.
    pub auth: Option<rpc_core::Auth>,
    /// How long a path's attributes are trusted once asked for ([`attrs`]; zero, the
    /// default: every `stat` asks the server).
    pub attr_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            inline_max: DEFAULT_INLINE_MAX,
            timeout: Some(Duration::from_secs(60)),
            auth: None,
            attr_timeout: Duration::ZERO,
        }
    }
}

impl RemoteFs {
    /// Connects to the server at `addr`, on the transport the address names.
    pub fn connect(addr: &str) -> io::Result<RemoteFs> {
        RemoteFs::connect_with(addr, ClientOptions::default())
    }

    /// Connects with the given options.
    pub fn connect_with(addr: &str, opts: ClientOptions) -> io::Result<RemoteFs> {
        let ClientOptions {
            inline_max,
            timeout,
            auth,
            attr_timeout,
        } = opts;
        let a = rpc_core::Address::parse(addr).map_err(|e| rpc_err(e.into()))?;
        let listen = rpc_core::transport::listen_address(Some(&a.transport())).map_err(rpc_err)?;
        let mut builder = Engine::builder()
            .listen(&listen.to_string())
            .timeout(timeout);
        if let Some(auth) = auth {
            builder = builder.auth(auth);
        }
        let engine = builder.build().map_err(rpc_err)?;
        let attrs = (!attr_timeout.is_zero()).then(|| attrs::Attrs::new(attr_timeout));
        RemoteFs::on_with(&engine, addr, inline_max, attrs)
    }

    /// Reaches the server at `addr` through `engine`, which may serve and call others too
    /// (an I/O node's one engine); `inline_max` as in [`ClientOptions`]. Checks that the
    /// server answers. The client keeps what it is given: pass [`Engine::handle`] where
    /// the client lives inside the engine's own handlers, so that it does not keep the
    /// engine alive.
    pub fn on(engine: &Engine, addr: &str, inline_max: usize) -> io::Result<RemoteFs> {
        RemoteFs::on_with(engine, addr, inline_max, None)
    }

    fn on_with(
        engine: &Engine,
        addr: &str,
        inline_max: usize,
        attrs: Option<attrs::Attrs>,
    ) -> io::Result<RemoteFs> {
        let peer = engine.lookup(addr).map_err(rpc_err)?;
        let fs = RemoteFs {
            inner: Arc::new(Inner {
                engine: engine.clone(),
                peer,
                inline_max,
                no_xattrs_listing: Default::default(),
                attrs,
            }),
            for_user: None,
        };
        // Fail now, not at the first file call, if nobody answers or the server refuses
        // our credential, saying why.
        let i = &fs.inner;
        i.engine
            .call(&i.peer, SERVER_STATS, &())
            .wait()
            .map_err(|e| io::Error::new(rpc_err(e.clone()).kind(), e.to_string()))?;
        Ok(fs)
    }

    /// The same connection, its calls made for `user` (`None`: an anonymous client): a
    /// forwarder's view. The server serves them only if it trusts this process as a
    /// forwarder (`EPERM` otherwise), with `user`'s rights.
    pub fn acting_for(&self, user: Option<Principal>) -> RemoteFs {
        RemoteFs {
            inner: self.inner.clone(),
            for_user: Some(Arc::new(user)),
        }
    }

    /// The identity calls are made for (`None`: this client's own; see [`Self::acting_for`]).
    pub fn acting_as(&self) -> Option<&Option<Principal>> {
        self.for_user.as_deref()
    }

    /// The engine (for counters).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Calls any operation of [`crate::proto`] with its raw request: the server's errno,
    /// or the transport's failure as one, on error (the interposer's way in).
    pub fn call<In: Serialize + Clone + 'static, Out: DeserializeOwned>(
        &self,
        rpc: Rpc<In, Reply<Out>>,
        input: &In,
    ) -> io::Result<Out> {
        let (start, mut nap) = (std::time::Instant::now(), Duration::from_micros(100));
        loop {
            match self.start(rpc, input).call.wait() {
                Err(RpcError::Busy(_)) if start.elapsed() < BUSY_WAIT => {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(10));
                }
                r => return r.map_err(rpc_err)?.map_err(errno),
            }
        }
    }

    /// Starts any operation of [`crate::proto`] without waiting: [`Pending::wait`] for
    /// its outcome, or `.await` it. Many calls may be in flight from one thread (an I/O
    /// node's way to overlap its backend calls).
    pub fn start<In: Serialize + Clone + 'static, Out: DeserializeOwned>(
        &self,
        rpc: Rpc<In, Reply<Out>>,
        input: &In,
    ) -> Pending<Out> {
        let i = &self.inner;
        // (Changes through any view count: a forwarder's calls change the same files.)
        let open_flags = (input as &dyn std::any::Any)
            .downcast_ref::<OpenReq>()
            .map(|o| o.flags);
        let changing = match &i.attrs {
            Some(a) if attrs::changes(rpc.name(), open_flags) => {
                a.change_starts();
                Some(Changing(i.clone()))
            }
            _ => None,
        };
        let call = match &self.for_user {
            None => i.engine.call(&i.peer, rpc, input),
            Some(user) => {
                let input = (Option::clone(user), input.clone());
                i.engine.call(&i.peer, forwarded(rpc), &input)
            }
        };
        Pending { call, changing }
    }

    /// Reads and writes up to this size travel inline in the request.
    pub fn inline_max(&self) -> usize {
        self.inner.inline_max
    }

    /// The server's counters.
    pub fn server_stats(&self) -> io::Result<ServerStats> {
        let i = &self.inner;
        i.engine
            .call(&i.peer, SERVER_STATS, &())
            .wait()
            .map_err(rpc_err)
    }

    /// `stat`: attributes, following symlinks.
    pub fn metadata(&self, p: &str) -> io::Result<Attr> {
        self.stat(Target::Path(path(p)), true)
    }

    /// `lstat`: attributes of a symlink itself.
    pub fn symlink_metadata(&self, p: &str) -> io::Result<Attr> {
        self.stat(Target::Path(path(p)), false)
    }

    /// Opens for reading.
    pub fn open(&self, p: &str) -> io::Result<RemoteFile> {
        self.open_with(p, libc::O_RDONLY, 0)
    }

    /// Creates or truncates, for writing.
    pub fn create(&self, p: &str) -> io::Result<RemoteFile> {
        self.open_with(p, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644)
    }

    /// Opens with `open(2)` flags and a creation mode.
    pub fn open_with(&self, p: &str, flags: i32, mode: u32) -> io::Result<RemoteFile> {
        let o = self.open_raw(p.as_bytes(), flags, mode)?;
        Ok(RemoteFile::new(self.clone(), o, flags))
    }

    /// Opens and returns the raw handle (for callers that keep their own file table).
    pub fn open_raw(&self, p: &[u8], flags: i32, mode: u32) -> io::Result<Opened> {
        let req = OpenReq {
            path: ByteBuf::from(p.to_vec()),
            flags,
            mode,
        };
        self.call(OPEN, &req)
    }

    /// Reads a whole file.
    pub fn read(&self, p: &str) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut self.open(p)?, &mut v)?;
        Ok(v)
    }

    /// Writes a whole file, creating or truncating it.
    pub fn write(&self, p: &str, data: &[u8]) -> io::Result<()> {
        let mut f = self.create(p)?;
        io::Write::write_all(&mut f, data)?;
        f.close()
    }

    /// `unlink`.
    pub fn remove_file(&self, p: &str) -> io::Result<()> {
        self.call(UNLINK, &path(p))
    }

    /// `mkdir` with mode 0777 (less the server's umask).
    pub fn create_dir(&self, p: &str) -> io::Result<()> {
        self.call(MKDIR, &(path(p), 0o777))
    }

    /// `rmdir`.
    pub fn remove_dir(&self, p: &str) -> io::Result<()> {
        self.call(RMDIR, &path(p))
    }

    /// `rename`.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.call(RENAME, &(path(from), path(to)))
    }

    /// Every entry of a directory except `.` and `..`, fetched a page at a time.
    pub fn read_dir(&self, p: &str) -> io::Result<Vec<DirEntry>> {
        let o = self.open_raw(p.as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let mut all = Vec::new();
        let r = loop {
            match self.readdir_page(o.fh, MAX_DIR_PAGE, false) {
                Ok(page) => {
                    all.extend(
                        page.entries
                            .into_iter()
                            .filter(|e| e.name.as_slice() != b"." && e.name.as_slice() != b".."),
                    );
                    if page.end {
                        break Ok(all);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.close_raw(o.fh)?;
        r
    }

    /// Every entry of a directory (`.` and `..` too) with its attributes as `lstat` gives
    /// them (`None`: the server could not read them for us).
    pub fn read_dir_plus(&self, p: &str) -> io::Result<Vec<(DirEntry, Option<Attr>)>> {
        let o = self.open_raw(p.as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let (mut all, mut restart) = (Vec::new(), true);
        let r = loop {
            let req = ReaddirReq {
                fh: o.fh,
                max: MAX_DIR_PLUS_PAGE,
                restart,
            };
            restart = false;
            match self.readdir_plus_page(&req, false) {
                Ok(page) => {
                    all.extend(page.entries);
                    if page.end {
                        break Ok(all);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.close_raw(o.fh)?;
        r
    }

    /// The call for a page with attributes (`xattrs`: and whether each entry has extended
    /// attributes) this server takes, as far as is known: [`READDIR_PLUS`] once it has
    /// refused [`READDIR_PLUS_XATTRS`] ([`RemoteFs::readdir_plus_page`] learns that).
    pub fn readdir_plus_rpc(&self, xattrs: bool) -> Rpc<ReaddirReq, Reply<DirPagePlus>> {
        use std::sync::atomic::Ordering::Relaxed;
        match xattrs && !self.inner.no_xattrs_listing.load(Relaxed) {
            true => READDIR_PLUS_XATTRS,
            false => READDIR_PLUS,
        }
    }

    /// One page of a listing with attributes, and (`xattrs`) whether each entry has
    /// extended attributes, if the server can tell (one built before
    /// [`READDIR_PLUS_XATTRS`] lists without).
    pub fn readdir_plus_page(&self, req: &ReaddirReq, xattrs: bool) -> io::Result<DirPagePlus> {
        use std::sync::atomic::Ordering::Relaxed;
        if xattrs && !self.inner.no_xattrs_listing.load(Relaxed) {
            match self.call(READDIR_PLUS_XATTRS, req) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    self.inner.no_xattrs_listing.store(true, Relaxed);
                }
                r => return r,
            }
        }
        self.call(READDIR_PLUS, req)
    }

    /// One page of a directory opened with `O_DIRECTORY`.
    pub fn readdir_page(&self, fh: Fh, max: u32, restart: bool) -> io::Result<DirPage> {
        self.call(READDIR, &ReaddirReq { fh, max, restart })
    }

    /// `symlink(target, link)`.
    pub fn symlink(&self, target: &str, link: &str) -> io::Result<()> {
        self.call(SYMLINK, &(path(target), path(link)))
    }

    /// `readlink`.
    pub fn read_link(&self, p: &str) -> io::Result<Vec<u8>> {
        Ok(self.call(READLINK, &path(p))?.into_vec())
    }

    /// `statfs` of the file system holding `p`.
    pub fn statfs(&self, p: &str) -> io::Result<FsStat> {
        self.call(STATFS, &path(p))
    }

    /// `chmod`.
    pub fn set_permissions(&self, p: &str, mode: u32) -> io::Result<()> {
        self.call(CHMOD, &(Target::Path(path(p)), mode))
    }

    /// `utimensat` (following symlinks).
    pub fn set_times(&self, p: &str, atime: SetTime, mtime: SetTime) -> io::Result<()> {
        self.call(UTIMENS, &(Target::Path(path(p)), atime, mtime, true))
    }

    /// `truncate`.
    pub fn truncate(&self, p: &str, len: u64) -> io::Result<()> {
        self.call(TRUNCATE, &(Target::Path(path(p)), len))
    }

    /// `access` (`libc::R_OK` etc., or `F_OK`).
    pub fn access(&self, p: &str, mode: i32) -> io::Result<()> {
        self.call(ACCESS, &(path(p), mode))
    }

    /// `close` of a raw handle.
    pub fn close_raw(&self, fh: Fh) -> io::Result<()> {
        self.call(CLOSE, &fh)
    }

    /// A pass for `fh` that another connection of the same user may adopt (a child
    /// this process starts): the child then holds the same open file, whatever its path
    /// names by then. `ENOSYS` from an older server or one that cannot share files (a
    /// relay, an I/O node); `ETIMEDOUT` after 2 s.
    pub fn lend(&self, fh: Fh) -> io::Result<Pass> {
        // Asked while a process forks: a server that does not answer soon costs the
        // child its pass (it opens by path), not the fork its progress.
        self.start(LEND, &fh).timeout(Duration::from_secs(2)).wait()
    }

    /// A handle of this connection's on the open file `pass` stands for.
    pub fn adopt(&self, pass: Pass) -> io::Result<Opened> {
        self.call(ADOPT, &pass)
    }

    /// `fstat` of a raw handle.
    pub fn fstat(&self, fh: Fh) -> io::Result<Attr> {
        self.call(STAT, &(Target::Handle(fh), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_the_errno_a_caller_acts_on() {
        // The mount falls back to plain READDIR on ENOSYS: a server without the RPC.
        let unknown = RpcError::UnknownRpc {
            rpc: "posix.readdir_plus".into(),
            id: 1,
        };
        assert_eq!(rpc_errno(&unknown), libc::ENOSYS);
        assert_eq!(rpc_errno(&RpcError::Busy("bound".into())), libc::EAGAIN);
        let too_large = RpcError::OutputTooLarge("made and dropped".into());
        assert_eq!(rpc_errno(&too_large), libc::EIO, "not tried again");
    }

    #[test]
    fn parts_are_sliced_from_a_byte_to_a_bound() {
        let (a, b, c) = (&[1u8; 3][..], &[2u8; 0][..], &[3u8; 4][..]);
        let parts = [a, b, c];
        let flat = |v: Vec<&[u8]>| v.concat();
        assert_eq!(flat(slice_parts(&parts, 0, 100)), [1, 1, 1, 3, 3, 3, 3]);
        assert_eq!(flat(slice_parts(&parts, 2, 3)), [1, 3, 3]);
        assert_eq!(slice_parts(&parts, 3, 2), [&[3u8, 3][..]]);
        assert!(slice_parts(&parts, 7, 5).is_empty());
        assert!(slice_parts(&parts, 1, 0).is_empty());
    }
}
