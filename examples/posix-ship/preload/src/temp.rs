//! `mkstemp` and its variants, and `mkdtemp`, on shipped templates: the C library makes
//! temporary files and directories with its internal `open` and `mkdir`, which no
//! interposer sees, so the name is chosen and the file (`O_CREAT | O_EXCL`, mode 0600) or
//! directory (mode 0700) created here, as glibc does.

use libc::{c_char, c_int};

use crate::files::ship_open;
use crate::real::call_real;
use crate::{fail, shipped};

/// Letters a generated name is made of (glibc's).
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Fills the six `X`s before `suffix` bytes of `template` and creates the file; the
/// descriptor, or `None` if the template is not shipped.
fn make(template: *mut c_char, suffix: c_int, flags: c_int) -> Option<c_int> {
    let flags = (flags & !libc::O_ACCMODE) | libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
    named(template, suffix, |path| ship_open(path, flags, 0o600))
}

/// Fills the six `X`s before `suffix` bytes of `template` until `create` (given the
/// shipped path) does not fail with `EEXIST`; its result, or `None` if the template is
/// not shipped.
fn named(template: *mut c_char, suffix: c_int, create: impl Fn(Vec<u8>) -> c_int) -> Option<c_int> {
    let p = shipped(template)?;
    // SAFETY: `template` is the caller's NUL-terminated, writable buffer.
    let len = unsafe { libc::strlen(template) };
    let suffix = usize::try_from(suffix).unwrap_or(usize::MAX);
    if suffix > len || len - suffix < 6 {
        return Some(fail(libc::EINVAL));
    }
    let at = len - suffix - 6;
    // SAFETY: within the buffer's `len` bytes.
    let x = unsafe { std::slice::from_raw_parts_mut(template.cast::<u8>(), len) };
    if &x[at..at + 6] != b"XXXXXX" {
        return Some(fail(libc::EINVAL));
    }
    // The shipped path must end with the template's `XXXXXX` and suffix, as given.
    if !p.ends_with(&x[at..]) {
        return Some(fail(libc::EINVAL));
    }
    let tail = p.len() - (len - at);
    for _ in 0..100 {
        let mut r = [0u8; 6];
        if getrandom::fill(&mut r).is_err() {
            return Some(fail(libc::EIO));
        }
        let name: Vec<u8> = r
            .iter()
            .map(|b| LETTERS[*b as usize % LETTERS.len()])
            .collect();
        x[at..at + 6].copy_from_slice(&name);
        let mut path = p.clone();
        path[tail..tail + 6].copy_from_slice(&name);
        let r = create(path);
        if r >= 0 || crate::last_errno() != libc::EEXIST {
            return Some(r);
        }
    }
    Some(fail(libc::EEXIST))
}

/// Interposed `mkstemp`.
#[unsafe(no_mangle)]
pub extern "C" fn mkstemp(t: *mut c_char) -> c_int {
    make(t, 0, 0).unwrap_or_else(|| call_real!(mkstemp: fn(*mut c_char) -> c_int, t))
}

/// Interposed `mkostemp`.
#[unsafe(no_mangle)]
pub extern "C" fn mkostemp(t: *mut c_char, flags: c_int) -> c_int {
    make(t, 0, flags)
        .unwrap_or_else(|| call_real!(mkostemp: fn(*mut c_char, c_int) -> c_int, t, flags))
}

/// Interposed `mkstemps`.
#[unsafe(no_mangle)]
pub extern "C" fn mkstemps(t: *mut c_char, suffix: c_int) -> c_int {
    make(t, suffix, 0)
        .unwrap_or_else(|| call_real!(mkstemps: fn(*mut c_char, c_int) -> c_int, t, suffix))
}

/// Interposed `mkostemps`.
#[unsafe(no_mangle)]
pub extern "C" fn mkostemps(t: *mut c_char, suffix: c_int, flags: c_int) -> c_int {
    make(t, suffix, flags).unwrap_or_else(
        || call_real!(mkostemps: fn(*mut c_char, c_int, c_int) -> c_int, t, suffix, flags),
    )
}

/// Interposed `mkdtemp`.
#[unsafe(no_mangle)]
pub extern "C" fn mkdtemp(t: *mut c_char) -> *mut c_char {
    let made = named(t, 0, |path| crate::paths::mkdir_shipped(path, 0o700));
    match made {
        Some(0) => t,
        Some(_) => std::ptr::null_mut(),
        None => call_real!(mkdtemp: fn(*mut c_char) -> *mut c_char, t),
    }
}

crate::real::alias! {
    safe mkstemp64 => mkstemp(t: *mut c_char) -> c_int;
    safe mkostemp64 => mkostemp(t: *mut c_char, flags: c_int) -> c_int;
    safe mkstemps64 => mkstemps(t: *mut c_char, suffix: c_int) -> c_int;
    safe mkostemps64 => mkostemps(t: *mut c_char, suffix: c_int, flags: c_int) -> c_int;
}
