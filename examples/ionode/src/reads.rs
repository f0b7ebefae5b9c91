//! Reads answered from the backend's completion: a read that misses what the node keeps
//! of a file not being written out — a plain miss (just its bytes), a sequential reader's
//! (its read-ahead window, fetched and kept), or one near the file's last read (the
//! dense block around it, which the reads that miss in it meanwhile join:
//! `crate::files::Near`) — is asked of the backend where it is taken, the progress
//! thread or a worker, and answered from the completion, what the file buffers laid
//! over the backend's bytes, with no thread waiting (random readers held a
//! worker each: 64 of them over one 512 MiB file read through the node at 0.41-0.62x
//! direct with a 200 µs backend); writes buffered while it is out are in what is laid
//! over. A read the backend's file changed under (a write-out since it began, which
//! could leave it with a later write and without an earlier one, a write through, a
//! truncation), or the backend refused (busy, a forgotten handle, failed), is made
//! again the blocking way on the node's retry thread; past [`READS_OUT`] in flight,
//! reads wait on workers.
//! A read that comes while its file is being written out is begun by the thread that
//! ends the write-out, with no thread waiting meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::files::{Miss, Near, Waiter};
use crate::node::{Handle, Node, lock};
use crate::stats::Counters;

type R<T> = Result<T, i32>;

/// Where a read answered later puts its bytes.
type ReadDone = Box<dyn FnOnce(R<Vec<u8>>) + Send>;

/// Backend reads asked without a worker waiting, at most at once (a read queued for a
/// file's list read, `crate::listed`, is none, and holds no place): past it a read waits
/// on a worker, as every call did (a backend at its bound of requests in flight answers
/// busy, which only a waiting call waits out; the retry thread is one). A posix-ship
/// server's default bound for one client: 64 (`Limits::in_flight`). 32 before
/// 2026-12-04: `qs-fwd -r 3 [-d 200] --shapes shared-random`, 64 random readers of one
/// file, three rounds alternated with 200 µs and two without: through the node
/// 136-143 -> 147-164 MiB/s with the delay (0.88-0.95x -> 0.95-1.08x direct), 171-188
/// -> 203-205 without.
pub(crate) const READS_OUT: usize = 64;

