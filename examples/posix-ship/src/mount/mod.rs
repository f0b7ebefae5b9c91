//! `posix-ship mount`: the export as a FUSE file system, so that every program gets real
//! file descriptors (exec, redirection, `chdir`, mmap) with the kernel holding them, after
//! DAOS's dfuse. Each kernel request becomes protocol calls through the client library;
//! the kernel's page cache serves re-reads within the attribute timeout.
//!
//! Identity: the daemon connects as its own user, and the mount is its user's alone (the
//! kernel refuses others, FUSE's default); the kernel checks permission bits against the
//! attributes (`default_permissions`) and the server checks them again as that user.
//! With `--multi-user` (a daemon the server trusts as a forwarder, `--trust-forwarder`),
//! the mount is open to every user and each request is made for the process that made
//! it (its uid, gid and supplementary groups): files are created as their users, and the
//! server checks each call with that user's rights.

mod attr;
mod inodes;
mod kernel;
mod listing;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fuser::{Errno, FileHandle, Generation, INodeNo, ReplyEntry, TimeOrNow};
use serde_bytes::ByteBuf;

use crate::client::RemoteFs;
use crate::proto::*;
use attr::{bytes, err, file_attr, set_time};
pub use inodes::Inodes;

/// How the mount caches.
#[derive(Clone, Copy, Debug)]
pub struct MountOptions {
    /// How long the kernel may trust attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may trust a name's lookup.
    pub entry_timeout: Duration,
    /// How long the kernel may remember that a name is not there.
    pub negative_timeout: Duration,
    /// Refuse every change (`EROFS`).
    pub read_only: bool,
    /// Let the kernel gather writes in its page cache and send them in large pieces
    /// (FUSE's writeback cache); files are then opened for reading too, without
    /// `O_APPEND` (the kernel reads pages it completes and places appends itself).
    pub writeback: bool,
    /// Open the mount to every user, each request made for its caller (the server must
    /// trust this daemon as a forwarder).
    pub multi_user: bool,
    /// How the kernel caches file data.
    pub data_cache: DataCache,
}

/// How the kernel caches a file's data (dfuse's `--data-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DataCache {
    /// Kept across opens (for data nobody else changes).
    On,
    /// Not cached: every read and write goes to the server (`direct_io`; shared writable
    /// mmap is then refused by the kernel).
    Off,
    /// Kept while open, dropped at each open (close-to-open, as NFS).
    #[default]
    Otoc,
}

impl std::str::FromStr for DataCache {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(DataCache::On),
            "off" => Ok(DataCache::Off),
            "otoc" => Ok(DataCache::Otoc),
            _ => Err(format!("{s:?}: want on, off or otoc")),
        }
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            negative_timeout: Duration::from_secs(1),
            read_only: false,
            writeback: false,
            multi_user: false,
            data_cache: DataCache::Otoc,
        }
    }
}

/// Open handles by inode, each with the server's (device, inode) of the file it opened.
type Handles = HashMap<u64, Vec<(u64, (u64, u64))>>;

/// The file system the kernel talks to.
pub struct Fs {
    fs: RemoteFs,
    opts: MountOptions,
    inodes: Mutex<Inodes>,
    /// Directory listings being read, by handle (the kernel reads them by offset).
    listings: Mutex<HashMap<u64, (listing::ReadAt, Vec<listing::Listed>)>>,
    /// Open handles by inode, each with the server's (device, inode) of the file it
    /// opened: a file unlinked while open is still reached through them, and a rider is
    /// told which file its descriptor holds.
    handles: Mutex<Handles>,
    /// The server's address, told to an interposer riding on the mount ([`crate::ride`]).
    server: String,
    /// The way to tell the kernel to drop what it caches (set once mounted).
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// The server answered `ENOSYS` to [`SETATTR`] (built before it).
    no_setattr: std::sync::atomic::AtomicBool,
}

type R<T> = Result<T, Errno>;

thread_local! {
    /// The caller of the request this thread is serving (multi-user mounts).
    static CALLER: std::cell::RefCell<Option<Principal>> = const { std::cell::RefCell::new(None) };
}

/// Clears the caller when a request is done.
struct Acting;

impl Drop for Acting {
    fn drop(&mut self) {
        let _ = CALLER.try_with(|c| c.borrow_mut().take());
    }
}

