//! Operations answered from the backend's completion: a worker begins them (routing,
//! caches, write-outs that must come first) and starts the backend call; the answer is
//! finished and sent from the thread that completes that call, so that no worker sleeps
//! on it and is woken again (`qs-fwd --shapes md` spent half the node's CPU in such task
//! switches). A call the backend was too busy to take is made again, the blocking way
//! (which waits that out), by one thread of the node's, in turn; so is one a backend
//! built before it refused (`ENOSYS`), or on a handle the backend forgot (`EBADF`: the
//! blocking way opens the file again).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use posix_ship::client::{Answered, Pending};
use posix_ship::proto::*;
use posix_ship::server::{AttrChange, Change, Owned};
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::files::SharedFile;
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
    fn call_then<In, Out>(
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

    /// `setattr`, passed on whole: one backend `posix.setattr` where the service would
    /// make up to five calls ([`Node::target_then`]). A backend that answers `ENOSYS`
    /// (built before it) gets the calls it names one by one (`by_parts`, blocking, on the
    /// retry thread), and the node remembers it (`Node::no_setattr`).
    pub(crate) fn setattr_then(
        self: &Arc<Self>,
        r: Req,
        t: Owned<Handle>,
        a: SetAttr,
        by_parts: impl FnOnce() -> R<Attr> + Send + 'static,
        done: impl FnOnce(R<Attr>) + Send + 'static,
    ) {
        let b = match &t {
            Owned::File(h) => Some(h.backend),
            Owned::Path(p) => self.routes.route(p).map(|(b, _)| b),
        };
        if b.is_some_and(|b| self.no_setattr[b].load(Ordering::Relaxed)) {
            return done(by_parts());
        }
        let old = |n: &Node, b: usize, e: i32| {
            let built_before = e == libc::ENOSYS;
            if built_before {
                n.no_setattr[b].store(true, Ordering::Relaxed);
            }
            built_before || e == libc::EBADF
        };
        let effect = match a.size {
            Some(_) => Effect::Resizes,
            None => Effect::Changes,
        };
        let input = move |t| (t, a);
        self.target_then(r, t, effect, SETATTR, input, old, by_parts, done);
    }

    /// `stat` of an open file passed on ([`Node::target_then`]: its buffered bytes
    /// written out first, so that the size is theirs); a handle the backend forgot is
    /// asked the blocking way (`blocking`, which opens the file again) on the retry
    /// thread.
    pub(crate) fn fstat_then(
        self: &Arc<Self>,
        r: Req,
        h: Arc<Handle>,
        follow: bool,
        blocking: impl FnOnce() -> R<Attr> + Send + 'static,
        done: impl FnOnce(R<Attr>) + Send + 'static,
    ) {
        let forgot = |_: &Node, _: usize, e: i32| e == libc::EBADF;
        let input = move |t| (t, follow);
        let t = Owned::File(h);
        self.target_then(r, t, Effect::Reads, STAT, input, forgot, blocking, done)
    }

    /// One attribute change (`chmod`, `truncate`, `chown`, `utimens`) passed on
    /// ([`Node::target_then`]); a handle the backend forgot is made the blocking way
    /// (`blocking`, which opens the file again for a `truncate`) on the retry thread.
    pub(crate) fn attr_then(
        self: &Arc<Self>,
        r: Req,
        t: Owned<Handle>,
        c: AttrChange,
        blocking: impl FnOnce() -> R<()> + Send + 'static,
        done: impl FnOnce(R<()>) + Send + 'static,
    ) {
        let forgot = |_: &Node, _: usize, e: i32| e == libc::EBADF;
        match c {
            AttrChange::Mode(m) => {
                let input = move |t| (t, m);
                self.target_then(r, t, Effect::Changes, CHMOD, input, forgot, blocking, done)
            }
            AttrChange::Size(len) => {
                let input = move |t| (t, len);
                self.target_then(
                    r,
                    t,
                    Effect::Resizes,
                    TRUNCATE,
                    input,
                    forgot,
                    blocking,
                    done,
                )
            }
            AttrChange::Owner(u, g) => {
                let input = move |t| (t, u, g);
                self.target_then(r, t, Effect::Changes, CHOWN, input, forgot, blocking, done)
            }
            AttrChange::Times(a, m, f) => {
                let input = move |t| (t, a, m, f);
                self.target_then(
                    r,
                    t,
                    Effect::Changes,
                    UTIMENS,
                    input,
                    forgot,
                    blocking,
                    done,
                )
            }
        }
    }

    /// A call on a path or handle passed on to the backend and answered from its
    /// completion. What it must come after is written out here first, on the worker that
    /// began it: the file's buffered bytes (its times and size come after them), and
    /// before a size change the journal's mark too. After a change the cached
    /// attributes of the path are forgotten, and after a size change what the node
    /// kept of the file is dropped. An error `again` picks (given the backend's index)
    /// has the call made the blocking way instead (`blocking`), on the retry thread.
    #[allow(clippy::too_many_arguments)]
    fn target_then<In, Out>(
        self: &Arc<Self>,
        r: Req,
        t: Owned<Handle>,
        effect: Effect,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        input: impl FnOnce(Target) -> In,
        again: impl FnOnce(&Node, usize, i32) -> bool + Send + 'static,
        blocking: impl FnOnce() -> R<Out> + Send + 'static,
        done: impl FnOnce(R<Out>) + Send + 'static,
    ) where
        In: serde::Serialize + Clone + Send + 'static,
        Out: DeserializeOwned + Send + 'static,
    {
        let sized = effect == Effect::Resizes;
        let before = |f: &SharedFile| match sized {
            true => self.before_change(f),
            false => self.flush(f),
        };
        let (fs, target, b, path) = match &t {
            Owned::Path(p) => {
                let (b, fs, p) = match self.route(&r, p) {
                    Ok(x) => x,
                    Err(x) => return done(Err(x)),
                };
                let files = match sized {
                    true => self.named(&fs, b, &p, true),
                    false => self.files.by_path(b, &p),
                };
                files.iter().for_each(|f| before(f));
                (fs, Target::Path(p.clone()), b, p.into_vec())
            }
            Owned::File(h) => {
                h.file.iter().for_each(|f| before(f));
                let t = Target::Handle(h.backing.fh());
                (h.backing.fs.clone(), t, h.backend, h.path.clone())
            }
        };
        self.call_then(&fs, rpc, input(target), move |n, out| {
            if let Err(e) = out
                && again(n, b, e)
            {
                return n.retry(Box::new(move || done(blocking())));
            }
            if effect != Effect::Reads {
                n.attrs.changed(b, &path);
            }
            if sized {
                // A read between could otherwise keep the old bytes.
                let files = match &t {
                    Owned::File(h) => h.file.iter().cloned().collect(),
                    Owned::Path(_) => n.files.by_path(b, &path),
                };
                files.iter().for_each(|f| f.invalidate());
            }
            done(out)
        });
    }
}

/// What a call passed on by [`Node::target_then`] does to its file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Looks only (`stat`).
    Reads,
    /// Changes attributes (mode, owner, times).
    Changes,
    /// Changes the size (what the node keeps of the file goes with it).
    Resizes,
}
