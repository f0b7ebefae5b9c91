//! `libposix_ship_preload.so`: ships an unmodified program's file calls to a posix-ship
//! server.
//!
//! ```sh
//! POSIX_SHIP_SERVER=tcp://10.0.0.5:7000 POSIX_SHIP_MOUNT=/fwd \
//!   LD_PRELOAD=target/release/libposix_ship_preload.so  cp results.dat /fwd/run1/
//! ```
//!
//! Calls on paths under the mount prefix (and on the descriptors they open) go to the
//! server; everything else goes to the C library untouched. The connection is made on
//! the first shipped call (thread-safe) and again in a forked child. Shipped files have
//! real descriptor numbers (placeholders on `/dev/null` opened `O_PATH`), so a call this
//! library does not cover fails with `EBADF` rather than touching another file; calls that
//! cannot work on a shipped file (`mmap`) fail with a clear errno and a one-time warning.
//!
//! Portability: x86_64 and aarch64 Linux with glibc (the variadic `open`/`fcntl`/`ioctl`
//! are defined with their optional argument as a fixed one, which those ABIs pass in the
//! same register).

mod children;
mod compat;
mod cwd;
mod dirs;
mod dl;
mod exec;
mod files;
mod glob;
mod libs;
mod offsets;
mod paths;
mod real;
mod refuse;
mod reopen;
mod report;
mod ride;
mod run;
mod stdio;
mod table;
mod temp;
mod xattrs;

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::sync::{Mutex, OnceLock};

use crate::real::call_real;

use libc::{c_char, c_int};

/// Runs [`exec::adopt`] when the library is loaded, before the program's `main`.
#[used]
#[unsafe(link_section = ".init_array")]
static ADOPT: extern "C" fn() = {
    extern "C" fn adopt() {
        report::init();
        libs::adopt();
        exec::adopt();
        // Writes in flight land before the process exits and before it forks (a child
        // may read what its parent wrote).
        extern "C" fn drain() {
            ride::settle_all();
            offsets::before_fork();
            // A pass for each shipped file, so that the child holds the same open files
            // (a file deleted or renamed since it was opened included).
            for (_, d) in table::all_safely() {
                d.lend();
            }
            // Last: no other thread may hold a lock a shipped call takes as the process
            // is copied.
            table::before_fork();
        }
        extern "C" fn parent() {
            table::after_fork();
        }
        extern "C" fn child() {
            table::after_fork();
            offsets::in_child();
            libs::in_child();
        }
        extern "C" fn exit() {
            // The C library flushes its streams after the exit handlers, too late for
            // the writes their last flush would put behind: flushed here first.
            // SAFETY: fflush(NULL) flushes every output stream; no stream is borrowed.
            unsafe { libc::fflush(std::ptr::null_mut()) };
            ride::settle_all();
            report::at_exit();
            offsets::at_exit();
        }
        // SAFETY: registering plain functions with no state; both calls only record them.
        unsafe {
            libc::atexit(exit);
            libc::pthread_atfork(Some(drain), Some(parent), Some(child));
        }
    }
    adopt
};

/// The environment: where the server is and which prefix is shipped.
pub(crate) struct Config {
    server: String,
    /// The mount prefix, without a trailing `/`.
    mount: Vec<u8>,
    /// The device number of the FUSE mount at `mount` when riding on it ([`ride`]).
    pub(crate) ride: Option<u64>,
}

impl Config {
    /// The server's address.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// The mount prefix (no trailing `/`).
    pub(crate) fn mount(&self) -> &[u8] {
        &self.mount
    }
}

