//! A working directory inside the mount: `chdir`, `fchdir`, `getcwd`.
//!
//! The kernel has no such directory, so the interposer keeps it: relative paths resolve
//! against it (`.` and `..` lexically, as a shell's `cd` does), `getcwd` names it, and
//! programs this one runs inherit it through `POSIX_SHIP_CWD` (set at each change), so
//! `cd /fwd/proj && make` and `sh -c 'cd /fwd/d; ls; cat f'` work. A relative path that
//! climbs above the mount stays at its root (as in a chroot), so that it never names a
//! local file by accident.

use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use libc::{c_char, c_int};
use posix_ship::proto::{self as p, Target};
use serde_bytes::ByteBuf;

use crate::real::call_real;
use crate::{call, config, fail, table};

/// The variable a child reads its working directory inside the mount from.
pub const ENV: &str = "POSIX_SHIP_CWD";

/// The working directory beneath the export (`None`: the kernel's), once read.
pub(crate) static CWD: Mutex<Option<Option<Vec<u8>>>> = Mutex::new(None);

/// [`LOCAL`] once known to be the kernel's: relative paths then cost one atomic load.
static WHERE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const LOCAL: u8 = 1;
const INSIDE: u8 = 2;

/// The working directory beneath the export, if it is inside the mount.
pub fn get() -> Option<Vec<u8>> {
    if WHERE.load(Ordering::Acquire) == LOCAL {
        return None;
    }
    let mut c = table::lock(&CWD);
    let d = c.get_or_insert_with(inherited).clone();
    WHERE.store(if d.is_some() { INSIDE } else { LOCAL }, Ordering::Release);
    d
}

/// The `POSIX_SHIP_CWD=...` entry of the environment: a buffer handed to `putenv` and
/// rewritten in place after, because `setenv` may free the environment array another
/// thread's `getenv` is reading (glibc marks it MT-unsafe). A reader racing a change may
/// see a mix of the two values, never freed memory. Allocated with `malloc`, not static:
/// perl frees every entry of a changed environment at exit (a static one aborted it).
static SLOT: AtomicPtr<AtomicU8> = AtomicPtr::new(std::ptr::null_mut());
const SLOT_LEN: usize = ENV.len() + 2 + libc::PATH_MAX as usize;

unsafe extern "C" {
    static mut environ: *mut *mut c_char;
}

/// The slot, and whether it is new (to be put into the environment once written): a
/// new one also when the program dropped the old one from its environment (perl puts
/// back its own array at exit, after freeing ours).
fn slot() -> Option<(&'static [AtomicU8], bool)> {
    let p = SLOT.load(Ordering::Acquire);
    // (Ours still: the same address and our name; a freed slot's address could come
    // back for another entry.)
    // SAFETY: reading the C library's `environ` pointer (a NULL-terminated array of
    // entries, which `entries` walks).
    let env = unsafe { environ }.cast::<*const c_char>().cast_const();
    let listed = !p.is_null()
        && crate::exec::entries(env).any(|e| {
            e.as_ptr().cast::<AtomicU8>() == p && e.to_bytes().starts_with(ENV.as_bytes())
        });
    let (p, new) = if listed {
        (p, false)
    } else {
        // SAFETY: a zeroed allocation, never freed by us (the environment keeps it).
        let m = unsafe { libc::calloc(SLOT_LEN, 1) }.cast::<AtomicU8>();
        if m.is_null() {
            return None;
        }
        SLOT.store(m, Ordering::Release);
        (m, true)
    };
    // SAFETY: `SLOT_LEN` bytes allocated above, alive while the environment lists them;
    // `AtomicU8` has `u8`'s layout.
    Some((unsafe { std::slice::from_raw_parts(p, SLOT_LEN) }, new))
}

/// Makes `dir` (a path under the mount; empty: none) what programs started now inherit.
fn publish(dir: &[u8]) {
    if dir.is_empty() && SLOT.load(Ordering::Acquire).is_null() {
        // Nothing was handed down yet: the environment stays untouched.
        return;
    }
    let name = ENV.as_bytes();
    if name.len() + 2 + dir.len() > SLOT_LEN || dir.contains(&0) {
        // Too long for the slot (a directory deeper than PATH_MAX): none is handed down.
        return publish(b"");
    }
    let Some((slot, new)) = slot() else {
        return;
    };
    // The value emptied first, then written, then its first byte: a racing reader sees
    // the old value, an empty one or a prefix of the new one.
    slot[name.len() + 1].store(0, Ordering::Release);
    for (i, b) in name.iter().chain(b"=").enumerate() {
        slot[i].store(*b, Ordering::Relaxed);
    }
    let v = name.len() + 1;
    for (i, b) in dir.iter().enumerate().skip(1) {
        slot[v + i].store(*b, Ordering::Relaxed);
    }
    slot[v + dir.len()].store(0, Ordering::Release);
    if let Some(b) = dir.first() {
        slot[v].store(*b, Ordering::Release);
    }
    if new {
        // SAFETY: a NUL-terminated `NAME=value` string that lives as long as the
        // environment lists it; putenv keeps the pointer, and we only change its bytes.
        unsafe { libc::putenv(slot.as_ptr() as *mut c_char) };
    }
}

