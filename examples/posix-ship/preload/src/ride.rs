//! Riding on a posix-ship FUSE mount (DAOS's libioil over dfuse): when `POSIX_SHIP_MOUNT`
//! names a live `posix-ship mount`, every path and descriptor is the kernel's (so `cd`,
//! redirections, `exec`, `mmap`, locks all work), and the interposer only ships the data
//! calls — `read`, `write`, `pread`, `pwrite`, `readv`, `writev` and stdio on them — of
//! the regular files opened on the mount, straight to the server, with the client's
//! read-ahead and write-behind.
//!
//! - **Opening**: the kernel opens (creating, truncating, checking permission through the
//!   mount); then an `ioctl` ([`posix_ship::ride::INFO`]) asks the daemon which server and
//!   path the file is, and the interposer opens it again on its own connection, as its own
//!   user (the server checks that open too). Anything that fails there leaves the
//!   descriptor to the kernel, which is always correct.
//! - **Offsets** stay the kernel's (a `dup`, a forked or exec'd child share them): a read
//!   at the current offset is a shipped `pread` between two `lseek`s.
//! - **Coherence**: before any other call reaches the kernel on a ridden descriptor, or on
//!   a path inside the mount, the writes in flight land and the kernel drops what it
//!   cached of every file written around it ([`posix_ship::ride::INVAL`]), so `fstat`,
//!   `mmap`, `stat` and other processes see the writes; also at close, `exec`, `fork` and
//!   exit. Two processes writing one file see each other's writes after close
//!   (close-to-open), as through the mount alone.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use libc::{c_int, off_t};
use posix_ship::ride::INVAL;

use crate::files::{ship_read, ship_write};

mod probe;
use crate::real::call_real;
use crate::table::{self, Desc, FdMap};
pub use probe::probe;
use probe::{info, kernel_stat};

/// A regular file opened on the mount: a candidate to ride on, riding once its data
/// calls are large enough ([`get`]).
pub struct Rider {
    /// The flags it was opened with.
    flags: c_int,
    /// Bytes its data calls moved through the kernel before it rode.
    through_kernel: AtomicU64,
    /// The server's side once riding (`None` inside: riding was tried and is not possible).
    desc: OnceLock<Option<Desc>>,
    /// Written around the kernel since the kernel last dropped its caches of it.
    dirty: AtomicBool,
    /// No more riding (mapped, status flags changed): the kernel does everything.
    stopped: AtomicBool,
    /// The process that rides (a forked child leaves its inherited riders to the kernel:
    /// their paths may name other files by now).
    pid: u32,
    /// Held across "kernel offset, shipped call, kernel offset", which the kernel does
    /// atomically for one open file description.
    at_offset: std::sync::Mutex<()>,
}

impl Rider {
    fn desc(&self) -> Option<&Desc> {
        self.desc.get().and_then(Option::as_ref)
    }

    /// Whether its data calls go around the kernel now.
    fn riding(&self) -> bool {
        self.desc().is_some()
            && !self.stopped.load(Ordering::Acquire)
            && self.pid == std::process::id()
    }
}

static RIDDEN: FdMap<Rider> = FdMap::new();

/// Riders written since the kernel last dropped its caches of them.
static DIRTY: AtomicUsize = AtomicUsize::new(0);

/// A data call this large rides at once; smaller ones ride once [`ride_after`] bytes went
/// through the kernel (small files stay on the kernel's path: for them, the server open
/// and the `ioctl`s would cost more than they save).
const RIDE_CALL: usize = 64 << 10;

/// `POSIX_SHIP_RIDE_AFTER` (bytes, `K`/`M` suffixes; default 256K; 0: ride at once).
fn ride_after() -> u64 {
    static A: OnceLock<u64> = OnceLock::new();
    *A.get_or_init(|| {
        std::env::var("POSIX_SHIP_RIDE_AFTER")
            .ok()
            .and_then(|v| posix_ship::client::readahead::parse_size(&v))
            .map_or(256 << 10, |n| n as u64)
    })
}

/// Takes `fd`, just opened by the kernel with `flags` at a path that may be on the
/// mount, as a candidate to ride on (no system call: [`get`] decides).
pub fn adopt(fd: c_int, flags: c_int) {
    // A stale entry (a number closed behind this library's back) must never ship.
    forget(fd);
    // Synchronous writes promise what write-behind would not keep.
    let kernel_only = libc::O_PATH | libc::O_DIRECTORY | libc::O_SYNC | libc::O_DSYNC;
    if crate::config().and_then(|c| c.ride).is_none() || fd < 0 || flags & kernel_only != 0 {
        return;
    }
    let rider = Rider {
        flags,
        through_kernel: AtomicU64::new(0),
        desc: OnceLock::new(),
        dirty: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
        pid: std::process::id(),
        at_offset: std::sync::Mutex::new(()),
    };
    RIDDEN.insert(fd, Arc::new(rider));
}

