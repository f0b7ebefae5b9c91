//! Calls that cannot act on a shipped file as the kernel would: each is emulated or
//! refused with the errno that makes programs fall back to plain reads and writes, and
//! never reaches the kernel on the placeholder descriptor.

use libc::{c_char, c_int, c_uint, c_ulong, c_void, dev_t, iovec, mode_t, off_t, size_t, ssize_t};

use crate::real::call_real;
use crate::{fail, fail_sz, table, warn_once};

fn either(a: c_int, b: c_int) -> bool {
    table::get(a).is_some() || table::get(b).is_some()
}

/// Interposed `mmap` of a shipped file: a mapping nobody writes through (private, or
/// shared read-only) is filled with the file's bytes by reads (what git, `file` and
/// loaders need: later changes to the file are not seen, which POSIX leaves open for
/// private mappings); a writable shared mapping is refused (`ENODEV`: its stores could
/// never reach the server).
#[unsafe(no_mangle)]
pub extern "C" fn mmap(
    a: *mut c_void,
    n: size_t,
    prot: c_int,
    fl: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    if fl & libc::MAP_ANONYMOUS == 0 && table::get(fd).is_some() {
        if fl & libc::MAP_SHARED != 0 && prot & libc::PROT_WRITE != 0 {
            warn_once("a writable shared mmap of a shipped file is not supported (ENODEV)");
            fail(libc::ENODEV);
            return libc::MAP_FAILED;
        }
        let keep = fl & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE | libc::MAP_POPULATE);
        let m = call_real!(mmap: fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void,
            a, n, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | keep, -1, 0);
        return if m == libc::MAP_FAILED {
            m
        } else {
            fill(m, n, prot, fd, off)
        };
    }
    if fl & libc::MAP_ANONYMOUS == 0 {
        // A mapping sees the kernel's pages: the file stops riding.
        crate::ride::stop(fd);
    }
    call_real!(mmap: fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void, a, n, prot, fl, fd, off)
}

/// Fills the fresh anonymous mapping `m` of `n` bytes with the file's bytes from `off`
/// (zeros past its end) and gives it the protection asked for.
fn fill(m: *mut c_void, n: size_t, prot: c_int, fd: c_int, off: off_t) -> *mut c_void {
    let mut done = 0usize;
    while done < n {
        // SAFETY: `m` maps `n` writable bytes; the read fills at most `n - done` of them.
        let r = unsafe {
            crate::files::pread(
                fd,
                m.cast::<u8>().add(done).cast(),
                n - done,
                off + done as off_t,
            )
        };
        if r < 0 {
            let e = crate::last_errno();
            // SAFETY: unmapping what was just mapped.
            unsafe { libc::munmap(m, n) };
            fail(e);
            return libc::MAP_FAILED;
        }
        if r == 0 {
            break;
        }
        done += r as usize;
    }
    // SAFETY: changing the protection of our own mapping to what the caller asked.
    if unsafe { libc::mprotect(m, n, prot) } != 0 {
        let e = crate::last_errno();
        // SAFETY: as above.
        unsafe { libc::munmap(m, n) };
        fail(e);
        return libc::MAP_FAILED;
    }
    m
}

/// Interposed `copy_file_range`: `EXDEV` when either end is shipped (the copy crosses
/// file systems), so `cp` falls back to read/write.
#[unsafe(no_mangle)]
pub extern "C" fn copy_file_range(
    i: c_int,
    io: *mut i64,
    o: c_int,
    oo: *mut i64,
    n: size_t,
    fl: c_uint,
) -> ssize_t {
    if either(i, o) {
        return fail_sz(libc::EXDEV);
    }
    call_real!(copy_file_range: fn(c_int, *mut i64, c_int, *mut i64, size_t, c_uint) -> ssize_t, i, io, o, oo, n, fl)
}

/// Interposed `sendfile`: `EINVAL` when either end is shipped (the documented fallback cue).
#[unsafe(no_mangle)]
pub extern "C" fn sendfile(o: c_int, i: c_int, off: *mut off_t, n: size_t) -> ssize_t {
    if either(i, o) {
        return fail_sz(libc::EINVAL);
    }
    call_real!(sendfile: fn(c_int, c_int, *mut off_t, size_t) -> ssize_t, o, i, off, n)
}

/// Interposed `splice`: `EINVAL` when either end is shipped (as for a file the kernel
/// cannot splice), so programs fall back to read/write.
#[unsafe(no_mangle)]
pub extern "C" fn splice(
    i: c_int,
    io: *mut i64,
    o: c_int,
    oo: *mut i64,
    n: size_t,
    fl: c_uint,
) -> ssize_t {
    if either(i, o) {
        return fail_sz(libc::EINVAL);
    }
    call_real!(splice: fn(c_int, *mut i64, c_int, *mut i64, size_t, c_uint) -> ssize_t, i, io, o, oo, n, fl)
}

