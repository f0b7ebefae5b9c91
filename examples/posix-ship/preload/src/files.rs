//! Opening, reading, writing, seeking, duplicating and closing descriptors.

use std::sync::Arc;

use libc::{c_char, c_int, c_void, iovec, mode_t, off_t, size_t, ssize_t};

use crate::real::call_real;
use crate::ride;
use crate::table::{self, Desc, lock};
use crate::{errno_of, fail, fail_sz, report, ret, shipped_at};

/// Opens a shipped path: the server's handle behind a placeholder descriptor.
pub(crate) fn ship_open(path: Vec<u8>, flags: c_int, mode: mode_t) -> c_int {
    let r = (|| {
        let fs = table::client()?;
        let o = fs.open_raw(&path, flags, mode).map_err(errno_of)?;
        let d = Arc::new(Desc::new(
            path,
            flags & !libc::O_CLOEXEC,
            o.fh,
            o.attr.is_dir(),
            (o.attr.dev, o.attr.ino),
        ));
        let fd = table::placeholder(flags & libc::O_CLOEXEC != 0)?;
        table::insert(fd, d);
        report::count(report::Kind::Opened);
        Ok(fd)
    })();
    r.unwrap_or_else(fail)
}

pub(crate) fn open_at(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    match shipped_at(dirfd, path) {
        Some(p) => ship_open(p, flags, mode),
        None => {
            let local = crate::local_path(path);
            let fd = call_real!(openat: fn(c_int, *const c_char, c_int, mode_t) -> c_int,
                dirfd, local.ptr(), flags, mode);
            if fd >= 0 && crate::maybe_inside(path) {
                crate::ride::adopt(fd, flags);
            }
            fd
        }
    }
}

/// Interposed `open` (the mode is read only with `O_CREAT`/`O_TMPFILE`).
#[unsafe(no_mangle)]
pub extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    open_at(libc::AT_FDCWD, path, flags, mode)
}

/// Interposed `openat`.
#[unsafe(no_mangle)]
pub extern "C" fn openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    open_at(dirfd, path, flags, mode)
}

/// Interposed `creat`.
#[unsafe(no_mangle)]
pub extern "C" fn creat(path: *const c_char, mode: mode_t) -> c_int {
    open_at(
        libc::AT_FDCWD,
        path,
        libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
        mode,
    )
}

/// Interposed `__open_2` (fortified `open` without a mode).
#[unsafe(no_mangle)]
pub extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    open_at(libc::AT_FDCWD, path, flags, 0)
}

/// Interposed `__openat_2`.
#[unsafe(no_mangle)]
pub extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    open_at(dirfd, path, flags, 0)
}

/// Interposed `close`.
#[unsafe(no_mangle)]
pub extern "C" fn close(fd: c_int) -> c_int {
    // A write acknowledged earlier that failed is this close's error (as NFS reports it).
    let deferred = match table::remove(fd) {
        Some(d) => d.settle_writes(),
        None => crate::ride::release(fd),
    };
    let r = call_real!(close: fn(c_int) -> c_int, fd);
    deferred.map_or(r, fail)
}

fn access_ok(d: &Desc, write: bool) -> Result<(), c_int> {
    let acc = *lock(&d.flags) & libc::O_ACCMODE;
    let ok = if write {
        acc != libc::O_RDONLY
    } else {
        acc != libc::O_WRONLY
    };
    if d.is_dir {
        return Err(libc::EISDIR);
    }
    if ok { Ok(()) } else { Err(libc::EBADF) }
}

/// Reads at `off` (`None`: at the shared offset, which then moves).
pub(crate) fn ship_read(d: &Desc, buf: &mut [u8], off: Option<u64>) -> Result<usize, c_int> {
    access_ok(d, false)?;
    report::count(report::Kind::Read);
    let fs = table::client()?;
    let fh = d.fh()?;
    let read = |o: u64, b: &mut [u8]| {
        let n = d.ahead.read(o, b, |o, b| fs.pread(fh, b, o))?;
        report::add(report::Kind::ReadBytes, n as u64);
        Ok::<_, std::io::Error>(n)
    };
    match off {
        Some(o) => read(o, buf).map_err(errno_of),
        None => d.pos.with(|pos| {
            let n = read(*pos, buf).map_err(errno_of)?;
            *pos += n as u64;
            Ok(n)
        }),
    }
}

