//! Calls on names and attributes: the `stat` family, `unlink`, `mkdir`, `rename`,
//! `access`, links, modes and times.

use libc::{c_char, c_int, c_uint, mode_t, off_t};
use posix_ship::proto::{self as p, Attr, SetTime, Target, Time};
use serde_bytes::ByteBuf;

use crate::real::call_real;
use crate::table;
use crate::{call, fail, ret, shipped, shipped_at};

fn buf(v: Vec<u8>) -> ByteBuf {
    ByteBuf::from(v)
}

/// The target of an `f*` call on a shipped descriptor.
fn handle(d: &table::Desc) -> Result<Target, c_int> {
    Ok(Target::Handle(d.fh()?))
}

fn fill_stat(a: &Attr, st: *mut libc::stat) -> c_int {
    if st.is_null() {
        return fail(libc::EFAULT);
    }
    // SAFETY: all-zero is a valid `struct stat`.
    let mut s: libc::stat = unsafe { std::mem::zeroed() };
    s.st_dev = a.dev;
    s.st_ino = a.ino;
    s.st_mode = a.mode;
    s.st_nlink = a.nlink as _;
    s.st_uid = a.uid;
    s.st_gid = a.gid;
    s.st_rdev = a.rdev;
    s.st_size = a.size as i64;
    s.st_blksize = a.blksize as _;
    s.st_blocks = a.blocks as i64;
    s.st_atime = a.atime.sec;
    s.st_atime_nsec = a.atime.nsec.into();
    s.st_mtime = a.mtime.sec;
    s.st_mtime_nsec = a.mtime.nsec.into();
    s.st_ctime = a.ctime.sec;
    s.st_ctime_nsec = a.ctime.nsec.into();
    // SAFETY: `st` is the caller's stat buffer.
    unsafe { st.write(s) };
    0
}

fn stat_target(t: Target, follow: bool, st: *mut libc::stat) -> c_int {
    match stat_cached(t, follow) {
        Ok(a) => fill_stat(&a, st),
        Err(e) => fail(e),
    }
}

/// A stat through the client's attribute cache.
pub(crate) fn stat_cached(t: Target, follow: bool) -> Result<p::Attr, c_int> {
    table::client()?.stat(t, follow).map_err(crate::errno_of)
}

/// `fstatat` with every variant's flags.
fn stat_at(dirfd: c_int, path: *const c_char, st: *mut libc::stat, flags: c_int) -> c_int {
    let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
    // SAFETY: a non-null path is NUL-terminated.
    let empty = !path.is_null() && unsafe { *path } == 0;
    if empty && flags & libc::AT_EMPTY_PATH != 0 {
        return fstat(dirfd, st);
    }
    match shipped_at(dirfd, path) {
        Some(p) => stat_target(Target::Path(buf(p)), follow, st),
        None => {
            let local = crate::local_path(path);
            call_real!(fstatat64: fn(c_int, *const c_char, *mut libc::stat, c_int) -> c_int,
                dirfd, local.ptr(), st, flags)
        }
    }
}

/// Interposed `stat`.
#[unsafe(no_mangle)]
pub extern "C" fn stat(path: *const c_char, st: *mut libc::stat) -> c_int {
    stat_at(libc::AT_FDCWD, path, st, 0)
}

/// Interposed `lstat`.
#[unsafe(no_mangle)]
pub extern "C" fn lstat(path: *const c_char, st: *mut libc::stat) -> c_int {
    stat_at(libc::AT_FDCWD, path, st, libc::AT_SYMLINK_NOFOLLOW)
}

/// Interposed `fstat`.
#[unsafe(no_mangle)]
pub extern "C" fn fstat(fd: c_int, st: *mut libc::stat) -> c_int {
    match table::get(fd) {
        Some(d) => match handle(&d) {
            Ok(t) => stat_target(t, true, st),
            Err(e) => fail(e),
        },
        None => call_real!(fstat64: fn(c_int, *mut libc::stat) -> c_int, fd, st),
    }
}

