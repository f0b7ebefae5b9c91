//! Older forms of interposed calls, and calls the C library makes from its internal
//! ones (which no interposer sees): made here from the interposed calls, so that they
//! reach shipped files. Each was found missing by listing what `rsync`, `zip`, `unzip`,
//! `git`, `perl`, `make`, `cp` and `python3` import that this library did not export:
//! `unzip` could not set times (`utime`), `rsync` neither (`utimes`, `lutimes`), `df`
//! and `os.statvfs` saw no file system, `remove` and `realpath` failed with `ENOENT`.

use std::ffi::{CStr, CString};

use libc::{c_char, c_int, timespec, timeval};
use posix_ship::proto::{self as p, FsStat};
use serde_bytes::ByteBuf;

use crate::paths::{futimens, utimensat};
use crate::real::call_real;
use crate::{call, fail, shipped, table};

/// `timeval`s as `timespec`s (`None`: now); `Err` for microseconds out of range.
fn times(tv: *const timeval) -> Result<Option<[timespec; 2]>, c_int> {
    if tv.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-null times argument points to two timevals (utimes' contract).
    let tv = unsafe { [*tv, *tv.add(1)] };
    let mut ts = [timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }; 2];
    for (t, v) in ts.iter_mut().zip(tv) {
        if !(0..1_000_000).contains(&v.tv_usec) {
            return Err(libc::EINVAL);
        }
        *t = timespec {
            tv_sec: v.tv_sec,
            tv_nsec: v.tv_usec * 1000,
        };
    }
    Ok(Some(ts))
}

fn ptr(t: &Option<[timespec; 2]>) -> *const timespec {
    t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr())
}

/// Interposed `utime`.
#[unsafe(no_mangle)]
pub extern "C" fn utime(path: *const c_char, t: *const libc::utimbuf) -> c_int {
    let ts = (!t.is_null()).then(|| {
        // SAFETY: a non-null argument points to a utimbuf.
        let t = unsafe { *t };
        [t.actime, t.modtime].map(|s| timespec {
            tv_sec: s,
            tv_nsec: 0,
        })
    });
    utimensat(libc::AT_FDCWD, path, ptr(&ts), 0)
}

/// `utimensat` with `timeval`s.
fn utimes_at(d: c_int, path: *const c_char, tv: *const timeval, flags: c_int) -> c_int {
    match times(tv) {
        Ok(ts) => utimensat(d, path, ptr(&ts), flags),
        Err(e) => fail(e),
    }
}

/// Interposed `utimes`.
#[unsafe(no_mangle)]
pub extern "C" fn utimes(path: *const c_char, tv: *const timeval) -> c_int {
    utimes_at(libc::AT_FDCWD, path, tv, 0)
}

/// Interposed `lutimes`.
#[unsafe(no_mangle)]
pub extern "C" fn lutimes(path: *const c_char, tv: *const timeval) -> c_int {
    utimes_at(libc::AT_FDCWD, path, tv, libc::AT_SYMLINK_NOFOLLOW)
}

/// Interposed `futimesat`.
#[unsafe(no_mangle)]
pub extern "C" fn futimesat(d: c_int, path: *const c_char, tv: *const timeval) -> c_int {
    if path.is_null() {
        return futimes(d, tv);
    }
    utimes_at(d, path, tv, 0)
}

/// Interposed `futimes`.
#[unsafe(no_mangle)]
pub extern "C" fn futimes(fd: c_int, tv: *const timeval) -> c_int {
    match times(tv) {
        Ok(ts) => futimens(fd, ptr(&ts)),
        Err(e) => fail(e),
    }
}

/// Interposed `euidaccess` (and `eaccess`): `faccessat` with `AT_EACCESS`.
#[unsafe(no_mangle)]
pub extern "C" fn euidaccess(path: *const c_char, mode: c_int) -> c_int {
    crate::paths::faccessat(libc::AT_FDCWD, path, mode, libc::AT_EACCESS)
}

/// Interposed `remove`: `unlink`, or `rmdir` for a directory (glibc's calls its own).
#[unsafe(no_mangle)]
pub extern "C" fn remove(path: *const c_char) -> c_int {
    if shipped(path).is_none() {
        return call_real!(remove: fn(*const c_char) -> c_int, path);
    }
    let r = crate::paths::unlink(path);
    if r == 0 {
        return 0;
    }
    match crate::last_errno() {
        libc::EISDIR => crate::paths::rmdir(path),
        _ => r,
    }
}

