//! Backend files as the I/O node shares them between its clients: write-behind buffers
//! (one per file, whoever wrote), flushes, and the read-ahead window.
//!
//! A file is known by (backend, device, inode), so every client that opened it, under
//! any name, writes into the same [`Extents`]: N-to-1 strided writes of many clients
//! merge into few large backend writes. Flushes of one file are serialized (`flushing`);
//! a read waits for a flush in progress (begun again as it ends: `flushing.rs`), reads
//! the backend, and lays the buffered bytes over what it read, so reads through the node
//! see every acknowledged write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError, Weak};
use std::time::{Duration, Instant};

use posix_ship::proto::Principal;

use crate::backing::Backing;
use crate::extents::{Extents, Write};
use crate::journal::Journal;
use crate::kept::{Budget, Kept};
use crate::stats::Counters;

mod dense;
mod flushing;
mod io;
mod near;
mod out;
pub use near::{Miss, Near, Waiter};
mod paths;

/// The largest backend write a flush makes.
pub const MAX_MERGE: usize = 8 << 20;

/// An extent this large is written when its file holds [`Files::file_max`]; smaller
/// ones wait for the writes that fill the holes between them (N-to-1 strided writers
/// drift apart), until the file holds [`Files::file_hold`] (then the lowest are
/// written, down to half that), or an fsync, a close or their age writes them.
const RIPE: usize = 1 << 20;

/// How long buffered writes are kept while their backend cannot be reached (tried
/// again with each flush; a restarted backend's forgotten handles are opened again).
const RETRY_FOR: Duration = Duration::from_secs(60);

/// How long read-ahead data is trusted (other nodes may change the file behind us).
const READAHEAD_TTL: Duration = Duration::from_secs(1);

/// Reads of many clients that fall within this distance of each other are coalesced:
/// a miss fetches the aligned block of this size around it, and the reads of the other
/// clients in it are served from that one backend read (N-to-1 strided readers).
const DENSE: u64 = 1 << 20;

/// A backend file: (backend, dev, ino).
pub type Key = (usize, u64, u64);

/// A backend handle a flush may write through: a client's, with its identity.
#[derive(Clone)]
pub struct Writer {
    /// Which client handle it belongs to.
    pub token: u64,
    /// Its backend handle.
    pub backing: Arc<Backing>,
}

/// One backend file's shared state.
pub struct SharedFile {
    /// Which file.
    pub key: Key,
    state: Mutex<State>,
    /// Held (write) by a flush, (read) by a read: a read never misses bytes a flush has
    /// taken out of the buffer but not yet written.
    flushing: RwLock<()>,
    /// Held while fetching a dense block, so that clients missing together make one read.
    fetching: Mutex<()>,
    /// Dense blocks being fetched from completions, by offset, with the reads that
    /// missed in each meanwhile (`near.rs`).
    near_out: Mutex<Vec<(u64, Vec<near::Waiter>)>>,
    /// What waits for the write-out in progress to end (`flushing.rs`).
    after_flush: Mutex<Vec<flushing::Job>>,
    dirty: AtomicU64,
}

#[derive(Default)]
struct State {
    extents: Extents,
    /// When the oldest buffered write came, and the newest.
    since: Option<Instant>,
    last: Option<Instant>,
    /// A flush's failure, for the next fsync or close of each handle that could have
    /// written the lost bytes (the writers at the time), by token.
    errors: Vec<(u64, i32)>,
    writers: Vec<Writer>,
    /// Since when its flushes fail for a transport reason (bytes kept and tried again
    /// with each flush, for [`RETRY_FOR`]).
    failing_since: Option<Instant>,
    /// Buffered bytes at which to look for large extents again.
    next_look: u64,
    /// Read-ahead data.
    cache: Kept,
    /// Where the last read of any client began (dense-access detection).
    last_read: u64,
    /// What its dense blocks were worth.
    dense: dense::Dense,
    /// Where the last write of any client ended (a write there continues a stream).
    last_write_end: u64,
    /// Bumped by every change to what the backend holds or will hold of the file (a
    /// write-out, a write through, a truncation, the last writer's close), so that a
    /// fetch racing one is neither kept nor answered. Not by a buffered write: the
    /// backend's bytes stay as they were, and a fetch is answered with the buffer of
    /// its answer's time laid over them, that write in it.
    generation: u64,
}

