//! Write-behind for small positional writes: a program writing 4 KiB at a time (`dd`,
//! `cp`, `tar x`, stdio) does not wait a round trip per write. Contiguous writes of a file
//! are gathered into one request of up to the inline size (32 KiB), which is sent at once
//! and answered later; up to [`Settings::bytes`] of writes are in flight (the oldest is waited
//! for past that; at most [`MAX_FLIGHTS`] writes), and a write waits for older writes it overlaps, so that the server,
//! whose workers run requests in parallel, applies overlapping writes in order.
//!
//! The caller decides when what is in flight must have landed: [`WriteBehind::drain`]
//! before any other operation that could observe it (a read, a stat, an open, an exec),
//! [`WriteBehind::settle`] at `fsync` and `close`. An error of a write already acknowledged
//! to the program is kept for its file and reported at that file's next write, `fsync` or
//! `close` (as NFS reports deferred write errors), once.
//!
//! Larger writes that fit in the window go behind too, their bytes copied into memory
//! the server pulls from (a copy costs far less than the round trip it saves); larger
//! than the window, and appends (whose offset only the server knows), are made after the
//! writes in flight.
//!
//! Settings (environment, read once): `POSIX_SHIP_WRITE_BEHIND`, bytes in flight with an
//! optional `K`/`M` suffix (default 4M; `0` turns it off).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde_bytes::ByteBuf;

use super::readahead::parse_size;
use rpc_core::{Access, Bulk, Seg};

use super::{Pending, RemoteFs};
use crate::proto::{Fh, WRITE, WriteData, WriteReq, Written};

/// How much may be in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Bytes of writes in flight (0: every write waits for its answer).
    pub bytes: usize,
}

impl Settings {
    /// For one [`super::RemoteFile`]'s writes: `POSIX_SHIP_WRITE_BEHIND` if set, else
    /// 16M (a few of the large writes of a copy in flight).
    pub fn for_files() -> Settings {
        match std::env::var_os("POSIX_SHIP_WRITE_BEHIND") {
            Some(_) => Self::from_env(),
            None => Settings { bytes: 16 << 20 },
        }
    }

    /// From `POSIX_SHIP_WRITE_BEHIND` (4M unset).
    pub fn from_env() -> Settings {
        static S: OnceLock<Settings> = OnceLock::new();
        *S.get_or_init(|| Settings {
            bytes: std::env::var("POSIX_SHIP_WRITE_BEHIND")
                .ok()
                .and_then(|v| parse_size(&v))
                .unwrap_or(4 << 20),
        })
    }
}

/// The writes in flight of one process (or one connection), all files together.
pub struct WriteBehind {
    settings: Settings,
    st: Mutex<State>,
}

struct Flight {
    fs: RemoteFs,
    fh: Fh,
    off: u64,
    data: Payload,
    call: Pending<Written>,
}

/// A write's bytes, kept until it lands (for a retry).
enum Payload {
    /// Sent in the request.
    Inline(Vec<u8>),
    /// Exposed for the server to pull.
    Bulk(Bulk<'static>),
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Inline(v) => v,
            Payload::Bulk(b) => b.segments().next().unwrap_or(&[]),
        }
    }

    fn len(&self) -> usize {
        self.bytes().len()
    }
}

/// Most writes in flight, whatever their size: well under a server's per-client bound
/// on requests in flight (64 by default), past which it answers `EAGAIN`.
pub const MAX_FLIGHTS: usize = 16;

/// Contiguous writes of one file not sent yet (at most the inline size).
struct Gather {
    fs: RemoteFs,
    fh: Fh,
    off: u64,
    data: Vec<u8>,
}

#[derive(Default)]
struct State {
    gather: Option<Gather>,
    flights: VecDeque<Flight>,
    bytes: usize,
    /// Errors of writes already acknowledged, by file, until reported.
    errors: HashMap<Fh, i32>,
    /// The process the flights belong to (a forked child forgets its parent's).
    pid: u32,
    /// Most writes in flight now: [`MAX_FLIGHTS`], halved at each `EAGAIN` and grown
    /// back by one per write landed.
    cap: usize,
    /// Set while `_exit` drains: no write is waited for past it (the engine fails it
    /// then), nor made again.
    deadline: Option<std::time::Instant>,
    /// Writes given up at the deadline.
    abandoned: usize,
}

