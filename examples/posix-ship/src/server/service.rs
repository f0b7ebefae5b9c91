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

use rpc_core::{Caller, Engine, Identity, Responder, Rpc, RpcError};
use rustix::io::Errno;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

pub use super::backend::{Backend, Begin, Done, MAX_OFFSET, On, Payload, R, Who};
use super::clients::{Admitted, Clients, LOCAL, Limits};
use super::lending::Lending;
use crate::bulk_io::push_to;
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
    trusted_forwarders: Vec<u32>,
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

    /// Runs `f` on `t`, its handle resolved.
    fn on<T>(&self, who: &Who, t: &Target, f: impl FnOnce(On<'_, B::File>) -> R<T>) -> R<T> {
        match t {
            Target::Path(p) => f(On::Path(p)),
            Target::Handle(fh) => f(On::File(&self.file(who, *fh)?)),
        }
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

    /// [`SETATTR`]: owner, mode, size, times, then the attributes.
    fn set_attr(&self, who: &Who, t: &Target, a: SetAttr) -> R<Attr> {
        let b = &self.backend;
        let (f, path): (_, &[u8]) = match t {
            Target::Handle(fh) => (Some(self.file(who, *fh)?), &[]),
            Target::Path(p) => (None, p),
        };
        let on = || f.as_ref().map_or(On::Path(path), On::File);
        if a.uid.is_some() || a.gid.is_some() {
            b.chown(who, on(), a.uid, a.gid)?;
        }
        if let Some(m) = a.mode {
            b.chmod(who, on(), m & 0o7777)?;
        }
        if let Some(len) = a.size {
            b.truncate(who, on(), len)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let (at, mt) = (
                a.atime.unwrap_or(SetTime::Omit),
                a.mtime.unwrap_or(SetTime::Omit),
            );
            b.utimens(who, on(), at, mt, false)?;
        }
        b.stat(who, on(), false)
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

    /// `pread`: inline (at most [`MAX_INLINE_READ`]), or pushed into the caller's buffer
    /// (short under staging-memory pressure).
    pub(super) fn read(&self, who: &Who, caller: &Caller, r: &ReadReq) -> R<ReadData> {
        let f = self.file(who, r.fh)?;
        // As the kernel: a negative offset is EINVAL; reads end at the largest offset.
        let room = MAX_OFFSET.checked_sub(r.offset).ok_or(Errno::INVAL)?;
        let len = r.len.min(MAX_IO).min(room);
        let (len, _staged) = match &r.dest {
            Some(d) if d.len() < len => return Err(Errno::INVAL),
            None => (len.min(MAX_INLINE_READ), None),
            Some(_) => {
                let s = self.clients.stage(who.client, who.uid(), len);
                (s.len, Some(s))
            }
        };
        let mut buf = vec![0u8; len as usize];
        let n = self.backend.read(who, &f, r.offset, &mut buf)?;
        buf.truncate(n);
        let Some(dest) = &r.dest else {
            return Ok(ReadData::Inline(ByteBuf::from(buf)));
        };
        push_to(caller, &mut buf, dest).map_err(Errno::from_raw_os_error)?;
        Ok(ReadData::Pushed(n as u64))
    }

    /// `pwrite`, or an append: inline, or pulled from the caller's buffer (short under
    /// staging-memory pressure; the client writes the rest next).
    pub(super) fn write(&self, who: &Who, caller: &Caller, r: WriteReq) -> R<Written> {
        let f = self.file(who, r.fh)?;
        let (data, _staged) = match r.data {
            WriteData::Inline(b) => (Payload::Inline(b.into_vec()), None),
            WriteData::Bulk(src) => {
                if src.len() > MAX_IO {
                    return Err(Errno::INVAL);
                }
                let s = self.clients.stage(who.client, who.uid(), src.len());
                let len = s.len;
                (Payload::Bulk { caller, src, len }, Some(s))
            }
        };
        // As the kernel: a negative offset is EINVAL, a write past the largest one EFBIG.
        if let Some(off) = r.offset {
            let end = off.checked_add(data.len()).ok_or(Errno::FBIG)?;
            if off > MAX_OFFSET {
                return Err(Errno::INVAL);
            }
            if end > MAX_OFFSET {
                return Err(Errno::FBIG);
            }
        }
        self.backend.write(who, &f, r.offset, data)
    }

    /// The identity a request acts for: its connection's, or for a [`forwarded`] one,
    /// the principal a trusted forwarder names (`EPERM` from any other peer).
    pub(super) fn who<T: Serialize>(
        &self,
        r: &Responder<T>,
        forwarded: Option<Option<Principal>>,
    ) -> R<Who> {
        let client = r.peer().map_or(LOCAL, |p| p.0);
        let Some(principal) = forwarded else {
            return Ok(Who {
                client,
                identity: r.identity(),
                inline: false,
            });
        };
        let trusted = r
            .identity()
            .is_some_and(|i| self.trusted_forwarders.contains(&i.uid));
        if !trusted {
            tracing::warn!(peer = ?r.peer(), "a call for another user from an untrusted peer");
            return Err(Errno::PERM);
        }
        let identity = match principal {
            None => None,
            // More groups than any kernel gives a process: not a real user.
            Some(p) if p.groups.len() > 65536 => return Err(Errno::INVAL),
            Some(p) => Some(Identity {
                uid: p.uid,
                gid: p.gid,
                groups: p.groups,
                proof: rpc_core::Proof::Forwarded,
            }),
        };
        Ok(Who {
            client,
            identity,
            inline: false,
        })
    }

    /// A request's caller, admitted within its bounds; `None` once refused (answered).
    pub(super) fn admit<Out: Serialize + 'static>(
        &self,
        rpc: &'static str,
        r: Responder<Reply<Out>>,
        forwarded: Option<Option<Principal>>,
    ) -> Option<Admission<'_, B, Out>> {
        self.backend.request_in(rpc);
        let who = match self.who(&r, forwarded) {
            Ok(w) => w,
            Err(e) => {
                r.respond(&Err(e.raw_os_error()));
                return None;
            }
        };
        match self.clients.admit(who.client, who.uid()) {
            Ok(a) => Some((r, who, a)),
            // At a bound: the transport's "busy", which clients wait out and try again
            // (an `EAGAIN` answer would reach programs that never expect one from a
            // file).
            Err(e) if e == rustix::io::Errno::AGAIN => {
                r.busy(format_args!("{rpc}: requests in flight at the bound"));
                None
            }
            Err(e) => {
                r.respond(&Err(e.raw_os_error()));
                None
            }
        }
    }

    pub(super) fn answer<In, Out>(
        &self,
        rpc: &'static str,
        r: Responder<Reply<Out>>,
        forwarded: Option<Option<Principal>>,
        input: In,
        f: &Body<B, In, Out>,
    ) where
        Out: Serialize + 'static,
    {
        let Some((r, who, admitted)) = self.admit(rpc, r, forwarded) else {
            return;
        };
        self.answer_admitted(rpc, r, &who, input, f);
        drop(admitted);
    }

    /// Runs an admitted request's body and answers it.
    pub(super) fn answer_admitted<In, Out>(
        &self,
        rpc: &'static str,
        r: Responder<Reply<Out>>,
        who: &Who,
        input: In,
        f: &Body<B, In, Out>,
    ) where
        Out: Serialize + 'static,
    {
        let caller = r.caller();
        let out = self
            .backend
            .run(who, || f(self, who, &caller, input))
            .map_err(|e| e.raw_os_error());
        tracing::trace!(
            client = who.client,
            rpc,
            errno = out.as_ref().err(),
            "answered"
        );
        r.respond(&out);
    }
}

