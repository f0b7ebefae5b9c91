//! The local backend's operations: each turns a request into system calls beneath the
//! export, with the caller's rights (taken in [`Backend::run`]), and answers with the
//! result or the `errno`, unchanged.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use rustix::io::Errno;
use serde_bytes::ByteBuf;

use super::LocalFs;
use super::backend::{Backend, Change, Done, On, Payload, R, Who};
use super::clients::OpenFile;
use super::sys::{Fd, attr, dt, pread_full, proc_path, timespec, write_full};
use crate::proto::*;

/// Flags a client may pass to `open`; the rest are dropped.
const OPEN_FLAGS: OFlags = OFlags::ACCMODE
    .union(OFlags::CREATE)
    .union(OFlags::EXCL)
    .union(OFlags::TRUNC)
    .union(OFlags::APPEND)
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::SYNC)
    .union(OFlags::DSYNC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::PATH);

impl LocalFs {
    pub(super) fn writable(&self) -> R<()> {
        if self.read_only {
            Err(Errno::ACCESS)
        } else {
            Ok(())
        }
    }

    /// An fd for a target: the open file, or the path opened with `flags`.
    pub(super) fn target_fd(&self, t: &On<'_, OpenFile>, flags: OFlags) -> R<Fd> {
        match t {
            On::File(f) => Ok(Fd::Open(Arc::clone(f))),
            On::Path(p) => Ok(Fd::Own(self.export.open_at(p, flags, Mode::empty())?)),
        }
    }

    /// The parent directory and last name of `path`, or `none` (the errno its call gives
    /// when the path names no entry: the root, `.`, `..`).
    pub(super) fn named(&self, path: &[u8], none: Errno) -> R<(OwnedFd, std::ffi::CString)> {
        self.export.parent(path)?.ok_or(none)
    }

    /// `unlink` (`rmdir` with `dir`).
    pub(super) fn remove(&self, path: &[u8], dir: bool) -> R<()> {
        self.writable()?;
        let (parent, name) = self.named(path, if dir { Errno::BUSY } else { Errno::ISDIR })?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&parent, &name, flags)
    }
}

impl Backend for LocalFs {
    type File = OpenFile;

    fn list_io(&self) -> bool {
        self.list_io
    }

    fn run<T>(&self, who: &Who, body: impl FnOnce() -> R<T>) -> R<T> {
        if !self.op_delay.is_zero() {
            std::thread::sleep(self.op_delay);
        }
        let creds = self.policy.creds(who.identity.as_ref())?;
        let _as_user = super::creds::AsUser::enter(&creds)?;
        body()
    }

    /// `stat`, `lstat`, `fstat`.
    fn stat(&self, _: &Who, t: On<'_, OpenFile>, follow: bool) -> R<Attr> {
        if let (On::Path(p), false) = (&t, follow)
            && let Some((dir, name)) = self.export.parent(p)?
        {
            return Ok(attr(&rustix::fs::statat(
                &dir,
                &name,
                AtFlags::SYMLINK_NOFOLLOW,
            )?));
        }
        Ok(attr(&rustix::fs::fstat(self.target_fd(&t, OFlags::PATH)?)?))
    }

    /// `open`, `creat`.
    fn open(&self, _: &Who, r: &OpenReq) -> R<(OpenFile, Attr)> {
        let flags = OFlags::from_bits_retain(r.flags as u32);
        let acc = flags & OFlags::ACCMODE;
        let path_only = flags.contains(OFlags::PATH);
        let writes = !path_only
            && (acc != OFlags::RDONLY || flags.intersects(OFlags::CREATE | OFlags::TRUNC));
        if writes {
            self.writable()?;
        }
        if flags.contains(OFlags::TMPFILE) {
            return Err(Errno::OPNOTSUPP);
        }
        // openat2 refuses a mode without O_CREAT; open(2) ignores it.
        let mode = if flags.contains(OFlags::CREATE) {
            Mode::from_bits_truncate(self.policy.mode(r.mode, false))
        } else {
            Mode::empty()
        };
        let fd = self.export.open_at(&r.path, flags & OPEN_FLAGS, mode)?;
        let st = rustix::fs::fstat(&fd)?;
        let file = OpenFile {
            fd,
            append: flags.contains(OFlags::APPEND),
            writable: acc != OFlags::RDONLY && !path_only,
            dir: Mutex::new(None),
        };
        Ok((file, attr(&st)))
    }

    /// A close drops the handle's `Arc`: the descriptor closes with the last one.
    fn lends(&self) -> bool {
        true
    }

