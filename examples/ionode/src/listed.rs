//! Small reads of one backend file asked together (list I/O, as IOFSL's batches of one
//! list-I/O call each): while [`OUT`] requests for the file are out at the backend, the
//! next reads of at most [`SMALL`] bytes queue, and each request that lands sends what
//! queued meanwhile as one `posix.read_many` (up to 64 reads and [`LIST_BYTES`]; the
//! reads a server short of staging memory did not make go first in the next). Under
//! many random readers of one file a backend request then carries many clients' reads;
//! a lone reader's go alone at once, as before. A backend built before the list read
//! answers `ENOSYS`: its file's reads go alone from then on. Only plain misses come here
//! (`crate::reads`): read-ahead windows and dense blocks are large, one request each.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use posix_ship::proto::MAX_READ_MANY;

use crate::backing::Backing;
use crate::node::{Node, lock};
use crate::reads::Slot;

/// Requests for one file out at the backend before small reads queue (2, 4 and 8 gave
/// the same throughput to 64 random readers at a 200 µs backend, with 1 000, 1 700 and
/// 2 900 backend requests; without the delay 2 was ahead: the performance log).
pub(crate) const OUT: usize = 2;

/// Reads larger than this go alone, whatever is out.
const SMALL: usize = 128 << 10;

/// A list read's bytes at most (64 reads of 4 KiB, 8 of 128 KiB).
const LIST_BYTES: u64 = 1 << 20;

/// Where a read's bytes go (the thread that completes the backend call runs it).
pub(crate) type Got = Box<dyn FnOnce(io::Result<Vec<u8>>) + Send>;

/// One file's reads: the requests out, the reads waiting for one to land.
#[derive(Default)]
pub(crate) struct Queue {
    out: usize,
    waiting: VecDeque<Waiting>,
    /// The backend answered `ENOSYS` to a list read.
    alone: bool,
}

struct Waiting {
    off: u64,
    len: u32,
    got: Got,
}

/// A request out, counted until it lands (or its callback is dropped unrun), which
/// sends what waits; a read asked alone keeps its place among the node's reads out.
struct Out {
    node: Arc<Node>,
    b: Arc<Backing>,
    _slot: Option<Slot>,
}

impl Out {
    fn new(node: &Arc<Node>, b: &Arc<Backing>, slot: Option<Slot>) -> Out {
        let (node, b) = (node.clone(), b.clone());
        Out {
            node,
            b,
            _slot: slot,
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        self.node.read_landed(&self.b);
    }
}

impl Node {
    /// `pread` of `len` bytes at `off` of `b`'s file: asked now, or with the reads that
    /// queue behind the requests out (see the module's docs). A read that queues gives
    /// back its place among the node's reads out (`slot`), which bound the requests the
    /// node has out at its backends, not the reads that wait for one: 128 random readers
    /// of one file, past the 64 places, had half their reads asked alone by workers
    /// (`qs-fwd -n 128 --shapes shared-random`: 15 087 backend requests for 33 039 reads).
    pub(crate) fn pread_listed(
        self: &Arc<Self>,
        b: &Arc<Backing>,
        (off, len): (u64, usize),
        slot: Option<Slot>,
        got: Got,
    ) {
        {
            let mut q = lock(&b.reads);
            if len <= SMALL && q.out >= OUT && !q.alone {
                let len = len as u32;
                q.waiting.push_back(Waiting { off, len, got });
                drop(q);
                return drop(slot);
            }
            q.out += 1;
        }
        self.ask_one(b, (off, len), slot, got);
    }

    /// Asks one read (counted out already).
    fn ask_one(
        self: &Arc<Self>,
        b: &Arc<Backing>,
        (off, len): (u64, usize),
        slot: Option<Slot>,
        got: Got,
    ) {
        self.stats.request_out("posix.read");
        let out = Out::new(self, b, slot);
        b.fs.pread_then(b.fh(), len, off, move |r| {
            got(r);
            drop(out);
        });
    }

    /// Asks `batch` (counted out already, as one) in one list read.
    fn ask_many(self: &Arc<Self>, b: &Arc<Backing>, batch: Vec<Waiting>) {
        self.stats.request_out("posix.read_many");
        let ranges = batch.iter().map(|w| (w.off, w.len)).collect();
        let out = Out::new(self, b, None);
        b.fs.pread_many_then(b.fh(), ranges, move |r| match r {
            Ok(data) => {
                let mut batch = batch;
                // Not read (the server's staging memory; the client saw at least one
                // read): first in line again.
                let rest = batch.split_off(data.len().min(batch.len()));
                for (w, d) in batch.into_iter().zip(data) {
                    (w.got)(Ok(d));
                }
                let mut q = lock(&out.b.reads);
                for w in rest.into_iter().rev() {
                    q.waiting.push_front(w);
                }
                drop(q);
                drop(out);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                let (node, b) = (out.node.clone(), out.b.clone());
                {
                    let mut q = lock(&b.reads);
                    q.alone = true;
                    // Each alone, in the place of the list's request.
                    q.out += batch.len();
                }
                drop(out);
                for w in batch {
                    node.ask_one(&b, (w.off, w.len as usize), None, w.got);
                }
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                for w in batch {
                    (w.got)(Err(io::Error::from_raw_os_error(errno)));
                }
                drop(out);
            }
        });
    }

    /// A request for `b`'s file landed: what waits goes, as one request.
    fn read_landed(self: &Arc<Self>, b: &Arc<Backing>) {
        let mut batch = {
            let mut q = lock(&b.reads);
            q.out -= 1;
            let (most, mut bytes) = (if q.alone { 1 } else { MAX_READ_MANY }, 0u64);
            let mut batch = Vec::new();
            while let Some(w) = q.waiting.front() {
                bytes += u64::from(w.len);
                if batch.len() == most || (bytes > LIST_BYTES && !batch.is_empty()) {
                    break;
                }
                batch.extend(q.waiting.pop_front());
            }
            if batch.is_empty() {
                return;
            }
            q.out += 1;
            batch
        };
        match batch.len() {
            1 => {
                let w = batch.pop().expect("one");
                self.ask_one(b, (w.off, w.len as usize), None, w.got)
            }
            _ => self.ask_many(b, batch),
        }
    }
}