pub(super) type Body<B, In, Out> = dyn Fn(&Service<B>, &Who, &Caller, In) -> R<Out> + Send + Sync;

/// A request admitted: its responder, its caller, its place within the bounds.
pub(super) type Admission<'a, B, Out> = (
    Responder<Reply<Out>>,
    Who,
    Admitted<'a, <B as Backend>::File>,
);

/// A body that answers through its last argument, possibly later from another thread.
type BodyThen<B, In, Out> = dyn Fn(&Arc<Service<B>>, Who, In, Done<Out>) + Send + Sync;

/// What a request begins with, as [`Backend::begins_now`] is asked (`None`: not asked;
/// it is made on a worker).
type Begins<In> = fn(&In) -> Option<Begin<'_>>;

impl<B: Backend> Service<B> {
    /// As [`Service::answer`], for a body that answers through a callback: the request
    /// stays counted against the caller's bounds until it is answered. Dispatched where
    /// it arrives (with [`Backend::answers_now`]), the body is begun there if the backend
    /// says it begins without waiting, else on a worker.
    fn answer_then<In, Out>(
        self: &Arc<Self>,
        rpc: &'static str,
        r: Responder<Reply<Out>>,
        forwarded: Option<Option<Principal>>,
        input: In,
        begins: Begins<In>,
        f: &Arc<BodyThen<B, In, Out>>,
    ) where
        In: Send + 'static,
        Out: Serialize + 'static,
    {
        let Some((r, mut who, admitted)) = self.admit(rpc, r, forwarded) else {
            return;
        };
        let mut later = Later::counting(self.clone(), admitted);
        let inline = self.backend.answers_now();
        if inline && !begins(&input).is_some_and(|b| self.backend.begins_now(&who, b)) {
            let (s, f) = (self.clone(), f.clone());
            return r.defer(move |r| {
                later.r = Some(r);
                s.begin_then(who, input, later, &*f)
            });
        }
        who.inline = inline;
        later.r = Some(r);
        self.begin_then(who, input, later, &**f);
    }