impl State {
    /// Open for writing here, or holding buffered bytes.
    fn busy(&self) -> bool {
        !self.writers.is_empty() || !self.extents.is_empty()
    }

    /// Records `errno` for every handle that may write (each is told once).
    fn fail(&mut self, errno: i32) {
        record(
            &mut self.errors,
            self.writers.iter().map(|w| w.token),
            errno,
        );
    }
}

/// `errno` owed to each of `tokens` (the latest failure replaces an untold one).
fn record(errors: &mut Vec<(u64, i32)>, tokens: impl Iterator<Item = u64>, errno: i32) {
    for t in tokens {
        match errors.iter_mut().find(|(k, _)| *k == t) {
            Some(e) => e.1 = errno,
            None => errors.push((t, errno)),
        }
    }
}

/// Takes what is owed to `token`.
fn owed(errors: &mut Vec<(u64, i32)>, token: u64) -> Option<i32> {
    let i = errors.iter().position(|(t, _)| *t == token)?;
    Some(errors.swap_remove(i).1)
}

/// Every shared file, and the write-behind memory of all of them.
pub struct Files {
    /// Every file by key, weakly, and the map's size after its last sweep of dead ones.
    map: Mutex<(HashMap<Key, Weak<SharedFile>>, usize)>,
    /// The files each (backend, path) was opened as.
    paths: Mutex<paths::Index<(usize, Vec<u8>), SharedFile>>,
    /// Bytes buffered, all files.
    pub buffered: AtomicU64,
    /// The bound on `buffered` (`--write-behind`).
    pub budget: u64,
    /// A file with this much buffered has its large extents written.
    pub file_max: u64,
    /// A file with this much buffered has its lowest extents written too, down to half:
    /// a quarter of the budget, at least four times `file_max` (one N-to-1 file written
    /// at random, whose blocks only touch once most are in, had 32 MiB of 256 and went
    /// out as 6 000 backend writes for 16 500 client writes).
    pub file_hold: u64,
    /// Counters.
    pub stats: Arc<Counters>,
    /// Read-ahead memory of all files.
    pub kept: Arc<Budget>,
    /// Bytes taken out of buffers by flushes not yet finished.
    draining: AtomicU64,
    /// Where buffered writes are made durable before they are acknowledged.
    pub journal: Option<Arc<Journal>>,
}

impl Files {
    /// No files yet.
    pub fn new(
        budget: u64,
        readahead_total: u64,
        journal: Option<Arc<Journal>>,
        stats: Arc<Counters>,
    ) -> Files {
        let file_max = (budget / 16).clamp(64 << 10, MAX_MERGE as u64);
        Files {
            draining: AtomicU64::new(0),
            journal,
            kept: Budget::new(readahead_total),
            map: Mutex::new((HashMap::new(), 0)),
            paths: Mutex::new(paths::Index::default()),
            buffered: AtomicU64::new(0),
            budget,
            file_max,
            file_hold: (budget / 4).max(file_max * 4),
            stats,
        }
    }

    /// The shared state of `key`, made if nobody holds it.
    pub fn get(&self, key: Key) -> Arc<SharedFile> {
        let mut guard = lock(&self.map);
        let (m, swept) = &mut *guard;
        if let Some(f) = m.get(&key).and_then(Weak::upgrade) {
            return f;
        }
        paths::sweep_if_grown(m, swept, |_, w| w.strong_count() > 0);
        let f = Arc::new(SharedFile {
            key,
            state: Mutex::new(State {
                cache: Kept::new(self.kept.clone()),
                ..State::default()
            }),
            flushing: RwLock::new(()),
            fetching: Mutex::new(()),
            near_out: Mutex::default(),
            after_flush: Mutex::default(),
            dirty: AtomicU64::new(0),
        });
        m.insert(key, Arc::downgrade(&f));
        f
    }

    /// Whether any file has buffered bytes (or bytes being written out).
    pub fn holds_writes(&self) -> bool {
        self.buffered.load(Ordering::Acquire) > 0 || self.draining.load(Ordering::Acquire) > 0
    }

