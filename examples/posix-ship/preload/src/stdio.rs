//! `fopen` on shipped paths. The C library's stdio reads and writes with its internal
//! system calls, which no interposer sees, so a shipped stream is a `fopencookie` stream
//! whose reads, writes, seeks and close are this library's; `fileno` on it gives the
//! shipped descriptor (a cookie stream has none of its own: git `fstat`s `fileno` of
//! every file it opens).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, c_void, off64_t, size_t, ssize_t};

use crate::files::{self, ship_open};
use crate::real::call_real;
use crate::{fail, shipped, table};

/// `open(2)` flags for an `fopen` mode, or `None` if the mode is malformed.
pub(crate) fn mode_flags(mode: &[u8]) -> Option<c_int> {
    let plus = mode.contains(&b'+');
    let mut f = match (mode.first()?, plus) {
        (b'r', false) => libc::O_RDONLY,
        (b'r', true) => libc::O_RDWR,
        (b'w', false) => libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        (b'w', true) => libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
        (b'a', false) => libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        (b'a', true) => libc::O_RDWR | libc::O_CREAT | libc::O_APPEND,
        _ => return None,
    };
    if mode.contains(&b'x') {
        f |= libc::O_EXCL;
    }
    if mode.contains(&b'e') {
        f |= libc::O_CLOEXEC;
    }
    Some(f)
}

/// glibc's `cookie_io_functions_t` (stdio.h), absent from the libc crate.
#[repr(C)]
struct CookieIo {
    read: extern "C" fn(*mut c_void, *mut c_char, size_t) -> ssize_t,
    write: extern "C" fn(*mut c_void, *const c_char, size_t) -> ssize_t,
    seek: extern "C" fn(*mut c_void, *mut off64_t, c_int) -> c_int,
    close: extern "C" fn(*mut c_void) -> c_int,
}

unsafe extern "C" {
    fn fopencookie(cookie: *mut c_void, mode: *const c_char, io: CookieIo) -> *mut libc::FILE;
}

/// Marks the cookie of a standard stream this library keeps for reuse ([`standard_stream`]).
const STANDARD_COOKIE: usize = 1 << 40;

fn cookie_fd(c: *mut c_void) -> c_int {
    (c as usize & !STANDARD_COOKIE) as c_int
}

extern "C" fn c_read(c: *mut c_void, buf: *mut c_char, n: size_t) -> ssize_t {
    // SAFETY: stdio hands a buffer of n bytes.
    unsafe { files::read(cookie_fd(c), buf.cast(), n) }
}

extern "C" fn c_write(c: *mut c_void, buf: *const c_char, n: size_t) -> ssize_t {
    // SAFETY: stdio hands n bytes.
    let r = unsafe { files::write(cookie_fd(c), buf.cast(), n) };
    // A cookie writer reports failure as 0 bytes written.
    r.max(0)
}

extern "C" fn c_seek(c: *mut c_void, off: *mut off64_t, whence: c_int) -> c_int {
    // SAFETY: stdio passes a valid offset pointer.
    let r = files::lseek(cookie_fd(c), unsafe { *off }, whence);
    if r < 0 {
        return -1;
    }
    // SAFETY: as above.
    unsafe { *off = r };
    0
}

/// Shipped streams and their descriptors, and how many there are (none: `fileno` goes
/// straight to the C library).
pub(crate) static STREAMS: Mutex<Option<HashMap<usize, c_int>>> = Mutex::new(None);
static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn c_close(c: *mut c_void) -> c_int {
    let fd = cookie_fd(c);
    if c as usize & STANDARD_COOKIE != 0 {
        // The program closed the standard stream itself (`fclose(stdout)`): not reused.
        if let Some(s) = STANDARD.get(fd as usize) {
            *table::lock(s) = (0, 0);
        }
    }
    let mut s = table::lock(&STREAMS);
    if let Some(m) = s.as_mut() {
        let before = m.len();
        m.retain(|_, v| *v != fd);
        OPEN_STREAMS.fetch_sub(before - m.len(), Ordering::Release);
    }
    drop(s);
    files::close(fd)
}

/// Interposed `fileno`.
#[unsafe(no_mangle)]
pub extern "C" fn fileno(f: *mut libc::FILE) -> c_int {
    if OPEN_STREAMS.load(Ordering::Acquire) > 0
        && let Some(fd) = table::lock(&STREAMS)
            .as_ref()
            .and_then(|m| m.get(&(f as usize)).copied())
    {
        return fd;
    }
    call_real!(fileno: fn(*mut libc::FILE) -> c_int, f)
}