    /// Runs an admitted request's body, which answers through `later`.
    fn begin_then<In, Out>(
        self: &Arc<Self>,
        who: Who,
        input: In,
        later: Later<B, Out>,
        f: &BodyThen<B, In, Out>,
    ) where
        Out: Serialize + 'static,
    {
        let mut done: Option<Done<Out>> = Some(Box::new(move |out: R<Out>| later.send(out)));
        let refused = self.backend.run(&who.clone(), || {
            if let Some(done) = done.take() {
                f(self, who, input, done);
            }
            Ok(())
        });
        // The body never ran (the caller's rights refused): that is the answer.
        if let (Err(e), Some(done)) = (refused, done) {
            done(Err(e));
        }
    }
}

/// A request to answer later: answered once, and let go of within the caller's bounds
/// whatever happens (an answer never sent, a body that panicked, is `EIO`).
pub(super) struct Later<B: Backend, Out: Serialize + 'static> {
    r: Option<Responder<Reply<Out>>>,
    s: Arc<Service<B>>,
    kept: (super::clients::ClientId, super::clients::User),
}

impl<B: Backend, Out: Serialize + 'static> Later<B, Out> {
    /// Keeps an admitted request counted within its caller's bounds until this is
    /// dropped (its answer goes another way).
    pub(super) fn counting(
        s: Arc<Service<B>>,
        admitted: super::clients::Admitted<'_, B::File>,
    ) -> Self {
        Later {
            r: None,
            s,
            kept: admitted.keep(),
        }
    }

    fn send(mut self, out: R<Out>) {
        if let Some(r) = self.r.take() {
            r.respond(&out.map_err(|e| e.raw_os_error()));
        }
    }
}

impl<B: Backend, Out: Serialize + 'static> Drop for Later<B, Out> {
    fn drop(&mut self) {
        if let Some(r) = self.r.take() {
            r.respond(&Err(libc::EIO));
        }
        self.s.clients.answered(self.kept);
    }
}