/// A place among the reads out, given back when dropped (however the read ends: its
/// answer, or its callback dropped unrun; a plain miss's as it joins a file's queue of
/// small reads, `crate::listed`, where it is no request at the backend).
pub(crate) struct Slot(Arc<Node>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.reads_out.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Node {
    /// Whether a read of `len` at `off` through `h` would be asked of the backend without
    /// waiting now (looked at without waiting or changing anything: where requests are
    /// dispatched).
    pub(crate) fn miss_begins_now(&self, h: &Handle, off: u64, len: usize) -> bool {
        self.reads_out.load(Ordering::Acquire) < READS_OUT
            && self.miss(h, (off, len), false).is_some()
    }

    /// [`crate::files::Files::miss`] for `h` (a plain miss if it has no shared file:
    /// nothing buffered, no generation).
    fn miss(&self, h: &Handle, (off, len): (u64, usize), begin: bool) -> Option<Miss> {
        let Some(f) = &h.file else {
            return Some(Miss::Plain(0));
        };
        let (window, _) = self.window(h, off, len);
        self.files.miss(f, (off, len), window, begin)
    }

    /// A miss begun now, with a place among the reads out; `None` if it is not one (any
    /// more) or the reads out are at their bound.
    fn begin_miss(self: &Arc<Self>, h: &Handle, at: (u64, usize)) -> Option<(Slot, Miss)> {
        self.reads_out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < READS_OUT).then_some(n + 1)
            })
            .ok()?;
        let slot = Slot(self.clone());
        let miss = self.miss(h, at, true)?;
        Some((slot, miss))
    }

    /// A read: a miss asked of the backend and answered from its completion, anything
    /// else the blocking way, here (`begun`: where the request was dispatched,
    /// [`Node::miss_begins_now`] having said so there; the blocking way is then the retry
    /// thread's).
    pub(crate) fn read_then(
        self: &Arc<Self>,
        h: Arc<Handle>,
        at: (u64, usize),
        begun: bool,
        done: impl FnOnce(R<Vec<u8>>) + Send + 'static,
    ) {
        self.read_begin(h, at, begun, true, Box::new(done));
    }

    /// [`Node::read_then`]; a read that finds a write-out of its file in progress
    /// (`may_wait`) is begun again by the thread that ends it, with no thread waiting
    /// meanwhile (a read the blocking way waits for it, holding a worker: a write-out
    /// takes the backend's time for each of its writes).
    fn read_begin(
        self: &Arc<Self>,
        h: Arc<Handle>,
        (off, len): (u64, usize),
        begun: bool,
        may_wait: bool,
        done: ReadDone,
    ) {
        let Some((slot, miss)) = self.begin_miss(&h, (off, len)) else {
            if may_wait && let Some(f) = h.file.clone().filter(|f| f.writing_out()) {
                let node = self.clone();
                let again = move || node.read_begin(h, (off, len), true, false, done);
                // (`Err`: it ended meanwhile; begun again here, the blocking way then
                // the retry thread's.)
                return f.after_write_out(again).unwrap_or_else(|again| again());
            }
            return match begun {
                true => self.read_later(h, (off, len), done),
                false => done(self.read_here(&h, off, len)),
            };
        };
        if begun {
            Counters::add(&self.stats.begun_inline, 1);
        }
        let (_, next) = self.window(&h, off, len);
        let g = match miss {
            Miss::Plain(g) | Miss::Window(_, g) | Miss::Near(Near::Fetch { generation: g, .. }) => {
                g
            }
            Miss::Near(Near::Join(at)) => {
                drop(slot);
                return self.near_join(h, at, (off, len), done);
            }
        };
        let asked = Asked {
            generation: h.file.is_some().then_some(g),
            h,
            at: (off, len, next),
            slot: Some(slot),
        };
        match miss {
            Miss::Window(fetch, _) => self.window_then(asked, fetch, done),
            Miss::Near(Near::Fetch { at, len, .. }) => self.near_then(asked, (at, len), done),
            _ => self.fetch_then(asked, Vec::new(), done),
        }
    }

    /// Fetches the dense block `(at, len)` for the read `a` and the reads that join it
    /// meanwhile, keeps it if the file did not change since the read began, and answers
    /// them all from it.
    fn near_then(self: &Arc<Self>, a: Asked, (at, len): (u64, usize), done: ReadDone) {
        let (Some(f), Some(generation)) = (a.h.file.clone(), a.generation) else {
            let (h, n) = (a.h.clone(), (a.at.0, a.at.1));
            drop(a);
            return self.read_later(h, n, done);
        };
        self.stats.request_out("posix.read");
        let b = a.h.backing.clone();
        let fetch = BlockFetch(Some((self.clone(), f, at, generation)));
        let node = self.clone();
        b.fs.pread_then(b.fh(), len, at, move |r| {
            let (kept, joined) = fetch.end(r.ok());
            let Asked {
                h,
                at: (off, n, _),
                slot,
                ..
            } = a;
            drop(slot);
            node.from_block(h, (off, n), done)(kept);
            joined.into_iter().for_each(|w| w(kept));
        });
    }

    /// Has the read wait for the dense block being fetched at `block`.
    fn near_join(self: &Arc<Self>, h: Arc<Handle>, block: u64, at: (u64, usize), done: ReadDone) {
        let Some(f) = h.file.clone() else {
            return self.read_later(h, at, done);
        };
        if let Err(w) = self
            .files
            .near_join(&f, block, self.from_block(h, at, done))
        {
            // (Its fetch ended meanwhile: the block is kept, or it is not.)
            w(true);
        }
    }

    /// A read answered from a dense block once it is kept (the blocking way if it was
    /// not, or is gone already).
    fn from_block(
        self: &Arc<Self>,
        h: Arc<Handle>,
        (off, len): (u64, usize),
        done: ReadDone,
    ) -> Waiter {
        let node = self.clone();
        Box::new(move |kept| {
            let mut buf = vec![0u8; len];
            match kept.then(|| node.read_now(&h, off, &mut buf)).flatten() {
                Some(n) => {
                    buf.truncate(n);
                    done(Ok(buf))
                }
                None => node.read_later(h, (off, len), done),
            }
        })
    }

    /// Fetches the read-ahead window of `fetch` bytes at the read's offset, keeps it if
    /// the file did not change meanwhile, and answers the read from it (the rest of the
    /// caller's bytes asked again if the backend answered short of them).
    fn window_then(self: &Arc<Self>, a: Asked, fetch: usize, done: ReadDone) {
        self.stats.request_out("posix.read");
        let (off, len, _) = a.at;
        let b = a.h.backing.clone();
        let node = self.clone();
        b.fs.pread_then(b.fh(), fetch, off, move |r| {
            let (Ok(data), Some(f), Some(g)) = (r, &a.h.file, a.generation) else {
                let (h, at) = (a.h.clone(), (off, len));
                drop(a);
                return node.read_later(h, at, done);
            };
            let got = data[..data.len().min(len)].to_vec();
            let whole = data.len() == fetch || got.len() == len;
            if !node.files.keep_window(f, off, data, g) {
                let (h, at) = (a.h.clone(), (off, len));
                drop(a);
                return node.read_later(h, at, done);
            }
            match whole {
                true => node.answer_miss(a, got, done),
                // Short without the end (past what the server stages at once).
                false => node.fetch_then(a, got, done),
            }
        });
    }

    /// [`Node::read`] into a buffer of its own.
    fn read_here(&self, h: &Handle, off: u64, len: usize) -> R<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read(h, off, &mut buf).map(|n| {
            buf.truncate(n);
            buf
        })
    }

    /// The read made the blocking way on the retry thread.
    fn read_later(self: &Arc<Self>, h: Arc<Handle>, (off, len): (u64, usize), done: ReadDone) {
        let n = self.clone();
        self.retry(Box::new(move || done(n.read_here(&h, off, len))));
    }

    /// Reads the bytes `a` asks for from the backend into `got` (what came so far),
    /// asking again after a short answer until full or the end of the file (with the
    /// other small reads of its file, `crate::listed`).
    fn fetch_then(self: &Arc<Self>, mut a: Asked, got: Vec<u8>, done: ReadDone) {
        let (off, len, _) = a.at;
        let b = a.h.backing.clone();
        let node = self.clone();
        let at = off + got.len() as u64;
        let slot = a.slot.take();
        self.pread_listed(
            &b,
            (at, len - got.len()),
            slot,
            Box::new(move |r| {
                let mut got = got;
                let failed = match r {
                    Ok(d) if !d.is_empty() && got.len() + d.len() < len => {
                        got.extend_from_slice(&d);
                        return node.fetch_then(a, got, done);
                    }
                    Ok(d) if got.is_empty() => {
                        got = d;
                        false
                    }
                    Ok(d) => {
                        got.extend_from_slice(&d);
                        false
                    }
                    Err(_) => true,
                };
                if failed {
                    let h = a.h.clone();
                    drop(a);
                    return node.read_later(h, (off, len), done);
                }
                node.answer_miss(a, got, done)
            }),
        );
    }

    /// Answers a read that missed with the bytes `got` from the backend, what the file
    /// buffers laid over them, unless the file changed since the read began (then it is
    /// made again, the blocking way).
    fn answer_miss(self: &Arc<Self>, a: Asked, mut got: Vec<u8>, done: ReadDone) {
        let (off, len, next) = a.at;
        let Asked {
            h,
            generation,
            slot,
            ..
        } = a;
        drop(slot);
        let fresh = match (&h.file, generation) {
            (Some(f), Some(g)) => self.files.overlay_unchanged(f, g, (off, len), &mut got),
            _ => true,
        };
        if !fresh {
            return self.read_later(h, (off, len), done);
        }
        *lock(&h.seq) = (off + got.len() as u64, next);
        done(Ok(got))
    }
}

/// A dense block's fetch under way: ended once, with what came, or (its callback dropped
/// unrun) with nothing, so that the reads that joined it are answered and later misses
/// in the block do not wait for it.
struct BlockFetch(Option<(Arc<Node>, Arc<crate::files::SharedFile>, u64, u64)>);

impl BlockFetch {
    /// Ends it: whether the block was kept, and the reads that joined it.
    fn end(mut self, data: Option<Vec<u8>>) -> (bool, Vec<Waiter>) {
        match self.0.take() {
            Some((node, f, at, g)) => node.files.near_fetched(&f, at, data, g),
            None => (false, Vec::new()),
        }
    }
}

impl Drop for BlockFetch {
    fn drop(&mut self) {
        if let Some((node, f, at, g)) = self.0.take() {
            let (_, joined) = node.files.near_fetched(&f, at, None, g);
            joined.into_iter().for_each(|w| w(false));
        }
    }
}

/// A miss asked of the backend: the handle, offset, length and the read-ahead window to
/// keep, the file's generation when it began, its place among the reads out.
struct Asked {
    h: Arc<Handle>,
    at: (u64, usize, usize),
    generation: Option<u64>,
    slot: Option<Slot>,
}
