//! Bytes between a shared file's buffers and its backend: flushes (all of a file, the
//! large extents, the old ones) and reads through the buffers and the read-ahead window.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

fn transient(errno: i32) -> bool {
    [
        libc::ECONNRESET,
        libc::ECONNREFUSED,
        libc::ETIMEDOUT,
        libc::EAGAIN,
        libc::ESHUTDOWN,
    ]
    .contains(&errno)
}

impl Files {
    /// Writes everything buffered for `f` to its backend, in writes of at most
    /// [`MAX_MERGE`]. A failure is kept for the file's next fsync or close; bytes that
    /// failed for a transport reason stay buffered (tried again at the next flush).
    /// Returns once every byte buffered before the call is written (or has failed),
    /// waiting for a flush already in progress too.
    pub fn flush(&self, f: &SharedFile) {
        self.write_out(f, 0, 0);
    }

    /// Writes out the extents of at least `min` bytes, then the lowest until `keep`
    /// bytes remain (see [`Extents::drain_some`]).
    pub(super) fn write_out(&self, f: &SharedFile, min: usize, keep: u64) {
        let _flushing = f.write_out_lock();
        if f.dirty.load(Ordering::Acquire) == 0 {
            return;
        }
        let (writes, via, clean_from, drained) = {
            let mut s = lock(&f.state);
            let before = s.extents.bytes();
            let writes = s.extents.drain_some(min, keep, MAX_MERGE);
            let after = s.extents.bytes();
            // The next look of the writers comes after a quarter file more, taken or not
            // (looking at every write while nothing is ripe was quadratic in extents).
            s.next_look = after + self.file_max / 4;
            if writes.is_empty() {
                // Nothing large enough: the buffer, read-ahead data and counters stay.
                return;
            }
            // Records appended before now had their bytes buffered before now: in
            // `writes`, or written already.
            let clean_from = (after == 0)
                .then(|| self.journal.as_ref().map(|j| j.next_seq()))
                .flatten();
            if after == 0 {
                (s.since, s.last) = (None, None);
            }
            s.generation += 1;
            s.cache.clear();
            // Counted as being written before they stop counting as buffered, so that
            // the journal is never emptied while they are in neither.
            let drained: u64 = writes.iter().map(Write::len).sum();
            self.draining.fetch_add(drained, Ordering::AcqRel);
            self.account(f, before, after);
            (writes, s.writers.first().cloned(), clean_from, drained)
        };
        let ok = self.write_through(f, writes, via);
        self.draining.fetch_sub(drained, Ordering::AcqRel);
        if let (true, Some(seq), Some(j)) = (ok, clean_from, &self.journal) {
            let r = j.clean(f.key, seq).and_then(|()| {
                j.reset_if(|| {
                    self.buffered.load(Ordering::Acquire) == 0
                        && self.draining.load(Ordering::Acquire) == 0
                })
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "journal: cannot mark a flushed file");
            }
        }
    }

    /// Writes `writes` of `f` through `via`; whether all succeeded.
    fn write_through(&self, f: &SharedFile, writes: Vec<Write>, via: Option<Writer>) -> bool {
        Counters::add(&self.stats.flushes, 1);
        let Some(w) = via else {
            // Buffered bytes always have a writer: the last one flushes before it goes.
            tracing::error!(file = ?f.key, "buffered writes with no writer left; dropped");
            lock(&f.state).fail(libc::EIO);
            return false;
        };
        let outcomes = self.write_all(&w.backing, &writes);
        let mut failed = Vec::new();
        let mut error = None;
        for (write, out) in writes.into_iter().zip(outcomes) {
            match out {
                Some(Ok(())) => Counters::add(&self.stats.bytes_out, write.len()),
                Some(Err(errno)) => {
                    let (off, len) = (write.off, write.len());
                    tracing::warn!(file = ?f.key, off, len, errno, "deferred write failed");
                    error.get_or_insert(errno);
                    failed.push(write);
                }
                None => failed.push(write),
            }
        }
        let Some(errno) = error else {
            lock(&f.state).failing_since = None;
            return true;
        };
        Counters::add(&self.stats.deferred_errors, 1);
        let mut s = lock(&f.state);
        s.fail(errno);
        let failing = *s.failing_since.get_or_insert_with(Instant::now);
        if transient(errno) && failing.elapsed() > RETRY_FOR {
            tracing::error!(file = ?f.key, errno, "backend unreachable for {RETRY_FOR:?}: buffered writes dropped");
        } else if transient(errno) {
            Counters::add(&self.stats.backend_errors, 1);
            // Keep the bytes under anything written since (newer bytes win).
            let before = s.extents.bytes();
            let newer = s.extents.drain(usize::MAX);
            for (o, d) in failed.into_iter().chain(newer).flat_map(Write::into_pieces) {
                s.extents.insert_owned(o, d);
            }
            // Tried again whole once the file has been quiet for `flush_after`.
            s.since.get_or_insert_with(Instant::now);
            s.last = Some(Instant::now());
            let after = s.extents.bytes();
            self.account(f, before, after);
        }
        false
    }