/// Makes a write refused with `EAGAIN` again, waiting 0.1 ms doubling to 10 ms between
/// tries, for about 2 s in all.
fn retry(fs: &RemoteFs, fh: Fh, off: u64, data: &[u8]) -> io::Result<()> {
    let mut pause = std::time::Duration::from_micros(100);
    let mut waited = std::time::Duration::ZERO;
    loop {
        match fs.pwrite(fh, data, Some(off)) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && waited.as_secs() < 2 => {
                std::thread::sleep(pause);
                waited += pause;
                pause = (pause * 2).min(std::time::Duration::from_millis(10));
            }
            r => return r.map(drop),
        }
    }
}

impl State {
    /// Waits for the oldest write and keeps its error.
    fn land_oldest(&mut self) {
        let Some(Flight {
            fs,
            fh,
            off,
            data,
            call,
        }) = self.flights.pop_front()
        else {
            return;
        };
        self.bytes -= data.len();
        let len = data.len() as u64;
        // Draining for `_exit`: answered by the deadline or failed then by the engine,
        // and not made again.
        let call = match self.deadline {
            Some(until) => call.timeout(until.saturating_duration_since(Instant::now())),
            None => call,
        };
        let again = |at: u64, bytes: &[u8]| match self.deadline {
            Some(_) => Err(io::Error::from_raw_os_error(libc::ETIMEDOUT)),
            None => retry(&fs, fh, at, bytes),
        };
        let errno = match call.wait() {
            Ok(w) if w.n == len => {
                // The window grows back one write per write landed.
                self.cap = (self.cap + 1).min(MAX_FLIGHTS);
                return;
            }
            // Inline data is never staged: a short write is a full disk.
            Ok(_) if matches!(data, Payload::Inline(_)) => libc::ENOSPC,
            // The server staged part of a bulk write (its memory bound): the rest now.
            Ok(w) if w.n > len => libc::EIO,
            Ok(w) => match again(off + w.n, &data.bytes()[w.n as usize..]) {
                Ok(()) => return,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            },
            // The server's bound on requests in flight (shared with this client's other
            // threads and its user's other connections): not the write's fault. Fewer go
            // behind from now on, and this one is made again until the server takes it.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                let r = again(off, data.bytes());
                self.cap = (self.cap / 2).max(1);
                match r {
                    Ok(()) => return,
                    Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
                }
            }
            Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
        };
        if self.deadline.is_some() && errno == libc::ETIMEDOUT {
            self.abandoned += 1;
        }
        tracing::debug!(fh = fh.0, off, errno, "a write behind failed");
        self.errors.entry(fh).or_insert(errno);
    }

    /// Sends the gathered writes (after older writes they overlap, within the window).
    fn flush_gather(&mut self, window: usize) {
        let Some(Gather { fs, fh, off, data }) = self.gather.take() else {
            return;
        };
        self.send(fs, fh, off, Payload::Inline(data), window);
    }

    /// Starts a write after older writes it overlaps, within the window.
    fn send(&mut self, fs: RemoteFs, fh: Fh, off: u64, data: Payload, window: usize) {
        let (len, end) = (data.len(), off + data.len() as u64);
        let overlaps = |f: &Flight| f.fh == fh && f.off < end && off < f.off + f.data.len() as u64;
        while let Some(last) = self.flights.iter().rposition(overlaps) {
            for _ in 0..=last {
                self.land_oldest();
            }
        }
        while !self.flights.is_empty()
            && (self.bytes + len > window || self.flights.len() >= self.cap)
        {
            self.land_oldest();
        }
        let (call, data) = match data {
            Payload::Inline(v) => {
                let req = WriteReq {
                    fh,
                    offset: Some(off),
                    data: WriteData::Inline(ByteBuf::from(v)),
                };
                // The request is encoded as it starts: its bytes are kept (for a retry)
                // without a copy.
                let call = fs.start(WRITE, &req);
                let WriteData::Inline(v) = req.data else {
                    unreachable!("built inline above")
                };
                (call, Payload::Inline(v.into_vec()))
            }
            Payload::Bulk(b) => {
                let req = WriteReq {
                    fh,
                    offset: Some(off),
                    data: WriteData::Bulk(b.descriptor()),
                };
                (fs.start(WRITE, &req), Payload::Bulk(b))
            }
        };
        self.bytes += len;
        self.flights.push_back(Flight {
            fs,
            fh,
            off,
            data,
            call,
        });
    }

    /// Sends what is gathered and waits for every write in flight.
    fn land_all(&mut self, window: usize) {
        self.flush_gather(window);
        while !self.flights.is_empty() {
            self.land_oldest();
        }
    }

    /// In a forked child, the parent's flights belong to an engine whose threads are not
    /// here: forget them (the parent waits for them).
    fn adopt(&mut self) {
        let pid = std::process::id();
        if self.pid != pid {
            for f in self.flights.drain(..) {
                std::mem::forget(f.call);
            }
            // (Gathered writes are the parent's to send.)
            std::mem::forget(self.gather.take());
            (self.bytes, self.pid, self.cap) = (0, pid, MAX_FLIGHTS);
            self.errors.clear();
        }
    }
}

