//! Small reads of one backend file asked together (list I/O, as IOFSL's batches of one
//! list-I/O call each): while [`OUT`] requests for the file are out at the backend, the
//! next small reads queue, and each request that lands sends what queued meanwhile as
//! one `posix.read_many` (up to its bounds). Under many random readers of one file a
//! backend request then carries many clients' reads; a lone reader's go alone at once,
//! as before. A backend built before the list read answers `ENOSYS`: its file's reads go
//! alone from then on. Only plain misses come here (`crate::reads`): read-ahead windows
//! and dense blocks are large, one request each.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use posix_ship::proto::{MAX_INLINE_READ, MAX_READ_MANY};

use crate::backing::Backing;
use crate::node::{Node, lock};

/// Requests for one file out at the backend before small reads queue.
pub(crate) const OUT: usize = 2;

/// Reads larger than this go alone, whatever is out.
const SMALL: usize = 16 << 10;

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
/// sends what waits.
struct Out(Arc<Node>, Arc<Backing>);

impl Drop for Out {
    fn drop(&mut self) {
        self.0.read_landed(&self.1);
    }
}

impl Node {
    /// `pread` of `len` bytes at `off` of `b`'s file: asked now, or with the reads that
    /// queue behind the requests out (see the module's docs).
    pub(crate) fn pread_listed(self: &Arc<Self>, b: &Arc<Backing>, off: u64, len: usize, got: Got) {
        {
            let mut q = lock(&b.reads);
            if len <= SMALL && q.out >= OUT && !q.alone {
                let len = len as u32;
                return q.waiting.push_back(Waiting { off, len, got });
            }
            q.out += 1;
        }
        self.ask_one(b, off, len, got);
    }

    /// Asks one read (counted out already).
    fn ask_one(self: &Arc<Self>, b: &Arc<Backing>, off: u64, len: usize, got: Got) {
        self.stats.request_out("posix.read");
        let out = Out(self.clone(), b.clone());
        b.fs.pread_then(b.fh(), len, off, move |r| {
            got(r);
            drop(out);
        });
    }

    /// Asks `batch` (counted out already, as one) in one list read.
    fn ask_many(self: &Arc<Self>, b: &Arc<Backing>, batch: Vec<Waiting>) {
        self.stats.request_out("posix.read_many");
        let ranges = batch.iter().map(|w| (w.off, w.len)).collect();
        let out = Out(self.clone(), b.clone());
        b.fs.pread_many_then(b.fh(), ranges, move |r| match r {
            Ok(data) => {
                for (w, d) in batch.into_iter().zip(data) {
                    (w.got)(Ok(d));
                }
                drop(out);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                let (node, b) = (out.0.clone(), out.1.clone());
                {
                    let mut q = lock(&b.reads);
                    q.alone = true;
                    // Each alone, in the place of the list's request.
                    q.out += batch.len();
                }
                drop(out);
                for w in batch {
                    node.ask_one(&b, w.off, w.len as usize, w.got);
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
                if batch.len() == most || (bytes > MAX_INLINE_READ && !batch.is_empty()) {
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
                self.ask_one(b, w.off, w.len as usize, w.got)
            }
            _ => self.ask_many(b, batch),
        }
    }
}