/// Writes at `off` (`None`: at the shared offset, or the end with `O_APPEND`). Positional
/// writes go behind ([`table::writes`]); an append, whose offset only the server knows,
/// is made after the writes in flight.
pub(crate) fn ship_write(d: &Desc, buf: &[u8], off: Option<u64>) -> Result<usize, c_int> {
    access_ok(d, true)?;
    report::count(report::Kind::Write);
    report::add(report::Kind::WriteBytes, buf.len() as u64);
    let fs = table::writer()?;
    let fh = d.fh()?;
    d.ahead.invalidate();
    let append = *lock(&d.flags) & libc::O_APPEND != 0;
    let behind = |o: u64| table::writes().write(&fs, fh, o, buf).map_err(errno_of);
    match (off, append) {
        (Some(o), false) => behind(o)?,
        (None, false) => {
            d.pos.with(|pos| {
                behind(*pos)?;
                *pos += buf.len() as u64;
                Ok::<_, c_int>(())
            })?;
        }
        (_, true) => {
            table::writes().settle(fh).map_err(errno_of)?;
            // A write cut short returns what landed, as the kernel's does.
            let w = fs.pwrite_some(fh, buf, None).map_err(errno_of)?;
            if off.is_none() {
                d.pos.with(|pos| *pos = w.end);
            }
            return Ok(w.n as usize);
        }
    };
    Ok(buf.len())
}

/// Where a data call on `fd` goes.
enum Data {
    Shipped(Arc<Desc>),
    Ridden(Arc<ride::Rider>),
    Kernel,
}

impl Data {
    /// Reads into `buf` at `off` (`None`: at the file's offset); `None` for the kernel.
    fn read(&self, fd: c_int, buf: &mut [u8], off: Option<u64>) -> Option<Result<usize, c_int>> {
        match self {
            Data::Shipped(d) => Some(ship_read(d, buf, off)),
            Data::Ridden(r) => Some(ride::read(fd, r, buf, off)),
            Data::Kernel => None,
        }
    }

    /// Writes `buf` at `off` (`None`: at the file's offset); `None` for the kernel.
    fn write(&self, fd: c_int, buf: &[u8], off: Option<u64>) -> Option<Result<usize, c_int>> {
        match self {
            Data::Shipped(d) => Some(ship_write(d, buf, off)),
            Data::Ridden(r) => Some(ride::write(fd, r, buf, off)),
            Data::Kernel => None,
        }
    }
}

/// Where a data call of `n` bytes on `fd` goes.
fn data(fd: c_int, n: usize) -> Data {
    if let Some(d) = table::get_for_data(fd) {
        return Data::Shipped(d);
    }
    match ride::get(fd, n) {
        Some(r) => Data::Ridden(r),
        None => Data::Kernel,
    }
}

fn sz(r: Result<usize, c_int>) -> ssize_t {
    match r {
        Ok(n) => n as ssize_t,
        Err(e) => fail_sz(e),
    }
}

/// The caller's buffer as a slice.
///
/// # Safety
/// `buf` must be valid for `n` bytes, as the C call's contract demands.
unsafe fn slice_mut<'a>(buf: *mut c_void, n: size_t) -> &'a mut [u8] {
    if n == 0 || buf.is_null() {
        return &mut [];
    }
    // SAFETY: the caller's contract (see above).
    unsafe { std::slice::from_raw_parts_mut(buf.cast(), n) }
}

/// # Safety
/// As [`slice_mut`].
unsafe fn slice<'a>(buf: *const c_void, n: size_t) -> &'a [u8] {
    if n == 0 || buf.is_null() {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(buf.cast(), n) }
}

/// Interposed `read`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    // SAFETY: read(2)'s contract: buf holds n bytes.
    match data(fd, n).read(fd, unsafe { slice_mut(buf, n) }, None) {
        Some(r) => sz(r),
        None => call_real!(read: fn(c_int, *mut c_void, size_t) -> ssize_t, fd, buf, n),
    }
}

/// Interposed `__read_chk` (fortified `read`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    cap: size_t,
) -> ssize_t {
    if n > cap {
        // glibc aborts on this overflow; so do we.
        std::process::abort();
    }
    // SAFETY: as read.
    unsafe { read(fd, buf, n) }
}

/// Interposed `write`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    // SAFETY: write(2)'s contract.
    match data(fd, n).write(fd, unsafe { slice(buf, n) }, None) {
        Some(r) => sz(r),
        None => call_real!(write: fn(c_int, *const c_void, size_t) -> ssize_t, fd, buf, n),
    }
}

pub(crate) fn offset(off: off_t) -> Result<u64, c_int> {
    u64::try_from(off).map_err(|_| libc::EINVAL)
}