/// Interposed `tee` (pipes only: a shipped end is `EINVAL`, as for any non-pipe).
#[unsafe(no_mangle)]
pub extern "C" fn tee(i: c_int, o: c_int, n: size_t, fl: c_uint) -> ssize_t {
    if either(i, o) {
        return fail_sz(libc::EINVAL);
    }
    call_real!(tee: fn(c_int, c_int, size_t, c_uint) -> ssize_t, i, o, n, fl)
}

/// Interposed `vmsplice` (a pipe only: a shipped descriptor is `EBADF`, as the kernel
/// answers for a non-pipe).
#[unsafe(no_mangle)]
pub extern "C" fn vmsplice(fd: c_int, iov: *const iovec, n: size_t, fl: c_uint) -> ssize_t {
    if table::get(fd).is_some() {
        return fail_sz(libc::EBADF);
    }
    call_real!(vmsplice: fn(c_int, *const iovec, size_t, c_uint) -> ssize_t, fd, iov, n, fl)
}

/// `preadv2`/`pwritev2` flags (linux/fs.h) a shipped file honours: `RWF_HIPRI` is a
/// hint; `RWF_DSYNC` and `RWF_SYNC` make a write the write and then the server's
/// fsync. Others (`RWF_NOWAIT`, `RWF_APPEND`, unknown) are `EOPNOTSUPP`.
const RWF_HIPRI: c_int = 1;
const RWF_DSYNC: c_int = 2;
const RWF_SYNC: c_int = 4;

/// Where a `preadv2`/`pwritev2` on a shipped or ridden file goes: `Ok(None)` to the
/// kernel (not ours; or ridden with flags, which the kernel path honours after the file
/// stops riding), `Ok(Some(at))` shipped at `at` (`None`: the file offset, for -1).
fn v2_target(
    fd: c_int,
    off: off_t,
    flags: c_int,
    allowed: c_int,
) -> Result<Option<Option<u64>>, c_int> {
    if table::get(fd).is_none() {
        if flags != 0 {
            crate::ride::stop(fd);
            return Ok(None);
        }
    } else if flags & !allowed != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    if off == -1 {
        Ok(Some(None))
    } else {
        crate::files::offset(off).map(|o| Some(Some(o)))
    }
}

/// Interposed `preadv2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv2(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    off: off_t,
    fl: c_int,
) -> ssize_t {
    let kernel = || call_real!(preadv2: fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t, fd, iov, cnt, off, fl);
    match v2_target(fd, off, fl, RWF_HIPRI) {
        Err(e) => fail_sz(e),
        Ok(None) => kernel(),
        // SAFETY: preadv2(2)'s contract.
        Ok(Some(at)) => unsafe { crate::files::read_vec(fd, iov, cnt, at, kernel) },
    }
}

/// Interposed `pwritev2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev2(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    off: off_t,
    fl: c_int,
) -> ssize_t {
    let kernel = || call_real!(pwritev2: fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t, fd, iov, cnt, off, fl);
    match v2_target(fd, off, fl, RWF_HIPRI | RWF_DSYNC | RWF_SYNC) {
        Err(e) => fail_sz(e),
        Ok(None) => kernel(),
        Ok(Some(at)) => {
            // SAFETY: pwritev2(2)'s contract.
            let n = unsafe { crate::files::write_vec(fd, iov, cnt, at, kernel) };
            if n >= 0 && fl & (RWF_DSYNC | RWF_SYNC) != 0 && crate::files::fsync(fd) != 0 {
                return -1;
            }
            n
        }
    }
}

/// Interposed `mknodat`: in the mount, a regular file is created as `open(O_CREAT |
/// O_EXCL)` would; other node types are `EPERM`, the kernel's answer on a file system
/// that does not support them (the protocol has no special files: a FIFO or device on
/// the server would be a different object for every client).
#[unsafe(no_mangle)]
pub extern "C" fn mknodat(d: c_int, path: *const c_char, mode: mode_t, dev: dev_t) -> c_int {
    if crate::shipped_at(d, path).is_none() {
        return call_real!(mknodat: fn(c_int, *const c_char, mode_t, dev_t) -> c_int, d, path, mode, dev);
    }
    if !matches!(mode & libc::S_IFMT, 0 | libc::S_IFREG) {
        return fail(libc::EPERM);
    }
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    let fd = crate::files::openat(d, path, flags, mode & 0o7777);
    if fd < 0 {
        return -1;
    }
    crate::files::close(fd)
}