    /// The live shared state of `key`, if any.
    pub fn find(&self, key: Key) -> Option<Arc<SharedFile>> {
        lock(&self.map).0.get(&key).and_then(Weak::upgrade)
    }

    /// Every live file.
    pub fn all(&self) -> Vec<Arc<SharedFile>> {
        lock(&self.map)
            .0
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Files of `backend` opened by `path`.
    pub fn by_path(&self, backend: usize, path: &[u8]) -> Vec<Arc<SharedFile>> {
        lock(&self.paths).get(&(backend, path.to_vec()))
    }

    /// `f` was opened as `path` on its backend, by a handle that may write (`w`).
    pub fn opened(&self, f: &Arc<SharedFile>, w: Option<Writer>, path: &[u8]) {
        lock(&f.state).writers.extend(w);
        lock(&self.paths).add((f.key.0, path.to_vec()), f);
    }

    /// Buffers a write of `data` at `off`, made by `user` on the file opened as `path`
    /// (journaled, if there is a journal, before this returns; a large `data` is kept as
    /// it is, not copied): gives `data` back if memory is short even after flushing this
    /// file (the caller writes it through).
    pub fn buffer(
        &self,
        f: &SharedFile,
        off: u64,
        data: Vec<u8>,
        path: &[u8],
        user: &Option<Principal>,
    ) -> Result<(), Vec<u8>> {
        let len = data.len() as u64;
        if self.buffered.load(Ordering::Acquire) + len > self.budget {
            self.flush(f);
            if self.buffered.load(Ordering::Acquire) + len > self.budget {
                return Err(data);
            }
        }
        let (held, look, merged, record) = {
            let mut s = lock(&f.state);
            // Journaled under the same lock as buffered: a flush's Clean marker then
            // covers exactly the records whose bytes it wrote.
            let record = self
                .journal
                .as_ref()
                .map(|j| j.append_write(f.key, path, user.clone(), off, &data));
            let (after, merged) = self.insert(f, &mut s, off, Bytes::Owned(data));
            let look = self.look_due(&s, after);
            (after, look, merged, record)
        };
        if let (Some(j), Some(r)) = (&self.journal, record)
            && let Err(e) = r.and_then(|seq| j.sync_to(seq))
        {
            tracing::error!(error = %e, "journal write failed: writing through instead");
            self.flush(f);
        }
        self.count(len, merged);
        if held >= self.file_hold {
            self.write_out(f, RIPE, self.file_hold / 2);
        } else if look {
            self.write_out(f, RIPE, u64::MAX);
        }
        Ok(())
    }

    /// As [`Files::buffer`], only if that needs no waiting: no journal to sync, memory
    /// for it, and no write-out due with it; `false` (nothing done) otherwise.
    pub fn buffer_now(&self, f: &SharedFile, off: u64, data: &[u8]) -> bool {
        let len = data.len() as u64;
        if self.journal.is_some() || self.buffered.load(Ordering::Acquire) + len > self.budget {
            return false;
        }
        let merged = {
            let mut s = lock(&f.state);
            // At most this much after it (merging only takes away): a write-out due?
            let most = s.extents.bytes() + len;
            if self.look_due(&s, most) || most >= self.file_hold {
                return false;
            }
            self.insert(f, &mut s, off, Bytes::Borrowed(data)).1
        };
        self.count(len, merged);
        true
    }

    /// Whether a file holding `bytes` buffered (its state `s`) is due a look for ripe
    /// extents to write out ([`Files::buffer`] makes it; [`Files::buffer_now`] will not).
    fn look_due(&self, s: &State, bytes: u64) -> bool {
        bytes >= s.next_look.max(self.file_max)
    }

    /// Puts a write into `f`'s extents (its lock held as `s`); returns the bytes then
    /// buffered and how many extents it merged with.
    fn insert(&self, f: &SharedFile, s: &mut State, off: u64, data: Bytes<'_>) -> (u64, u64) {
        let before = s.extents.bytes();
        // A stream's new extent (after a write-out took the last one) starts with room
        // for what it will grow to: no copy at each doubling (a fresh extent's growth,
        // page faults and zeroing included, took a quarter of the node's CPU under 64
        // sequential writers: `perf record --call-graph dwarf` of the node during
        // `qs-fwd --shapes fpp`). Only a stream's past its start (not a file's first
        // write, nor scattered ones): room given to every small file would be memory the
        // write-behind budget does not count.
        let stream = off == s.last_write_end && off > 0;
        let room = if stream { self.file_max as usize } else { 0 };
        let len = data.len() as u64;
        let merged = match data {
            Bytes::Borrowed(d) => s.extents.insert_with(off, d, room),
            // (A large one kept as it came: pulled into a buffer of its own, it would
            // otherwise be copied once more; `qs-fwd -x 1048576 -n 16`, writes through
            // the node 5-20 % faster, its CPU 15 % less.)
            Bytes::Owned(d) => s.extents.insert_owned(off, d),
        };
        s.last_write_end = off + len;
        let after = s.extents.bytes();
        let now = Instant::now();
        s.since.get_or_insert(now);
        s.last = Some(now);
        self.account(f, before, after);
        (after, merged as u64)
    }

    fn count(&self, len: u64, merged: u64) {
        Counters::add(&self.stats.buffered_writes, 1);
        Counters::add(&self.stats.bytes_in, len);
        if merged > 0 {
            Counters::add(&self.stats.merged_writes, 1);
        }
    }

    fn account(&self, f: &SharedFile, before: u64, after: u64) {
        f.dirty.store(after, Ordering::Release);
        let now = if after >= before {
            self.buffered.fetch_add(after - before, Ordering::AcqRel) + (after - before)
        } else {
            self.buffered.fetch_sub(before - after, Ordering::AcqRel) - (before - after)
        };
        self.stats.buffered_bytes.store(now, Ordering::Relaxed);
        self.stats.buffered_peak.fetch_max(now, Ordering::Relaxed);
    }

    /// Forgets buffered bytes and read-ahead data at and past `len` (a truncate).
    pub fn truncate(&self, f: &SharedFile, len: u64) {
        self.truncate_if(f, len, |_| true);
    }

    /// Drops what the last writer `token` leaves buffered (a flush that failed): no
    /// writer remains to write it. Nothing, if another writer has come meanwhile.
    pub fn abandon(&self, f: &SharedFile, token: u64) {
        self.truncate_if(f, 0, |s| s.writers.iter().all(|w| w.token == token));
    }

    fn truncate_if(&self, f: &SharedFile, len: u64, ok: impl FnOnce(&State) -> bool) {
        let mut s = lock(&f.state);
        if !ok(&s) {
            return;
        }
        let before = s.extents.bytes();
        s.extents.truncate(len);
        let after = s.extents.bytes();
        s.cache.clear();
        s.generation += 1;
        if after == 0 {
            (s.since, s.last) = (None, None);
            // The discarded bytes' records must not come back at a replay.
            if let Some(j) = &self.journal
                && let Err(e) = j.clean(f.key, j.next_seq())
            {
                tracing::warn!(error = %e, "journal: cannot mark a truncated file");
            }
        }
        self.account(f, before, after);
    }
}

impl SharedFile {
    /// One past the last buffered byte (a size at least this).
    pub fn buffered_end(&self) -> u64 {
        lock(&self.state).extents.end()
    }