/// The caller's identity: its uid and gid from the kernel's request, its supplementary
/// groups from `/proc/PID/status` (none if the process is gone).
fn caller(uid: u32, gid: u32, pid: u32) -> Principal {
    let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find_map(|l| l.strip_prefix("Groups:"))?;
            Some(
                line.split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect(),
            )
        })
        .unwrap_or_default();
    Principal { uid, gid, groups }
}

impl Fs {
    /// Serves `fs`, reached at `server`, with `opts`.
    pub fn new(fs: RemoteFs, server: &str, opts: MountOptions) -> Fs {
        Fs {
            fs,
            opts,
            inodes: Mutex::new(Inodes::default()),
            listings: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            server: server.to_string(),
            notifier: Arc::default(),
            no_setattr: Default::default(),
        }
    }

    /// Where to put the session's notifier once mounted (until then, [`crate::ride::INVAL`]
    /// has nothing to drop).
    pub fn notifier_slot(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// An `ioctl` of an interposer riding on the mount ([`crate::ride`]).
    fn ride(&self, ino: INodeNo, fh: FileHandle, cmd: u32, out_size: u32) -> R<Vec<u8>> {
        match cmd {
            crate::ride::INFO => {
                let path = self.path(ino)?;
                let file = self
                    .handles()
                    .get(&ino.0)
                    .and_then(|v| v.iter().find(|(h, _)| *h == fh.0).map(|(_, id)| *id));
                let info = crate::ride::Info {
                    server: self.server.clone(),
                    path,
                    file: file.unwrap_or((0, 0)),
                    writeback: self.opts.writeback,
                };
                let b = info.encode().map_err(|_| Errno::ENAMETOOLONG)?;
                if b.len() > out_size as usize {
                    return Err(Errno::ENAMETOOLONG);
                }
                Ok(b)
            }
            crate::ride::INVAL => {
                // Before the answer: once the ioctl returns, the kernel holds nothing old.
                if let Some(n) = self.notifier.get()
                    && let Err(e) = n.inval_inode(ino, 0, -1)
                    && e.raw_os_error() != Some(libc::ENOENT)
                {
                    tracing::debug!(%e, "inval_inode");
                }
                Ok(Vec::new())
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    /// An access ACL set or removed changes the file's mode too (`cp -a` sets modes so):
    /// the kernel's cached attributes are dropped before the answer, or `stat` would
    /// show the old mode until they expire.
    fn acl_set(&self, ino: INodeNo, name: &OsStr) {
        if name.as_bytes() == b"system.posix_acl_access"
            && let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(ino, -1, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(%e, "inval_inode");
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, Handles> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn opened(&self, ino: u64, o: &Opened) {
        let id = (o.attr.dev, o.attr.ino);
        self.handles().entry(ino).or_default().push((o.fh.0, id));
    }

    fn closed(&self, ino: u64, fh: u64) {
        let mut h = self.handles();
        if let Some(v) = h.get_mut(&ino) {
            v.retain(|&(x, _)| x != fh);
            if v.is_empty() {
                h.remove(&ino);
            }
        }
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, ino: INodeNo) -> R<Vec<u8>> {
        self.inodes().path(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> R<Vec<u8>> {
        let p = self.inodes().child(parent.0, name.as_bytes());
        p.ok_or(Errno::EINVAL)
    }

    fn call<In: serde::Serialize + Clone + 'static, Out: serde::de::DeserializeOwned>(
        &self,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        input: &In,
    ) -> R<Out> {
        self.remote().call(rpc, input).map_err(err)
    }

    /// The server, as this request's caller sees it: the daemon's own connection, or
    /// (multi-user) the same connection acting for the caller.
    fn remote(&self) -> RemoteFs {
        if !self.opts.multi_user {
            return self.fs.clone();
        }
        let who = CALLER.with(|c| c.borrow().clone());
        self.fs.acting_for(who)
    }

    /// What an open tells the kernel about caching the file's data.
    fn open_reply(&self) -> fuser::FopenFlags {
        match self.opts.data_cache {
            DataCache::On => fuser::FopenFlags::FOPEN_KEEP_CACHE,
            DataCache::Off => fuser::FopenFlags::FOPEN_DIRECT_IO,
            DataCache::Otoc => fuser::FopenFlags::empty(),
        }
    }

    /// Makes the calls of this thread, until the guard drops, for `req`'s caller.
    fn acting(&self, req: &fuser::Request) -> Acting {
        if self.opts.multi_user {
            let who = caller(req.uid(), req.gid(), req.pid());
            CALLER.with(|c| *c.borrow_mut() = Some(who));
        }
        Acting
    }

    fn writable(&self) -> R<()> {
        if self.opts.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// The flags a file is opened with on the server: with the writeback cache, readable
    /// (the kernel reads the pages it completes) and without `O_APPEND` (the kernel places
    /// appends).
    fn open_flags(&self, flags: i32) -> i32 {
        if !self.opts.writeback {
            return flags;
        }
        let f = flags & !libc::O_APPEND;
        if f & libc::O_ACCMODE == libc::O_WRONLY {
            f & !libc::O_ACCMODE | libc::O_RDWR
        } else {
            f
        }
    }

    /// How long the kernel may keep an entry.
    fn ttl(&self) -> Duration {
        self.opts.entry_timeout.min(self.opts.attr_timeout)
    }

    /// Looks `path` up for the kernel: its entry, with a lookup held.
    fn entry(&self, path: &[u8], reply: ReplyEntry) {
        match self.call(STAT, &(Target::Path(bytes(path)), false)) {
            Ok(a) => {
                let ino = self.inodes().learn(path);
                reply.entry(&self.ttl(), &file_attr(ino, &a), Generation(0));
            }
            // A name that is not there: the kernel may remember so (node 0), and creating
            // it through the mount forgets that at once.
            Err(e) if e.code() == libc::ENOENT && !self.opts.negative_timeout.is_zero() => {
                let none = file_attr(0, &Attr::default());
                reply.entry(&self.opts.negative_timeout, &none, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    /// What to address a metadata call to: the handle given, else the path, else (a file
    /// unlinked while open) one of its open handles.
    fn target(&self, ino: INodeNo, fh: Option<FileHandle>) -> R<Target> {
        if let Some(h) = fh {
            return Ok(Target::Handle(Fh(h.0)));
        }
        match self.path(ino) {
            Ok(p) => Ok(Target::Path(bytes(&p))),
            Err(e) => {
                let h = self
                    .handles()
                    .get(&ino.0)
                    .and_then(|v| v.first().map(|e| e.0));
                h.map(|h| Target::Handle(Fh(h))).ok_or(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn set_attr(
        &self,
        ino: INodeNo,
        fh: Option<FileHandle>,
        mode: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> R<Attr> {
        let t = self.target(ino, fh)?;
        if mode.is_some() || size.is_some() || atime.is_some() || mtime.is_some() {
            self.writable()?;
        }
        if owner.0.is_some() || owner.1.is_some() {
            self.writable()?;
        }
        // One request with the attributes after (a server before it: one per change and
        // a stat).
        if !self.no_setattr.load(std::sync::atomic::Ordering::Relaxed) {
            let a = SetAttr {
                mode: mode.map(|m| m & 0o7777),
                uid: owner.0,
                gid: owner.1,
                size,
                atime: atime.map(|a| set_time(Some(a))),
                mtime: mtime.map(|m| set_time(Some(m))),
            };
            match self.call(SETATTR, &(t.clone(), a)) {
                // A server without the call (asked again with nothing to change: a
                // backend's own ENOSYS from one of the changes is that change's answer).
                Err(e)
                    if e.code() == libc::ENOSYS
                        && self
                            .call(SETATTR, &(t.clone(), SetAttr::default()))
                            .is_err_and(|e| e.code() == libc::ENOSYS) =>
                {
                    self.no_setattr
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                r => return r,
            }
        }
        if owner.0.is_some() || owner.1.is_some() {
            self.call(CHOWN, &(t.clone(), owner.0, owner.1))?;
        }
        if let Some(m) = mode {
            self.call(CHMOD, &(t.clone(), m & 0o7777))?;
        }
        if let Some(s) = size {
            self.call(TRUNCATE, &(t.clone(), s))?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = (t.clone(), set_time(atime), set_time(mtime), false);
            self.call(UTIMENS, &times)?;
        }
        self.call(STAT, &(t, false))
    }

    /// An attribute's value or the list of names, as the kernel asks: its size when
    /// `size` is 0, `ERANGE` when larger than `size`.
    fn xattr_reply(data: R<Vec<u8>>, size: u32, reply: fuser::ReplyXattr) {
        match data {
            Ok(d) if size == 0 => reply.size(d.len() as u32),
            Ok(d) if d.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    /// `unlink` or `rmdir` of `name` in `parent`.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        rpc: rpc_core::Rpc<ByteBuf, Reply<()>>,
    ) -> R<()> {
        self.writable()?;
        let p = self.child(parent, name)?;
        self.call(rpc, &bytes(&p))?;
        self.inodes().unlinked(&p);
        Ok(())
    }
}