/// Interposed `__xstat` (glibc < 2.33 programs).
#[unsafe(no_mangle)]
pub extern "C" fn __xstat(_ver: c_int, path: *const c_char, st: *mut libc::stat) -> c_int {
    stat_at(libc::AT_FDCWD, path, st, 0)
}

/// Interposed `__xstat64`.
#[unsafe(no_mangle)]
pub extern "C" fn __xstat64(_ver: c_int, path: *const c_char, st: *mut libc::stat) -> c_int {
    stat_at(libc::AT_FDCWD, path, st, 0)
}

/// Interposed `__lxstat`.
#[unsafe(no_mangle)]
pub extern "C" fn __lxstat(_ver: c_int, path: *const c_char, st: *mut libc::stat) -> c_int {
    stat_at(libc::AT_FDCWD, path, st, libc::AT_SYMLINK_NOFOLLOW)
}

/// Interposed `__lxstat64`.
#[unsafe(no_mangle)]
pub extern "C" fn __lxstat64(_ver: c_int, path: *const c_char, st: *mut libc::stat) -> c_int {
    stat_at(libc::AT_FDCWD, path, st, libc::AT_SYMLINK_NOFOLLOW)
}

/// Interposed `__fxstat`.
#[unsafe(no_mangle)]
pub extern "C" fn __fxstat(_ver: c_int, fd: c_int, st: *mut libc::stat) -> c_int {
    fstat(fd, st)
}

/// Interposed `__fxstat64`.
#[unsafe(no_mangle)]
pub extern "C" fn __fxstat64(_ver: c_int, fd: c_int, st: *mut libc::stat) -> c_int {
    fstat(fd, st)
}

/// Interposed `__fxstatat`.
#[unsafe(no_mangle)]
pub extern "C" fn __fxstatat(
    _v: c_int,
    d: c_int,
    p: *const c_char,
    st: *mut libc::stat,
    fl: c_int,
) -> c_int {
    stat_at(d, p, st, fl)
}

/// Interposed `__fxstatat64`.
#[unsafe(no_mangle)]
pub extern "C" fn __fxstatat64(
    _v: c_int,
    d: c_int,
    p: *const c_char,
    st: *mut libc::stat,
    fl: c_int,
) -> c_int {
    stat_at(d, p, st, fl)
}

fn fill_statx(a: &Attr, sx: *mut libc::statx) -> c_int {
    if sx.is_null() {
        return fail(libc::EFAULT);
    }
    let ts = |t: Time| {
        // SAFETY: all-zero is a valid timestamp.
        let mut x: libc::statx_timestamp = unsafe { std::mem::zeroed() };
        x.tv_sec = t.sec;
        x.tv_nsec = t.nsec;
        x
    };
    // SAFETY: all-zero is a valid `struct statx`.
    let mut s: libc::statx = unsafe { std::mem::zeroed() };
    s.stx_mask = libc::STATX_BASIC_STATS;
    s.stx_blksize = a.blksize as u32;
    s.stx_nlink = a.nlink as u32;
    s.stx_uid = a.uid;
    s.stx_gid = a.gid;
    s.stx_mode = a.mode as u16;
    s.stx_ino = a.ino;
    s.stx_size = a.size;
    s.stx_blocks = a.blocks;
    s.stx_atime = ts(a.atime);
    s.stx_mtime = ts(a.mtime);
    s.stx_ctime = ts(a.ctime);
    s.stx_rdev_major = libc::major(a.rdev);
    s.stx_rdev_minor = libc::minor(a.rdev);
    s.stx_dev_major = libc::major(a.dev);
    s.stx_dev_minor = libc::minor(a.dev);
    // SAFETY: `sx` is the caller's statx buffer.
    unsafe { sx.write(s) };
    0
}

