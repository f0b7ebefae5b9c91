//! Operations answered from the backend's completion: a worker begins them (routing,
//! caches, write-outs that must come first) and starts the backend call; the answer is
//! finished and sent from the thread that completes that call, so that no worker sleeps
//! on it and is woken again (`qs-fwd --shapes md` spent half the node's CPU in such task
//! switches). A call the backend was too busy to take is made again, the blocking way
//! (which waits that out), by one thread of the node's, in turn; so is one a backend
//! built before it refused (`ENOSYS`), or on a handle the backend forgot (`EBADF`: the
//! blocking way opens the file again).

use std::sync::{Arc, Mutex};

use posix_ship::client::{Answered, Pending};
use posix_ship::proto::*;
use posix_ship::server::Change;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::node::{Handle, Node, Req};
use crate::open::{Begun, Opening};
use crate::opens::Verdict;
use crate::ops::Lookup;
use crate::stats::Counters;

type R<T> = Result<T, i32>;

/// A blocking call to make again, and what follows it.
pub(crate) type Retry = Box<dyn FnOnce() + Send>;

impl Node {
    /// Runs `then` with the outcome of `rpc` on `fs`: from the completion, or, if the
    /// backend was too busy to take it, after a blocking call made by the node's one
    /// thread for such retries (`Node::retry`).
    pub(crate) fn call_then<In, Out>(
        self: &Arc<Self>,
        fs: &posix_ship::client::RemoteFs,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        input: In,
        then: impl FnOnce(&Node, R<Out>) + Send + 'static,
    ) where
        In: serde::Serialize + Clone + Send + 'static,
        Out: DeserializeOwned + Send + 'static,
    {
        let p: Pending<Out> = self.start(fs, rpc, input.clone());
        let (node, fs) = (self.clone(), fs.clone());
        p.then(move |a| match a {
            Answered::Done(r) => {
                let r = r.map_err(|e| node.backend_errno(e));
                then(&node, r)
            }
            Answered::Busy => {
                let n = node.clone();
                node.retry(Box::new(move || {
                    // (Counted once, by `start`.)
                    let r = fs.call(rpc, &input).map_err(|e| n.backend_errno(e));
                    then(&n, r)
                }));
            }
        });
    }

