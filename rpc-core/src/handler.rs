//! Running handlers: decoding the input, catching panics, and the [`Responder`] through
//! which a handler answers, now or later, from any thread.

use std::any::Any;
use std::fmt::Display;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use na::PeerId;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::counters::Counters;
use crate::driver::Shared;
use crate::proto::{HEADER_LEN, Header, Status};

/// Where an answer goes.
pub(crate) enum ReplyTo {
    /// Over the transport to the caller.
    Remote { peer: PeerId, tag: u64 },
    /// Straight into a local caller's slot (a call to oneself).
    Local { tag: u64 },
    /// Nowhere: a one-way request (from `peer`, or from this process).
    Nobody { peer: Option<PeerId> },
}

impl ReplyTo {
    /// The remote caller, if any.
    pub(crate) fn peer(&self) -> Option<PeerId> {
        match self {
            ReplyTo::Remote { peer, .. } | ReplyTo::Nobody { peer: Some(peer) } => Some(*peer),
            _ => None,
        }
    }

    /// Sends an answer with `status` and `body`.
    pub(crate) fn send(self, shared: &Arc<Shared>, rpc_id: u64, status: Status, body: &[u8]) {
        let mut msg = Vec::with_capacity(HEADER_LEN + body.len());
        Header::response(rpc_id, status).write(&mut msg);
        msg.extend_from_slice(body);
        self.send_msg(shared, rpc_id, msg);
    }

    fn send_msg(self, shared: &Arc<Shared>, rpc_id: u64, msg: Vec<u8>) {
        match self {
            ReplyTo::Remote { peer, tag } => {
                let n = msg.len() as u64;
                // Too large for a message: the caller pulls it (see `transfer`).
                let msg = if msg.len() > shared.max_message() {
                    shared.overflow_answer(peer, rpc_id, msg)
                } else {
                    msg
                };
                match shared.plugin.send_quiet(peer, true, tag, msg) {
                    Ok(_) => {
                        Counters::add(&shared.counters.responses_sent, 1);
                        Counters::add(&shared.counters.bytes_sent, n);
                    }
                    Err(e) => tracing::debug!(peer = peer.0, tag, error = %e, "answer not sent"),
                }
            }
            ReplyTo::Local { tag } => shared.end_call(tag, Ok(msg), true),
            ReplyTo::Nobody { .. } => {}
        }
    }
}

/// A request on its way to a handler.
pub(crate) struct Incoming {
    pub(crate) shared: Arc<Shared>,
    pub(crate) reply: ReplyTo,
    pub(crate) rpc_id: u64,
    pub(crate) msg: Vec<u8>,
}

/// A type-erased handler.
pub(crate) type Handler = Arc<dyn Fn(Incoming) + Send + Sync>;

struct ReplyCell {
    shared: Arc<Shared>,
    rpc_id: u64,
    target: Mutex<Option<ReplyTo>>,
}

impl ReplyCell {
    fn take(&self) -> Option<ReplyTo> {
        self.target.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Answers with an error status, unless answered already; counts a handler error.
    fn fail(&self, status: Status, why: &[u8]) {
        if let Some(t) = self.take() {
            Counters::add(&self.shared.counters.handler_errors, 1);
            t.send(&self.shared, self.rpc_id, status, why);
        }
    }
}

/// How a handler answers. Answer with [`Responder::respond`] or [`Responder::fail`], from
/// any thread, at any time; dropping it unanswered sends the caller an error instead, so a
/// caller never waits for an answer that cannot come.
#[must_use = "an unanswered Responder fails the call"]
pub struct Responder<Out> {
    cell: Arc<ReplyCell>,
    _out: PhantomData<fn(Out)>,
}

impl<Out: Serialize> Responder<Out> {
    /// Sends `out` to the caller.
    pub fn respond(self, out: &Out) {
        let Some(t) = self.cell.take() else { return };
        match rmp_serde::to_vec(out) {
            Ok(body) => t.send(&self.cell.shared, self.cell.rpc_id, Status::Ok, &body),
            Err(e) => {
                Counters::add(&self.cell.shared.counters.handler_errors, 1);
                t.send(
                    &self.cell.shared,
                    self.cell.rpc_id,
                    Status::HandlerError,
                    format!("cannot encode output: {e}").as_bytes(),
                )
            }
        }
    }

    /// Sends the caller an error; it arrives as [`crate::RpcError::Handler`].
    pub fn fail(self, why: impl Display) {
        self.cell
            .fail(Status::HandlerError, why.to_string().as_bytes());
    }