/// Interposed `pread`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t {
    let target = data(fd, n);
    if let Data::Kernel = target {
        return call_real!(pread: fn(c_int, *mut c_void, size_t, off_t) -> ssize_t, fd, buf, n, off);
    }
    // SAFETY: pread(2)'s contract.
    let buf = unsafe { slice_mut(buf, n) };
    sz(offset(off).and_then(|o| target.read(fd, buf, Some(o)).unwrap_or(Err(libc::EBADF))))
}

/// Interposed `__pread_chk`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __pread_chk(
    fd: c_int,
    b: *mut c_void,
    n: size_t,
    off: off_t,
    cap: size_t,
) -> ssize_t {
    if n > cap {
        std::process::abort();
    }
    // SAFETY: same contract.
    unsafe { pread(fd, b, n, off) }
}

/// Interposed `pwrite`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t {
    let target = data(fd, n);
    if let Data::Kernel = target {
        return call_real!(pwrite: fn(c_int, *const c_void, size_t, off_t) -> ssize_t, fd, buf, n, off);
    }
    // SAFETY: pwrite(2)'s contract.
    let buf = unsafe { slice(buf, n) };
    sz(offset(off).and_then(|o| target.write(fd, buf, Some(o)).unwrap_or(Err(libc::EBADF))))
}

/// # Safety
/// `iov` holds `cnt` valid iovecs.
unsafe fn iovecs<'a>(iov: *const iovec, cnt: c_int) -> Result<&'a [iovec], c_int> {
    let n = usize::try_from(cnt).map_err(|_| libc::EINVAL)?;
    if n == 0 || iov.is_null() {
        return Ok(&[]);
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(iov, n) })
}

/// `readv` at `off` (`None`: at the file's offset): one read per buffer, stopping at a
/// short one. `kernel` is the C library's call for files neither shipped nor ridden.
///
/// # Safety
/// `iov` holds `cnt` valid iovecs of writable buffers.
pub(crate) unsafe fn read_vec(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    off: Option<u64>,
    kernel: impl FnOnce() -> ssize_t,
) -> ssize_t {
    // SAFETY: the caller's contract (the lengths only, for where the call goes).
    let total = unsafe { iovecs(iov, cnt) }.map_or(0, |v| v.iter().map(|b| b.iov_len).sum());
    let target = data(fd, total);
    if let Data::Kernel = target {
        return kernel();
    }
    // SAFETY: the caller's contract.
    sz(unsafe { iovecs(iov, cnt) }.and_then(|v| {
        let mut total = 0;
        for b in v {
            let at = off.map(|o| o + total as u64);
            // SAFETY: each iovec describes a writable buffer.
            let buf = unsafe { slice_mut(b.iov_base, b.iov_len) };
            let n = target.read(fd, buf, at).unwrap_or(Err(libc::EBADF))?;
            total += n;
            if n < b.iov_len {
                break;
            }
        }
        Ok(total)
    }))
}

/// `writev` at `off` (`None`: at the file's offset): the buffers gathered into one
/// write. `kernel` as for [`read_vec`].
///
/// # Safety
/// `iov` holds `cnt` valid iovecs of readable buffers.
pub(crate) unsafe fn write_vec(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    off: Option<u64>,
    kernel: impl FnOnce() -> ssize_t,
) -> ssize_t {
    // SAFETY: the caller's contract (the lengths only, for where the call goes).
    let total = unsafe { iovecs(iov, cnt) }.map_or(0, |v| v.iter().map(|b| b.iov_len).sum());
    let target = data(fd, total);
    if let Data::Kernel = target {
        return kernel();
    }
    // SAFETY: the caller's contract.
    sz(unsafe { iovecs(iov, cnt) }.and_then(|v| {
        let mut all = Vec::with_capacity(total);
        for b in v {
            // SAFETY: each iovec describes a readable buffer.
            all.extend_from_slice(unsafe { slice(b.iov_base, b.iov_len) });
        }
        target.write(fd, &all, off).unwrap_or(Err(libc::EBADF))
    }))
}

/// Interposed `readv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    let kernel = || call_real!(readv: fn(c_int, *const iovec, c_int) -> ssize_t, fd, iov, cnt);
    // SAFETY: readv(2)'s contract.
    unsafe { read_vec(fd, iov, cnt, None, kernel) }
}

/// Interposed `writev`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    let kernel = || call_real!(writev: fn(c_int, *const iovec, c_int) -> ssize_t, fd, iov, cnt);
    // SAFETY: writev(2)'s contract.
    unsafe { write_vec(fd, iov, cnt, None, kernel) }
}