/// Whether `fd` was opened on the mount (its stdio stream then reads and writes
/// through this library).
pub fn is_candidate(fd: c_int) -> bool {
    RIDDEN.get(fd).is_some()
}

/// The rider behind `fd` if a data call of `n` bytes on it is to be shipped: riding
/// already, or starting now.
pub fn get(fd: c_int, n: usize) -> Option<Arc<Rider>> {
    let r = RIDDEN.get(fd)?;
    if r.desc.get().is_none() && r.pid == std::process::id() {
        let before = r.through_kernel.fetch_add(n as u64, Ordering::Relaxed);
        if n >= RIDE_CALL || before >= ride_after() {
            r.desc.get_or_init(|| start(fd, r.flags, before > 0));
        }
    }
    if r.riding() {
        return Some(r);
    }
    // Through the kernel: what was written around it lands first, unless it was found
    // not to be a file this process can ride (a file elsewhere opened by a relative
    // path, most often: `cp` reading its source would settle at every read).
    if DIRTY.load(Ordering::Acquire) > 0 && !matches!(r.desc.get(), Some(None)) {
        settle_all();
    }
    None
}

/// `fd` is mapped, or its status flags change: it stops riding, after what was written
/// around the kernel has landed and the kernel's caches of it were dropped.
pub fn stop(fd: c_int) {
    if let Some(r) = RIDDEN.get(fd) {
        settle_all();
        r.stopped.store(true, Ordering::Release);
    }
}

/// For `fsync` and `fdatasync` of `fd`: its writes land, and the error of one
/// acknowledged earlier is returned (once).
pub fn sync(fd: c_int) -> Option<c_int> {
    let r = RIDDEN.get(fd)?;
    settle(fd, &r)
}

/// Opens the file behind `fd` on the server, if it is a regular file of the mount that
/// the server lets this process open too; `touched`: the kernel may hold its pages (and,
/// with the writeback cache, dirty ones: written back and dropped first).
fn start(fd: c_int, flags: c_int, touched: bool) -> Option<Desc> {
    let dev = crate::config()?.ride?;
    let st = kernel_stat(fd)?;
    if st.st_dev != dev || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let info = info(fd)?;
    if touched {
        call_real!(ioctl: fn(c_int, libc::c_ulong, usize) -> c_int, fd, INVAL as libc::c_ulong, 0);
    }
    // The kernel created and truncated; the server's open only has to find the file.
    let flags = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC);
    let fs = table::client().ok()?;
    let o = fs.open_raw(&info.path, flags, 0).ok()?;
    // The path may name another file by now (renamed over, replaced on the server): the
    // kernel's descriptor holds the one the daemon opened, and stays the way to it.
    if o.attr.is_dir() || (o.attr.dev, o.attr.ino) != info.file {
        let _ = fs.close_raw(o.fh);
        return None;
    }
    crate::report::count(crate::report::Kind::Ridden);
    Some(Desc::new(
        info.path,
        flags,
        o.fh,
        false,
        (o.attr.dev, o.attr.ino),
    ))
}

/// `new` is a duplicate of `fd` (`dup`, `dup2`, `F_DUPFD`): it rides too.
pub fn dup(fd: c_int, new: c_int) {
    match RIDDEN.get(fd) {
        Some(r) if fd != new => RIDDEN.insert(new, r),
        _ => forget(new),
    }
}

/// `fd` is about to be closed (or replaced): its writes land, the kernel drops what it
/// cached, and the error of a write acknowledged earlier is returned (once).
pub fn release(fd: c_int) -> Option<c_int> {
    if !RIDDEN.maybe(fd) {
        return None;
    }
    let r = RIDDEN.get(fd)?;
    let err = settle(fd, &r);
    RIDDEN.remove(fd);
    err
}

/// `r`'s writes land (the mark taken first, as in [`settle_all`]) and the kernel drops
/// its caches of the file if it was written around them; the error of a write
/// acknowledged earlier, once.
fn settle(fd: c_int, r: &Rider) -> Option<c_int> {
    let was = take_dirty(r);
    let err = r.desc().and_then(Desc::settle_writes);
    if was {
        drop_caches(fd);
    }
    err
}

/// [`release`] of every ridden descriptor for which `within` holds.
pub fn release_within(within: impl Fn(c_int) -> bool) {
    for (fd, _) in RIDDEN.all().into_iter().filter(|(fd, _)| within(*fd)) {
        release(fd);
    }
}

/// Forgets `fd` without a word to anyone (the kernel closed it, or never had it).
fn forget(fd: c_int) {
    if RIDDEN.maybe(fd) {
        RIDDEN.remove(fd);
    }
}

/// Clears `r`'s mark; whether it was marked.
fn take_dirty(r: &Rider) -> bool {
    let was = r.dirty.swap(false, Ordering::AcqRel);
    if was {
        DIRTY.fetch_sub(1, Ordering::AcqRel);
    }
    was
}