/// Registers `rpc` and its [`forwarded`] twin, both answered by `answer` (given the
/// principal a forwarder names, for the twin); `inline`: where requests are dispatched
/// ([`Engine::register_responder_inline`]), else on a worker.
pub(super) fn twins<In, Out>(
    e: &Engine,
    rpc: Rpc<In, Reply<Out>>,
    inline: bool,
    answer: impl Fn(Responder<Reply<Out>>, Option<Option<Principal>>, In) + Send + Sync + 'static,
) -> Result<(), RpcError>
where
    In: DeserializeOwned + 'static,
    Out: Serialize + 'static,
{
    let answer = Arc::new(answer);
    let a = answer.clone();
    let plain = move |input: In, r| a(r, None, input);
    let twin = move |(p, input): (Option<Principal>, In), r| answer(r, Some(p), input);
    if inline {
        e.register_responder_inline(rpc, plain)?;
        e.register_responder_inline(forwarded(rpc), twin)
    } else {
        e.register_responder(rpc, plain)?;
        e.register_responder(forwarded(rpc), twin)
    }
}

/// Registers `rpc` and its [`forwarded`] twin with a body that answers through a callback
/// (dispatched where requests arrive if the backend [`Backend::answers_now`]: see
/// [`Service::answer_then`]).
fn serve_then<B, In, Out, F>(
    e: &Engine,
    s: &Arc<Service<B>>,
    rpc: Rpc<In, Reply<Out>>,
    begins: Begins<In>,
    f: F,
) -> Result<(), RpcError>
where
    B: Backend,
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + 'static,
    F: Fn(&Arc<Service<B>>, Who, In, Done<Out>) + Send + Sync + 'static,
{
    let (s, name) = (s.clone(), rpc.name());
    let f: Arc<BodyThen<B, In, Out>> = Arc::new(f);
    twins(e, rpc, s.backend.answers_now(), move |r, fwd, input| {
        s.answer_then(name, r, fwd, input, begins, &f)
    })
}

/// Registers `rpc` and its [`forwarded`] twin with body `f`.
fn serve<B, In, Out, F>(
    e: &Engine,
    s: &Arc<Service<B>>,
    rpc: Rpc<In, Reply<Out>>,
    f: F,
) -> Result<(), RpcError>
where
    B: Backend,
    In: DeserializeOwned + 'static,
    Out: Serialize + 'static,
    F: Fn(&Service<B>, &Who, &Caller, In) -> R<Out> + Send + Sync + 'static,
{
    let (s, name) = (s.clone(), rpc.name());
    twins(e, rpc, false, move |r, fwd, input| {
        s.answer(name, r, fwd, input, &f)
    })
}

