//! Calls on a path or an open file passed on to the backend and answered from its
//! completion (`setattr`, `chmod`, `truncate`, `chown`, `utimens`, an open file's
//! `stat`): what they must come after is written out on the worker that begins them,
//! then one backend call ([`Node::target_then`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use posix_ship::proto::*;
use posix_ship::server::{AttrChange, Owned};
use serde::de::DeserializeOwned;

use crate::files::SharedFile;
use crate::node::{Handle, Node, Req};

type R<T> = Result<T, i32>;

impl Node {
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
        self.target_then(
            r,
            t,
            effect,
            SETATTR,
            input,
            Retry::new(old, by_parts),
            done,
        );
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
        self.target_then(
            r,
            t,
            Effect::Reads,
            STAT,
            input,
            Retry::new(forgot, blocking),
            done,
        )
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
        let retry = Retry::new(|_: &Node, _: usize, e: i32| e == libc::EBADF, blocking);
        match c {
            AttrChange::Mode(m) => {
                let input = move |t| (t, m);
                self.target_then(r, t, Effect::Changes, CHMOD, input, retry, done)
            }
            AttrChange::Size(len) => {
                let input = move |t| (t, len);
                self.target_then(r, t, Effect::Resizes, TRUNCATE, input, retry, done)
            }
            AttrChange::Owner(u, g) => {
                let input = move |t| (t, u, g);
                self.target_then(r, t, Effect::Changes, CHOWN, input, retry, done)
            }
            AttrChange::Times(a, m, f) => {
                let input = move |t| (t, a, m, f);
                self.target_then(r, t, Effect::Changes, UTIMENS, input, retry, done)
            }
        }
    }

    /// A call on a path or handle passed on to the backend and answered from its
    /// completion. What it must come after is written out here first, on the worker that
    /// began it: the file's buffered bytes (its times and size come after them), and
    /// before a size change the journal's mark too. After a change the cached
    /// attributes of the path are forgotten, and after a size change what the node
    /// kept of the file is dropped. An error `retry` picks has the call made its
    /// blocking way instead, on the retry thread.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn target_then<In, Out>(
        self: &Arc<Self>,
        r: Req,
        t: Owned<Handle>,
        effect: Effect,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        input: impl FnOnce(Target) -> In,
        retry: Option<Retry<Out>>,
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
            if let (Err(e), Some(retry)) = (&out, retry)
                && (retry.when)(n, b, *e)
            {
                let how = retry.how;
                return n.retry(Box::new(move || done(how())));
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

/// When a call passed on by [`Node::target_then`] is made its blocking way instead, on
/// the retry thread: an error `when` picks (given the backend's index), made by `how`.
pub(crate) struct Retry<Out> {
    when: Box<When>,
    how: Box<dyn FnOnce() -> R<Out> + Send>,
}

/// Whether a backend's error (given the node and the backend's index) calls for a retry.
type When = dyn FnOnce(&Node, usize, i32) -> bool + Send;

impl<Out> Retry<Out> {
    pub(crate) fn new(
        when: impl FnOnce(&Node, usize, i32) -> bool + Send + 'static,
        how: impl FnOnce() -> R<Out> + Send + 'static,
    ) -> Option<Retry<Out>> {
        Some(Retry {
            when: Box::new(when),
            how: Box::new(how),
        })
    }
}

/// What a call passed on by [`Node::target_then`] does to its file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Looks only (`stat`).
    Reads,
    /// Changes attributes (mode, owner, times).
    Changes,
    /// Changes the size (what the node keeps of the file goes with it).
    Resizes,
}
