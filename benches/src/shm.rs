//! Raw baselines for the shared-memory transport, measured beside it in the same run:
//! a ping-pong through one shared cache line (the floor of a same-node round trip) and a
//! `process_vm_readv` loop (the floor of a single-copy bulk transfer).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Shared layout of the ping-pong: one cache line per direction (sequence number, then
/// payload bytes up to the line's end), payloads over 56 bytes spill into a data area.
const LINE: usize = 64;
const DATA: usize = 1 << 20;

struct Shared {
    ptr: *mut u8,
    len: usize,
}

impl Shared {
    /// Maps `path` (in /dev/shm), creating it at the right size when `create`.
    fn map(path: &str, create: bool) -> Result<Shared, String> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("{path}: {e}"))?;
        let len = 2 * LINE + 2 * DATA;
        if create {
            f.set_len(len as u64).map_err(|e| e.to_string())?;
        }
        // SAFETY: mapping a file we opened, shared, at its full length; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().to_string());
        }
        Ok(Shared {
            ptr: ptr.cast(),
            len,
        })
    }

    fn seq(&self, dir: usize) -> &AtomicU64 {
        // SAFETY: the line is inside the mapping, 8-byte aligned (page-aligned base).
        unsafe { &*(self.ptr.add(dir * LINE) as *const AtomicU64) }
    }

    /// Copies `n` payload bytes of direction `dir` from `src` (or into `dst`).
    fn payload(&self, dir: usize, n: usize) -> *mut u8 {
        // SAFETY: both areas are inside the mapping; n <= DATA is checked by callers.
        unsafe {
            if n <= LINE - 8 {
                self.ptr.add(dir * LINE + 8)
            } else {
                self.ptr.add(2 * LINE + dir * DATA)
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The ping-pong's server side: maps `path`, prints `ready`, and answers each ping with a
/// pong of the same size until the client sends `u64::MAX`.
pub fn pp_serve(path: &str) {
    let Ok(sh) = Shared::map(path, false) else {
        return;
    };
    println!("ready");
    std::io::stdout().flush().ok();
    let (mut last, mut buf) = (0u64, vec![0u8; DATA]);
    loop {
        let s = loop {
            let s = sh.seq(0).load(Ordering::Acquire);
            if s != last {
                break s;
            }
            std::hint::spin_loop();
        };
        if s == u64::MAX {
            return;
        }
        last = s;
        let n = (s & 0xffff_ffff) as usize;
        // SAFETY: n <= DATA (the client's encoding); our buffer and the mapping are distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(sh.payload(0, n), buf.as_mut_ptr(), n);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), sh.payload(1, n), n);
        }
        sh.seq(1).store(s, Ordering::Release);
    }
}

/// Microseconds per round trip of `size`-byte payloads through shared memory, against
/// this binary re-run with `--shm-pp-serve PATH` (which must call [`pp_serve`]); both
/// sides busy-poll.
pub fn pp_run(size: usize, loops: usize) -> Result<f64, String> {
    let size = size.min(DATA);
    let path = format!("/dev/shm/qs-bench-pp-{}", std::process::id());
    let sh = Shared::map(&path, true)?;
    let started = crate::spawn_self(&["--shm-pp-serve", &path]);
    let _ = std::fs::remove_file(&path);
    let (mut child, _) = started?;
    let buf = vec![7u8; size];
    let mut back = vec![0u8; size];
    let warm = (loops / 10).max(10);
    let mut t0 = Instant::now();
    for i in 0..(warm + loops) as u64 {
        if i == warm as u64 {
            t0 = Instant::now();
        }
        let s = ((i + 1) << 32) | size as u64;
        // SAFETY: size <= DATA; our buffers and the mapping are distinct.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), sh.payload(0, size), size) };
        sh.seq(0).store(s, Ordering::Release);
        while sh.seq(1).load(Ordering::Acquire) != s {
            std::hint::spin_loop();
        }
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(sh.payload(1, size), back.as_mut_ptr(), size) };
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / loops as f64;
    sh.seq(0).store(u64::MAX, Ordering::Release);
    let _ = child.wait();
    Ok(us)
}

/// The single-copy baseline's source: allocates `size` bytes, prints `pid address`, and
/// waits for its standard input to close.
pub fn cma_serve(size: usize) {
    let buf = vec![7u8; size];
    println!("{} {}", std::process::id(), buf.as_ptr() as u64);
    std::io::stdout().flush().ok();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(buf);
}

/// MB/s of `count` `process_vm_readv` calls of `size` bytes each from the source process
/// `pid` at `addr` into `bufs` local buffers in turn.
pub fn cma_run(pid: i32, addr: u64, size: usize, count: usize, bufs: usize) -> Result<f64, String> {
    // Written before the clock starts: their pages are faulted in, as the server's are.
    let mut bufs: Vec<Vec<u8>> = (0..bufs.max(1)).map(|_| vec![1u8; size]).collect();
    let locals: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: size,
        })
        .collect();
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: size,
    };
    let t0 = Instant::now();
    for i in 0..count {
        let local = &locals[i % locals.len()];
        // SAFETY: `local` covers one of our buffers; the kernel checks the remote range.
        let n = unsafe { libc::process_vm_readv(pid, local, 1, &remote, 1, 0) };
        if n != size as isize {
            return Err(format!(
                "process_vm_readv: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok((size * count) as f64 / t0.elapsed().as_secs_f64() / 1e6)
}
