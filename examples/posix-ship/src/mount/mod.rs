//! `posix-ship mount`: the export as a FUSE file system, so that every program gets real
//! file descriptors (exec, redirection, `chdir`, mmap) with the kernel holding them, after
//! DAOS's dfuse. Each kernel request becomes protocol calls through the client library;
//! the kernel's page cache serves re-reads within the attribute timeout.
//!
//! Identity: the daemon connects as its own user, and the mount is its user's alone (the
//! kernel refuses others, FUSE's default); the kernel checks permission bits against the
//! attributes (`default_permissions`) and the server checks them again as that user.

mod inodes;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use serde_bytes::ByteBuf;

use crate::client::RemoteFs;
use crate::proto::*;
pub use inodes::Inodes;

/// How the mount caches.
#[derive(Clone, Copy, Debug)]
pub struct MountOptions {
    /// How long the kernel may trust attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may trust a name's lookup.
    pub entry_timeout: Duration,
    /// Refuse every change (`EROFS`).
    pub read_only: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            read_only: false,
        }
    }
}

/// The file system the kernel talks to.
pub struct Fs {
    fs: RemoteFs,
    opts: MountOptions,
    inodes: Mutex<Inodes>,
    /// Directory listings being read, by handle (the kernel reads them by offset).
    listings: Mutex<HashMap<u64, Vec<DirEntry>>>,
    /// Open handles by inode: a file unlinked while open is still reached through them.
    handles: Mutex<HashMap<u64, Vec<u64>>>,
}

type R<T> = Result<T, Errno>;

fn err(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs())
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn dt_kind(dt: u8) -> FileType {
    match dt {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_SOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.mtime),
        kind: kind(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink as u32,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        flags: 0,
        blksize: a.blksize as u32,
    }
}

fn set_time(t: Option<TimeOrNow>) -> SetTime {
    match t {
        None => SetTime::Omit,
        Some(TimeOrNow::Now) => SetTime::Now,
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            SetTime::At(Time {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            })
        }
    }
}

fn bytes(p: &[u8]) -> ByteBuf {
    ByteBuf::from(p.to_vec())
}