/// Interposed `statx`.
#[unsafe(no_mangle)]
pub extern "C" fn statx(
    d: c_int,
    path: *const c_char,
    fl: c_int,
    mask: c_uint,
    sx: *mut libc::statx,
) -> c_int {
    // SAFETY: a non-null path is NUL-terminated.
    let empty = !path.is_null() && unsafe { *path } == 0;
    let target = if empty && fl & libc::AT_EMPTY_PATH != 0 {
        match table::get(d).map(|x| handle(&x)) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => return fail(e),
            None => None,
        }
    } else {
        shipped_at(d, path).map(|p| Target::Path(buf(p)))
    };
    match target {
        Some(t) => match stat_cached(t, fl & libc::AT_SYMLINK_NOFOLLOW == 0) {
            Ok(a) => fill_statx(&a, sx),
            Err(e) => fail(e),
        },
        None => {
            let local = crate::local_path(path);
            call_real!(statx: fn(c_int, *const c_char, c_int, c_uint, *mut libc::statx) -> c_int,
            d, local.ptr(), fl, mask, sx)
        }
    }
}

/// Interposed `unlink`.
#[unsafe(no_mangle)]
pub extern "C" fn unlink(path: *const c_char) -> c_int {
    unlinkat(libc::AT_FDCWD, path, 0)
}

/// Interposed `unlinkat`.
#[unsafe(no_mangle)]
pub extern "C" fn unlinkat(d: c_int, path: *const c_char, flags: c_int) -> c_int {
    match shipped_at(d, path) {
        Some(p) if flags & libc::AT_REMOVEDIR != 0 => ret(call(p::RMDIR, &buf(p))),
        Some(p) => ret(call(p::UNLINK, &buf(p))),
        None => call_real!(unlinkat: fn(c_int, *const c_char, c_int) -> c_int, d, path, flags),
    }
}

/// Interposed `rmdir`.
#[unsafe(no_mangle)]
pub extern "C" fn rmdir(path: *const c_char) -> c_int {
    unlinkat(libc::AT_FDCWD, path, libc::AT_REMOVEDIR)
}

/// Interposed `mkdir`.
#[unsafe(no_mangle)]
pub extern "C" fn mkdir(path: *const c_char, mode: mode_t) -> c_int {
    mkdirat(libc::AT_FDCWD, path, mode)
}

/// Interposed `mkdirat`.
#[unsafe(no_mangle)]
pub extern "C" fn mkdirat(d: c_int, path: *const c_char, mode: mode_t) -> c_int {
    match shipped_at(d, path) {
        Some(p) => ret(call(p::MKDIR, &(buf(p), mode))),
        None => call_real!(mkdirat: fn(c_int, *const c_char, mode_t) -> c_int, d, path, mode),
    }
}

/// `mkdir` of `p`, a path beneath the export.
pub(crate) fn mkdir_shipped(p: Vec<u8>, mode: mode_t) -> c_int {
    ret(call(p::MKDIR, &(buf(p), mode)))
}

/// Interposed `rename`.
#[unsafe(no_mangle)]
pub extern "C" fn rename(from: *const c_char, to: *const c_char) -> c_int {
    renameat2(libc::AT_FDCWD, from, libc::AT_FDCWD, to, 0)
}

/// Interposed `renameat`.
#[unsafe(no_mangle)]
pub extern "C" fn renameat(fd: c_int, from: *const c_char, td: c_int, to: *const c_char) -> c_int {
    renameat2(fd, from, td, to, 0)
}

/// Interposed `renameat2` (`RENAME_NOREPLACE` and `RENAME_EXCHANGE` shipped; others
/// `EINVAL`, which makes `mv` fall back to a plain rename).
#[unsafe(no_mangle)]
pub extern "C" fn renameat2(
    fd: c_int,
    from: *const c_char,
    td: c_int,
    to: *const c_char,
    fl: c_uint,
) -> c_int {
    match (shipped_at(fd, from), shipped_at(td, to)) {
        (None, None) => {
            call_real!(renameat2: fn(c_int, *const c_char, c_int, *const c_char, c_uint) -> c_int,
            fd, from, td, to, fl)
        }
        (Some(a), Some(b)) if fl != 0 => ret(call(p::RENAME2, &(buf(a), buf(b), fl))),
        (Some(a), Some(b)) => ret(call(p::RENAME, &(buf(a), buf(b)))),
        // Between the mount and local storage: another file system.
        _ => fail(libc::EXDEV),
    }
}

