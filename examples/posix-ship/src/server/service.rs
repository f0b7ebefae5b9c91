//! The protocol served over any [`Backend`]: what every server of posix-ship does the
//! same way, whatever stores the files.
//!
//! [`Service::register`] puts every operation (and its [`forwarded`] twin) on an
//! [`Engine`]. For each request it:
//! - knows the caller ([`Who`]): the connection and the identity its transport verified,
//!   or, for the twin, the identity a trusted forwarder names (others get `EPERM`);
//! - admits it within the caller's bounds ([`Clients`]: requests in flight, open files,
//!   staging memory, per client and per user);
//! - turns handles into the backend's own open files (a client reaches only its own);
//! - stages bulk data: the bytes of a large write are pulled from the caller's memory
//!   when the backend asks for them ([`Payload::bytes`]), a read's buffer is pushed back,
//!   both within the staging bounds (short under pressure, as POSIX allows);
//! - answers the backend's `errno`, unchanged.
//!
//! The backend only does file system work: [`super::LocalFs`] on a local export, an I/O
//! node on other posix-ship servers.

use std::sync::Arc;
use std::time::Instant;

use rpc_core::{Engine, RpcError};
use rustix::io::Errno;

use super::answer::{Begins, Later, serve, serve_then, twins};
pub use super::backend::{
    AttrChange, Backend, Begin, Change, Done, MAX_OFFSET, On, Owned, Payload, R, Who, set_attr,
};
use super::clients::{Clients, Limits};
use super::lending::Lending;
use crate::proto::*;

/// The protocol on an engine, over backend `B`.
pub struct Service<B: Backend> {
    /// The backend.
    pub backend: Arc<B>,
    /// Every client's handles and bounds.
    pub clients: Clients<B::File>,
    /// Handles lent to other connections of their user.
    lending: Lending<B::File>,
    /// Peers (by verified uid) whose [`forwarded`] calls are served.
    pub(super) trusted_forwarders: Vec<u32>,
}

impl<B: Backend> Service<B> {
    /// Serves the protocol on `engine` over `backend`, within `limits`; [`forwarded`]
    /// calls only from peers verified as one of `trusted_forwarders`.
    pub fn register(
        engine: &Engine,
        backend: Arc<B>,
        limits: Limits,
        trusted_forwarders: Vec<u32>,
    ) -> Result<Arc<Service<B>>, RpcError> {
        let s = Arc::new(Service {
            backend,
            clients: Clients::new(limits),
            lending: Lending::default(),
            trusted_forwarders,
        });
        let w = Arc::downgrade(&s);
        engine.on_peer_lost(move |p| {
            if let Some(s) = w.upgrade() {
                // (Handles first: a lend racing the loss then finds none, or is orphaned.)
                s.backend.lost(s.clients.lost(p.0));
                s.let_go(s.lending.lost(p.0, Instant::now()));
            }
        });
        register_all(engine, &s)?;
        Ok(s)
    }

    /// The counters of requests, clients and handles.
    pub fn stats(&self) -> ServerStats {
        self.clients.stats()
    }

    pub(super) fn file(&self, who: &Who, fh: Fh) -> R<Arc<B::File>> {
        self.clients.get(who.client, fh)
    }

    /// The caller's handle for `f`, just opened (closed again past the caller's bound).
    fn opened(&self, who: &Who, f: Arc<B::File>, attr: Attr) -> R<Opened> {
        match self.clients.insert(who.client, who.uid(), f.clone()) {
            Ok(fh) => Ok(Opened { fh, attr }),
            Err(e) => {
                // (Not `close`: this may run on the progress thread, where a backend's
                // close could wait on progress; `lost` lets files go the backend's way.)
                self.backend.lost(vec![f]);
                Err(e)
            }
        }
    }

    fn close(&self, who: &Who, fh: Fh) -> R<()> {
        let f = self.clients.remove(who.client, fh)?;
        self.let_go(self.lending.closed(who.client, fh, Instant::now()));
        self.backend.close(who, f)
    }