    /// `close`: the file closes once no request uses it.
    fn close(&self, _: &Who, f: Arc<OpenFile>) -> R<()> {
        drop(f);
        Ok(())
    }

    /// `pread`, until `buf` is full or the file ends.
    fn read(&self, _: &Who, f: &Arc<OpenFile>, off: u64, buf: &mut [u8]) -> R<usize> {
        pread_full(&f.fd, buf, off)
    }

    /// `pwrite`, or an append.
    fn write(&self, _: &Who, f: &Arc<OpenFile>, off: Option<u64>, data: Payload<'_>) -> R<Written> {
        self.writable()?;
        if !f.writable {
            return Err(Errno::BADF);
        }
        let data = data.bytes()?;
        match (off, f.append) {
            (None, _) | (_, true) => {
                let n = write_full(&f.fd, &data, None)?;
                let end = rustix::fs::seek(&f.fd, rustix::fs::SeekFrom::Current(0))?;
                Ok(Written { n: n as u64, end })
            }
            (Some(off), false) => {
                let n = write_full(&f.fd, &data, Some(off))?;
                Ok(Written {
                    n: n as u64,
                    end: off + n as u64,
                })
            }
        }
    }

    /// `truncate`, `ftruncate`.
    fn truncate(&self, _: &Who, t: On<'_, OpenFile>, len: u64) -> R<()> {
        self.writable()?;
        let fd = self.target_fd(&t, OFlags::WRONLY)?;
        if let Fd::Open(f) = &fd
            && !f.writable
        {
            return Err(Errno::INVAL);
        }
        rustix::fs::ftruncate(fd, len)
    }

    /// `fsync`, `fdatasync`.
    fn fsync(&self, _: &Who, f: &Arc<OpenFile>, data_only: bool) -> R<()> {
        if data_only {
            rustix::fs::fdatasync(&f.fd)
        } else {
            rustix::fs::fsync(&f.fd)
        }
    }

    /// `fallocate` on an open file (the modes [`FALLOCATE`] names).
    fn fallocate(&self, _: &Who, f: &Arc<OpenFile>, mode: i32, off: u64, len: u64) -> R<()> {
        use rustix::fs::FallocateFlags as F;
        self.writable()?;
        if !f.writable {
            return Err(Errno::BADF);
        }
        let mode = F::from_bits(mode as u32).ok_or(Errno::OPNOTSUPP)?;
        let allowed = [
            F::empty(),
            F::KEEP_SIZE,
            F::PUNCH_HOLE | F::KEEP_SIZE,
            F::ZERO_RANGE,
            F::ZERO_RANGE | F::KEEP_SIZE,
        ];
        if !allowed.contains(&mode) {
            return Err(Errno::OPNOTSUPP);
        }
        if len == 0 || off.checked_add(len).is_none_or(|e| e > i64::MAX as u64) {
            return Err(Errno::INVAL);
        }
        rustix::fs::fallocate(&f.fd, mode, off, len)
    }

    fn unlink(&self, _: &Who, path: &[u8]) -> R<()> {
        self.remove(path, false)
    }

    fn change_then(self: Arc<Self>, _: Who, c: Change, done: Done<()>) {
        done(match &c {
            Change::Mkdir(p, mode) => self.mkdir(p, *mode),
            Change::Rmdir(p) => self.remove(p, true),
            Change::Rename(a, b, flags) => self.rename(a, b, *flags),
            Change::Link(a, b) => self.hard_link(a, b),
            Change::Symlink(t, p) => self.symlink(t, p),
        })
    }

    fn readlink(&self, _: &Who, path: &[u8]) -> R<ByteBuf> {
        let (parent, name) = self.named(path, Errno::INVAL)?;
        let s = rustix::fs::readlinkat(&parent, &name, Vec::new())?;
        Ok(ByteBuf::from(s.into_bytes()))
    }

