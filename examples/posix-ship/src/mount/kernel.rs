//! The kernel's requests, each turned into protocol calls.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Instant, SystemTime};

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::Fs;
use super::attr::{bytes, err, file_attr};
use crate::proto::*;

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Large reads from the kernel (up to 1 MiB per request): with the read-ahead
        // window `posix-ship mount` sets once mounted, a sequential reader costs a round
        // trip per MiB, not per 128 KiB.
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Listings carry attributes: `ls -l`, `find`, `git status` need no lookup per
        // entry. Always (the kernel's automatic choice lists without them after the first
        // call unless lookups came since, and then every entry cost a lookup: `find` of
        // 100 000 files 9-12 s, 0.7 s with attributes every time).
        if let Err(e) = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS) {
            tracing::info!(unsupported = ?e, "the kernel lists without attributes");
        }
        if self.opts.writeback
            && let Err(e) = config.add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE)
        {
            tracing::warn!(unsupported = ?e, "the kernel has no writeback cache: writes go through");
            self.opts.writeback = false;
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _as = self.acting(req);
        match self.child(parent, name) {
            Ok(p) => self.entry(&p, reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes().forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _as = self.acting(req);
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
        req: &Request,
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
        let _as = self.acting(req);
        match self.set_attr(ino, fh, mode, (uid, gid), size, atime, mtime) {
            Ok(a) => reply.attr(&self.opts.attr_timeout, &file_attr(ino.0, &a)),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _as = self.acting(req);
        let r = self
            .writable()
            .and_then(|()| self.call(FALLOCATE, &(Fh(fh.0), mode, offset, length)));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _as = self.acting(req);
        match self.path(ino).and_then(|p| self.call(READLINK, &bytes(&p))) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _as = self.acting(req);
        let r = self.writable().and_then(|()| self.child(parent, name));
        match r.and_then(|p| self.call(MKDIR, &(bytes(&p), mode & !umask)).map(|()| p)) {
            Ok(p) => self.entry(&p, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _as = self.acting(req);
        match self.remove(parent, name, UNLINK) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _as = self.acting(req);
        match self.remove(parent, name, RMDIR) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _as = self.acting(req);
        let r = self.writable().and_then(|()| self.child(parent, link_name));
        let t = bytes(target.as_os_str().as_bytes());
        match r.and_then(|p| self.call(SYMLINK, &(t, bytes(&p))).map(|()| p)) {
            Ok(p) => self.entry(&p, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _as = self.acting(req);
        let r = self.writable().and_then(|()| {
            let (from, to) = (self.child(parent, name)?, self.child(newparent, newname)?);
            if flags.is_empty() {
                self.call(RENAME, &(bytes(&from), bytes(&to)))?;
                self.inodes().renamed(&from, &to);
            } else {
                self.call(RENAME2, &(bytes(&from), bytes(&to), flags.bits()))?;
                if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                    self.inodes().exchanged(&from, &to);
                } else {
                    self.inodes().renamed(&from, &to);
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _as = self.acting(req);
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let r = (if writes { self.writable() } else { Ok(()) }).and_then(|()| {
            let p = self.path(ino)?;
            let req = OpenReq {
                path: bytes(&p),
                flags: self.open_flags(flags.0 & !(libc::O_CREAT | libc::O_EXCL)),
                mode: 0,
            };
            self.call(OPEN, &req).or_else(|e| {
                // Not readable by its user: write-only after all (the kernel then cannot
                // complete partial pages, and says so).
                let wo = OpenReq {
                    flags: req.flags & !libc::O_ACCMODE | (flags.0 & libc::O_ACCMODE),
                    ..req
                };
                if e.code() == libc::EACCES && wo.flags != req.flags {
                    self.call(OPEN, &wo)
                } else {
                    Err(e)
                }
            })
        });
        match r {
            Ok(o) => {
                self.opened(ino.0, &o);
                reply.opened(FileHandle(o.fh.0), self.open_reply())
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _as = self.acting(req);
        let mut buf = vec![0u8; size as usize];
        match self.remote().pread(Fh(fh.0), &mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _as = self.acting(req);
        match self.remote().pwrite(Fh(fh.0), data, Some(offset)) {
            Ok(_) => reply.written(data.len() as u32),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _as = self.acting(req);
        reply.ok() // writes are not buffered here
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _as = self.acting(req);
        self.closed(ino.0, fh.0);
        match self.remote().close_raw(Fh(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _as = self.acting(req);
        match self.call(FSYNC, &(Fh(fh.0), datasync)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _as = self.acting(req);
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
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let _as = self.acting(req);
        self.read_dir(fh, offset, reply)
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: fuser::ReplyDirectoryPlus,
    ) {
        let _as = self.acting(req);
        self.read_dir_plus(ino, fh, offset, reply)
    }

    fn releasedir(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _as = self.acting(req);
        let mut listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
        listings.remove(&fh.0);
        drop(listings);
        match self.remote().close_raw(Fh(fh.0)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        match self.ride(ino, fh, cmd, out_size) {
            Ok(b) => reply.ioctl(0, &b),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _as = self.acting(req);
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

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _as = self.acting(req);
        if !xattr_allowed(name.as_bytes()) {
            // Answered here: the kernel asks for security.capability before every write.
            return reply.error(Errno::ENODATA);
        }
        // `ls -l` asks for every file's ACL; the listing said whether there is one.
        // (`user.*` names go to the server, which also checks the caller may read them.)
        if name.as_bytes().starts_with(b"system.") && self.inodes().bare(ino.0, Instant::now()) {
            return reply.error(Errno::ENODATA);
        }
        let r = self.target(ino, None).and_then(|t| {
            let v = self.call(GETXATTR, &(t, bytes(name.as_bytes())))?;
            Ok(v.into_vec())
        });
        Fs::xattr_reply(r, size, reply)
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _as = self.acting(req);
        if self.inodes().bare(ino.0, Instant::now()) {
            return Fs::xattr_reply(Ok(Vec::new()), size, reply);
        }
        let r = self.target(ino, None).and_then(|t| {
            let names = self.call(LISTXATTR, &t)?;
            Ok(names
                .iter()
                .flat_map(|n| n.iter().copied().chain([0]))
                .collect())
        });
        Fs::xattr_reply(r, size, reply)
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _as = self.acting(req);
        self.inodes().xattrs_changed(ino.0);
        let r = self.target(ino, None).and_then(|t| {
            let req = (t, bytes(name.as_bytes()), bytes(value), flags);
            self.call(SETXATTR, &req)
        });
        self.inodes().xattrs_changed(ino.0); // and after: a listing may have raced it
        if r.is_ok() {
            self.acl_set(ino, name);
        }
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _as = self.acting(req);
        self.inodes().xattrs_changed(ino.0);
        let r = self
            .target(ino, None)
            .and_then(|t| self.call(REMOVEXATTR, &(t, bytes(name.as_bytes()))));
        self.inodes().xattrs_changed(ino.0);
        if r.is_ok() {
            self.acl_set(ino, name);
        }
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _as = self.acting(req);
        let r = self.writable().and_then(|()| {
            let (from, to) = (self.path(ino)?, self.child(newparent, newname)?);
            self.call(LINK, &(bytes(&from), bytes(&to)))?;
            let a = self.call(STAT, &(Target::Path(bytes(&to)), false))?;
            self.inodes().linked(ino.0, &to).ok_or(Errno::ENOENT)?;
            Ok(a)
        });
        match r {
            // The kernel's inode for the file: same number, one more link.
            Ok(a) => reply.entry(&self.ttl(), &file_attr(ino.0, &a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _as = self.acting(req);
        let r = self.writable().and_then(|()| {
            let p = self.child(parent, name)?;
            let req = OpenReq {
                path: bytes(&p),
                flags: self.open_flags(flags | libc::O_CREAT),
                mode: mode & !umask & 0o7777,
            };
            Ok((self.call(OPEN, &req)?, p))
        });
        match r {
            Ok((o, p)) => {
                let ino = self.inodes().learn(&p);
                self.opened(ino, &o);
                let ttl = self.opts.entry_timeout.min(self.opts.attr_timeout);
                let attr = file_attr(ino, &o.attr);
                reply.created(
                    &ttl,
                    &attr,
                    Generation(0),
                    FileHandle(o.fh.0),
                    self.open_reply(),
                )
            }
            Err(e) => reply.error(e),
        }
    }
}