    /// A pass for the caller's handle `fh` (`crate::server::lending`).
    fn lend(&self, who: &Who, fh: Fh) -> R<Pass> {
        if !self.backend.lends() {
            return Err(Errno::NOSYS);
        }
        // The pass is for the user the file was opened by (a forwarder's connection
        // holds files of many users), and only that user may lend it.
        let (f, user) = self.clients.get_owned(who.client, fh)?;
        if user != who.uid() {
            return Err(Errno::BADF);
        }
        let now = Instant::now();
        let (pass, expired) = self.lending.lend(who.client, fh, user, f.clone(), now);
        self.let_go(expired);
        let pass = pass?;
        // A close (or the client's loss) racing this lend found no pass to orphan: the
        // handle must still be this file, or the pass is orphaned now.
        let same = self.clients.get(who.client, fh);
        if !same.is_ok_and(|now| Arc::ptr_eq(&now, &f)) {
            self.let_go(self.lending.closed(who.client, fh, Instant::now()));
            return Err(Errno::BADF);
        }
        Ok(pass)
    }

    /// The files of expired passes go the way of a lost client's.
    fn let_go(&self, files: Vec<Arc<B::File>>) {
        if !files.is_empty() {
            self.backend.lost(files);
        }
    }

    /// A handle of the caller's on the file `pass` stands for.
    fn adopt(&self, who: &Who, pass: Pass) -> R<Opened> {
        let (f, expired) = self.lending.adopt(pass, who.uid(), Instant::now());
        self.let_go(expired);
        let f = f?;
        let attr = self.backend.stat(who, On::File(&f), true)?;
        self.opened(who, f, attr)
    }
}

fn register_all<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    let stat: Begins<(Target, bool)> = |(t, follow)| match t {
        Target::Path(path) => Some(Begin::Stat {
            path,
            follow: *follow,
        }),
        Target::Handle(_) => None,
    };
    serve_then(e, s, STAT, stat, |s, w, (t, follow), done| {
        match owned(s, &w, t) {
            Ok(t) => s.backend.clone().stat_then(w, t, follow, done),
            Err(x) => done(Err(x)),
        }
    })?;
    serve_then(
        e,
        s,
        OPEN,
        |o| Some(Begin::Open(o)),
        |s, w, r, done| {
            let s2 = s.clone();
            let w2 = w.clone();
            s.backend.clone().open_then(
                w,
                r,
                Box::new(move |opened| {
                    done(opened.and_then(|(f, attr)| s2.opened(&w2, Arc::new(f), attr)))
                }),
            )
        },
    )?;
    close(e, s)?;
    // (The list's bound is kept while it is decoded: `FhList`.)
    serve(e, s, CLOSE_MANY, |s, w, _, fhs: FhList| {
        Ok(fhs
            .0
            .into_iter()
            .map(|fh| s.close(w, fh).err().map_or(0, |e| e.raw_os_error()))
            .collect())
    })?;
    super::listio::register(e, s)?;
    serve(e, s, LEND, |s, w, _, fh| s.lend(w, fh))?;
    serve(e, s, ADOPT, |s, w, _, pass| s.adopt(w, pass))?;
    super::now::register(e, s)?;
    serve_then(
        e,
        s,
        FSYNC,
        |_| None,
        |s, w, (fh, d), done| match s.file(&w, fh) {
            Ok(f) => s.backend.clone().fsync_then(w, f, d, done),
            Err(x) => done(Err(x)),
        },
    )?;
    serve(e, s, FALLOCATE, |s, w, _, (fh, m, o, l)| {
        s.backend.fallocate(w, &s.file(w, fh)?, m, o, l)
    })?;
    serve_then(
        e,
        s,
        UNLINK,
        |p| Some(Begin::Unlink(p)),
        |s, w, p, done| s.backend.clone().unlink_then(w, p, done),
    )?;
    changes(e, s)?;
    super::query::register(e, s)?;
    attrs(e, s)?;
    let s = s.clone();
    e.register_infallible(SERVER_STATS, move |()| s.backend.stats(s.clients.stats()))
}