    /// Whether a handle may write it, or it holds buffered bytes: its size and times on
    /// the backend are about to change.
    pub fn busy(&self) -> bool {
        lock(&self.state).busy()
    }

    /// Its state if nobody holds it (a poisoned lock's state is still the state).
    fn state_now(&self) -> Option<MutexGuard<'_, State>> {
        match self.state.try_lock() {
            Ok(s) => Some(s),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// One past the last byte it holds buffered, if it holds any; looked at without
    /// waiting (`None` while its state is held).
    pub fn buffered_end_now(&self) -> Option<u64> {
        let s = self.state_now()?;
        (!s.extents.is_empty()).then(|| s.extents.end())
    }

    /// As [`SharedFile::busy`] without waiting: a file whose state is held (a writer
    /// buffering, perhaps journaling) counts as busy.
    pub fn busy_now(&self) -> bool {
        self.state_now().is_none_or(|s| s.busy())
    }

    /// Drops writer `token` unless it is the last one (then returns `true`: the caller
    /// flushes through it, then calls [`SharedFile::closed`]). Atomic, so that of two
    /// writers closing at once exactly one is last.
    pub fn closing(&self, token: u64) -> bool {
        let mut s = lock(&self.state);
        if s.writers.iter().all(|w| w.token == token) {
            return true;
        }
        s.writers.retain(|w| w.token != token);
        false
    }

    /// Drops writer `token`, and waits for a flush in progress (which may be writing
    /// through it) before the caller closes its backend handle.
    pub fn closed(&self, token: u64) {
        let mut s = lock(&self.state);
        s.writers.retain(|w| w.token != token);
        s.errors.retain(|(t, _)| *t != token);
        drop(s);
        drop(self.write_out_lock());
    }

    /// [`SharedFile::closing`], a flush, [`SharedFile::take_error`] and
    /// [`SharedFile::closed`] for writer `token` at once, if none of that would wait: no
    /// flush in progress, the state not held, nothing buffered (by anyone: a last
    /// writer would have to write it out). `None`, with nothing changed, otherwise; else
    /// the error owed to the writer, if any.
    pub fn close_now(&self, token: u64) -> Option<Option<i32>> {
        // Held while the writer goes: no flush begins meanwhile (a flush takes it).
        let _no_flush = self.try_write_out_lock()?;
        let mut s = self.state_now()?;
        if !s.extents.is_empty() {
            return None;
        }
        if s.writers.iter().all(|w| w.token == token) {
            // As the last writer's flush and `Files::abandon` leave it.
            s.cache.clear();
            s.generation += 1;
            (s.since, s.last) = (None, None);
        }
        s.writers.retain(|w| w.token != token);
        let error = owed(&mut s.errors, token);
        s.errors.retain(|(t, _)| *t != token);
        Some(error)
    }

    /// Takes the failure of an earlier flush that handle `token` has not been told of.
    pub fn take_error(&self, token: u64) -> Option<i32> {
        owed(&mut lock(&self.state).errors, token)
    }

    /// Forgets read-ahead data (the file changed behind the buffer).
    pub fn invalidate(&self) {
        let mut s = lock(&self.state);
        s.cache.clear();
        s.generation += 1;
    }
}

/// A write's bytes as [`Files`] is given them: a request's, or a buffer it may keep.
enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Bytes<'_> {
    fn len(&self) -> usize {
        match self {
            Bytes::Borrowed(d) => d.len(),
            Bytes::Owned(d) => d.len(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_writer_at_a_failure_is_told_once() {
        let mut e = Vec::new();
        record(&mut e, [1, 2].into_iter(), libc::ENOSPC);
        assert_eq!(owed(&mut e, 1), Some(libc::ENOSPC));
        assert_eq!(owed(&mut e, 1), None, "told once");
        record(&mut e, [2, 3].into_iter(), libc::EIO);
        assert_eq!(owed(&mut e, 2), Some(libc::EIO), "the latest");
        assert_eq!(owed(&mut e, 3), Some(libc::EIO));
        assert_eq!(owed(&mut e, 4), None, "not a writer then");
    }

    #[test]
    fn a_look_that_takes_nothing_waits_for_a_quarter_file_more() {
        // 16 MiB of write-behind: 1 MiB per file before the writers look for ripe data.
        let files = Files::new(16 << 20, 0, None, Arc::new(Counters::default()));
        let f = files.get((0, 1, 1));
        let block = [7u8; 4096];
        // Scattered blocks (every other one): no extent is ever ripe.
        for i in 0..=256u64 {
            assert!(
                files
                    .buffer(&f, i * 8192, block.to_vec(), b"/f", &None)
                    .is_ok()
            );
        }
        let s = lock(&f.state);
        assert_eq!(s.extents.bytes(), 257 * 4096, "nothing written out");
        // Looked at the 256th block (1 MiB held): the next look is a quarter file later,
        // not at every write (that was quadratic in the extents held).
        assert_eq!(s.next_look, (1 << 20) + (256 << 10));
    }

    #[test]
    fn buffering_now_takes_only_what_needs_no_waiting() {
        // 16 MiB of write-behind: writers look for ripe data at 1 MiB per file.
        let files = Files::new(16 << 20, 0, None, Arc::new(Counters::default()));
        let f = files.get((0, 1, 1));
        let block = [7u8; 4096];
        for i in 0..255u64 {
            assert!(files.buffer_now(&f, i * 8192, &block), "block {i}");
        }
        // The 256th would make 1 MiB: a look is due, which may write out (and wait).
        assert!(!files.buffer_now(&f, 255 * 8192, &block));
        assert_eq!(lock(&f.state).extents.bytes(), 255 * 4096, "nothing taken");
        assert!(
            files
                .buffer(&f, 255 * 8192, block.to_vec(), b"/f", &None)
                .is_ok()
        );
        // Past the node's whole budget: refused (the waiting path flushes first).
        let small = Files::new(64 << 10, 0, None, Arc::new(Counters::default()));
        let g = small.get((0, 1, 2));
        assert!(!small.buffer_now(&g, 0, &vec![1u8; 65 << 10]));
        assert_eq!(small.buffered.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_miss_is_answered_with_what_is_buffered_only_while_nothing_changed() {
        let files = Files::new(16 << 20, 16 << 20, None, Arc::new(Counters::default()));
        let f = files.get((0, 1, 1));
        let miss = |at: u64| match files.miss(&f, (at, 4096), 4096, true) {
            Some(Miss::Plain(g)) => Some(g),
            _ => None,
        };
        let g = miss(100 << 20).expect("nothing kept: a plain miss");
        let mut got = vec![7u8; 4096];
        assert!(files.overlay_unchanged(&f, g, (100 << 20, 4096), &mut got));
        assert_eq!(got, [7u8; 4096], "nothing buffered: the backend's bytes");
        // A write buffered since it began: answered with it laid over the backend's
        // bytes (past its end too: a hole between reads as zeros).
        let g0 = miss(0).expect("a miss");
        assert!(files.buffer_now(&f, 1000, &[1; 4096]));
        let mut got = vec![7u8; 100];
        assert!(files.overlay_unchanged(&f, g0, (0, 4096), &mut got));
        let mut want = vec![7u8; 100];
        want.resize(1000, 0);
        want.resize(4096, 1);
        assert_eq!(got, want, "the write since, over the backend's bytes");
        // A file being written: still a miss, answered the same way.
        assert!(files.buffer_now(&f, 8192, &[2; 100]));
        let g = miss(200 << 20).expect("a miss with bytes buffered, just written");
        assert_eq!(g, g0, "buffered writes are no new generation");
        // A write-out since it began (of part of the buffered bytes, or all): its bytes
        // may be neither in the read nor under it.
        files.flush(&f);
        let mut got = vec![7u8; 100];
        assert!(
            !files.overlay_unchanged(&f, g, (0, 4096), &mut got),
            "written out since"
        );
        assert_eq!(got, [7u8; 100], "left as it was");
        // Held by another thread: not looked at, whatever it holds.
        let held = lock(&f.state);
        assert_eq!(miss(300 << 20), None);
        drop(held);
    }

    #[test]
    fn a_dense_block_fetch_that_ends_without_bytes_lets_its_joiners_go() {
        let files = Files::new(16 << 20, 16 << 20, None, Arc::new(Counters::default()));
        let f = files.get((0, 1, 3));
        let miss = |at: u64| files.miss(&f, (at << 10, 4096), 0, true);
        let Some(Miss::Near(Near::Fetch { at, generation, .. })) = miss(64) else {
            panic!("a near miss fetches the block");
        };
        assert_eq!(
            miss(128),
            Some(Miss::Near(Near::Join(at))),
            "the next joins it"
        );
        let told = Arc::new(AtomicU64::new(0));
        let t = told.clone();
        let waiter: Waiter = Box::new(move |kept| {
            assert!(!kept);
            t.fetch_add(1, Ordering::Relaxed);
        });
        assert!(files.near_join(&f, at, waiter).is_ok());
        let (kept, joined) = files.near_fetched(&f, at, None, generation);
        assert!(!kept);
        joined.into_iter().for_each(|w| w(kept));
        assert_eq!(told.load(Ordering::Relaxed), 1, "the joiner was told");
        assert!(files.near_join(&f, at, Box::new(|_| {})).is_err(), "over");
        assert!(
            matches!(miss(192), Some(Miss::Near(Near::Fetch { .. }))),
            "fetched anew, not joined"
        );
    }
}