/// Interposed `fileno_unlocked`.
#[unsafe(no_mangle)]
pub extern "C" fn fileno_unlocked(f: *mut libc::FILE) -> c_int {
    if OPEN_STREAMS.load(Ordering::Acquire) > 0 {
        return fileno(f);
    }
    call_real!(fileno_unlocked: fn(*mut libc::FILE) -> c_int, f)
}

/// The shipped descriptor of stream `f`, if it is a shipped stream.
pub(crate) fn shipped_stream(f: *mut libc::FILE) -> Option<c_int> {
    if OPEN_STREAMS.load(Ordering::Acquire) == 0 {
        return None;
    }
    table::lock(&STREAMS)
        .as_ref()
        .and_then(|m| m.get(&(f as usize)).copied())
}

/// The standard descriptor (0, 1, 2) whose stream `f` is: the C library's `stdin`,
/// `stdout` or `stderr`, or this library's standing in for it.
pub(crate) fn standard_of(f: *mut libc::FILE) -> Option<c_int> {
    (0..3).find(|&fd| {
        let kept = table::lock(&STANDARD[fd as usize]).0;
        // SAFETY: reading the C library's standard stream variable.
        f == unsafe { *standard(fd) } || (kept != 0 && f as usize == kept)
    })
}

/// The stream standing for standard descriptor `fd` now.
pub(crate) fn standard_now(fd: c_int) -> *mut libc::FILE {
    // SAFETY: reading the C library's standard stream variable.
    unsafe { *standard(fd) }
}

/// A shipped stream of `fd`, which is closed if none can be made.
pub(crate) fn stream(fd: c_int, mode: *const c_char) -> *mut libc::FILE {
    let f = stream_keeping(fd, mode);
    if f.is_null() {
        files::close(fd);
    }
    f
}

fn open_stream(path: *const c_char, mode: *const c_char) -> Option<*mut libc::FILE> {
    let p = match shipped(path) {
        Some(p) => Some(p),
        None if crate::maybe_inside(path) => None,
        None => return None,
    };
    if mode.is_null() {
        fail(libc::EINVAL);
        return Some(std::ptr::null_mut());
    }
    // SAFETY: a non-null mode is NUL-terminated.
    let m = unsafe { std::ffi::CStr::from_ptr(mode) }.to_bytes();
    let Some(flags) = mode_flags(m) else {
        fail(libc::EINVAL);
        return Some(std::ptr::null_mut());
    };
    let Some(p) = p else {
        // On the mount ridden on: the kernel opens, and the stream reads and writes
        // through this library if the file is ridden.
        let fd = files::open_at(libc::AT_FDCWD, path, flags, 0o666);
        return Some(if fd < 0 {
            std::ptr::null_mut()
        } else if crate::ride::is_candidate(fd) {
            stream(fd, mode)
        } else {
            call_real!(fdopen: fn(c_int, *const c_char) -> *mut libc::FILE, fd, mode)
        });
    };
    let fd = ship_open(p, flags, 0o666);
    Some(if fd < 0 {
        std::ptr::null_mut()
    } else {
        stream(fd, mode)
    })
}

unsafe extern "C" {
    static mut stdin: *mut libc::FILE;
    static mut stdout: *mut libc::FILE;
    static mut stderr: *mut libc::FILE;
}

/// Per standard descriptor (0, 1, 2): the C library's stream while this library's stands
/// in for it (0: not), and this library's, kept for the next time.
pub(crate) static STANDARD: [Mutex<(usize, usize)>; 3] = [const { Mutex::new((0, 0)) }; 3];

/// Makes `stdin`, `stdout` or `stderr` a shipped stream while its descriptor (0, 1, 2)
/// is shipped: handed down (`cmd > /fwd/out`), or made so by the program (a shell's
/// `echo x > /fwd/f`: bash moves the file onto 1 with `dup2`, its builtin `echo` prints
/// to `stdout`). The C library's stdio would otherwise read and write the placeholder
/// with its internal calls. See [`standard_restored`] for the way back.
pub(crate) fn standard_stream(fd: c_int) {
    let Some(slot) = usize::try_from(fd).ok().and_then(|i| STANDARD.get(i)) else {
        return;
    };
    let mut s = table::lock(slot);
    if s.0 != 0 {
        return;
    }
    if s.1 == 0 {
        let (mode, buffering) = match fd {
            0 => (c"r", libc::_IOFBF),
            1 => (c"w", libc::_IOFBF),
            _ => (c"w", libc::_IONBF),
        };
        let f = cookie_stream(fd, fd as usize | STANDARD_COOKIE, mode.as_ptr());
        if f.is_null() {
            return;
        }
        // SAFETY: `f` is a fresh stream; setvbuf before any I/O on it.
        unsafe { libc::setvbuf(f, std::ptr::null_mut(), buffering, 0) };
        s.1 = f as usize;
    }
    // SAFETY: the C library's standard stream variables. Both streams stay open for
    // good, so a thread that read the old value meanwhile still has a valid stream.
    unsafe {
        let std = standard(fd);
        s.0 = *std as usize;
        *std = s.1 as *mut libc::FILE;
    }
}