    /// Runs `job` on the node's retry thread (started at first need), which makes the
    /// blocking calls that must not be made on a completing thread. If it cannot run, it
    /// is dropped: the request it answers gets `EIO`, and nothing blocks here (the
    /// progress thread, usually).
    pub(crate) fn retry(&self, job: Retry) {
        let tx = self.retries.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Retry>();
            let spawned = std::thread::Builder::new()
                .name("ionode-retry".into())
                .spawn(move || rx.into_iter().for_each(|job| job()));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the retry thread");
            }
            Mutex::new(tx)
        });
        if crate::node::lock(tx).send(job).is_err() {
            tracing::warn!("no retry thread: a call a busy backend refused fails");
        }
    }

    /// `open`, answered through `done`.
    pub(crate) fn open_then(
        self: &Arc<Self>,
        r: Req,
        o: OpenReq,
        done: impl FnOnce(R<(Handle, Attr)>) + Send + 'static,
    ) {
        self.begun(&r);
        match self.open_begin(&r, &o) {
            Err(e) => done(Err(e)),
            Ok(Begun::Shared(op, attr, backing)) => done(Ok(self.open_end(&op, attr, backing))),
            Ok(Begun::Ask(op)) => {
                let Some(key) = op.key.clone() else {
                    return self.open_ask(op, done);
                };
                // Alike opens under way are waited on (`crate::opens`); a leader looks
                // once more for a handle the one before it may have shared meanwhile.
                let (node, epoch) = (self.clone(), op.epoch);
                self.opens.ask(
                    key,
                    epoch,
                    Box::new(move |v| match v {
                        Verdict::Shared(attr, backing) => {
                            Counters::add(&node.stats.shared_opens, 1);
                            done(Ok(node.open_end(&op, attr, backing)))
                        }
                        Verdict::Ask(lead) => match node.shared_open(&op) {
                            Some((attr, backing)) => {
                                if let Some(l) = lead {
                                    l.share(&node.opens, attr, &backing);
                                }
                                done(Ok(node.open_end(&op, attr, backing)))
                            }
                            None => {
                                let mut op = op;
                                op.lead = lead;
                                node.open_ask(op, done)
                            }
                        },
                    }),
                );
            }
        }
    }

    /// An open asked of the backend, answered from its completion.
    fn open_ask(
        self: &Arc<Self>,
        op: Opening,
        done: impl FnOnce(R<(Handle, Attr)>) + Send + 'static,
    ) {
        let fs = op.fs.clone();
        let req = op.o.clone();
        self.call_then(&fs, OPEN, req, move |n, opened| {
            done(n.open_answered(op, opened))
        });
    }

    /// `stat` of a path, answered through `done`.
    pub(crate) fn stat_then(
        self: &Arc<Self>,
        r: Req,
        p: ByteBuf,
        follow: bool,
        done: impl FnOnce(R<Attr>) + Send + 'static,
    ) {
        self.begun(&r);
        match self.stat_begin(&r, &p, follow) {
            Err(e) => done(Err(e)),
            Ok(Lookup::Known(a)) => done(a),
            Ok(Lookup::Ask(q)) => {
                let fs = q.fs.clone();
                let input = (Target::Path(q.p.clone()), q.follow);
                self.call_then(&fs, STAT, input, move |n, a| done(n.stat_answered(&q, a)));
            }
        }
    }

    /// `unlink`, answered through `done`.
    pub(crate) fn unlink_then(
        self: &Arc<Self>,
        r: Req,
        p: ByteBuf,
        done: impl FnOnce(R<()>) + Send + 'static,
    ) {
        self.begun(&r);
        let (b, fs, p) = match self.route(&r, &p) {
            Ok(x) => x,
            Err(e) => return done(Err(e)),
        };
        self.call_then(&fs, UNLINK, p.clone(), move |n, out| {
            n.after(UNLINK.name(), b, &p);
            done(out)
        });
    }

    /// `fsync`: the file's buffered bytes written out here (on the worker that began it),
    /// then the backend's `fsync` answered from its completion, so that no worker waits
    /// on the backend's disk. A handle the backend forgot (restarted) is opened again and
    /// the `fsync` made again on the retry thread (`Backing::with`, which blocks).
    pub(crate) fn fsync_then(
        self: &Arc<Self>,
        h: Arc<Handle>,
        data_only: bool,
        done: impl FnOnce(R<()>) + Send + 'static,
    ) {
        if let Some(f) = &h.file {
            self.flush(f);
        }
        let (fs, fh, node) = (h.backing.fs.clone(), h.backing.fh(), self.clone());
        self.call_then(&fs, FSYNC, (fh, data_only), move |n, synced| {
            if synced != Err(libc::EBADF) {
                return done(n.fsync_answered(&h, synced));
            }
            n.retry(Box::new(move || {
                let synced = node.on_fh(&h, FSYNC, |fh| (fh, data_only));
                done(node.fsync_answered(&h, synced))
            }));
        });
    }

    /// A change to the namespace, answered from the backend's completion: both paths of
    /// a rename or link on one backend (else `EXDEV`); the attribute cache forgets every
    /// path it names once it is made.
    pub(crate) fn change_then(
        self: &Arc<Self>,
        r: Req,
        c: Change,
        done: impl FnOnce(R<()>) + Send + 'static,
    ) {
        self.begun(&r);
        let (first, second) = match &c {
            Change::Mkdir(p, _) | Change::Rmdir(p) | Change::Symlink(_, p) => (p, None),
            Change::Rename(a, b, _) | Change::Link(a, b) => (a, Some(b)),
        };
        let (b, fs, first) = match self.route(&r, first) {
            Ok(x) => x,
            Err(x) => return done(Err(x)),
        };
        let second = match second.map(|p| self.route(&r, p)) {
            None => None,
            Some(Ok((b2, _, p))) if b2 == b => Some(p),
            Some(Ok(_)) => return done(Err(libc::EXDEV)),
            Some(Err(x)) => return done(Err(x)),
        };
        let changed: Vec<ByteBuf> = std::iter::once(first.clone())
            .chain(second.clone())
            .collect();
        let then = move |n: &Node, out: R<()>| {
            for p in &changed {
                n.attrs.changed(b, p);
            }
            done(out)
        };
        let second = second.unwrap_or_default();
        match c {
            Change::Mkdir(_, mode) => self.call_then(&fs, MKDIR, (first, mode), then),
            Change::Rmdir(_) => self.call_then(&fs, RMDIR, first, then),
            Change::Symlink(target, _) => self.call_then(&fs, SYMLINK, (target, first), then),
            Change::Rename(_, _, 0) => self.call_then(&fs, RENAME, (first, second), then),
            Change::Rename(_, _, f) => self.call_then(&fs, RENAME2, (first, second, f), then),
            Change::Link(..) => self.call_then(&fs, LINK, (first, second), then),
        }
    }
}
