//! Running handlers: decoding the input, catching panics, and the [`Responder`] through
//! which a handler answers, now or later, from any thread.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use na::PeerId;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::counters::Counters;
use crate::driver::{Held, Shared};
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
                    Err(u) => {
                        tracing::debug!(peer = peer.0, tag, error = %u.error, "answer not sent")
                    }
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
    pub(crate) places: Places,
}

/// What a request holds of the server's bounds while it is handled, given back as its
/// answer leaves (dropped): a caller that has its answer and calls again at once finds
/// them free.
#[derive(Default)]
pub(crate) struct Places {
    /// Its place in the workers' queue (`max_queued_per_peer`).
    pub(crate) queue: Option<Held>,
    /// The budget of its pulled input (a request too large to come in a message).
    #[expect(dead_code, reason = "held for its drop, which gives the budget back")]
    pub(crate) pulled: Option<Held>,
}

/// A type-erased handler.
pub(crate) type Handler = Arc<dyn Fn(Incoming) + Send + Sync>;

/// Sends an error status in answer to a request; counts a handler error.
fn fail_reply(shared: &Arc<Shared>, rpc_id: u64, to: ReplyTo, status: Status, why: &[u8]) {
    Counters::add(&shared.counters.handler_errors, 1);
    to.send(shared, rpc_id, status, why);
}

/// An answer owed by a responder dropped while its handler panicked.
struct Orphan {
    shared: Arc<Shared>,
    rpc_id: u64,
    to: ReplyTo,
}

thread_local! {
    /// Whether this thread runs a handler under [`erase`], which answers a panic itself.
    static DISPATCHING: Cell<bool> = const { Cell::new(false) };
    /// Answers owed by responders dropped while a handler of this thread panicked: the
    /// dispatcher sends them with the panic's text.
    static ORPHANS: RefCell<Vec<Orphan>> = const { RefCell::new(Vec::new()) };
}

/// How a handler answers. Answer with [`Responder::respond`] or [`Responder::fail`], from
/// any thread, at any time; dropping it unanswered sends the caller an error instead, so a
/// caller never waits for an answer that cannot come.
#[must_use = "an unanswered Responder fails the call"]
pub struct Responder<Out> {
    pub(crate) shared: Arc<Shared>,
    rpc_id: u64,
    /// Where the answer goes; taken when it is sent ([`Responder::answer_to`]).
    to: Option<ReplyTo>,
    places: Places,
    _out: PhantomData<fn(Out)>,
}

impl<Out> Responder<Out> {
    /// Where the answer goes, taken to send it: the request's places go back first.
    fn answer_to(&mut self) -> Option<ReplyTo> {
        self.places = Places::default();
        self.to.take()
    }
}

impl<Out: Serialize> Responder<Out> {
    /// Sends `out` to the caller.
    pub fn respond(mut self, out: &Out) {
        // Encoded behind the header, in the message itself.
        let mut msg = na::buf::take(HEADER_LEN);
        Header::response(self.rpc_id, Status::Ok).write(&mut msg);
        if let Err(e) = rmp_serde::encode::write(&mut msg, out) {
            return self.fail(format_args!("cannot encode output: {e}"));
        }
        if let Some(to) = self.answer_to() {
            to.send_msg(&self.shared, self.rpc_id, msg);
        }
    }