/// The file system holding `path` beneath the export, or shipped descriptor `fd`.
fn fs_stat(path: Option<Vec<u8>>, fd: c_int) -> Result<FsStat, c_int> {
    let p = match path {
        Some(p) => p,
        None => table::get(fd).ok_or(libc::EBADF)?.path.clone(),
    };
    call(p::STATFS, &ByteBuf::from(p))
}

/// What programs should take a shipped tree for: a network file system (NFS's number).
const NETWORK_FS_MAGIC: libc::c_long = 0x6969;

fn fill_statfs(s: &FsStat, out: *mut libc::statfs) -> c_int {
    if out.is_null() {
        return fail(libc::EFAULT);
    }
    // SAFETY: all-zero is a valid `struct statfs`.
    let mut f: libc::statfs = unsafe { std::mem::zeroed() };
    f.f_type = NETWORK_FS_MAGIC;
    f.f_bsize = s.bsize as _;
    f.f_frsize = s.frsize as _;
    f.f_blocks = s.blocks;
    f.f_bfree = s.bfree;
    f.f_bavail = s.bavail;
    f.f_files = s.files;
    f.f_ffree = s.ffree;
    f.f_namelen = s.namemax as _;
    // SAFETY: `out` is the caller's buffer.
    unsafe { out.write(f) };
    0
}

fn fill_statvfs(s: &FsStat, out: *mut libc::statvfs) -> c_int {
    if out.is_null() {
        return fail(libc::EFAULT);
    }
    // SAFETY: all-zero is a valid `struct statvfs`.
    let mut f: libc::statvfs = unsafe { std::mem::zeroed() };
    f.f_bsize = s.bsize as _;
    f.f_frsize = s.frsize as _;
    f.f_blocks = s.blocks;
    f.f_bfree = s.bfree;
    f.f_bavail = s.bavail;
    f.f_files = s.files;
    f.f_ffree = s.ffree;
    f.f_favail = s.ffree;
    f.f_namemax = s.namemax as _;
    // SAFETY: `out` is the caller's buffer.
    unsafe { out.write(f) };
    0
}

/// `statfs`-like call on `path`: answered here for a shipped path, else by `real`.
fn on_path<T>(
    path: *const c_char,
    out: *mut T,
    fill: fn(&FsStat, *mut T) -> c_int,
    real: impl FnOnce() -> c_int,
) -> c_int {
    match shipped(path) {
        Some(p) => fs_stat(Some(p), -1).map_or_else(fail, |s| fill(&s, out)),
        None => real(),
    }
}

/// `fstatfs`-like call on `fd`: answered here for a shipped descriptor, else by `real`.
fn on_fd<T>(
    fd: c_int,
    out: *mut T,
    fill: fn(&FsStat, *mut T) -> c_int,
    real: impl FnOnce() -> c_int,
) -> c_int {
    match table::get(fd) {
        Some(_) => fs_stat(None, fd).map_or_else(fail, |s| fill(&s, out)),
        None => real(),
    }
}

/// Interposed `statfs`.
#[unsafe(no_mangle)]
pub extern "C" fn statfs(path: *const c_char, out: *mut libc::statfs) -> c_int {
    on_path(
        path,
        out,
        fill_statfs,
        || call_real!(statfs: fn(*const c_char, *mut libc::statfs) -> c_int, path, out),
    )
}

/// Interposed `fstatfs`.
#[unsafe(no_mangle)]
pub extern "C" fn fstatfs(fd: c_int, out: *mut libc::statfs) -> c_int {
    on_fd(
        fd,
        out,
        fill_statfs,
        || call_real!(fstatfs: fn(c_int, *mut libc::statfs) -> c_int, fd, out),
    )
}

/// Interposed `statvfs`.
#[unsafe(no_mangle)]
pub extern "C" fn statvfs(path: *const c_char, out: *mut libc::statvfs) -> c_int {
    on_path(
        path,
        out,
        fill_statvfs,
        || call_real!(statvfs: fn(*const c_char, *mut libc::statvfs) -> c_int, path, out),
    )
}