impl Fs {
    /// Serves `fs` with `opts`.
    pub fn new(fs: RemoteFs, opts: MountOptions) -> Fs {
        Fs {
            fs,
            opts,
            inodes: Mutex::new(Inodes::default()),
            listings: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<u64>>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn opened(&self, ino: u64, fh: u64) {
        self.handles().entry(ino).or_default().push(fh);
    }

    fn closed(&self, ino: u64, fh: u64) {
        let mut h = self.handles();
        if let Some(v) = h.get_mut(&ino) {
            v.retain(|&x| x != fh);
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

    fn call<In: serde::Serialize, Out: serde::de::DeserializeOwned>(
        &self,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        input: &In,
    ) -> R<Out> {
        self.fs.call(rpc, input).map_err(err)
    }

    fn writable(&self) -> R<()> {
        if self.opts.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Looks `path` up for the kernel: its entry, with a lookup held.
    fn entry(&self, path: &[u8], reply: ReplyEntry) {
        match self.call(STAT, &(Target::Path(bytes(path)), false)) {
            Ok(a) => {
                let ino = self.inodes().learn(path);
                let ttl = self.opts.entry_timeout.min(self.opts.attr_timeout);
                reply.entry(&ttl, &file_attr(ino, &a), Generation(0));
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
                let h = self.handles().get(&ino.0).and_then(|v| v.first().copied());
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
        let now = self.call(STAT, &(t.clone(), false))?;
        if owner.0.is_some_and(|u| u != now.uid) || owner.1.is_some_and(|g| g != now.gid) {
            return Err(Errno::EPERM); // chown is not shipped
        }
        if mode.is_some() || size.is_some() || atime.is_some() || mtime.is_some() {
            self.writable()?;
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

    fn list(&self, fh: u64) -> R<Vec<DirEntry>> {
        let mut all = Vec::new();
        let mut restart = true;
        loop {
            let req = ReaddirReq {
                fh: Fh(fh),
                max: MAX_DIR_PAGE,
                restart,
            };
            let page = self.call(READDIR, &req)?;
            restart = false;
            all.extend(page.entries);
            if page.end {
                return Ok(all);
            }
        }
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(p) => self.entry(&p, reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self
            .target(ino, fh)
            .and_then(|t| self.call(STAT, &(t, false)));
        match r {
            Ok(a) => reply.attr(&self.opts.attr_timeout, &file_attr(ino.0, &a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.set_attr(ino, fh, mode, (uid, gid), size, atime, mtime) {
            Ok(a) => reply.attr(&self.opts.attr_timeout, &file_attr(ino.0, &a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.path(ino).and_then(|p| self.call(READLINK, &bytes(&p))) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.writable().and_then(|()| self.child(parent, name));
        match r.and_then(|p| self.call(MKDIR, &(bytes(&p), mode & !umask)).map(|()| p)) {
            Ok(p) => self.entry(&p, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.writable().and_then(|()| self.child(parent, name));
        match r.and_then(|p| self.call(UNLINK, &bytes(&p)).map(|()| p)) {
            Ok(p) => {
                self.inodes().unlinked(&p);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.writable().and_then(|()| self.child(parent, name));
        match r.and_then(|p| self.call(RMDIR, &bytes(&p)).map(|()| p)) {
            Ok(p) => {
                self.inodes().unlinked(&p);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.writable().and_then(|()| self.child(parent, link_name));
        let t = bytes(target.as_os_str().as_bytes());
        match r.and_then(|p| self.call(SYMLINK, &(t, bytes(&p))).map(|()| p)) {
            Ok(p) => self.entry(&p, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL); // RENAME_NOREPLACE/EXCHANGE: not shipped
        }
        let r = self.writable().and_then(|()| {
            let (from, to) = (self.child(parent, name)?, self.child(newparent, newname)?);
            self.call(RENAME, &(bytes(&from), bytes(&to)))?;
            self.inodes().renamed(&from, &to);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let r = (if writes { self.writable() } else { Ok(()) }).and_then(|()| {
            let p = self.path(ino)?;
            let req = OpenReq {
                path: bytes(&p),
                flags: flags.0 & !(libc::O_CREAT | libc::O_EXCL),
                mode: 0,
            };
            self.call(OPEN, &req)
        });
        match r {
            Ok(o) => {
                self.opened(ino.0, o.fh.0);
                reply.opened(FileHandle(o.fh.0), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut buf = vec![0u8; size as usize];
        match self.fs.pread(Fh(fh.0), &mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.pwrite(Fh(fh.0), data, Some(offset)) {
            Ok(_) => reply.written(data.len() as u32),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok() // writes are not buffered here
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.closed(ino.0, fh.0);
        match self.fs.close_raw(Fh(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.call(FSYNC, &(Fh(fh.0), datasync)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = self.path(ino).and_then(|p| {
            let req = OpenReq {
                path: bytes(&p),
                flags: libc::O_RDONLY | libc::O_DIRECTORY,
                mode: 0,
            };
            self.call(OPEN, &req)
        });
        match r {
            Ok(o) => reply.opened(FileHandle(o.fh.0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        if offset == 0 || !listings.contains_key(&fh.0) {
            match self.list(fh.0) {
                Ok(all) => {
                    listings.insert(fh.0, all);
                }
                Err(e) => return reply.error(e),
            }
        }
        let all = &listings[&fh.0];
        for (i, e) in all.iter().enumerate().skip(offset as usize) {
            let name = OsStr::from_bytes(&e.name);
            if reply.add(INodeNo(e.ino.max(2)), i as u64 + 1, dt_kind(e.kind), name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        listings.remove(&fh.0);
        drop(listings);
        match self.fs.close_raw(Fh(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.call(STATFS, &bytes(b"/")) {
            Ok(s) => reply.statfs(
                s.blocks,
                s.bfree,
                s.bavail,
                s.files,
                s.ffree,
                s.bsize as u32,
                s.namemax as u32,
                s.frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, _s: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOTSUP) // extended attributes are not shipped yet
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOTSUP)
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.writable().and_then(|()| {
            let p = self.child(parent, name)?;
            let req = OpenReq {
                path: bytes(&p),
                flags: flags | libc::O_CREAT,
                mode: mode & !umask & 0o7777,
            };
            Ok((self.call(OPEN, &req)?, p))
        });
        match r {
            Ok((o, p)) => {
                let ino = self.inodes().learn(&p);
                self.opened(ino, o.fh.0);
                let ttl = self.opts.entry_timeout.min(self.opts.attr_timeout);
                let attr = file_attr(ino, &o.attr);
                reply.created(
                    &ttl,
                    &attr,
                    Generation(0),
                    FileHandle(o.fh.0),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(e),
        }
    }
}
