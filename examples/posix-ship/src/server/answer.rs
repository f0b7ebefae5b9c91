//! How a request is answered, whatever its operation: who is calling ([`Who`]), its
//! admission within the caller's bounds, then its body run on a worker or where it was
//! dispatched, its answer given at once or later through a callback ([`Later`]).

use std::sync::Arc;

use rpc_core::{Caller, Engine, Identity, Responder, Rpc, RpcError};
use rustix::io::Errno;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::{Backend, Begin, Done, R, Who};
use super::clients::{Admitted, LOCAL};
use super::service::Service;
use crate::proto::*;

impl<B: Backend> Service<B> {
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
pub(super) type Begins<In> = fn(&In) -> Option<Begin<'_>>;

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
        let w = who.clone();
        self.begin_with(&w, later, |done| f(self, who, input, done));
    }

    /// Runs `body` with the caller's rights ([`Backend::run`]); it answers through the
    /// callback it is given, which answers `later`.
    pub(super) fn begin_with<Out>(
        &self,
        who: &Who,
        later: Later<B, Out>,
        body: impl FnOnce(Done<Out>),
    ) where
        Out: Serialize + 'static,
    {
        let mut done: Option<Done<Out>> = Some(Box::new(move |out: R<Out>| later.send(out)));
        let mut body = Some(body);
        let refused = self.backend.run(who, || {
            if let (Some(done), Some(body)) = (done.take(), body.take()) {
                body(done);
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
    pub(super) r: Option<Responder<Reply<Out>>>,
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

    pub(super) fn send(mut self, out: R<Out>) {
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
pub(super) fn serve_then<B, In, Out, F>(
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
pub(super) fn serve<B, In, Out, F>(
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