/// Interposed `mknod`.
#[unsafe(no_mangle)]
pub extern "C" fn mknod(path: *const c_char, mode: mode_t, dev: dev_t) -> c_int {
    mknodat(libc::AT_FDCWD, path, mode, dev)
}

/// Interposed `mkfifoat`.
#[unsafe(no_mangle)]
pub extern "C" fn mkfifoat(d: c_int, path: *const c_char, mode: mode_t) -> c_int {
    mknodat(d, path, libc::S_IFIFO | (mode & 0o7777), 0)
}

/// Interposed `mkfifo`.
#[unsafe(no_mangle)]
pub extern "C" fn mkfifo(path: *const c_char, mode: mode_t) -> c_int {
    mkfifoat(libc::AT_FDCWD, path, mode)
}

/// Interposed `fallocate`: shipped (the server's file system decides).
#[unsafe(no_mangle)]
pub extern "C" fn fallocate(fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int {
    let Some(d) = table::get(fd) else {
        return call_real!(fallocate: fn(c_int, c_int, off_t, off_t) -> c_int, fd, mode, off, len);
    };
    if off < 0 || len <= 0 {
        return fail(libc::EINVAL);
    }
    d.ahead.invalidate();
    crate::ret(d.fh().and_then(|fh| {
        crate::call(
            posix_ship::proto::FALLOCATE,
            &(fh, mode, off as u64, len as u64),
        )
    }))
}

/// Interposed `posix_fallocate`: on a shipped file, extends it to `off + len` if shorter.
#[unsafe(no_mangle)]
pub extern "C" fn posix_fallocate(fd: c_int, off: off_t, len: off_t) -> c_int {
    if table::get(fd).is_none() {
        return call_real!(posix_fallocate: fn(c_int, off_t, off_t) -> c_int, fd, off, len);
    }
    let Some(end) = off.checked_add(len).filter(|_| off >= 0 && len > 0) else {
        return libc::EINVAL;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    if crate::paths::fstat(fd, st.as_mut_ptr()) != 0 {
        return crate::last_errno();
    }
    // SAFETY: fstat succeeded and filled it.
    let size = unsafe { st.assume_init() }.st_size;
    if size < end && crate::files::ftruncate(fd, end) != 0 {
        return crate::last_errno();
    }
    0
}

/// Interposed `posix_fadvise`: advice on a shipped file is accepted and ignored.
#[unsafe(no_mangle)]
pub extern "C" fn posix_fadvise(fd: c_int, off: off_t, len: off_t, advice: c_int) -> c_int {
    if table::get(fd).is_some() {
        return 0;
    }
    call_real!(posix_fadvise: fn(c_int, off_t, off_t, c_int) -> c_int, fd, off, len, advice)
}

/// `FICLONE` and `FICLONERANGE` (linux/fs.h).
const FICLONE: c_ulong = 0x4004_9409;
const FICLONERANGE: c_ulong = 0x4020_940d;

/// Interposed `ioctl`: on a shipped file, clones are `EOPNOTSUPP` (cp falls back) and
/// everything else `ENOTTY` (the answer for "not a terminal" and unknown requests).
#[unsafe(no_mangle)]
pub extern "C" fn ioctl(fd: c_int, req: c_ulong, arg: usize) -> c_int {
    let shipped_src = (req == FICLONE || req == FICLONERANGE) && table::get(arg as c_int).is_some();
    if table::get(fd).is_some() || shipped_src {
        return fail(if req == FICLONE || req == FICLONERANGE {
            libc::EOPNOTSUPP
        } else {
            libc::ENOTTY
        });
    }
    call_real!(ioctl: fn(c_int, c_ulong, usize) -> c_int, fd, req, arg)
}

crate::real::alias! {
    safe mmap64 => mmap(a: *mut c_void, n: size_t, prot: c_int, fl: c_int, fd: c_int, off: off_t) -> *mut c_void;
    safe sendfile64 => sendfile(o: c_int, i: c_int, off: *mut off_t, n: size_t) -> ssize_t;
    safe fallocate64 => fallocate(fd: c_int, mode: c_int, off: off_t, len: off_t) -> c_int;
    safe posix_fallocate64 => posix_fallocate(fd: c_int, off: off_t, len: off_t) -> c_int;
    safe posix_fadvise64 => posix_fadvise(fd: c_int, off: off_t, len: off_t, advice: c_int) -> c_int;
    unsafe preadv64v2 => preadv2(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, fl: c_int) -> ssize_t;
    unsafe pwritev64v2 => pwritev2(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t, fl: c_int) -> ssize_t;
}
