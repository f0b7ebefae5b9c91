//! `freopen` where a shipped file is involved: the C library's reopens its own stream
//! with its internal calls, which this library does not see (a program's
//! `freopen("/fwd/rank.log", "w", stdout)` wrote into the placeholder descriptor).
//!
//! - `stdin`, `stdout` or `stderr` (however it stands now): the file is opened and moved
//!   onto descriptor 0, 1 or 2 (`dup2`), which makes a shipped stream stand in for the
//!   standard one while it is shipped, or gives the C library's back when it stops
//!   being so (`crate::stdio`); the stream standing for it now is returned.
//! - A shipped stream, reopened with the same access mode (on a shipped file or a local
//!   one): the new file takes over its descriptor, and the stream, emptied, goes on with
//!   it.
//! - Another access mode for a shipped stream, or the C library's own stream (not a
//!   standard one) for a shipped path: `EOPNOTSUPP`, the stream closed as by any failed
//!   `freopen` (POSIX), never freed under a program that goes on using it.
//!
//! A shipped stream's mode cannot change without a path (`freopen(NULL, …)`): `EINVAL`.

use libc::{c_char, c_int};

use crate::files;
use crate::real::call_real;
use crate::stdio::{__fpurge, mode_flags, shipped_stream, standard_now, standard_of};
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
    // A reopen that fails closes the stream, as POSIX has it: the program goes on with
    // the stream returned, or none (never with a stream freed under it).
    let failed = |e: c_int| {
        // SAFETY: as above; nothing uses `f` after this.
        unsafe { libc::fclose(f) };
        fail(e);
        Some(std::ptr::null_mut())
    };
    let fd = files::open(path, flags, 0o666);
    if fd < 0 {
        return failed(crate::last_errno());
    }
    let moved = |to: c_int| {
        let r = files::dup2(fd, to);
        files::close(fd);
        r >= 0
    };
    if let Some(n) = standard {
        return if moved(n) {
            Some(standard_now(n))
        } else {
            failed(crate::last_errno())
        };
    }
    // The C library's own stream would read and write a shipped file with its internal
    // calls; a shipped stream cannot change its access mode in place.
    let in_place = ours.filter(|&old| {
        files::fcntl(old, libc::F_GETFL, 0) & libc::O_ACCMODE == flags & libc::O_ACCMODE
    });
    let Some(old) = in_place else {
        files::close(fd);
        return failed(libc::EOPNOTSUPP);
    };
    if !moved(old) {
        return failed(crate::last_errno());
    }
    // SAFETY: `f` is the caller's open stream; what it held was for the old file.
    unsafe {
        __fpurge(f);
        libc::clearerr(f);
    }
    Some(f)
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

crate::real::alias! {
    safe freopen64 => freopen(path: *const c_char, mode: *const c_char, f: *mut libc::FILE) -> *mut libc::FILE;
}