/// Interposed `link`.
#[unsafe(no_mangle)]
pub extern "C" fn link(from: *const c_char, to: *const c_char) -> c_int {
    linkat(libc::AT_FDCWD, from, libc::AT_FDCWD, to, 0)
}

/// Interposed `linkat`: a hard link within the mount is shipped (the server links a
/// final symlink itself, as `linkat` without `AT_SYMLINK_FOLLOW` does); one across the
/// mount's edge is `EXDEV`.
#[unsafe(no_mangle)]
pub extern "C" fn linkat(
    fd: c_int,
    from: *const c_char,
    td: c_int,
    to: *const c_char,
    fl: c_int,
) -> c_int {
    match (shipped_at(fd, from), shipped_at(td, to)) {
        (None, None) => {
            call_real!(linkat: fn(c_int, *const c_char, c_int, *const c_char, c_int) -> c_int,
            fd, from, td, to, fl)
        }
        (Some(_), Some(_)) if fl & !libc::AT_SYMLINK_FOLLOW != 0 => fail(libc::EINVAL),
        (Some(a), Some(b)) => ret(call(p::LINK, &(buf(a), buf(b)))),
        _ => fail(libc::EXDEV),
    }
}

/// Interposed `access`.
#[unsafe(no_mangle)]
pub extern "C" fn access(path: *const c_char, mode: c_int) -> c_int {
    faccessat(libc::AT_FDCWD, path, mode, 0)
}

/// Interposed `faccessat`.
#[unsafe(no_mangle)]
pub extern "C" fn faccessat(d: c_int, path: *const c_char, mode: c_int, fl: c_int) -> c_int {
    match shipped_at(d, path) {
        Some(p) => ret(call(p::ACCESS, &(buf(p), mode))),
        None => {
            call_real!(faccessat: fn(c_int, *const c_char, c_int, c_int) -> c_int, d, path, mode, fl)
        }
    }
}

/// Interposed `readlink`.
#[unsafe(no_mangle)]
pub extern "C" fn readlink(path: *const c_char, out: *mut c_char, n: usize) -> isize {
    readlinkat(libc::AT_FDCWD, path, out, n)
}

/// Interposed `readlinkat`.
#[unsafe(no_mangle)]
pub extern "C" fn readlinkat(d: c_int, path: *const c_char, out: *mut c_char, n: usize) -> isize {
    match shipped_at(d, path) {
        Some(p) => match call(p::READLINK, &buf(p)) {
            Ok(target) => {
                let k = target.len().min(n);
                // SAFETY: `out` holds `n` bytes (readlink's contract); k <= n.
                unsafe { std::ptr::copy_nonoverlapping(target.as_ptr(), out.cast(), k) };
                k as isize
            }
            Err(e) => crate::fail_sz(e),
        },
        None => {
            call_real!(readlinkat: fn(c_int, *const c_char, *mut c_char, usize) -> isize, d, path, out, n)
        }
    }
}

/// Interposed `symlink`.
#[unsafe(no_mangle)]
pub extern "C" fn symlink(target: *const c_char, link: *const c_char) -> c_int {
    symlinkat(target, libc::AT_FDCWD, link)
}

/// Interposed `symlinkat`: the link's content is stored as given.
#[unsafe(no_mangle)]
pub extern "C" fn symlinkat(target: *const c_char, d: c_int, link: *const c_char) -> c_int {
    match shipped_at(d, link) {
        Some(p) if !target.is_null() => {
            // SAFETY: a non-null path argument is NUL-terminated.
            let t = unsafe { std::ffi::CStr::from_ptr(target) }
                .to_bytes()
                .to_vec();
            ret(call(p::SYMLINK, &(buf(t), buf(p))))
        }
        _ => {
            call_real!(symlinkat: fn(*const c_char, c_int, *const c_char) -> c_int, target, d, link)
        }
    }
}