    /// Finishes the request on one of the engine's workers: `job` gets this responder
    /// there. For a handler registered with
    /// [`crate::Engine::register_responder_inline`] that finds it would have to wait.
    /// The job takes a place in the workers' queue as a request does: past its bounds the
    /// caller is told [`crate::RpcError::Busy`] instead. A panic in `job` answers
    /// [`crate::RpcError::HandlerPanicked`].
    pub fn defer(self, job: impl FnOnce(Self) + Send + 'static)
    where
        Out: 'static,
    {
        let shared = self.shared.clone();
        // What the dispatch held goes back (its handler is done); the job takes its own.
        let mut me = self;
        me.places = Places::default();
        match shared.queue_place(me.peer()) {
            Ok(q) => me.places.queue = q,
            // (Counted by `queue_place`, as the dispatcher's own refusal.)
            Err(why) => {
                if let Some(to) = me.answer_to() {
                    to.send(&shared, me.rpc_id, Status::Busy, why.as_bytes());
                }
                return;
            }
        };
        shared.clone().pool.execute(move || {
            let _span = tracing::debug_span!("rpc_handler", rpc_id = me.rpc_id).entered();
            // The responder, dropped by the unwinding, answers the panic itself.
            if catch_unwind(AssertUnwindSafe(|| job(me))).is_err() {
                tracing::warn!("a deferred handler panicked");
            }
            Counters::sub(&shared.counters.queue_depth, 1);
        });
    }

    /// Tells the caller to try again later (this server is at a bound); it arrives as
    /// [`crate::RpcError::Busy`], as the engine's own refusals past its queue bound do.
    pub fn busy(mut self, why: impl Display) {
        if let Some(to) = self.answer_to() {
            let why = why.to_string();
            fail_reply(&self.shared, self.rpc_id, to, Status::Busy, why.as_bytes());
        }
    }

    /// Sends the caller an error; it arrives as [`crate::RpcError::Handler`].
    pub fn fail(mut self, why: impl Display) {
        if let Some(to) = self.answer_to() {
            let why = why.to_string();
            fail_reply(
                &self.shared,
                self.rpc_id,
                to,
                Status::HandlerError,
                why.as_bytes(),
            );
        }
    }

    /// The connection the request came from (one-way requests included): `None` for a
    /// call to oneself. The transport assigns it, so a peer cannot claim another's; it is
    /// what [`crate::Engine::on_peer_lost`] reports when that peer goes away.
    pub fn peer(&self) -> Option<PeerId> {
        self.to.as_ref().and_then(ReplyTo::peer)
    }

    /// The caller's identity as its transport verified it (see [`na::Plugin::peer_identity`]):
    /// `None` for an anonymous peer or a call to oneself.
    pub fn identity(&self) -> Option<na::Identity> {
        self.peer()
            .and_then(|p| self.shared.plugin.peer_identity(p))
    }

    /// Whether the caller expects no answer (a one-way request).
    pub fn is_one_way(&self) -> bool {
        matches!(self.to, Some(ReplyTo::Nobody { .. }))
    }
}

/// Keeps a responder dropped by a panic for its dispatcher; gives it back on a thread
/// whose thread-locals are being torn down.
fn push_orphan(o: Orphan) -> Result<(), Orphan> {
    let mut o = Some(o);
    let _ = ORPHANS.try_with(|list| list.borrow_mut().extend(o.take()));
    o.map_or(Ok(()), Err)
}

impl<Out> Drop for Responder<Out> {
    fn drop(&mut self) {
        let Some(to) = self.answer_to() else { return };
        let panicking = std::thread::panicking();
        if panicking && DISPATCHING.get() {
            // The dispatcher catching this panic answers with its text.
            let (shared, rpc_id) = (self.shared.clone(), self.rpc_id);
            let orphan = Orphan { shared, rpc_id, to };
            // (A thread being torn down has no list: it answers here, below.)
            let Err(orphan) = push_orphan(orphan) else {
                return;
            };
            let (shared, why) = (&orphan.shared, b"handler panicked");
            return fail_reply(
                shared,
                orphan.rpc_id,
                orphan.to,
                Status::HandlerPanicked,
                why,
            );
        }
        let (status, why): (_, &[u8]) = match panicking {
            true => (Status::HandlerPanicked, b"handler panicked"),
            false => (
                Status::HandlerError,
                b"handler dropped its responder without answering",
            ),
        };
        fail_reply(&self.shared, self.rpc_id, to, status, why);
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
            places,
        } = inc;
        let input: In = match rmp_serde::from_slice(&msg[HEADER_LEN..]) {
            Ok(v) => v,
            Err(e) => {
                Counters::add(&shared.counters.bad_requests, 1);
                let why = format!(
                    "{name}: input is not a {}: {e}",
                    std::any::type_name::<In>()
                );
                drop(places);
                return reply.send(&shared, rpc_id, Status::BadInput, why.as_bytes());
            }
        };
        na::buf::give(msg);
        let responder = Responder {
            shared,
            rpc_id,
            to: Some(reply),
            places,
            _out: PhantomData,
        };
        // Orphans of an enclosing dispatch (this one runs inside it) are its own to answer.
        // (Thread-locals being torn down, at a program's exit, hold no orphans: none kept.)
        let swap = |v: Vec<Orphan>| ORPHANS.try_with(|o| o.replace(v)).unwrap_or_default();
        let (outer, outer_orphans) = (DISPATCHING.replace(true), swap(Vec::new()));
        let r = catch_unwind(AssertUnwindSafe(|| f(input, responder)));
        DISPATCHING.set(outer);
        // Responders dropped by a panic (also one the handler caught itself) answer now.
        let orphans = swap(outer_orphans);
        if r.is_ok() && orphans.is_empty() {
            return;
        }
        let text = r.map_or_else(|p| panic_text(&*p), |()| "handler panicked".into());
        tracing::warn!(rpc_id, panic = %text, "handler panicked");
        for o in orphans {
            fail_reply(
                &o.shared,
                o.rpc_id,
                o.to,
                Status::HandlerPanicked,
                text.as_bytes(),
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::{Engine, Responder, Rpc, RpcError};
    use std::time::Duration;

    const P: Rpc<u8, u8> = Rpc::new("handler.panics");

    /// A server whose handler for `P` does `f`, and a client's call of it.
    fn call_with(f: fn(u8, Responder<u8>)) -> Result<u8, RpcError> {
        let server = Engine::new("tcp://127.0.0.1:0").unwrap();
        server.register_responder(P, f).unwrap();
        let client = Engine::new("tcp://127.0.0.1:0").unwrap();
        let peer = client.lookup(&server.self_addr().to_string()).unwrap();
        client
            .call_timeout(&peer, P, &7, Some(Duration::from_secs(20)))
            .wait()
    }

    fn panicked(r: Result<u8, RpcError>, text: &str) {
        match r {
            Err(e) => assert!(
                matches!(&e, RpcError::HandlerPanicked(t) if t.contains(text)),
                "{e:?}"
            ),
            Ok(v) => panic!("answered {v}"),
        }
    }

    #[test]
    fn a_panicking_handler_answers_with_the_panic_text() {
        panicked(call_with(|x, _r| panic!("no {x} today")), "no 7 today");
    }

    #[test]
    fn a_responder_taken_to_another_thread_that_panics_answers() {
        panicked(
            call_with(|x, r| {
                std::thread::spawn(move || {
                    let _r = r;
                    panic!("worker {x} fell over");
                });
            }),
            "handler panicked",
        );
    }

    #[test]
    fn a_responder_dropped_by_a_panic_the_handler_caught_answers() {
        panicked(
            call_with(|x, r| {
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _r = r;
                    panic!("inner {x}");
                }));
                assert!(caught.is_err());
            }),
            "handler panicked",
        );
    }
}
