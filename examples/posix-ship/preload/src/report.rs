//! `POSIX_SHIP_REPORT=1`: one line on stderr at exit saying what was shipped
//! (`POSIX_SHIP_REPORT=/abs/file`: appended to that file instead, out of the program's
//! output).
//!
//! Written to a copy of the standard error taken at load: programs close theirs before
//! the C library runs this library's exit handler (coreutils' `close_stdout`).

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::real::call_real;

/// The copy of standard error the line goes to (-1: no report asked for).
static OUT: AtomicI32 = AtomicI32::new(-1);

/// At load: takes the copy of standard error if a report is asked for.
pub fn init() {
    let Some(to) = std::env::var_os("POSIX_SHIP_REPORT") else {
        return;
    };
    let to = std::os::unix::ffi::OsStrExt::as_bytes(to.as_os_str());
    let fd = if to == b"1" {
        call_real!(fcntl: fn(libc::c_int, libc::c_int, usize) -> libc::c_int,
            2, libc::F_DUPFD_CLOEXEC, 100)
    } else if to.first() == Some(&b'/')
        && let Ok(path) = std::ffi::CString::new(to)
    {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC;
        call_real!(open: fn(*const libc::c_char, libc::c_int, libc::mode_t) -> libc::c_int,
            path.as_ptr(), flags, 0o644)
    } else {
        -1
    };
    OUT.store(fd, Ordering::Release);
}

/// What is counted.
#[derive(Clone, Copy)]
pub enum Kind {
    /// A file opened on the server by path (no FUSE mount).
    Opened = 0,
    /// A file of the FUSE mount ridden on.
    Ridden,
    /// A read shipped (its bytes in [`Kind::ReadBytes`]).
    Read,
    /// A write shipped.
    Write,
    /// Bytes read.
    ReadBytes,
    /// Bytes written.
    WriteBytes,
}

static COUNTS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Adds `n` to `k`.
pub fn add(k: Kind, n: u64) {
    COUNTS[k as usize].fetch_add(n, Ordering::Relaxed);
}

/// Adds one to `k`.
pub fn count(k: Kind) {
    add(k, 1);
}

/// The line, if asked for.
pub fn at_exit() {
    let out = OUT.load(Ordering::Acquire);
    if out < 0 {
        return;
    }
    let c = |k: Kind| COUNTS[k as usize].load(Ordering::Relaxed);
    let mib = |k: Kind| c(k) as f64 / (1 << 20) as f64;
    let how = match crate::config() {
        Some(cfg) if cfg.ride.is_some() => {
            format!("rode on {} files of the mount", c(Kind::Ridden))
        }
        Some(_) => format!("opened {} files on the server", c(Kind::Opened)),
        None => "nothing shipped (see above, or no POSIX_SHIP_MOUNT)".to_string(),
    };
    let line = format!(
        "posix-ship[{}]: {how}; shipped {} reads ({:.1} MiB) and {} writes ({:.1} MiB)\n",
        std::process::id(),
        c(Kind::Read),
        mib(Kind::ReadBytes),
        c(Kind::Write),
        mib(Kind::WriteBytes),
    );
    call_real!(write: fn(libc::c_int, *const libc::c_void, usize) -> isize,
        out, line.as_ptr().cast(), line.len());
}