/// The configuration, or `None` when the environment does not ask for shipping.
pub(crate) fn config() -> Option<&'static Config> {
    static C: OnceLock<Option<Config>> = OnceLock::new();
    C.get_or_init(|| {
        let mount = std::env::var("POSIX_SHIP_MOUNT").ok()?;
        if let Some(ridable) = ride::probe(mount.as_bytes()) {
            let (server, dev) = ridable?;
            let mut mount = mount.into_bytes();
            while mount.len() > 1 && mount.last() == Some(&b'/') {
                mount.pop();
            }
            return Some(Config {
                server,
                mount,
                ride: Some(dev),
            });
        }
        let Ok(server) = std::env::var("POSIX_SHIP_SERVER") else {
            // Otherwise paths under the mount are silently the local ones (ENOENT).
            eprintln!(
                "posix-ship interposer: POSIX_SHIP_MOUNT={mount} is set but POSIX_SHIP_SERVER \
                 is not: nothing is shipped"
            );
            return None;
        };
        let mut mount = mount.into_bytes();
        while mount.len() > 1 && mount.last() == Some(&b'/') {
            mount.pop();
        }
        (mount.first() == Some(&b'/') && mount.len() > 1).then_some(Config {
            server,
            mount,
            ride: None,
        })
    })
    .as_ref()
}

/// The path beneath the export if `path` is under the mount prefix, or relative while
/// the working directory is inside the mount ([`cwd`]).
pub(crate) fn shipped(path: *const c_char) -> Option<Vec<u8>> {
    if path.is_null() {
        return None;
    }
    let cfg = config()?;
    // SAFETY: a non-null path argument of a POSIX call is a NUL-terminated string.
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    if cfg.ride.is_some() {
        // Every path is the kernel's.
        ride::before_path(p, &cfg.mount);
        return None;
    }
    if p.first() != Some(&b'/') && !p.is_empty() {
        return cwd::resolve(p);
    }
    beneath(cfg, p)
}

/// The path beneath the export if absolute `p` is under the mount prefix.
pub(crate) fn shipped_bytes(p: &[u8]) -> Option<Vec<u8>> {
    beneath(config()?, p)
}

/// The path beneath the export if absolute `p` is under the mount prefix.
fn beneath(cfg: &Config, p: &[u8]) -> Option<Vec<u8>> {
    let rest = p.strip_prefix(cfg.mount.as_slice())?;
    match rest.first() {
        None => Some(b"/".to_vec()),
        Some(b'/') if climbs_out(rest) => None,
        Some(b'/') => Some(rest.to_vec()),
        Some(_) => None,
    }
}

/// Whether a file the kernel opened at `path` may be on the FUSE mount this library
/// rides on: relative (to anything), or absolute under it.
pub(crate) fn maybe_inside(path: *const c_char) -> bool {
    let Some(cfg) = config().filter(|c| c.ride.is_some()) else {
        return false;
    };
    if path.is_null() {
        return false;
    }
    // SAFETY: a non-null path argument of a POSIX call is a NUL-terminated string.
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    p.first() != Some(&b'/') || p.starts_with(&cfg.mount)
}

/// Whether `..` components take `rest` (beneath the mount) above the mount's root.
fn climbs_out(rest: &[u8]) -> bool {
    let mut depth = 0usize;
    for c in rest.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." if depth == 0 => return true,
            b".." => depth -= 1,
            _ => depth += 1,
        }
    }
    false
}

/// For an absolute path under the mount whose `..` climb out of it (`/fwd/..`,
/// `/fwd/a/../../etc`): the local path it names, resolved lexically, since the mount is
/// no directory of the kernel's (`ls -la /fwd` stats `/fwd/..`). Else `path` itself.
pub(crate) fn local_path(path: *const c_char) -> LocalPath {
    let escaped = (|| {
        let cfg = config().filter(|c| c.ride.is_none())?;
        // SAFETY: a non-null path argument of a POSIX call is a NUL-terminated string.
        let p = unsafe { CStr::from_ptr(path.as_ref()?) }.to_bytes();
        let rest = p.strip_prefix(cfg.mount.as_slice())?;
        (rest.first() == Some(&b'/') && climbs_out(rest))
            .then(|| std::ffi::CString::new(cwd::clamped(p)).ok())?
    })();
    LocalPath { path, escaped }
}

/// A path for the kernel (see [`local_path`]).
pub(crate) struct LocalPath {
    path: *const c_char,
    escaped: Option<std::ffi::CString>,
}

impl LocalPath {
    /// The pointer to pass, valid while `self` lives.
    pub(crate) fn ptr(&self) -> *const c_char {
        self.escaped.as_ref().map_or(self.path, |c| c.as_ptr())
    }
}