/// Interposed `fstatvfs`.
#[unsafe(no_mangle)]
pub extern "C" fn fstatvfs(fd: c_int, out: *mut libc::statvfs) -> c_int {
    on_fd(
        fd,
        out,
        fill_statvfs,
        || call_real!(fstatvfs: fn(c_int, *mut libc::statvfs) -> c_int, fd, out),
    )
}

/// Interposed `flock`: on a shipped file, a lock on a local file standing for it
/// (`/dev/shm`, named by a hash of the server and the path), held by the description
/// (its `dup`s and forked children share it; it goes with the description's last close
/// in the process, and is not handed to programs the process `exec`s). Processes on this
/// machine exclude each other as on a local file; clients on other machines are not
/// excluded (as with record locks). A stand-in that cannot be had is `ENOLCK`.
#[unsafe(no_mangle)]
pub extern "C" fn flock(fd: c_int, op: c_int) -> c_int {
    let Some(d) = table::get(fd) else {
        return call_real!(flock: fn(c_int, c_int) -> c_int, fd, op);
    };
    let kind = op & !libc::LOCK_NB;
    if ![libc::LOCK_SH, libc::LOCK_EX, libc::LOCK_UN].contains(&kind) {
        return fail(libc::EINVAL);
    }
    let lock = match d.flock.get() {
        Some(l) => l,
        None if kind == libc::LOCK_UN => return 0,
        None => match stand_in(&d.path) {
            Some(l) => d.flock.get_or_init(|| l),
            None => return fail(libc::ENOLCK),
        },
    };
    use std::os::fd::AsRawFd;
    call_real!(flock: fn(c_int, c_int) -> c_int, lock.as_raw_fd(), op)
}

/// The local file whose locks stand for `path`'s on the server: opened as found (made if
/// missing, readable by all: any user may lock it, as any reader of a local file may),
/// never a FIFO or a link planted under its name.
fn stand_in(path: &[u8]) -> Option<std::os::fd::OwnedFd> {
    use std::hash::{Hash, Hasher};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    crate::config().map(|c| c.server()).hash(&mut h);
    path.hash(&mut h);
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm".to_string()
    } else {
        std::env::temp_dir().display().to_string()
    };
    let name = CString::new(format!("{dir}/posix-ship-flock-{:016x}", h.finish())).ok()?;
    let open = |flags: c_int| {
        let flags = flags | libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        call_real!(open: fn(*const c_char, c_int, libc::mode_t) -> c_int, name.as_ptr(), flags, 0o644)
    };
    // Not O_CREAT on a file that exists: in a sticky directory another user's file
    // refuses it (`fs.protected_regular`).
    let mut fd = open(0);
    if fd < 0 && crate::last_errno() == libc::ENOENT {
        fd = open(libc::O_CREAT | libc::O_EXCL);
        if fd >= 0 {
            // Whatever the umask: others lock it too.
            // SAFETY: a descriptor just opened.
            unsafe { libc::fchmod(fd, 0o644) };
        } else if crate::last_errno() == libc::EEXIST {
            fd = open(0);
        }
    }
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid `struct stat`, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let ok = call_real!(fstat: fn(c_int, *mut libc::stat) -> c_int, owned.as_raw_fd(), &mut st);
    (ok == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(owned)
}

/// Interposed `sync_file_range`: on a shipped file, the writes in flight land (the
/// server's page cache is as far as a range sync goes).
#[unsafe(no_mangle)]
pub extern "C" fn sync_file_range(fd: c_int, off: i64, n: i64, flags: libc::c_uint) -> c_int {
    match table::get(fd) {
        Some(d) => match d.settle_writes() {
            Some(e) => fail(e),
            None => 0,
        },
        None => call_real!(sync_file_range: fn(c_int, i64, i64, libc::c_uint) -> c_int,
            fd, off, n, flags),
    }
}

/// The longest chain of symbolic links `realpath` follows.
const MAX_LINKS: usize = 40;