    /// Files with buffered writes that are due, and whether all their bytes are: all when
    /// none came for `age` (writing has paused) or memory is three quarters spent; only
    /// the large extents when the oldest byte is four times `age` old but writing goes on
    /// (bytes must not wait for ever, but the holes between many clients' blocks are
    /// still being filled: flushing them would cut the file into small writes).
    pub fn due(&self, age: Duration) -> Vec<(Arc<SharedFile>, bool)> {
        let pressed = self.buffered.load(Ordering::Acquire) * 4 > self.budget * 3;
        self.all()
            .into_iter()
            .filter_map(|f| {
                let s = lock(&f.state);
                let idle = s.last.is_some_and(|t| t.elapsed() >= age);
                let old = s.since.is_some_and(|t| t.elapsed() >= age * 4);
                let all = s.since.is_some() && (pressed || idle);
                let some = s.since.is_some() && old;
                drop(s);
                (all || some).then_some((f, all))
            })
            .collect()
    }

    /// Writes out `f`'s large extents only (see [`Files::due`]).
    pub fn flush_large(&self, f: &SharedFile) {
        self.write_out(f, RIPE, u64::MAX);
    }

    /// Fills `buf` from `f` at `off`: `fetch` reads the backend; buffered bytes are laid
    /// over. Returns the bytes filled and whether the backend was read. On a miss,
    /// `window` > `buf.len()` (a sequential reader) reads that much ahead; a read near
    /// the previous read of any client fetches the aligned [`DENSE`] block around it
    /// (once, however many clients miss in it together); others read just `buf`.
    ///
    /// Only reads wholly inside kept data are served from it: a backend read may be
    /// short without being at the end of the file (a server under memory pressure), so
    /// nothing past the kept bytes is assumed.
    pub fn read(
        &self,
        f: &SharedFile,
        off: u64,
        buf: &mut [u8],
        window: usize,
        mut fetch: impl FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<(usize, bool)> {
        let _no_flush = f.flushing.read().unwrap_or_else(|e| e.into_inner());
        let near = {
            let mut s = lock(&f.state);
            let near = window <= buf.len() && near_miss(&s, off, buf.len());
            s.last_read = off;
            near
        };
        // Clients that miss together in one dense block: the first fetches it, the
        // others find it kept once they get the lock. (Only while blocks are worth it.)
        let hit = self.cached(f, off, buf);
        let dense = near && !hit && {
            let mut s = lock(&f.state);
            let fetches = s.dense.fetches();
            // (The read that fetches a block here is served from it without a hit:
            // nothing owed.)
            if !fetches {
                s.dense.declined();
            }
            fetches
        };
        let _fetching = dense.then(|| lock(&f.fetching));
        let (n, fetched) = if hit || (dense && self.cached(f, off, buf)) {
            Counters::add(&self.stats.readahead_hits, 1);
            (buf.len(), false)
        } else if window > buf.len() || dense {
            // No more than this file may keep (its share of the read-ahead budget): a
            // window fetched and not kept makes the next read miss and fetch again.
            let (generation, share) = {
                let s = lock(&f.state);
                (s.generation, s.cache.share() as usize)
            };
            let (at, len) = if dense {
                (off - off % DENSE, DENSE as usize)
            } else {
                (off, window.min(share))
            };
            let len = len.max((off - at) as usize + buf.len());
            let mut data = vec![0u8; len];
            let n = fetch(at, &mut data)?;
            data.truncate(n);
            Counters::add(&self.stats.readahead_fetches, 1);
            let from = ((off - at) as usize).min(n);
            let k = (n - from).min(buf.len());
            buf[..k].copy_from_slice(&data[from..from + k]);
            let mut s = lock(&f.state);
            if dense {
                s.dense.fetched();
            }
            if s.generation == generation {
                s.cache.keep(at, data, READAHEAD_TTL);
            }
            drop(s);
            // Short of the caller's bytes without reaching the end (its window past
            // what the server would stage at once: 16 readers of 1 MiB through one node
            // got 64 KiB reads): the rest of the caller's bytes asked for alone.
            let k = match n == len || k == buf.len() {
                true => k,
                false => k + fill(&mut fetch, off + k as u64, &mut buf[k..])?,
            };
            (k, true)
        } else {
            (fill(&mut fetch, off, buf)?, true)
        };
        Ok((lock(&f.state).extents.overlay(off, buf, n), fetched))
    }

    /// What a read of `len` at `off` (`window` as [`Files::read`] takes it) that misses
    /// what `f` keeps asks of the backend, if that may begin without waiting here: its
    /// bytes, a sequential reader's read-ahead window, or the dense block around it
    /// ([`Miss`]); `None` if it hits, if the file is being written out, or if its state
    /// is held (this must not wait). What is buffered when the bytes come is laid over
    /// them ([`Files::overlay_unchanged`], which compares the generation returned).
    /// `begin`: it begins now (counted as `read` counts it: the file's last read, a
    /// fetch, a near miss declined).
    pub fn miss(
        &self,
        f: &SharedFile,
        (off, len): (u64, usize),
        window: usize,
        begin: bool,
    ) -> Option<Miss> {
        let _no_flush = f.flushing.try_read().ok()?;
        let mut s = f.state.try_lock().ok()?;
        if s.cache.find(off, len, READAHEAD_TTL).is_some() {
            return None;
        }
        let generation = s.generation;
        let near = window <= len && near_miss(&s, off, len);
        let miss = if window > len {
            Miss::Window(window.min(s.cache.share() as usize).max(len), generation)
        } else if near && s.dense.fetches() {
            Miss::Near(self.near_begin(f, (off, len), generation, begin))
        } else {
            Miss::Plain(generation)
        };
        if begin {
            s.last_read = off;
            match miss {
                Miss::Plain(_) if near => s.dense.declined(),
                Miss::Near(Near::Fetch { .. }) => {
                    s.dense.owe(len);
                    Counters::add(&self.stats.readahead_fetches, 1)
                }
                Miss::Window(..) => Counters::add(&self.stats.readahead_fetches, 1),
                _ => {}
            }
        }
        Some(miss)
    }

    /// Keeps `data`, a window read at `at` from the backend for a read begun by
    /// [`Files::miss`] at `generation`, if the file has not changed since (else
    /// the window, which may lack a write, is dropped: see [`Files::overlay_unchanged`]).
    /// Whether it had not.
    pub fn keep_window(&self, f: &SharedFile, at: u64, data: Vec<u8>, generation: u64) -> bool {
        let Ok(mut s) = f.state.try_lock() else {
            return false;
        };
        if s.generation != generation {
            return false;
        }
        if !data.is_empty() {
            s.cache.keep(at, data, READAHEAD_TTL);
        }
        true
    }

    /// The backend's bytes `got` of a read of `len` at `off` begun at `generation` (a
    /// miss: [`Files::miss`]), with what `f` buffers now laid over them (past the
    /// backend's end too, and writes buffered since the read began among them), if
    /// nothing was written out, written through or cut since (a write-out under way
    /// during the read could leave it with a later write and without an earlier one);
    /// `false`, with `got` as it was, if something was or the state is held.
    pub fn overlay_unchanged(
        &self,
        f: &SharedFile,
        generation: u64,
        (off, len): (u64, usize),
        got: &mut Vec<u8>,
    ) -> bool {
        let Ok(s) = f.state.try_lock() else {
            return false;
        };
        if s.generation != generation {
            return false;
        }
        if !s.extents.is_empty() {
            let n = got.len();
            got.resize(len.max(n), 0);
            let valid = s.extents.overlay(off, got, n);
            got.truncate(valid);
        }
        true
    }

    /// As [`Files::read`] for a read that kept read-ahead data holds whole, if that
    /// needs no waiting (no write-out of the file in progress, no journal: its writers
    /// hold the file's state while they sync); `None` otherwise, with nothing changed.
    pub fn read_now(&self, f: &SharedFile, off: u64, buf: &mut [u8]) -> Option<usize> {
        if self.journal.is_some() {
            return None;
        }
        let _no_flush = f.flushing.try_read().ok()?;
        if !self.cached(f, off, buf) {
            return None;
        }
        Counters::add(&self.stats.readahead_hits, 1);
        let mut s = lock(&f.state);
        s.last_read = off;
        Some(s.extents.overlay(off, buf, buf.len()))
    }

    /// Fills `buf` from kept read-ahead data if one window holds all of it.
    fn cached(&self, f: &SharedFile, off: u64, buf: &mut [u8]) -> bool {
        let hit = {
            let mut s = lock(&f.state);
            let hit = s.cache.find(off, buf.len(), READAHEAD_TTL);
            if hit.is_some() {
                s.dense.hit(buf.len());
            }
            hit
        };
        let Some((o, d)) = hit else { return false };
        let from = (off - o) as usize;
        buf.copy_from_slice(&d[from..from + buf.len()]);
        true
    }
}

/// Whether a small read of `len` at `off` missing the kept data is near the file's last
/// read, so that the dense block around it may be worth fetching ([`super::dense`]).
/// (Not when a dense block is more than the file may keep: kept nowhere, it would be
/// fetched again for each read in it.)
fn near_miss(s: &State, off: u64, len: usize) -> bool {
    s.last_read.abs_diff(off) <= DENSE * 8 && s.cache.share() >= DENSE && len as u64 <= DENSE / 2
}

/// Reads `buf` at `off` through `fetch` until it is full or the backend has no more (a
/// read that returns nothing): a server under staging pressure answers short, which is
/// not the end of the file. The bytes read.
fn fill(
    fetch: &mut impl FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
    off: u64,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match fetch(off + done as u64, &mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}