/// Interposed `preadv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
    let kernel =
        || call_real!(preadv: fn(c_int, *const iovec, c_int, off_t) -> ssize_t, fd, iov, cnt, off);
    match offset(off) {
        // SAFETY: preadv(2)'s contract.
        Ok(o) => unsafe { read_vec(fd, iov, cnt, Some(o), kernel) },
        Err(e) => fail_sz(e),
    }
}

/// Interposed `pwritev`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t {
    let kernel =
        || call_real!(pwritev: fn(c_int, *const iovec, c_int, off_t) -> ssize_t, fd, iov, cnt, off);
    match offset(off) {
        // SAFETY: pwritev(2)'s contract.
        Ok(o) => unsafe { write_vec(fd, iov, cnt, Some(o), kernel) },
        Err(e) => fail_sz(e),
    }
}

/// `lseek` on a shipped file, `SEEK_DATA`/`SEEK_HOLE` included (all data, no holes).
fn ship_lseek(d: &Desc, off: off_t, whence: c_int) -> Result<u64, c_int> {
    let size = || -> Result<u64, c_int> {
        let fs = table::client()?;
        Ok(fs.fstat(d.fh()?).map_err(errno_of)?.size)
    };
    d.pos.with(|pos| {
        let new = match whence {
            libc::SEEK_SET => off as i128,
            libc::SEEK_CUR => *pos as i128 + off as i128,
            libc::SEEK_END => size()? as i128 + off as i128,
            libc::SEEK_DATA | libc::SEEK_HOLE => {
                let s = size()?;
                let o = offset(off)?;
                if o >= s {
                    return Err(libc::ENXIO);
                }
                if whence == libc::SEEK_DATA {
                    o as i128
                } else {
                    s as i128
                }
            }
            _ => return Err(libc::EINVAL),
        };
        if new < 0 || new > i64::MAX as i128 {
            return Err(libc::EINVAL);
        }
        *pos = new as u64;
        Ok(*pos)
    })
}

/// Interposed `lseek`.
#[unsafe(no_mangle)]
pub extern "C" fn lseek(fd: c_int, off: off_t, whence: c_int) -> off_t {
    match table::get(fd) {
        Some(d) => match ship_lseek(&d, off, whence) {
            Ok(p) => p as off_t,
            Err(e) => fail(e) as off_t,
        },
        None => call_real!(lseek: fn(c_int, off_t, c_int) -> off_t, fd, off, whence),
    }
}

/// Interposed `close_range`: what this library keeps for the descriptors closed goes too.
#[unsafe(no_mangle)]
pub extern "C" fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    if flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        let within = |fd: c_int| fd >= 0 && (first..=last).contains(&(fd as libc::c_uint));
        for (fd, _) in table::all().into_iter().filter(|(fd, _)| within(*fd)) {
            let _ = table::remove(fd).and_then(|d| d.settle_writes());
        }
        ride::release_within(within);
    }
    call_real!(close_range: fn(libc::c_uint, libc::c_uint, c_int) -> c_int, first, last, flags)
}

/// Interposed `dup`: a new number for the same description.
#[unsafe(no_mangle)]
pub extern "C" fn dup(fd: c_int) -> c_int {
    let n = call_real!(dup: fn(c_int) -> c_int, fd);
    if n >= 0 {
        match table::get(fd) {
            Some(d) => table::insert(n, d),
            None => ride::dup(fd, n),
        }
    }
    n
}

fn dup_onto(fd: c_int, new: c_int, r: c_int) -> c_int {
    if r >= 0 && fd != new {
        match table::get(fd) {
            Some(d) => table::insert(new, d),
            None => {
                drop(table::remove(new));
                ride::dup(fd, new);
            }
        }
    }
    r
}

/// Interposed `dup2`.
#[unsafe(no_mangle)]
pub extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    if fd != new {
        ride::release(new);
    }
    let r = call_real!(dup2: fn(c_int, c_int) -> c_int, fd, new);
    dup_onto(fd, new, r)
}

/// Interposed `dup3`.
#[unsafe(no_mangle)]
pub extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    if fd != new {
        ride::release(new);
    }
    let r = call_real!(dup3: fn(c_int, c_int, c_int) -> c_int, fd, new, flags);
    dup_onto(fd, new, r)
}