/// Where a `*at` call's path is: shipped (absolute under the mount, or relative to a
/// shipped directory), or local.
pub(crate) fn shipped_at(dirfd: c_int, path: *const c_char) -> Option<Vec<u8>> {
    if path.is_null() {
        return None;
    }
    // SAFETY: as above.
    let p = unsafe { CStr::from_ptr(path) }.to_bytes();
    if let Some(cfg) = config().filter(|c| c.ride.is_some()) {
        ride::before_path(p, &cfg.mount);
        return None;
    }
    if p.first() == Some(&b'/') || dirfd == libc::AT_FDCWD {
        return shipped(path);
    }
    let Some(d) = table::get(dirfd) else {
        return above_mount(dirfd, p);
    };
    let mut full = d.path.clone();
    if full.last() != Some(&b'/') {
        full.push(b'/');
    }
    full.extend_from_slice(p);
    Some(full)
}

/// A path relative to a local directory above the mount that leads into it (rsync 3.4
/// and later walk every path from an `O_PATH` descriptor of `/`: `fstatat(fd_of_root,
/// "fwd", ...)`): the path beneath the export. Costs a string compare for any other
/// relative path, and an `fstat` of `dirfd` only when its first component is one of the
/// mount prefix's.
fn above_mount(dirfd: c_int, p: &[u8]) -> Option<Vec<u8>> {
    let cfg = config()?;
    let first = p.split(|b| *b == b'/').next()?;
    let components = || cfg.mount.split(|b| *b == b'/').filter(|c| !c.is_empty());
    // The common case (any other relative path) ends here, allocating nothing.
    let k = components().position(|c| c == first)?;
    let comps: Vec<&[u8]> = components().collect();
    // The local directories above the mount (`/`, `/a`, … for `/a/b`), by device and inode.
    static ABOVE: OnceLock<Vec<Option<(u64, u64)>>> = OnceLock::new();
    let above = ABOVE.get_or_init(|| {
        (0..comps.len())
            .map(|i| {
                let dir = [b"/".as_slice(), &comps[..i].join(&b'/')].concat();
                let c = CString::new(dir).ok()?;
                // SAFETY: all-zero is a valid `struct stat`, filled by stat.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: a NUL-terminated path and a stat buffer; a local path (above
                // the mount), so the C library's own call.
                let r = call_real!(stat: fn(*const c_char, *mut libc::stat) -> c_int, c.as_ptr(), &mut st);
                (r == 0).then_some((st.st_dev, st.st_ino))
            })
            .collect()
    });
    let want = (*above.get(k)?)?;
    // SAFETY: all-zero is a valid `struct stat`, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = call_real!(fstat: fn(c_int, *mut libc::stat) -> c_int, dirfd, &mut st);
    if r != 0 || (st.st_dev, st.st_ino) != want {
        return None;
    }
    let full = [b"/".as_slice(), &comps[..k].join(&b'/'), b"/", p].concat();
    beneath(cfg, &cwd::clamped(&full))
}

/// Calls `rpc` on the server (connecting first if need be); the errno on failure.
pub(crate) fn call<In: serde::Serialize + Clone + 'static, Out: serde::de::DeserializeOwned>(
    rpc: rpc_core::Rpc<In, posix_ship::proto::Reply<Out>>,
    input: &In,
) -> Result<Out, c_int> {
    table::client()?.call(rpc, input).map_err(errno_of)
}

/// Sets `errno` and returns -1.
pub(crate) fn fail(e: c_int) -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
    -1
}

/// `fail` for calls returning `ssize_t`.
pub(crate) fn fail_sz(e: c_int) -> isize {
    fail(e) as isize
}

/// This thread's `errno`.
pub(crate) fn last_errno() -> c_int {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

/// The errno an I/O error carries (EIO if none).
pub(crate) fn errno_of(e: std::io::Error) -> c_int {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// A result as a C call returns it: 0, or -1 with `errno`.
pub(crate) fn ret(r: Result<(), c_int>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// Prints `what` on stderr once per process.
pub(crate) fn warn_once(what: &str) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut s = table::lock(&SEEN);
    if s.get_or_insert_with(HashSet::new).insert(what.to_string()) {
        eprintln!("posix-ship preload: {what}");
    }
}
