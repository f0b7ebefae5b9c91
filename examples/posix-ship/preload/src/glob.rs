//! `glob(3)` over shipped directories: the C library's `glob` reads directories with its
//! internal calls, which this library does not see (`glob("/fwd/*.dat")` found nothing).
//! Its `GLOB_ALTDIRFUNC` extension takes the directory and status functions from the
//! caller's `glob_t`: this library's own `opendir`, `readdir`, `closedir`, `stat` and
//! `lstat`, which go to the kernel for every path outside the mount. A caller that sets
//! `GLOB_ALTDIRFUNC` itself keeps its functions.

use libc::{c_char, c_int, c_void};

use crate::real::call_real;

/// glibc's `GLOB_ALTDIRFUNC` (glob.h).
const GLOB_ALTDIRFUNC: c_int = 1 << 9;

/// glibc's `glob_t` (and `glob64_t`, the same on 64-bit targets, whose `dirent`/`stat`
/// are those of 64 bits: this library is built for 64-bit glibc targets), whose function
/// fields the libc crate keeps private.
#[repr(C)]
pub struct Glob {
    pathc: usize,
    pathv: *mut *mut c_char,
    offs: usize,
    flags: c_int,
    closedir: extern "C" fn(*mut c_void),
    readdir: extern "C" fn(*mut c_void) -> *mut libc::dirent,
    opendir: extern "C" fn(*const c_char) -> *mut c_void,
    lstat: extern "C" fn(*const c_char, *mut libc::stat) -> c_int,
    stat: extern "C" fn(*const c_char, *mut libc::stat) -> c_int,
}

extern "C" fn g_closedir(d: *mut c_void) {
    crate::dirs::closedir(d.cast());
}

extern "C" fn g_readdir(d: *mut c_void) -> *mut libc::dirent {
    crate::dirs::readdir(d.cast())
}

extern "C" fn g_opendir(p: *const c_char) -> *mut c_void {
    crate::dirs::opendir(p).cast()
}

/// `flags` and `g` for the C library's `glob`: this library's directory functions,
/// unless the caller brought its own or the library is not at work.
///
/// # Safety
/// `g` is a valid `glob_t` (glob's contract).
unsafe fn prepare(flags: c_int, g: *mut Glob) -> c_int {
    let riding = crate::config().is_none_or(|c| c.ride.is_some());
    if flags & GLOB_ALTDIRFUNC != 0 || riding || g.is_null() {
        return flags;
    }
    // SAFETY: the caller's glob_t, written before the call reads it.
    unsafe {
        (*g).closedir = g_closedir;
        (*g).readdir = g_readdir;
        (*g).opendir = g_opendir;
        (*g).lstat = crate::paths::lstat;
        (*g).stat = crate::paths::stat;
    }
    flags | GLOB_ALTDIRFUNC
}

/// The error callback `glob` takes.
type ErrFn = Option<extern "C" fn(*const c_char, c_int) -> c_int>;

/// Interposed `glob`.
///
/// # Safety
/// As `glob(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glob(pat: *const c_char, flags: c_int, err: ErrFn, g: *mut Glob) -> c_int {
    // SAFETY: the caller's contract.
    let flags = unsafe { prepare(flags, g) };
    call_real!(glob: fn(*const c_char, c_int, ErrFn, *mut Glob) -> c_int, pat, flags, err, g)
}

crate::real::alias! {
    unsafe glob64 => glob(pat: *const c_char, flags: c_int, err: ErrFn, g: *mut Glob) -> c_int;
}