fn register_all<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    let stat: Begins<(Target, bool)> = |(t, follow)| match t {
        Target::Path(path) => Some(Begin::Stat {
            path,
            follow: *follow,
        }),
        Target::Handle(_) => None,
    };
    serve_then(e, s, STAT, stat, |s, w, (t, follow), done| match t {
        Target::Path(p) => s.backend.clone().stat_then(w, p, follow, done),
        Target::Handle(fh) => done(
            s.file(&w, fh)
                .and_then(|f| s.backend.stat(&w, On::File(&f), follow)),
        ),
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
    serve(e, s, CLOSE, |s, w, _, fh| s.close(w, fh))?;
    // (The list's bound is kept while it is decoded: `FhList`.)
    serve(e, s, CLOSE_MANY, |s, w, _, fhs: FhList| {
        Ok(fhs
            .0
            .into_iter()
            .map(|fh| s.close(w, fh).err().map_or(0, |e| e.raw_os_error()))
            .collect())
    })?;
    serve(e, s, LEND, |s, w, _, fh| s.lend(w, fh))?;
    serve(e, s, ADOPT, |s, w, _, pass| s.adopt(w, pass))?;
    if s.backend.answers_now() {
        super::now::register(e, s)?;
    } else {
        serve(e, s, READ, |s, w, c, r| s.read(w, c, &r))?;
        serve(e, s, WRITE, |s, w, c, r| s.write(w, c, r))?;
    }
    serve(e, s, TRUNCATE, |s, w, _, (t, len)| {
        s.on(w, &t, |t| s.backend.truncate(w, t, len))
    })?;
    serve(e, s, FSYNC, |s, w, _, (fh, d)| {
        s.backend.fsync(w, &s.file(w, fh)?, d)
    })?;
    serve(e, s, FALLOCATE, |s, w, _, (fh, m, o, l)| {
        s.backend.fallocate(w, &s.file(w, fh)?, m, o, l)
    })?;
    serve(e, s, READDIR, |s, w, _, r| {
        s.backend.readdir(w, &s.file(w, r.fh)?, r.restart, r.max)
    })?;
    for (rpc, xattrs) in [(READDIR_PLUS, false), (READDIR_PLUS_XATTRS, true)] {
        serve(e, s, rpc, move |s, w, _, r| {
            let max = r.max.min(MAX_DIR_PLUS_PAGE);
            s.backend
                .readdir_plus(w, &s.file(w, r.fh)?, r.restart, max, xattrs)
        })?;
    }
    serve_then(
        e,
        s,
        UNLINK,
        |p| Some(Begin::Unlink(p)),
        |s, w, p, done| s.backend.clone().unlink_then(w, p, done),
    )?;
    serve(e, s, RMDIR, |s, w, _, p| s.backend.rmdir(w, &p))?;
    serve(e, s, MKDIR, |s, w, _, (p, m)| s.backend.mkdir(w, &p, m))?;
    serve(e, s, RENAME, |s, w, _, (a, b)| {
        s.backend.rename(w, &a, &b, 0)
    })?;
    serve(e, s, RENAME2, |s, w, _, (a, b, f)| {
        s.backend.rename(w, &a, &b, f)
    })?;
    serve(e, s, LINK, |s, w, _, (a, b)| s.backend.link(w, &a, &b))?;
    serve(e, s, SYMLINK, |s, w, _, (t, p)| {
        s.backend.symlink(w, &t, &p)
    })?;
    serve(e, s, READLINK, |s, w, _, p| s.backend.readlink(w, &p))?;
    serve(e, s, STATFS, |s, w, _, p| s.backend.statfs(w, &p))?;
    serve(e, s, ACCESS, |s, w, _, (p, m)| s.backend.access(w, &p, m))?;
    serve(e, s, CHMOD, |s, w, _, (t, m)| {
        s.on(w, &t, |t| s.backend.chmod(w, t, m))
    })?;
    serve(e, s, UTIMENS, |s, w, _, (t, a, m, f)| {
        s.on(w, &t, |t| s.backend.utimens(w, t, a, m, f))
    })?;
    serve(e, s, CHOWN, |s, w, _, (t, u, g)| {
        s.on(w, &t, |t| s.backend.chown(w, t, u, g))
    })?;
    serve(e, s, SETATTR, |s, w, _, (t, a)| s.set_attr(w, &t, a))?;
    serve(e, s, GETXATTR, |s, w, _, (t, n)| {
        s.on(w, &t, |t| s.backend.getxattr(w, t, &n))
    })?;
    serve(e, s, SETXATTR, |s, w, _, (t, n, v, f)| {
        s.on(w, &t, |t| s.backend.setxattr(w, t, &n, &v, f))
    })?;
    serve(e, s, LISTXATTR, |s, w, _, t| {
        s.on(w, &t, |t| s.backend.listxattr(w, t))
    })?;
    serve(e, s, REMOVEXATTR, |s, w, _, (t, n)| {
        s.on(w, &t, |t| s.backend.removexattr(w, t, &n))
    })?;
    let s = s.clone();
    e.register_infallible(SERVER_STATS, move |()| s.backend.stats(s.clients.stats()))
}
