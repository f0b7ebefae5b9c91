//! The operations themselves: each turns a request into system calls beneath the export
//! and answers with the result or the `errno`, unchanged.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use rpc_core::Caller;

use crate::bulk_io::{pull_from, push_to};
use rustix::fs::{AtFlags, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use serde_bytes::ByteBuf;

use super::clients::{ClientId, Clients, OpenFile, User};
use super::confine::Export;
use super::creds::Policy;
use crate::proto::*;

/// What a request runs against.
pub struct Ctx<'a> {
    /// The export.
    pub export: &'a Export,
    /// Every client's handles.
    pub clients: &'a Clients,
    /// Who asked: the connection.
    pub id: ClientId,
    /// For whom: the user the request counts against (the connection's, or the one a
    /// trusted forwarder acts for).
    pub user: User,
    /// Bulk transfers with the caller, over its own connection.
    pub caller: Caller,
    /// Refuse every change (`EACCES`).
    pub read_only: bool,
    /// Whom requests run as, and which modes a client may set.
    pub policy: &'a Policy,
}

pub(super) type R<T> = Result<T, Errno>;

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

impl Ctx<'_> {
    pub(super) fn writable(&self) -> R<()> {
        if self.read_only {
            Err(Errno::ACCESS)
        } else {
            Ok(())
        }
    }

    /// An fd for a target: the open file, or the path opened with `flags`.
    pub(super) fn target_fd(&self, t: &Target, flags: OFlags) -> R<Fd> {
        match t {
            Target::Handle(fh) => Ok(Fd::Open(self.clients.get(self.id, *fh)?)),
            Target::Path(p) => Ok(Fd::Own(self.export.open_at(p, flags, Mode::empty())?)),
        }
    }

    /// The parent directory and last name of `path`, or `none` (the errno its call gives
    /// when the path names no entry: the root, `.`, `..`).
    pub(super) fn named(&self, path: &[u8], none: Errno) -> R<(OwnedFd, std::ffi::CString)> {
        self.export.parent(path)?.ok_or(none)
    }

    /// `stat`, `lstat`, `fstat`.
    pub fn stat(&self, t: &Target, follow: bool) -> R<Attr> {
        if let (Target::Path(p), false) = (t, follow)
            && let Some((dir, name)) = self.export.parent(p)?
        {
            return Ok(attr(&rustix::fs::statat(
                &dir,
                &name,
                AtFlags::SYMLINK_NOFOLLOW,
            )?));
        }
        Ok(attr(&rustix::fs::fstat(self.target_fd(t, OFlags::PATH)?)?))
    }

    /// `open`, `creat`.
    pub fn open(&self, r: &OpenReq) -> R<Opened> {
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
        let fh = self.clients.insert(self.id, self.user, file)?;
        Ok(Opened {
            fh,
            attr: attr(&st),
        })
    }

    /// `close`.
    pub fn close(&self, fh: Fh) -> R<()> {
        self.clients.remove(self.id, fh).map(drop)
    }

    /// `pread`: inline, or pushed into the caller's buffer. Short (as POSIX allows) past
    /// [`MAX_INLINE_READ`] inline, and under staging-memory pressure.
    pub fn read(&self, r: &ReadReq) -> R<ReadData> {
        let f = self.clients.get(self.id, r.fh)?;
        let len = r.len.min(MAX_IO);
        if let Some(d) = &r.dest
            && d.len() < len
        {
            return Err(Errno::INVAL);
        }
        let (len, _staged) = match r.dest {
            None => (len.min(MAX_INLINE_READ), None),
            Some(_) => {
                let s = self.clients.stage(self.id, self.user, len);
                (s.len, Some(s))
            }
        };
        let mut buf = vec![0u8; len as usize];
        let n = pread_full(&f.fd, &mut buf, r.offset)?;
        buf.truncate(n);
        let Some(dest) = &r.dest else {
            return Ok(ReadData::Inline(ByteBuf::from(buf)));
        };
        push_to(&self.caller, &mut buf, dest).map_err(Errno::from_raw_os_error)?;
        Ok(ReadData::Pushed(n as u64))
    }

    /// `pwrite`, or an append: inline, or pulled from the caller's buffer (short under
    /// staging-memory pressure; the client writes the rest next).
    pub fn write(&self, r: WriteReq) -> R<Written> {
        self.writable()?;
        let f = self.clients.get(self.id, r.fh)?;
        if !f.writable {
            return Err(Errno::BADF);
        }
        let (data, _staged) = match r.data {
            WriteData::Inline(b) => (b.into_vec(), None),
            WriteData::Bulk(src) => {
                if src.len() > MAX_IO {
                    return Err(Errno::INVAL);
                }
                let staged = self.clients.stage(self.id, self.user, src.len());
                let buf =
                    pull_from(&self.caller, &src, staged.len).map_err(Errno::from_raw_os_error)?;
                (buf, Some(staged))
            }
        };
        match (r.offset, f.append) {
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
    pub fn truncate(&self, t: &Target, len: u64) -> R<()> {
        self.writable()?;
        let fd = self.target_fd(t, OFlags::WRONLY)?;
        if let Fd::Open(f) = &fd
            && !f.writable
        {
            return Err(Errno::INVAL);
        }
        rustix::fs::ftruncate(fd, len)
    }

    /// `fsync`, `fdatasync`.
    pub fn fsync(&self, fh: Fh, data_only: bool) -> R<()> {
        let f = self.clients.get(self.id, fh)?;
        if data_only {
            rustix::fs::fdatasync(&f.fd)
        } else {
            rustix::fs::fsync(&f.fd)
        }
    }

    /// `fallocate` on an open file (the modes [`FALLOCATE`] names).
    pub fn fallocate(&self, fh: Fh, mode: i32, off: u64, len: u64) -> R<()> {
        use rustix::fs::FallocateFlags as F;
        self.writable()?;
        let f = self.clients.get(self.id, fh)?;
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

    /// `unlink` (`rmdir` with `dir`).
    pub fn remove(&self, path: &[u8], dir: bool) -> R<()> {
        self.writable()?;
        let (parent, name) = self.named(path, if dir { Errno::BUSY } else { Errno::ISDIR })?;
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&parent, &name, flags)
    }

    /// `mkdir`.
    pub fn mkdir(&self, path: &[u8], mode: u32) -> R<()> {
        self.writable()?;
        let (parent, name) = self.named(path, Errno::EXIST)?;
        rustix::fs::mkdirat(
            &parent,
            &name,
            Mode::from_bits_truncate(self.policy.mode(mode, true)),
        )
    }

    /// `rename`.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> R<()> {
        self.rename_with(from, to, 0)
    }

    /// `renameat2`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE` (others `EINVAL`).
    pub fn rename_with(&self, from: &[u8], to: &[u8], flags: u32) -> R<()> {
        use rustix::fs::RenameFlags as F;
        self.writable()?;
        let flags = F::from_bits(flags)
            .filter(|f| (F::NOREPLACE | F::EXCHANGE).contains(*f))
            .ok_or(Errno::INVAL)?;
        let (fp, fname) = self.named(from, Errno::BUSY)?;
        let (tp, tname) = self.named(to, Errno::BUSY)?;
        rustix::fs::renameat_with(&fp, &fname, &tp, &tname, flags)
    }

    /// `symlink`: the link's content is stored as given; it is confined when followed.
    pub fn symlink(&self, target: &[u8], path: &[u8]) -> R<()> {
        self.writable()?;
        let (parent, name) = self.named(path, Errno::EXIST)?;
        rustix::fs::symlinkat(target, &parent, &name)
    }

    /// `readlink`.
    pub fn readlink(&self, path: &[u8]) -> R<ByteBuf> {
        let (parent, name) = self.named(path, Errno::INVAL)?;
        let s = rustix::fs::readlinkat(&parent, &name, Vec::new())?;
        Ok(ByteBuf::from(s.into_bytes()))
    }

    /// A page of a directory listing.
    pub fn readdir(&self, r: &ReaddirReq) -> R<DirPage> {
        let f = self.clients.get(self.id, r.fh)?;
        let mut slot = f.dir.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(rustix::fs::Dir::read_from(&f.fd)?);
        }
        let dir = slot.as_mut().ok_or(Errno::BADF)?;
        if r.restart {
            dir.rewind();
        }
        let max = r.max.clamp(1, MAX_DIR_PAGE) as usize;
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

    /// `statfs`.
    pub fn statfs(&self, path: &[u8]) -> R<FsStat> {
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
    pub fn chmod(&self, t: &Target, mode: u32) -> R<()> {
        self.writable()?;
        let fd = self.target_fd(t, OFlags::PATH)?;
        let dir = rustix::fs::fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let mode = self.policy.mode(mode, dir);
        rustix::fs::chmod(proc_path(&fd), Mode::from_bits_truncate(mode))
    }

    /// `utimensat`, `futimens`.
    pub fn utimens(&self, t: &Target, atime: SetTime, mtime: SetTime, follow: bool) -> R<()> {
        self.writable()?;
        let times = Timestamps {
            last_access: timespec(atime),
            last_modification: timespec(mtime),
        };
        if let (Target::Path(p), false) = (t, follow)
            && let Some((parent, name)) = self.export.parent(p)?
        {
            return rustix::fs::utimensat(&parent, &name, &times, AtFlags::SYMLINK_NOFOLLOW);
        }
        let fd = self.target_fd(t, OFlags::PATH)?;
        rustix::fs::utimensat(rustix::fs::CWD, proc_path(&fd), &times, AtFlags::empty())
    }

    /// `access`.
    pub fn access(&self, path: &[u8], mode: i32) -> R<()> {
        let fd = self.export.open_at(path, OFlags::PATH, Mode::empty())?;
        let want = rustix::fs::Access::from_bits_truncate(mode as u32);
        if want.contains(rustix::fs::Access::WRITE_OK) {
            self.writable()?;
        }
        rustix::fs::accessat(rustix::fs::CWD, proc_path(&fd), want, AtFlags::empty())
    }
}

/// A file to operate on: one of the client's, or opened for this request.
pub(super) enum Fd {
    Open(Arc<OpenFile>),
    Own(OwnedFd),
}

impl AsFd for Fd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Fd::Open(f) => f.fd.as_fd(),
            Fd::Own(f) => f.as_fd(),
        }
    }
}