/// `path` made absolute, without `.`, `..` or symbolic links, each component looked up
/// through the interposed `lstat` and `readlink` (so shipped and local alike).
pub(crate) fn canonical(path: &[u8]) -> Result<Vec<u8>, c_int> {
    let mut todo: Vec<Vec<u8>> = Vec::new();
    let mut start = path.to_vec();
    if start.first() != Some(&b'/') {
        let mut cwd = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: a buffer of PATH_MAX bytes.
        if crate::cwd::getcwd(cwd.as_mut_ptr().cast(), cwd.len()).is_null() {
            return Err(crate::last_errno());
        }
        let n = cwd.iter().position(|b| *b == 0).unwrap_or(cwd.len());
        start = [&cwd[..n], b"/", path].concat();
    }
    todo.extend(start.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
    let mut out: Vec<u8> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match &c[..] {
            b"" | b"." => continue,
            b".." => {
                let cut = out.iter().rposition(|b| *b == b'/').unwrap_or(0);
                out.truncate(cut);
                continue;
            }
            _ => {}
        }
        let here = [&out[..], b"/", &c].concat();
        let cpath = CString::new(here.clone()).map_err(|_| libc::EINVAL)?;
        // SAFETY: all-zero is a valid `struct stat`, filled by lstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a stat buffer.
        if unsafe { libc::lstat(cpath.as_ptr(), &mut st) } != 0 {
            return Err(crate::last_errno());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            if !todo.iter().all(|t| t.is_empty()) && st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(libc::ENOTDIR);
            }
            out = here;
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(libc::ELOOP);
        }
        let mut target = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: a NUL-terminated path and a buffer of its length.
        let n = unsafe { libc::readlink(cpath.as_ptr(), target.as_mut_ptr().cast(), target.len()) };
        if n < 0 {
            return Err(crate::last_errno());
        }
        if n as usize >= target.len() {
            return Err(libc::ENAMETOOLONG);
        }
        target.truncate(n as usize);
        if target.first() == Some(&b'/') {
            out.clear();
        }
        todo.extend(target.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
    }
    if out.is_empty() {
        out.push(b'/');
    }
    if path.ends_with(b"/") {
        // `file/` names a directory or nothing.
        let c = CString::new(out.clone()).map_err(|_| libc::EINVAL)?;
        // SAFETY: all-zero is a valid `struct stat`, filled by stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a stat buffer.
        if unsafe { libc::stat(c.as_ptr(), &mut st) } != 0 {
            return Err(crate::last_errno());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(libc::ENOTDIR);
        }
    }
    Ok(out)
}

/// Interposed `realpath` (glibc's looks components up with its internal calls).
#[unsafe(no_mangle)]
pub extern "C" fn realpath(path: *const c_char, resolved: *mut c_char) -> *mut c_char {
    if shipped(path).is_none() {
        return call_real!(realpath: fn(*const c_char, *mut c_char) -> *mut c_char, path, resolved);
    }
    // SAFETY: `shipped` found `path` non-null and NUL-terminated.
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    let out = match canonical(p) {
        Ok(o) => o,
        Err(e) => {
            fail(e);
            return std::ptr::null_mut();
        }
    };
    if out.len() >= libc::PATH_MAX as usize {
        fail(libc::ENAMETOOLONG);
        return std::ptr::null_mut();
    }
    let dst = if resolved.is_null() {
        // SAFETY: malloc of the length and its NUL; the caller frees it (realpath(3)).
        let m = unsafe { libc::malloc(out.len() + 1) }.cast::<c_char>();
        if m.is_null() {
            fail(libc::ENOMEM);
            return m;
        }
        m
    } else {
        resolved
    };
    // SAFETY: `dst` holds PATH_MAX bytes (the caller's, realpath's contract) or the
    // length just allocated; `out` is shorter than both.
    unsafe {
        std::ptr::copy_nonoverlapping(out.as_ptr(), dst.cast::<u8>(), out.len());
        *dst.add(out.len()) = 0;
    }
    dst
}

/// Interposed `canonicalize_file_name`: `realpath` into a new buffer.
#[unsafe(no_mangle)]
pub extern "C" fn canonicalize_file_name(path: *const c_char) -> *mut c_char {
    realpath(path, std::ptr::null_mut())
}

crate::real::alias! {
    safe eaccess => euidaccess(path: *const c_char, mode: c_int) -> c_int;
    safe statfs64 => statfs(path: *const c_char, out: *mut libc::statfs) -> c_int;
    safe fstatfs64 => fstatfs(fd: c_int, out: *mut libc::statfs) -> c_int;
    safe statvfs64 => statvfs(path: *const c_char, out: *mut libc::statvfs) -> c_int;
    safe fstatvfs64 => fstatvfs(fd: c_int, out: *mut libc::statvfs) -> c_int;
}
