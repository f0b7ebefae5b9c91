//! Writes through (appends, writes too large to buffer, writes when memory is short)
//! answered from the backend's completion: the worker that takes one pulls its bytes
//! and writes out what the node buffers of the file first, then asks the backend and
//! goes on; the answer leaves from the thread that completes the call. A write the
//! backend was too busy to take, one on a handle it forgot (restarted) and the rest of
//! one it took short are made the blocking way on the node's retry thread; if that rest
//! fails, the write is answered with the count the backend took (as a short write).

use std::sync::Arc;

use posix_ship::proto::Written;
use posix_ship::server::Payload;

use crate::node::{Handle, Node, Req};
use crate::ops::{R, errno};

/// How a write began ([`Node::write_begin`]).
pub(crate) enum Began {
    /// Answered already (buffered, or refused).
    Answered(R<Written>),
    /// These bytes go through to the backend.
    Through(Vec<u8>),
}

impl Node {
    /// A write, answered through `done` (see the module docs).
    pub(crate) fn write_then(
        self: &Arc<Self>,
        r: &Req,
        h: Arc<Handle>,
        offset: Option<u64>,
        data: Payload<'_>,
        done: impl FnOnce(R<Written>) + Send + 'static,
    ) {
        // Bytes to pull from the client: pulled with no thread waiting, the rest (which
        // may write out the file's buffered bytes first) on a worker again. (A handle:
        // a pull pending at shutdown must not keep the engine running.)
        if let Payload::Bulk { caller, .. } = &data {
            let (node, engine) = (self.clone(), caller.engine().handle());
            let r = Req {
                user: r.user.clone(),
                inline: false,
            };
            return data.bytes_then(move |bytes| match bytes {
                Ok(b) => {
                    engine.execute(move || node.write_then(&r, h, offset, Payload::Inline(b), done))
                }
                Err(e) => done(Err(e.raw_os_error())),
            });
        }
        let data = match self.write_begin(r, &h, offset, data) {
            Began::Answered(out) => return done(out),
            Began::Through(data) => data,
        };
        let n = data.len() as u64;
        let (fs, fh, node) = (h.backing.fs.clone(), h.backing.fh(), self.clone());
        fs.pwrite_then(fh, data, offset, move |out, data| {
            let (took, took_end) = match out {
                Ok(w) if w.n == n => return done(node.write_end(&h, n, Ok(w.end))),
                Ok(w) if w.n > 0 => (w.n as usize, w.end),
                Ok(_) => return done(node.write_end(&h, n, Err(libc::ENOSPC))),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EBADF) => (0, 0),
                    _ => return done(node.write_end(&h, n, Err(node.backend_errno(e)))),
                },
            };
            // The rest (all of it if the backend did not take it), the blocking way.
            let n2 = node.clone();
            node.retry(Box::new(move || {
                let at = offset.map(|o| o + took as u64);
                let end = h
                    .backing
                    .with(|fh| h.backing.fs.pwrite(fh, &data[took..], at));
                done(match end {
                    // What the backend took before the rest failed is written: answered
                    // as the kernel answers a write cut short, with its count (the
                    // client writes the rest and meets the error then), not with an
                    // error that would have an append's bytes written twice.
                    Err(_) if took > 0 => n2.write_end(&h, took as u64, Ok(took_end)),
                    end => n2.write_end(&h, n, end.map_err(errno)),
                })
            }));
        });
    }
}