fn ship_fcntl(fd: c_int, d: Arc<Desc>, cmd: c_int, arg: usize) -> c_int {
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let n = call_real!(fcntl: fn(c_int, c_int, usize) -> c_int, fd, cmd, arg);
            if n >= 0 {
                table::insert(n, d);
            }
            n
        }
        // Descriptor flags belong to the placeholder itself.
        libc::F_GETFD | libc::F_SETFD => {
            call_real!(fcntl: fn(c_int, c_int, usize) -> c_int, fd, cmd, arg)
        }
        libc::F_GETFL => *lock(&d.flags),
        libc::F_SETFL => {
            let settable = libc::O_APPEND
                | libc::O_NONBLOCK
                | libc::O_ASYNC
                | libc::O_NOATIME
                | libc::O_DIRECT;
            let mut f = lock(&d.flags);
            *f = (*f & !settable) | (arg as c_int & settable);
            0
        }
        // Record locks: one client's locks are not seen by other clients (documented).
        libc::F_GETLK | libc::F_OFD_GETLK => {
            if arg != 0 {
                // SAFETY: F_GETLK's argument is a struct flock.
                unsafe { (*(arg as *mut libc::flock)).l_type = libc::F_UNLCK as i16 };
            }
            0
        }
        libc::F_SETLK | libc::F_SETLKW | libc::F_OFD_SETLK | libc::F_OFD_SETLKW => 0,
        _ => {
            crate::warn_once(&format!(
                "fcntl command {cmd} is not supported on shipped files"
            ));
            fail(libc::EINVAL)
        }
    }
}

/// Interposed `fcntl` (the optional argument read as a fixed one).
#[unsafe(no_mangle)]
pub extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    match table::get(fd) {
        Some(d) => ship_fcntl(fd, d, cmd, arg),
        None => {
            if cmd == libc::F_SETFL {
                // A ridden file keeps the flags it was opened with: it stops riding.
                ride::stop(fd);
            }
            let r = call_real!(fcntl: fn(c_int, c_int, usize) -> c_int, fd, cmd, arg);
            if r >= 0 && matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
                ride::dup(fd, r);
            }
            r
        }
    }
}

/// Interposed `fsync`.
#[unsafe(no_mangle)]
pub extern "C" fn fsync(fd: c_int) -> c_int {
    match table::get(fd) {
        Some(d) => ret(sync(&d, false)),
        None => match ride::sync(fd) {
            Some(e) => fail(e),
            None => call_real!(fsync: fn(c_int) -> c_int, fd),
        },
    }
}

/// Interposed `fdatasync`.
#[unsafe(no_mangle)]
pub extern "C" fn fdatasync(fd: c_int) -> c_int {
    match table::get(fd) {
        Some(d) => ret(sync(&d, true)),
        None => match ride::sync(fd) {
            Some(e) => fail(e),
            None => call_real!(fdatasync: fn(c_int) -> c_int, fd),
        },
    }
}

fn sync(d: &Desc, data_only: bool) -> Result<(), c_int> {
    let fh = d.fh()?;
    table::writes().settle(fh).map_err(errno_of)?;
    crate::call(posix_ship::proto::FSYNC, &(fh, data_only))
}

/// Interposed `ftruncate`.
#[unsafe(no_mangle)]
pub extern "C" fn ftruncate(fd: c_int, len: off_t) -> c_int {
    match table::get(fd) {
        Some(d) => ret((|| {
            let t = posix_ship::proto::Target::Handle(d.fh()?);
            d.ahead.invalidate();
            crate::call(posix_ship::proto::TRUNCATE, &(t, offset(len)?))
        })()),
        None => call_real!(ftruncate: fn(c_int, off_t) -> c_int, fd, len),
    }
}

crate::real::alias! {
    safe open64 => open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    safe openat64 => openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: mode_t) -> c_int;
    safe creat64 => creat(path: *const c_char, mode: mode_t) -> c_int;
    safe __open64_2 => __open_2(path: *const c_char, flags: c_int) -> c_int;
    safe __openat64_2 => __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int;
    safe lseek64 => lseek(fd: c_int, off: off_t, whence: c_int) -> off_t;
    safe fcntl64 => fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int;
    safe ftruncate64 => ftruncate(fd: c_int, len: off_t) -> c_int;
    unsafe pread64 => pread(fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t;
    unsafe pwrite64 => pwrite(fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t;
    unsafe __pread64_chk => __pread_chk(fd: c_int, b: *mut c_void, n: size_t, off: off_t, cap: size_t) -> ssize_t;
    unsafe preadv64 => preadv(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t;
    unsafe pwritev64 => pwritev(fd: c_int, iov: *const iovec, cnt: c_int, off: off_t) -> ssize_t;
}
