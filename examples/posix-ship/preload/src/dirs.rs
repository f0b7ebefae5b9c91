//! Directory streams on shipped directories: `opendir`, `fdopendir`, `readdir`,
//! `rewinddir`, `dirfd`, `closedir`. A shipped stream is this library's own structure
//! behind the `DIR *`; the program never looks inside one.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int};
use posix_ship::proto::{DirEntry, MAX_DIR_PAGE};

use crate::real::call_real;
use crate::table::{self, lock};
use crate::{errno_of, fail, files, shipped};

struct ShipDir {
    fd: c_int,
    queue: VecDeque<DirEntry>,
    end: bool,
    restart: bool,
    ent: libc::dirent64,
}

/// Streams handed out, by address; a count so the common case takes no lock.
pub(crate) static LIVE: Mutex<Option<HashSet<usize>>> = Mutex::new(None);
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn ours(d: *mut libc::DIR) -> Option<&'static mut ShipDir> {
    if COUNT.load(Ordering::Acquire) == 0 || d.is_null() {
        return None;
    }
    let live = lock(&LIVE).as_ref()?.contains(&(d as usize));
    // SAFETY: the address is a live `ShipDir` this library boxed and handed out (it is
    // removed from LIVE before it is freed); a stream is used by one thread at a time
    // (POSIX leaves concurrent use of one DIR undefined).
    live.then(|| unsafe { &mut *(d as *mut ShipDir) })
}

fn wrap(fd: c_int) -> *mut libc::DIR {
    let d = Box::new(ShipDir {
        fd,
        queue: VecDeque::new(),
        end: false,
        restart: false,
        // SAFETY: all-zero is a valid dirent64.
        ent: unsafe { std::mem::zeroed() },
    });
    let p = Box::into_raw(d) as usize;
    lock(&LIVE).get_or_insert_with(HashSet::new).insert(p);
    COUNT.fetch_add(1, Ordering::AcqRel);
    p as *mut libc::DIR
}

/// Interposed `opendir`.
#[unsafe(no_mangle)]
pub extern "C" fn opendir(path: *const c_char) -> *mut libc::DIR {
    match shipped(path) {
        Some(p) => {
            let fd = files::ship_open(p, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC, 0);
            if fd < 0 {
                std::ptr::null_mut()
            } else {
                wrap(fd)
            }
        }
        None => {
            let local = crate::local_path(path);
            call_real!(opendir: fn(*const c_char) -> *mut libc::DIR, local.ptr())
        }
    }
}

/// Interposed `fdopendir`.
#[unsafe(no_mangle)]
pub extern "C" fn fdopendir(fd: c_int) -> *mut libc::DIR {
    match table::get(fd) {
        Some(d) if !d.is_dir => {
            fail(libc::ENOTDIR);
            std::ptr::null_mut()
        }
        Some(_) => wrap(fd),
        None => call_real!(fdopendir: fn(c_int) -> *mut libc::DIR, fd),
    }
}

fn next(d: &mut ShipDir) -> Result<Option<DirEntry>, c_int> {
    if d.queue.is_empty() && !d.end {
        let desc = table::get(d.fd).ok_or(libc::EBADF)?;
        let fs = table::client()?;
        let (fh, restart) = (desc.fh()?, std::mem::take(&mut d.restart));
        // Names only (a page of 1 024): a program that then stats the entries has the
        // directory listed with attributes by the client's cache at its second miss.
        let page = fs
            .readdir_page(fh, MAX_DIR_PAGE, restart)
            .map_err(errno_of)?;
        d.end = page.end;
        d.queue.extend(page.entries);
    }
    Ok(d.queue.pop_front())
}

fn read_one(d: &mut ShipDir) -> *mut libc::dirent64 {
    match next(d) {
        Ok(Some(e)) => {
            let n = e.name.len().min(d.ent.d_name.len() - 1);
            d.ent.d_ino = e.ino;
            d.ent.d_off = 0;
            d.ent.d_type = e.kind;
            d.ent.d_reclen = std::mem::size_of::<libc::dirent64>() as u16;
            for (dst, src) in d.ent.d_name.iter_mut().zip(&e.name[..n]) {
                *dst = *src as c_char;
            }
            d.ent.d_name[n] = 0;
            &mut d.ent
        }
        // End of the directory: NULL with errno unchanged.
        Ok(None) => std::ptr::null_mut(),
        Err(e) => {
            fail(e);
            std::ptr::null_mut()
        }
    }
}

/// Interposed `readdir64`.
#[unsafe(no_mangle)]
pub extern "C" fn readdir64(dir: *mut libc::DIR) -> *mut libc::dirent64 {
    match ours(dir) {
        Some(d) => read_one(d),
        None => call_real!(readdir64: fn(*mut libc::DIR) -> *mut libc::dirent64, dir),
    }
}

/// Interposed `readdir` (same layout as `readdir64` on 64-bit Linux).
#[unsafe(no_mangle)]
pub extern "C" fn readdir(dir: *mut libc::DIR) -> *mut libc::dirent {
    match ours(dir) {
        Some(d) => read_one(d).cast(),
        None => call_real!(readdir: fn(*mut libc::DIR) -> *mut libc::dirent, dir),
    }
}

/// Interposed `rewinddir`.
#[unsafe(no_mangle)]
pub extern "C" fn rewinddir(dir: *mut libc::DIR) {
    match ours(dir) {
        Some(d) => {
            d.queue.clear();
            d.end = false;
            d.restart = true;
        }
        None => {
            if let Some(f) = crate::real::real!(rewinddir: fn(*mut libc::DIR) -> ()) {
                // SAFETY: the caller's own stream, forwarded unchanged.
                unsafe { f(dir) }
            }
        }
    }
}

/// Interposed `dirfd`.
#[unsafe(no_mangle)]
pub extern "C" fn dirfd(dir: *mut libc::DIR) -> c_int {
    match ours(dir) {
        Some(d) => d.fd,
        None => call_real!(dirfd: fn(*mut libc::DIR) -> c_int, dir),
    }
}

/// Interposed `closedir`.
#[unsafe(no_mangle)]
pub extern "C" fn closedir(dir: *mut libc::DIR) -> c_int {
    let Some(d) = ours(dir) else {
        return call_real!(closedir: fn(*mut libc::DIR) -> c_int, dir);
    };
    let fd = d.fd;
    if let Some(live) = lock(&LIVE).as_mut() {
        live.remove(&(dir as usize));
    }
    COUNT.fetch_sub(1, Ordering::AcqRel);
    // SAFETY: boxed by `wrap`, now unreachable from LIVE.
    drop(unsafe { Box::from_raw(dir as *mut ShipDir) });
    files::close(fd)
}