    /// A page of a directory listing.
    fn readdir(&self, _: &Who, f: &Arc<OpenFile>, restart: bool, max: u32) -> R<DirPage> {
        let mut slot = f.dir.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(rustix::fs::Dir::read_from(&f.fd)?);
        }
        let dir = slot.as_mut().ok_or(Errno::BADF)?;
        if restart {
            dir.rewind();
        }
        let max = max.clamp(1, MAX_DIR_PAGE) as usize;
        let mut entries = Vec::with_capacity(max.min(256));
        while entries.len() < max {
            match dir.read() {
                None => return Ok(DirPage { entries, end: true }),
                Some(e) => {
                    let e = e?;
                    entries.push(DirEntry {
                        name: ByteBuf::from(e.file_name().to_bytes().to_vec()),
                        ino: e.ino(),
                        kind: dt(e.file_type()),
                    });
                }
            }
        }
        Ok(DirPage {
            entries,
            end: false,
        })
    }

    /// A page of a listing with each entry's `lstat` (made relative to the directory, with
    /// the caller's rights: an entry it may not look at has no attributes) and whether it
    /// has extended attributes.
    fn readdir_plus(
        &self,
        w: &Who,
        f: &Arc<OpenFile>,
        restart: bool,
        max: u32,
        xattrs: bool,
    ) -> R<DirPagePlus> {
        let page = self.readdir(w, f, restart, max)?;
        let with_attr = |e: DirEntry| {
            // Not `..` (of the export's root, that is outside it) nor `.`.
            if matches!(e.name.as_slice(), b"." | b"..") {
                return (e, None);
            }
            let s = rustix::fs::statat(&f.fd, e.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW);
            let a = s.ok().map(|s| {
                let a = attr(&s);
                let xattrs = xattrs.then(|| LocalFs::xattrs_hint(&f.fd, &e.name, &a));
                Attr {
                    xattrs: xattrs.flatten(),
                    ..a
                }
            });
            (e, a)
        };
        Ok(DirPagePlus {
            entries: page.entries.into_iter().map(with_attr).collect(),
            end: page.end,
        })
    }

    fn statfs(&self, _: &Who, path: &[u8]) -> R<FsStat> {
        let fd = self.export.open_at(path, OFlags::PATH, Mode::empty())?;
        let s = rustix::fs::fstatvfs(&fd)?;
        Ok(FsStat {
            bsize: s.f_bsize,
            frsize: s.f_frsize,
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            namemax: s.f_namemax,
        })
    }

    /// `chmod`, `fchmod` (through the resolved file, so a final symlink stays confined).
    fn chmod(&self, _: &Who, t: On<'_, OpenFile>, mode: u32) -> R<()> {
        self.writable()?;
        let fd = self.target_fd(&t, OFlags::PATH)?;
        let dir = rustix::fs::fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let mode = self.policy.mode(mode, dir);
        rustix::fs::chmod(proc_path(&fd), Mode::from_bits_truncate(mode))
    }

    /// `utimensat`, `futimens`.
    fn utimens(
        &self,
        _: &Who,
        t: On<'_, OpenFile>,
        atime: SetTime,
        mtime: SetTime,
        follow: bool,
    ) -> R<()> {
        self.writable()?;
        let times = Timestamps {
            last_access: timespec(atime),
            last_modification: timespec(mtime),
        };
        if let (On::Path(p), false) = (&t, follow)
            && let Some((parent, name)) = self.export.parent(p)?
        {
            return rustix::fs::utimensat(&parent, &name, &times, AtFlags::SYMLINK_NOFOLLOW);
        }
        let fd = self.target_fd(&t, OFlags::PATH)?;
        rustix::fs::utimensat(rustix::fs::CWD, proc_path(&fd), &times, AtFlags::empty())
    }

    fn access(&self, _: &Who, path: &[u8], mode: i32) -> R<()> {
        let fd = self.export.open_at(path, OFlags::PATH, Mode::empty())?;
        let want = rustix::fs::Access::from_bits_truncate(mode as u32);
        if want.contains(rustix::fs::Access::WRITE_OK) {
            self.writable()?;
        }
        rustix::fs::accessat(rustix::fs::CWD, proc_path(&fd), want, AtFlags::empty())
    }

    fn chown(&self, _: &Who, t: On<'_, OpenFile>, uid: Option<u32>, gid: Option<u32>) -> R<()> {
        self.set_owner(&t, uid, gid)
    }

    fn getxattr(&self, _: &Who, t: On<'_, OpenFile>, name: &[u8]) -> R<ByteBuf> {
        self.xattr_get(&t, name)
    }

    fn setxattr(
        &self,
        _: &Who,
        t: On<'_, OpenFile>,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> R<()> {
        self.xattr_set(&t, name, value, flags)
    }

    fn listxattr(&self, _: &Who, t: On<'_, OpenFile>) -> R<Vec<ByteBuf>> {
        self.xattr_list(&t)
    }

    fn removexattr(&self, _: &Who, t: On<'_, OpenFile>, name: &[u8]) -> R<()> {
        self.xattr_remove(&t, name)
    }
}
