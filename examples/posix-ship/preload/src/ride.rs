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

use libc::{c_int, c_void, off_t};
use posix_ship::ride::{INFO, INFO_SIZE, INVAL, Info};

use crate::files::{ship_read, ship_write};
use crate::real::call_real;
use crate::table::{self, Desc, FdMap};

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
}

impl Rider {
    fn desc(&self) -> Option<&Desc> {
        self.desc.get().and_then(Option::as_ref)
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

/// Asks the mount at `dir` what it serves: `None` if it is no posix-ship mount; else the
/// server's address and the mount's device number, if it can be ridden on.
#[allow(clippy::option_option)]
pub fn probe(dir: &[u8]) -> Option<Option<(String, u64)>> {
    let c = std::ffi::CString::new(dir).ok()?;
    let fd = call_real!(open: fn(*const libc::c_char, c_int, libc::mode_t) -> c_int,
        c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0);
    if fd < 0 {
        return None;
    }
    let info = info(fd);
    let dev = kernel_stat(fd).map(|s| s.st_dev);
    call_real!(close: fn(c_int) -> c_int, fd);
    let info = info?;
    // The mount names the server the data goes to and whom to prove this user to: only a
    // mount of this user's or root's (a daemon another user runs could name its own).
    // (Through the C library's own calls: this runs inside the configuration's first
    // use, which an interposed call would wait for.)
    let mounts = read_real(c"/proc/self/mountinfo");
    let at = realpath(dir)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    match owner(&mounts, &at) {
        Some(uid) if uid == me || uid == 0 => {}
        other => {
            eprintln!(
                "posix-ship interposer: {} is not a posix-ship mount of this user's or \
                 root's (owner {other:?}): nothing is shipped around it",
                String::from_utf8_lossy(dir)
            );
            return Some(None);
        }
    }
    if info.writeback {
        eprintln!(
            "posix-ship interposer: {} is mounted with --writeback-cache, where the kernel \
             keeps file sizes itself: nothing is shipped around it",
            String::from_utf8_lossy(dir)
        );
        return Some(None);
    }
    Some(Some((info.server, dev?)))
}

/// The whole of a small file, read with the C library's calls.
fn read_real(path: &std::ffi::CStr) -> String {
    let fd = call_real!(open: fn(*const libc::c_char, c_int, libc::mode_t) -> c_int,
        path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC, 0);
    let mut out = Vec::new();
    if fd >= 0 {
        let mut b = [0u8; 8192];
        loop {
            let n = call_real!(read: fn(c_int, *mut c_void, usize) -> isize,
                fd, b.as_mut_ptr().cast(), b.len());
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&b[..n as usize]);
        }
        call_real!(close: fn(c_int) -> c_int, fd);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `dir` with symbolic links, `.` and `..` resolved (the C library's `realpath`).
fn realpath(dir: &[u8]) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(dir).ok()?;
    let mut out = vec![0u8; libc::PATH_MAX as usize + 1];
    let r = call_real!(realpath: fn(*const libc::c_char, *mut libc::c_char) -> *mut libc::c_char,
        c.as_ptr(), out.as_mut_ptr().cast());
    if r.is_null() {
        return None;
    }
    let n = out.iter().position(|&b| b == 0)?;
    out.truncate(n);
    Some(out)
}

/// The uid of the daemon serving the posix-ship FUSE mount at `at` (canonical), from
/// `/proc/self/mountinfo`'s `user_id=` (`None`: no such mount).
fn owner(mountinfo: &str, at: &[u8]) -> Option<u32> {
    // mountinfo escapes these in paths as octal.
    let mut esc = String::new();
    for &b in at {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => esc.push_str(&format!("\\{b:03o}")),
            _ => esc.push(b as char),
        }
    }
    mountinfo.lines().rev().find_map(|l| {
        let (mine, fs) = l.split_once(" - ")?;
        if mine.split(' ').nth(4)? != esc {
            return None;
        }
        // A FUSE file system (`fuse`, or `fuse.posix-ship` when mounted with a subtype)
        // whose source a posix-ship daemon names.
        let mut f = fs.split(' ');
        let (kind, source, opts) = (f.next()?, f.next()?, f.next()?);
        if !(kind == "fuse" || kind == "fuse.posix-ship") || !source.starts_with("posix-ship:") {
            return None;
        }
        opts.split(',')
            .find_map(|o| o.strip_prefix("user_id="))?
            .parse()
            .ok()
    })
}

fn info(fd: c_int) -> Option<Info> {
    let mut b = vec![0u8; INFO_SIZE];
    let r = call_real!(ioctl: fn(c_int, libc::c_ulong, *mut c_void) -> c_int,
        fd, INFO as libc::c_ulong, b.as_mut_ptr().cast());
    if r < 0 {
        return None;
    }
    Info::decode(&b).ok()
}

fn kernel_stat(fd: c_int) -> Option<libc::stat> {
    // SAFETY: all-zero is a valid `struct stat`, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = call_real!(fstat64: fn(c_int, *mut libc::stat) -> c_int, fd, &mut st);
    (r == 0).then_some(st)
}

/// Takes `fd`, just opened by the kernel with `flags` at a path that may be on the
/// mount, as a candidate to ride on (no system call: [`get`] decides).
pub fn adopt(fd: c_int, flags: c_int) {
    // A stale entry (a number closed behind this library's back) must never ship.
    forget(fd);
    if crate::config().and_then(|c| c.ride).is_none()
        || fd < 0
        || flags & (libc::O_PATH | libc::O_DIRECTORY) != 0
    {
        return;
    }
    let rider = Rider {
        flags,
        through_kernel: AtomicU64::new(0),
        desc: OnceLock::new(),
        dirty: AtomicBool::new(false),
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
    if r.desc.get().is_none() {
        let before = r.through_kernel.fetch_add(n as u64, Ordering::Relaxed);
        if n < RIDE_CALL && before < ride_after() {
            return None;
        }
        r.desc.get_or_init(|| start(fd, r.flags, before > 0));
    }
    r.desc().is_some().then_some(r)
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
    if o.attr.is_dir() {
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
    let err = r.desc().and_then(Desc::settle_writes);
    inval(fd, &r);
    RIDDEN.remove(fd);
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

fn inval(fd: c_int, r: &Rider) {
    if r.dirty.swap(false, Ordering::AcqRel) {
        DIRTY.fetch_sub(1, Ordering::AcqRel);
        call_real!(ioctl: fn(c_int, libc::c_ulong, usize) -> c_int, fd, INVAL as libc::c_ulong, 0);
        // The kernel's size of the file is refreshed only by asking: a page fault of a
        // mapping past the size it last knew would be SIGBUS.
        let _ = kernel_stat(fd);
    }
}

/// Called before `fd` is handed to the kernel for anything but data: settles if it is
/// ridden and something was written around the kernel.
pub fn before_kernel(fd: c_int) {
    if DIRTY.load(Ordering::Acquire) > 0 && RIDDEN.maybe(fd) {
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
    table::writes().drain();
    if DIRTY.load(Ordering::Acquire) == 0 {
        return;
    }
    for (fd, r) in RIDDEN.all() {
        inval(fd, &r);
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
    let append = *table::lock(&d.flags) & libc::O_APPEND != 0;
    let n = if append {
        let n = ship_write(d, buf, None)?;
        if off.is_none() {
            set_kernel_pos(fd, *table::lock(&d.pos))?;
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

#[cfg(test)]
mod tests {
    use super::owner;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:44 / /mnt/a\\040b rw,nosuid,nodev shared:9 - fuse.posix-ship posix-ship:tcp://x rw,user_id=1000,group_id=1000,default_permissions
41 22 0:45 / /mnt/c rw,nosuid,nodev shared:9 - fuse.sshfs host: rw,user_id=0,group_id=0
42 22 0:46 / /mnt/d rw shared:9 - fuse.posix-ship posix-ship:sm://1 rw,user_id=0,group_id=0
43 22 0:47 / /mnt/d rw shared:9 - fuse posix-ship:sm://2 rw,user_id=7,group_id=7
44 22 0:48 / /mnt/e rw - fuse other:x rw,user_id=0,group_id=0
";

    #[test]
    fn the_mounts_owner_comes_from_mountinfo() {
        assert_eq!(owner(MOUNTINFO, b"/mnt/a b"), Some(1000), "escaped space");
        assert_eq!(
            owner(MOUNTINFO, b"/mnt/c"),
            None,
            "another FUSE file system"
        );
        assert_eq!(
            owner(MOUNTINFO, b"/mnt/d"),
            Some(7),
            "the last mount on top wins"
        );
        assert_eq!(owner(MOUNTINFO, b"/mnt/e"), None, "FUSE, not posix-ship's");
        assert_eq!(owner(MOUNTINFO, b"/mnt"), None);
        assert_eq!(owner(MOUNTINFO, b"/"), None, "not FUSE");
    }
}