/// Makes the daemon drop the kernel's pages and attributes of the file behind `fd`.
fn drop_caches(fd: c_int) {
    call_real!(ioctl: fn(c_int, libc::c_ulong, usize) -> c_int, fd, INVAL as libc::c_ulong, 0);
    // The kernel's size of the file is refreshed only by asking: a page fault of a
    // mapping past the size it last knew would be SIGBUS.
    let _ = kernel_stat(fd);
}

/// Drops the kernel's caches of `r`'s file if it was written around them (its writes
/// landed already).
fn inval(fd: c_int, r: &Rider) {
    if take_dirty(r) {
        drop_caches(fd);
    }
}

/// Called before `fd` is handed to the kernel for anything but data: settles if it is
/// ridden and something was written around the kernel.
pub fn before_kernel(fd: c_int) {
    if !RIDDEN.maybe(fd) {
        return;
    }
    // The kernel may change the file (truncate, allocate, copy into it): what was read
    // ahead of it is dropped.
    if let Some(d) = RIDDEN.get(fd).as_deref().and_then(Rider::desc) {
        d.ahead.invalidate();
    }
    if DIRTY.load(Ordering::Acquire) > 0 {
        settle_all();
    }
}

/// Called before a path inside the mount is handed to the kernel (relative paths too,
/// which may be).
pub fn before_path(p: &[u8], mount: &[u8]) {
    if DIRTY.load(Ordering::Acquire) > 0 && (p.first() != Some(&b'/') || p.starts_with(mount)) {
        settle_all();
    }
}

/// Every write in flight lands; the kernel drops what it cached of every file written
/// around it.
pub fn settle_all() {
    if DIRTY.load(Ordering::Acquire) == 0 {
        table::writes().drain();
        return;
    }
    // The flags are taken before the writes land: a write made meanwhile by another
    // thread marks its file again, so no write in flight is ever left unmarked.
    let dirty: Vec<(c_int, Arc<Rider>)> = RIDDEN
        .all()
        .into_iter()
        .filter(|(_, r)| take_dirty(r))
        .collect();
    table::writes().drain();
    for (fd, _) in dirty {
        drop_caches(fd);
    }
}

/// [`settle_all`] for `_exit`, which may run in a signal handler: no lock waited for
/// long (see [`posix_ship::client::writebehind::WriteBehind::drain_within`]).
pub fn settle_at_exit() {
    table::writes().drain_within(std::time::Duration::from_millis(500));
    if DIRTY.load(Ordering::Acquire) == 0 {
        return;
    }
    for (fd, r) in RIDDEN.try_all().unwrap_or_default() {
        inval(fd, &r);
    }
}

fn kernel_pos(fd: c_int) -> Result<u64, c_int> {
    let p = call_real!(lseek: fn(c_int, off_t, c_int) -> off_t, fd, 0, libc::SEEK_CUR);
    u64::try_from(p).map_err(|_| crate::last_errno())
}

fn set_kernel_pos(fd: c_int, pos: u64) -> Result<(), c_int> {
    let p = off_t::try_from(pos).map_err(|_| libc::EOVERFLOW)?;
    let r = call_real!(lseek: fn(c_int, off_t, c_int) -> off_t, fd, p, libc::SEEK_SET);
    if r < 0 {
        Err(crate::last_errno())
    } else {
        Ok(())
    }
}

/// The server's side of a rider [`get`] gave.
fn rode(r: &Rider) -> Result<&Desc, c_int> {
    r.desc().ok_or(libc::EBADF)
}

/// Reads at `off`, or at the kernel's offset (which then moves).
pub fn read(fd: c_int, r: &Rider, buf: &mut [u8], off: Option<u64>) -> Result<usize, c_int> {
    let _at = off.is_none().then(|| table::lock(&r.at_offset));
    let pos = match off {
        Some(o) => o,
        None => kernel_pos(fd)?,
    };
    let n = ship_read(rode(r)?, buf, Some(pos))?;
    if off.is_none() {
        set_kernel_pos(fd, pos + n as u64)?;
    }
    Ok(n)
}

/// Writes at `off`, or at the kernel's offset (which then moves), or at the end
/// (`O_APPEND`: the server places it).
pub fn write(fd: c_int, r: &Rider, buf: &[u8], off: Option<u64>) -> Result<usize, c_int> {
    if !r.dirty.swap(true, Ordering::AcqRel) {
        DIRTY.fetch_add(1, Ordering::AcqRel);
    }
    let d = rode(r)?;
    let _at = off.is_none().then(|| table::lock(&r.at_offset));
    let append = *table::lock(&d.flags) & libc::O_APPEND != 0;
    let n = if append {
        let n = ship_write(d, buf, None)?;
        if off.is_none() {
            set_kernel_pos(fd, d.pos.with(|p| *p))?;
        }
        n
    } else {
        let pos = match off {
            Some(o) => o,
            None => kernel_pos(fd)?,
        };
        let n = ship_write(d, buf, Some(pos))?;
        if off.is_none() {
            set_kernel_pos(fd, pos + n as u64)?;
        }
        n
    };
    Ok(n)
}