/// Interposed `chmod`.
#[unsafe(no_mangle)]
pub extern "C" fn chmod(path: *const c_char, mode: mode_t) -> c_int {
    match shipped(path) {
        Some(p) => ret(call(p::CHMOD, &(Target::Path(buf(p)), mode))),
        None => call_real!(chmod: fn(*const c_char, mode_t) -> c_int, path, mode),
    }
}

/// Interposed `fchmodat`.
#[unsafe(no_mangle)]
pub extern "C" fn fchmodat(d: c_int, path: *const c_char, mode: mode_t, fl: c_int) -> c_int {
    match shipped_at(d, path) {
        Some(p) => ret(call(p::CHMOD, &(Target::Path(buf(p)), mode))),
        None => {
            call_real!(fchmodat: fn(c_int, *const c_char, mode_t, c_int) -> c_int, d, path, mode, fl)
        }
    }
}

/// Interposed `fchmod`.
#[unsafe(no_mangle)]
pub extern "C" fn fchmod(fd: c_int, mode: mode_t) -> c_int {
    match table::get(fd) {
        Some(d) => ret(handle(&d).and_then(|t| call(p::CHMOD, &(t, mode)))),
        None => call_real!(fchmod: fn(c_int, mode_t) -> c_int, fd, mode),
    }
}

/// `chown` of `t` on the server, which applies the caller's rights (`-1`: unchanged).
fn chown_target(t: Result<Target, c_int>, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
    let keep = |v: u32| (v != u32::MAX).then_some(v);
    ret(t.and_then(|t| call(p::CHOWN, &(t, keep(uid), keep(gid)))))
}

/// `chown` of shipped path `p`, following a final symbolic link if `follow` (the
/// server changes the link itself).
fn chown_path(p: Vec<u8>, uid: libc::uid_t, gid: libc::gid_t, follow: bool) -> c_int {
    if follow {
        let link = call(p::STAT, &(Target::Path(buf(p.clone())), false))
            .is_ok_and(|a: Attr| a.mode & libc::S_IFMT == libc::S_IFLNK);
        if let (true, Some(cfg)) = (link, crate::config()) {
            let named = [cfg.mount(), &p[..]].concat();
            return match crate::compat::canonical(&named).map(std::ffi::CString::new) {
                // Wherever it leads (shipped or local), without a link to follow now.
                Ok(Ok(target)) => lchown(target.as_ptr(), uid, gid),
                Ok(Err(_)) => fail(libc::EINVAL),
                Err(e) => fail(e),
            };
        }
    }
    chown_target(Ok(Target::Path(buf(p))), uid, gid)
}

/// Interposed `fchown`.
#[unsafe(no_mangle)]
pub extern "C" fn fchown(fd: c_int, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
    match table::get(fd) {
        Some(d) => chown_target(handle(&d), uid, gid),
        None => call_real!(fchown: fn(c_int, libc::uid_t, libc::gid_t) -> c_int, fd, uid, gid),
    }
}

/// Interposed `fchownat` (`chown`/`lchown` in glibc call it internally).
#[unsafe(no_mangle)]
pub extern "C" fn fchownat(
    d: c_int,
    path: *const c_char,
    uid: libc::uid_t,
    gid: libc::gid_t,
    fl: c_int,
) -> c_int {
    // SAFETY: a non-null path is NUL-terminated.
    let empty = !path.is_null() && unsafe { *path } == 0;
    if empty && fl & libc::AT_EMPTY_PATH != 0 {
        return fchown(d, uid, gid);
    }
    match shipped_at(d, path) {
        Some(p) => chown_path(p, uid, gid, fl & libc::AT_SYMLINK_NOFOLLOW == 0),
        None => {
            call_real!(fchownat: fn(c_int, *const c_char, libc::uid_t, libc::gid_t, c_int) -> c_int,
            d, path, uid, gid, fl)
        }
    }
}