/// Puts the C library's standard stream back when descriptor `fd` stops being shipped
/// (`dup2` of another file onto it, `close`), after writing out what the shipped one
/// holds and forgetting what it read ahead, so that it can stand in again later.
pub(crate) fn standard_restored(fd: c_int) {
    let Some(slot) = usize::try_from(fd).ok().and_then(|i| STANDARD.get(i)) else {
        return;
    };
    let ours = {
        let mut s = table::lock(slot);
        if s.0 == 0 {
            return;
        }
        // SAFETY: the standard variable is the C library's; the original stream is open.
        unsafe { *standard(fd) = s.0 as *mut libc::FILE };
        s.0 = 0;
        s.1 as *mut libc::FILE
    };
    // Flushed without the slot's lock: `fclose` of the stream holds the stream's lock
    // and then takes the slot's (`c_close`).
    // SAFETY: `ours` is this library's open stream (kept open unless the program closed
    // it, which `c_close` would have recorded before we read the slot).
    unsafe {
        libc::fflush(ours);
        __fpurge(ours);
        libc::clearerr(ours);
    }
}

unsafe extern "C" {
    /// glibc's and musl's `stdio_ext.h`: drops a stream's buffered data.
    pub(crate) fn __fpurge(f: *mut libc::FILE);
}

/// The C library's variable for standard descriptor `fd` (0, 1 or 2).
///
/// # Safety
/// The caller writes it only with an open stream.
unsafe fn standard(fd: c_int) -> *mut *mut libc::FILE {
    match fd {
        0 => &raw mut stdin,
        1 => &raw mut stdout,
        _ => &raw mut stderr,
    }
}

/// `stream`, but a failure leaves `fd` open (`fdopen`'s contract).
fn stream_keeping(fd: c_int, mode: *const c_char) -> *mut libc::FILE {
    cookie_stream(fd, fd as usize, mode)
}

/// A shipped stream of `fd` with `cookie` (the fd, marked or not).
fn cookie_stream(fd: c_int, cookie: usize, mode: *const c_char) -> *mut libc::FILE {
    let io = CookieIo {
        read: c_read,
        write: c_write,
        seek: c_seek,
        close: c_close,
    };
    // SAFETY: the functions match fopencookie's contract; the cookie is the fd.
    let f = unsafe { fopencookie(cookie as *mut c_void, mode, io) };
    if !f.is_null() {
        let mut s = table::lock(&STREAMS);
        if s.get_or_insert_with(HashMap::new)
            .insert(f as usize, fd)
            .is_none()
        {
            OPEN_STREAMS.fetch_add(1, Ordering::Release);
        }
    }
    f
}

/// Interposed `fopen`.
#[unsafe(no_mangle)]
pub extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    open_stream(path, mode).unwrap_or_else(
        || call_real!(fopen: fn(*const c_char, *const c_char) -> *mut libc::FILE, path, mode),
    )
}

/// Interposed `fopen64`.
#[unsafe(no_mangle)]
pub extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    open_stream(path, mode).unwrap_or_else(
        || call_real!(fopen64: fn(*const c_char, *const c_char) -> *mut libc::FILE, path, mode),
    )
}

/// Interposed `fdopen`.
#[unsafe(no_mangle)]
pub extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut libc::FILE {
    if table::get(fd).is_some() || crate::ride::is_candidate(fd) {
        // On failure the descriptor stays the caller's (fdopen's contract).
        return stream_keeping(fd, mode);
    }
    call_real!(fdopen: fn(c_int, *const c_char) -> *mut libc::FILE, fd, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fopen_modes_map_to_open_flags() {
        assert_eq!(mode_flags(b"r"), Some(libc::O_RDONLY));
        assert_eq!(mode_flags(b"rb+"), Some(libc::O_RDWR));
        assert_eq!(
            mode_flags(b"wxe"),
            Some(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC)
        );
        assert_eq!(
            mode_flags(b"a+"),
            Some(libc::O_RDWR | libc::O_CREAT | libc::O_APPEND)
        );
        assert_eq!(mode_flags(b"q"), None);
    }
}
