//! System-call helpers of the local backend: full reads and writes, and the protocol's
//! forms of `stat` fields, times and directory entry types.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Stat, Timespec};
use rustix::io::Errno;

use super::clients::OpenFile;
use crate::proto::*;

type R<T> = Result<T, Errno>;

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

/// `listxattrat(2)` (Linux 6.13), which the `libc` crate does not name yet: 465 in the
/// table every architecture shares since 4.20's `io_pgetevents` (mips numbers its own
/// apart, so it takes the fallback).
#[cfg(not(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6"
)))]
const SYS_LISTXATTRAT: Option<libc::c_long> = Some(465);
#[cfg(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6"
))]
const SYS_LISTXATTRAT: Option<libc::c_long> = None;

/// The extended attribute names of entry `name` of directory `dir`, not following a final
/// symlink, into `buf`: their length. By `listxattrat` where the kernel has it, else
/// through `/proc/self/fd/N/name` (a path walk through procfs: twice the cost of an
/// `lstat` per entry of a listing).
pub(super) fn list_xattrs_at(dir: &impl AsFd, name: &[u8], buf: &mut [u8]) -> R<usize> {
    static NO_AT: AtomicBool = AtomicBool::new(false);
    if !NO_AT.load(Ordering::Relaxed) {
        match listxattrat(dir, name, buf) {
            // No such call here, or a seccomp filter that refuses the unknown number.
            Err(Errno::NOSYS | Errno::PERM) => NO_AT.store(true, Ordering::Relaxed),
            r => return r,
        }
    }
    let path = [proc_path(dir).as_bytes(), b"/", name].concat();
    rustix::fs::llistxattr(path, buf)
}

fn listxattrat(dir: &impl AsFd, name: &[u8], buf: &mut [u8]) -> R<usize> {
    let nr = SYS_LISTXATTRAT.ok_or(Errno::NOSYS)?;
    let name = std::ffi::CString::new(name).map_err(|_| Errno::INVAL)?;
    // SAFETY: `name` is a NUL-terminated string and `buf` is writable for its length;
    // both outlive the call, which writes at most `buf.len()` bytes.
    let n = unsafe {
        libc::syscall(
            nr,
            dir.as_fd().as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO));
    }
    Ok(n as usize)
}

/// `/proc/self/fd/N`: the path of an open file, for calls that take no descriptor.
pub(super) fn proc_path(fd: &impl AsFd) -> String {
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

/// Reads until `buf` is full or the file ends.
pub(super) fn pread_full(fd: &OwnedFd, buf: &mut [u8], off: u64) -> R<usize> {
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
pub(super) fn write_full(fd: &OwnedFd, data: &[u8], off: Option<u64>) -> R<usize> {
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

pub(super) fn timespec(t: SetTime) -> Timespec {
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

pub(super) fn dt(t: rustix::fs::FileType) -> u8 {
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
pub(super) fn attr(s: &Stat) -> Attr {
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
        xattrs: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_at_a_directory_entry_by_either_call_and_not_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("qs-xattrat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"").unwrap();
        let _ = std::fs::remove_file(dir.join("l"));
        std::os::unix::fs::symlink("f", dir.join("l")).unwrap();
        let set = rustix::fs::setxattr(
            dir.join("f"),
            "user.k",
            b"v",
            rustix::fs::XattrFlags::empty(),
        );
        if set == Err(Errno::NOTSUP) {
            // tmpfs before Linux 6.6 keeps no user attributes.
            eprintln!("skipped: {} keeps no user.* attributes", dir.display());
            return;
        }
        set.unwrap();
        let d = std::fs::File::open(&dir).unwrap();
        let names = |n: &[u8], at: bool| {
            let mut buf = [0u8; 256];
            let len = if at {
                listxattrat(&d, n, &mut buf)
            } else {
                let path = [proc_path(&d).as_bytes(), b"/", n].concat();
                rustix::fs::llistxattr(path, &mut buf[..])
            };
            let all = buf[..len.ok()?].split(|&b| b == 0);
            Some(all.filter(|n| n.starts_with(b"user.")).count())
        };
        // A kernel before 6.13 has no listxattrat (ENOSYS): only the fallback is tried.
        let at = !matches!(
            listxattrat(&d, b"f", &mut [0u8; 256]),
            Err(Errno::NOSYS | Errno::PERM)
        );
        for at in [at, false] {
            assert_eq!(names(b"f", at), Some(1), "listxattrat: {at}");
            assert_eq!(
                names(b"l", at),
                Some(0),
                "the link's own, listxattrat: {at}"
            );
        }
        assert_eq!(
            list_xattrs_at(&d, b"none", &mut [0u8; 16]),
            Err(Errno::NOENT)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