/// What the parent handed down.
fn inherited() -> Option<Vec<u8>> {
    let cfg = config()?;
    let v = std::env::var_os(ENV)?;
    let v = std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec();
    let rest = v.strip_prefix(cfg.mount.as_slice())?;
    match rest.first() {
        None => Some(b"/".to_vec()),
        Some(b'/') => Some(clamped(rest)),
        Some(_) => None,
    }
}

fn set(dir: Option<Vec<u8>>) {
    let mut c = table::lock(&CWD);
    match (&dir, config()) {
        (Some(d), Some(cfg)) => {
            let mut full = cfg.mount.clone();
            if d.as_slice() != b"/" {
                full.extend_from_slice(d);
            }
            publish(&full);
        }
        _ => publish(b""),
    }
    WHERE.store(
        if dir.is_some() { INSIDE } else { LOCAL },
        Ordering::Release,
    );
    *c = Some(dir);
}

/// A relative path against the working directory inside the mount: the path beneath
/// the export (`None`: the working directory is the kernel's). A `..` at the mount's root
/// stays there, as in a chroot: a relative path never names a local file by accident.
pub fn resolve(rel: &[u8]) -> Option<Vec<u8>> {
    let mut full = get()?;
    full.push(b'/');
    full.extend_from_slice(rel);
    Some(clamped(&full))
}

/// `path` (beneath the export, absolute) with `.` and `..` resolved lexically, a `..`
/// at the root staying there.
pub fn clamped(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return b"/".to_vec();
    }
    parts
        .iter()
        .flat_map(|p| [&b"/"[..], p])
        .flatten()
        .copied()
        .collect()
}

/// Makes `dir` (beneath the export) the working directory if it is one we may enter.
fn enter(dir: Vec<u8>) -> c_int {
    let dir = clamped(&dir);
    let a = match call(p::STAT, &(Target::Path(ByteBuf::from(dir.clone())), true)) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if !a.is_dir() {
        return fail(libc::ENOTDIR);
    }
    if let Err(e) = call(p::ACCESS, &(ByteBuf::from(dir.clone()), libc::X_OK)) {
        return fail(e);
    }
    set(Some(dir));
    0
}

/// Interposed `chdir`.
#[unsafe(no_mangle)]
pub extern "C" fn chdir(path: *const c_char) -> c_int {
    match crate::shipped(path) {
        Some(p) => enter(p),
        None => {
            let r = call_real!(chdir: fn(*const c_char) -> c_int, path);
            if r == 0 {
                set(None);
            }
            r
        }
    }
}

/// Interposed `fchdir`.
#[unsafe(no_mangle)]
pub extern "C" fn fchdir(fd: c_int) -> c_int {
    match table::get(fd) {
        Some(d) => enter(d.path.clone()),
        None => {
            let r = call_real!(fchdir: fn(c_int) -> c_int, fd);
            if r == 0 {
                set(None);
            }
            r
        }
    }
}

/// The variable and value that hand the working directory inside the mount to a
/// program this one runs, if it is inside the mount.
pub fn env() -> Option<(&'static str, Vec<u8>)> {
    Some((ENV, name()?))
}

/// The name `getcwd` gives for a directory inside the mount.
fn name() -> Option<Vec<u8>> {
    let d = get()?;
    let mut full = config()?.mount.clone();
    if d.as_slice() != b"/" {
        full.extend_from_slice(&d);
    }
    Some(full)
}

/// Interposed `getcwd` (with glibc's allocation when `buf` is null).
#[unsafe(no_mangle)]
pub extern "C" fn getcwd(buf: *mut c_char, size: libc::size_t) -> *mut c_char {
    let Some(n) = name() else {
        return call_real!(getcwd: fn(*mut c_char, libc::size_t) -> *mut c_char, buf, size);
    };
    let need = n.len() + 1;
    let out = if buf.is_null() {
        let len = if size == 0 { need } else { size };
        if len < need {
            fail(libc::ERANGE);
            return std::ptr::null_mut();
        }
        // SAFETY: plain allocation; the caller frees it, as glibc's getcwd documents.
        let p = unsafe { libc::malloc(len) }.cast::<c_char>();
        if p.is_null() {
            fail(libc::ENOMEM);
            return p;
        }
        p
    } else if size < need {
        fail(libc::ERANGE);
        return std::ptr::null_mut();
    } else {
        buf
    };
    // SAFETY: `out` has room for `need` bytes (checked or allocated above).
    unsafe {
        std::ptr::copy_nonoverlapping(n.as_ptr().cast(), out, n.len());
        *out.add(n.len()) = 0;
    }
    out
}

/// Interposed `get_current_dir_name`.
#[unsafe(no_mangle)]
pub extern "C" fn get_current_dir_name() -> *mut c_char {
    match name() {
        Some(_) => getcwd(std::ptr::null_mut(), 0),
        None => call_real!(get_current_dir_name: fn() -> *mut c_char,),
    }
}

#[cfg(test)]
mod tests {
    use super::clamped;

    #[test]
    fn dots_resolve_lexically_and_never_above_the_root() {
        assert_eq!(clamped(b"/a/./b/../c/"), b"/a/c");
        assert_eq!(clamped(b"/"), b"/");
        assert_eq!(clamped(b"/a/.."), b"/");
        assert_eq!(clamped(b"//x//y"), b"/x/y");
        assert_eq!(clamped(b"/a/../../../etc"), b"/etc", "stays at the root");
        assert_eq!(clamped(b"/.."), b"/");
    }
}