/// `close`: where it was dispatched if the backend closes the file without waiting
/// ([`Backend::close_now`]: an I/O node holding none of its bytes), else on a worker.
fn close<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    if !s.backend.answers_now() {
        return serve(e, s, CLOSE, |s, w, _, fh| s.close(w, fh));
    }
    let s = s.clone();
    twins(e, CLOSE, true, move |r, fwd, fh| {
        let Some((r, who, admitted)) = s.admit(CLOSE.name(), r, fwd) else {
            return;
        };
        let f = match s.clients.remove(who.client, fh) {
            Ok(f) => f,
            Err(x) => return r.respond(&Err(x.raw_os_error())),
        };
        s.let_go(s.lending.closed(who.client, fh, Instant::now()));
        if let Some(out) = s.backend.close_now(&who, &f) {
            return r.respond(&out.map_err(|x| x.raw_os_error()));
        }
        let mut later = Later::counting(s.clone(), admitted);
        let s = s.clone();
        r.defer(move |r| {
            later.r = Some(r);
            let out = s.backend.run(&who, || s.backend.close(&who, f));
            later.send(out)
        })
    })
}

/// The namespace changes, each answered through [`Backend::change_then`].
fn changes<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    fn begins<In>(_: &In) -> Option<Begin<'_>> {
        Some(Begin::Change)
    }
    let change = |s: &Arc<Service<B>>, w: Who, c: Change, done: Done<()>| {
        s.backend.clone().change_then(w, c, done)
    };
    serve_then(e, s, RMDIR, begins, move |s, w, p, d| {
        change(s, w, Change::Rmdir(p), d)
    })?;
    serve_then(e, s, MKDIR, begins, move |s, w, (p, m), d| {
        change(s, w, Change::Mkdir(p, m), d)
    })?;
    serve_then(e, s, RENAME, begins, move |s, w, (a, b), d| {
        change(s, w, Change::Rename(a, b, 0), d)
    })?;
    serve_then(e, s, RENAME2, begins, move |s, w, (a, b, f), d| {
        change(s, w, Change::Rename(a, b, f), d)
    })?;
    serve_then(e, s, LINK, begins, move |s, w, (a, b), d| {
        change(s, w, Change::Link(a, b), d)
    })?;
    serve_then(e, s, SYMLINK, begins, move |s, w, (t, p), d| {
        change(s, w, Change::Symlink(t, p), d)
    })
}

/// The attribute changes (one each, or several at once: [`SETATTR`]), answered through
/// [`Backend::attr_then`] and [`Backend::setattr_then`] on a worker (what the backend
/// holds of the file may be written out first).
fn attrs<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    let change = |s: &Arc<Service<B>>, w: Who, t: Target, c: AttrChange, done: Done<()>| match owned(
        s, &w, t,
    ) {
        Ok(t) => s.backend.clone().attr_then(w, t, c, done),
        Err(x) => done(Err(x)),
    };
    serve_then(
        e,
        s,
        CHMOD,
        |_| None,
        move |s, w, (t, m), d| change(s, w, t, AttrChange::Mode(m), d),
    )?;
    serve_then(
        e,
        s,
        TRUNCATE,
        |_| None,
        move |s, w, (t, len), d| change(s, w, t, AttrChange::Size(len), d),
    )?;
    serve_then(
        e,
        s,
        CHOWN,
        |_| None,
        move |s, w, (t, u, g), d| change(s, w, t, AttrChange::Owner(u, g), d),
    )?;
    serve_then(
        e,
        s,
        UTIMENS,
        |_| None,
        move |s, w, (t, a, m, f), d| change(s, w, t, AttrChange::Times(a, m, f), d),
    )?;
    serve_then(
        e,
        s,
        SETATTR,
        |_| None,
        |s, w, (t, a), done| match owned(s, &w, t) {
            Ok(t) => s.backend.clone().setattr_then(w, t, a, done),
            Err(x) => done(Err(x)),
        },
    )
}

/// The caller's target, its handle resolved.
pub(super) fn owned<B: Backend>(s: &Service<B>, w: &Who, t: Target) -> R<Owned<B::File>> {
    Ok(match t {
        Target::Path(p) => Owned::Path(p),
        Target::Handle(fh) => Owned::File(s.file(w, fh)?),
    })
}