    /// A non-owning handle on the engine that received the request, for handlers that
    /// pull or push bulk data, or call other servers, before answering.
    pub fn engine(&self) -> crate::Engine {
        crate::Engine::non_owning(self.cell.shared.clone())
    }

    /// The connection the request came from (one-way requests included): `None` for a
    /// call to oneself. The transport assigns it, so a peer cannot claim another's; it is
    /// what [`crate::Engine::on_peer_lost`] reports when that peer goes away.
    pub fn peer(&self) -> Option<PeerId> {
        self.cell
            .target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(ReplyTo::peer)
    }

    /// The caller's identity as its transport verified it (see [`na::Plugin::peer_identity`]):
    /// `None` for an anonymous peer or a call to oneself.
    pub fn identity(&self) -> Option<na::Identity> {
        self.peer()
            .and_then(|p| self.cell.shared.plugin.peer_identity(p))
    }

    /// The caller's side of bulk transfers: data moves only over the connection the
    /// request came on.
    pub fn caller(&self) -> Caller {
        Caller {
            engine: self.engine(),
            peer: self.peer(),
        }
    }

    /// Whether the caller expects no answer (a one-way request).
    pub fn is_one_way(&self) -> bool {
        matches!(
            *self.cell.target.lock().unwrap_or_else(|e| e.into_inner()),
            Some(ReplyTo::Nobody { .. })
        )
    }
}

impl<Out> Drop for Responder<Out> {
    fn drop(&mut self) {
        // While unwinding, the dispatcher reports the panic itself.
        if std::thread::panicking() {
            return;
        }
        self.cell.fail(
            Status::HandlerError,
            b"handler dropped its responder without answering",
        );
    }
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Wraps a typed handler of RPC `name`: decodes the input, runs it, and turns a panic into
/// an answer. An input that does not decode is answered `BadInput`, naming the RPC and the
/// type expected.
pub(crate) fn erase<In, Out, F>(name: &'static str, f: F) -> Handler
where
    In: DeserializeOwned,
    Out: Serialize,
    F: Fn(In, Responder<Out>) + Send + Sync + 'static,
{
    Arc::new(move |inc: Incoming| {
        let Incoming {
            shared,
            reply,
            rpc_id,
            msg,
        } = inc;
        let input: In = match rmp_serde::from_slice(&msg[HEADER_LEN..]) {
            Ok(v) => v,
            Err(e) => {
                Counters::add(&shared.counters.bad_requests, 1);
                let why = format!(
                    "{name}: input is not a {}: {e}",
                    std::any::type_name::<In>()
                );
                return reply.send(&shared, rpc_id, Status::BadInput, why.as_bytes());
            }
        };
        drop(msg);
        let cell = Arc::new(ReplyCell {
            shared,
            rpc_id,
            target: Mutex::new(Some(reply)),
        });
        let responder = Responder {
            cell: cell.clone(),
            _out: PhantomData,
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(input, responder))) {
            let text = panic_text(&*p);
            tracing::warn!(rpc_id, panic = %text, "handler panicked");
            cell.fail(Status::HandlerPanicked, text.as_bytes());
        }
    })
}

/// Bulk transfers with the process that made a request, over the connection it came on,
/// whatever address a descriptor names: a caller cannot make a server reach a third party,
/// nor can another process answer in its place. From [`Responder::caller`].
#[derive(Clone)]
pub struct Caller {
    engine: crate::Engine,
    peer: Option<PeerId>,
}

impl Caller {
    /// Pulls from the caller's `remote` region (as [`crate::Engine::pull`] does from the
    /// descriptor's owner; for a call to oneself, the owner).
    pub fn pull<'b>(
        &self,
        local: &'b mut crate::Bulk<'_>,
        local_off: u64,
        remote: &crate::Descriptor,
        remote_off: u64,
        len: u64,
    ) -> crate::Transfer<'b> {
        self.engine
            .pull_via(self.peer, local, local_off, remote, remote_off, len)
    }

    /// Pushes into the caller's `remote` region (see [`Caller::pull`]).
    pub fn push<'b>(
        &self,
        local: &'b crate::Bulk<'_>,
        local_off: u64,
        remote: &crate::Descriptor,
        remote_off: u64,
        len: u64,
    ) -> crate::Transfer<'b> {
        self.engine
            .transfer(self.peer, false, local, local_off, remote, remote_off, len)
    }

    /// The engine, to expose memory for the transfers.
    pub fn engine(&self) -> &crate::Engine {
        &self.engine
    }
}