/// Interposed `lchown`.
#[unsafe(no_mangle)]
pub extern "C" fn lchown(path: *const c_char, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
    match shipped(path) {
        Some(p) => chown_path(p, uid, gid, false),
        None => {
            call_real!(lchown: fn(*const c_char, libc::uid_t, libc::gid_t) -> c_int, path, uid, gid)
        }
    }
}

/// Interposed `chown`.
#[unsafe(no_mangle)]
pub extern "C" fn chown(path: *const c_char, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
    match shipped(path) {
        Some(p) => chown_path(p, uid, gid, true),
        None => {
            call_real!(chown: fn(*const c_char, libc::uid_t, libc::gid_t) -> c_int, path, uid, gid)
        }
    }
}

fn set_time(t: *const libc::timespec, i: usize) -> SetTime {
    if t.is_null() {
        return SetTime::Now;
    }
    // SAFETY: a non-null times argument points to two timespecs.
    let t = unsafe { *t.add(i) };
    match t.tv_nsec {
        libc::UTIME_NOW => SetTime::Now,
        libc::UTIME_OMIT => SetTime::Omit,
        n => SetTime::At(Time {
            sec: t.tv_sec,
            nsec: n as u32,
        }),
    }
}

/// Interposed `utimensat`.
#[unsafe(no_mangle)]
pub extern "C" fn utimensat(
    d: c_int,
    path: *const c_char,
    t: *const libc::timespec,
    fl: c_int,
) -> c_int {
    let target = if path.is_null() {
        table::get(d).map(|x| handle(&x))
    } else {
        shipped_at(d, path).map(|p| Ok(Target::Path(buf(p))))
    };
    match target {
        Some(Ok(tg)) => {
            let follow = fl & libc::AT_SYMLINK_NOFOLLOW == 0;
            ret(call(
                p::UTIMENS,
                &(tg, set_time(t, 0), set_time(t, 1), follow),
            ))
        }
        Some(Err(e)) => fail(e),
        None => {
            call_real!(utimensat: fn(c_int, *const c_char, *const libc::timespec, c_int) -> c_int,
            d, path, t, fl)
        }
    }
}

/// Interposed `futimens`.
#[unsafe(no_mangle)]
pub extern "C" fn futimens(fd: c_int, t: *const libc::timespec) -> c_int {
    match table::get(fd) {
        Some(d) => {
            ret(handle(&d)
                .and_then(|tg| call(p::UTIMENS, &(tg, set_time(t, 0), set_time(t, 1), true))))
        }
        None => call_real!(futimens: fn(c_int, *const libc::timespec) -> c_int, fd, t),
    }
}

/// Interposed `truncate`.
#[unsafe(no_mangle)]
pub extern "C" fn truncate(path: *const c_char, len: off_t) -> c_int {
    match shipped(path) {
        Some(_) if len < 0 => fail(libc::EINVAL),
        Some(p) => ret(call(p::TRUNCATE, &(Target::Path(buf(p)), len as u64))),
        None => call_real!(truncate: fn(*const c_char, off_t) -> c_int, path, len),
    }
}

crate::real::alias! {
    safe stat64 => stat(path: *const c_char, st: *mut libc::stat) -> c_int;
    safe lstat64 => lstat(path: *const c_char, st: *mut libc::stat) -> c_int;
    safe fstat64 => fstat(fd: c_int, st: *mut libc::stat) -> c_int;
    safe fstatat => stat_at(d: c_int, path: *const c_char, st: *mut libc::stat, fl: c_int) -> c_int;
    safe fstatat64 => stat_at(d: c_int, path: *const c_char, st: *mut libc::stat, fl: c_int) -> c_int;
    // The system call's name, exported by some C libraries.
    safe newfstatat => stat_at(d: c_int, path: *const c_char, st: *mut libc::stat, fl: c_int) -> c_int;
    safe truncate64 => truncate(path: *const c_char, len: off_t) -> c_int;
}
