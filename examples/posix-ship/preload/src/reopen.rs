//! `freopen` where a shipped file is involved: the C library's reopens its own stream
//! with its internal calls, which this library does not see (a program's
//! `freopen("/fwd/rank.log", "w", stdout)` wrote into the placeholder descriptor).
//!
//! - `stdin`, `stdout` or `stderr` (however it stands now): the file is opened and moved
//!   onto descriptor 0, 1 or 2 (`dup2`), which makes a shipped stream stand in for the
//!   standard one while it is shipped, or gives the C library's back when it stops
//!   being so (`crate::stdio`); the stream standing for it now is returned.
//! - A shipped stream, reopened with the same access mode: the new file takes over its
//!   descriptor, and the stream, emptied, goes on with it.
//! - Any other stream (another mode, or the C library's own for a shipped path): it is
//!   closed, and a new stream on the file is returned (programs use the stream
//!   `freopen` returns; one kept from before does not follow).
//!
//! A shipped stream's mode cannot change without a path (`freopen(NULL, …)`): `EINVAL`.

use libc::{c_char, c_int};

use crate::files;
use crate::real::call_real;
use crate::stdio::{__fpurge, mode_flags, shipped_stream, standard_now, standard_of, stream};
use crate::{fail, shipped};

/// What to do instead of the C library's `freopen`, or `None` to let it.
fn reopen(path: *const c_char, mode: *const c_char, f: *mut libc::FILE) -> Option<*mut libc::FILE> {
    let ours = shipped_stream(f);
    let standard = standard_of(f);
    if path.is_null() {
        return ours.map(|_| {
            fail(libc::EINVAL);
            std::ptr::null_mut()
        });
    }
    let theirs_stays_theirs = standard.is_none_or(|n| shipped_stream(standard_now(n)).is_none());
    if shipped(path).is_none() && ours.is_none() && theirs_stays_theirs {
        return None;
    }
    if mode.is_null() {
        fail(libc::EINVAL);
        return Some(std::ptr::null_mut());
    }
    // SAFETY: a non-null mode is NUL-terminated.
    let Some(flags) = mode_flags(unsafe { std::ffi::CStr::from_ptr(mode) }.to_bytes()) else {
        fail(libc::EINVAL);
        return Some(std::ptr::null_mut());
    };
    // SAFETY: `f` is the caller's open stream (freopen's contract).
    unsafe { libc::fflush(f) };
    let fd = files::open(path, flags, 0o666);
    if fd < 0 {
        return Some(std::ptr::null_mut());
    }
    if let Some(n) = standard {
        let moved = files::dup2(fd, n);
        files::close(fd);
        return Some(if moved < 0 {
            std::ptr::null_mut()
        } else {
            standard_now(n)
        });
    }
    let same_mode = ours.and_then(crate::table::get).is_some_and(|d| {
        *crate::table::lock(&d.flags) & libc::O_ACCMODE == flags & libc::O_ACCMODE
    }) && crate::table::get(fd).is_some();
    if let (Some(old), true) = (ours, same_mode) {
        let moved = files::dup2(fd, old);
        files::close(fd);
        if moved < 0 {
            return Some(std::ptr::null_mut());
        }
        // SAFETY: `f` is the caller's open stream; what it held was for the old file.
        unsafe {
            __fpurge(f);
            libc::clearerr(f);
        }
        return Some(f);
    }
    // SAFETY: as above; the stream is replaced by the one returned.
    unsafe { libc::fclose(f) };
    Some(if crate::table::get(fd).is_some() {
        stream(fd, mode)
    } else {
        call_real!(fdopen: fn(c_int, *const c_char) -> *mut libc::FILE, fd, mode)
    })
}

/// Interposed `freopen`.
#[unsafe(no_mangle)]
pub extern "C" fn freopen(
    path: *const c_char,
    mode: *const c_char,
    f: *mut libc::FILE,
) -> *mut libc::FILE {
    reopen(path, mode, f).unwrap_or_else(|| {
        call_real!(freopen: fn(*const c_char, *const c_char, *mut libc::FILE) -> *mut libc::FILE, path, mode, f)
    })
}

/// Interposed `freopen64`.
#[unsafe(no_mangle)]
pub extern "C" fn freopen64(
    path: *const c_char,
    mode: *const c_char,
    f: *mut libc::FILE,
) -> *mut libc::FILE {
    reopen(path, mode, f).unwrap_or_else(|| {
        call_real!(freopen64: fn(*const c_char, *const c_char, *mut libc::FILE) -> *mut libc::FILE, path, mode, f)
    })
}