impl WriteBehind {
    /// With the process's settings.
    pub fn new() -> WriteBehind {
        Self::with(Settings::from_env())
    }

    /// With these settings.
    pub fn with(settings: Settings) -> WriteBehind {
        WriteBehind {
            settings,
            st: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.st.lock().unwrap_or_else(|e| e.into_inner());
        s.adopt();
        s
    }

    /// Writes `data` at `off` of `fh`: sent soon and answered later if it is small enough
    /// and the setting allows (contiguous writes of a file are gathered into requests of
    /// the inline size first), else made now after the writes in flight. An error of an
    /// earlier write of `fh` is returned instead (and this one is not made).
    pub fn write(&self, fs: &RemoteFs, fh: Fh, off: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.state();
        let owed = |s: &mut State| s.errors.remove(&fh).map(io::Error::from_raw_os_error);
        if let Some(e) = owed(&mut s) {
            return Err(e);
        }
        let max = fs.inline_max();
        let window = self.settings.bytes;
        if data.len() > max
            && data.len() <= window
            && data.len() as u64 <= crate::proto::MAX_IO
            && let Ok(b) = fs
                .engine()
                .expose(vec![Seg::from(data.to_vec())], Access::ReadOnly)
        {
            s.flush_gather(window);
            s.send(fs.clone(), fh, off, Payload::Bulk(b), window);
            return Ok(());
        }
        if window == 0 || data.len() > max {
            s.land_all(self.settings.bytes);
            if let Some(e) = owed(&mut s) {
                return Err(e);
            }
            drop(s);
            return fs.pwrite(fh, data, Some(off)).map(drop);
        }
        if let Some(g) = &mut s.gather
            && g.fh == fh
            && g.off + g.data.len() as u64 == off
            && g.data.len() + data.len() <= max
        {
            g.data.extend_from_slice(data);
        } else {
            s.flush_gather(self.settings.bytes);
            s.gather = Some(Gather {
                fs: fs.clone(),
                fh,
                off,
                data: data.to_vec(),
            });
        }
        if s.gather.as_ref().is_some_and(|g| g.data.len() == max) {
            s.flush_gather(self.settings.bytes);
        }
        Ok(())
    }

    /// Waits until every write in flight has landed (errors kept for their files).
    pub fn drain(&self) {
        self.state().land_all(self.settings.bytes);
    }

    /// [`WriteBehind::drain`] for `_exit`, which may run in a signal handler that
    /// interrupted the holder of this state's lock, and must end even if the server does
    /// not answer: waits at most `patience` for the lock and the answers, then gives up
    /// (the writes still in flight are lost with the process). Whether it drained.
    pub fn drain_within(&self, patience: std::time::Duration) -> bool {
        let until = Instant::now() + patience;
        let drain = |s: &mut State| {
            s.adopt();
            (s.deadline, s.abandoned) = (Some(until), 0);
            s.land_all(self.settings.bytes);
            s.deadline = None;
            s.abandoned == 0
        };
        loop {
            match self.st.try_lock() {
                Ok(mut s) => return drain(&mut s),
                Err(std::sync::TryLockError::Poisoned(p)) => return drain(&mut p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(std::sync::TryLockError::WouldBlock) => return false,
            }
        }
    }

    /// Before a `fork` (a `pthread_atfork` prepare handler): lands every write in flight
    /// and returns this state's lock, held, for the forking thread to keep until the parent
    /// and the child let it go. Else another thread could hold it as the process is copied,
    /// and the child, which has no such thread, would wait for it for ever at its first
    /// write (it forgets its parent's writes at its first use).
    pub fn landed_and_held(&'static self) -> Box<dyn std::any::Any> {
        let mut s = self.state();
        s.land_all(self.settings.bytes);
        Box::new(s)
    }

    /// Waits for every write in flight, then reports (once) the first error of a write of
    /// `fh` acknowledged earlier: at `fsync` and `close`.
    pub fn settle(&self, fh: Fh) -> io::Result<()> {
        let mut s = self.state();
        s.land_all(self.settings.bytes);
        match s.errors.remove(&fh) {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self::new()
    }
}