/// `/proc/self/fd/N`: the path of an open file, for calls that take no descriptor.
pub(super) fn proc_path(fd: &impl AsFd) -> String {
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

/// Reads until `buf` is full or the file ends.
fn pread_full(fd: &OwnedFd, buf: &mut [u8], off: u64) -> R<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

/// Writes all of `data` at `off` (or appends), or as much as the disk took.
fn write_full(fd: &OwnedFd, data: &[u8], off: Option<u64>) -> R<usize> {
    let mut done = 0;
    while done < data.len() {
        let r = match off {
            Some(o) => rustix::io::pwrite(fd, &data[done..], o + done as u64),
            None => rustix::io::write(fd, &data[done..]),
        };
        match r {
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

fn timespec(t: SetTime) -> Timespec {
    match t {
        SetTime::Omit => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        SetTime::Now => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        SetTime::At(t) => Timespec {
            tv_sec: t.sec,
            tv_nsec: t.nsec.into(),
        },
    }
}

fn dt(t: rustix::fs::FileType) -> u8 {
    use rustix::fs::FileType as T;
    match t {
        T::RegularFile => libc::DT_REG,
        T::Directory => libc::DT_DIR,
        T::Symlink => libc::DT_LNK,
        T::Fifo => libc::DT_FIFO,
        T::Socket => libc::DT_SOCK,
        T::CharacterDevice => libc::DT_CHR,
        T::BlockDevice => libc::DT_BLK,
        _ => libc::DT_UNKNOWN,
    }
}

/// `stat(2)` fields as the protocol carries them.
#[allow(clippy::unnecessary_cast)]
fn attr(s: &Stat) -> Attr {
    let t = |sec: i64, nsec: i64| Time {
        sec,
        nsec: nsec as u32,
    };
    Attr {
        dev: s.st_dev as u64,
        ino: s.st_ino as u64,
        mode: s.st_mode as u32,
        nlink: s.st_nlink as u64,
        uid: s.st_uid as u32,
        gid: s.st_gid as u32,
        rdev: s.st_rdev as u64,
        size: s.st_size as u64,
        blksize: s.st_blksize as u64,
        blocks: s.st_blocks as u64,
        atime: t(s.st_atime as i64, s.st_atime_nsec as i64),
        mtime: t(s.st_mtime as i64, s.st_mtime_nsec as i64),
        ctime: t(s.st_ctime as i64, s.st_ctime_nsec as i64),
    }
}
