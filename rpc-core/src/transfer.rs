//! Bulk transfers driven by the engine, and messages too large to send ("overflow"), which
//! travel as a descriptor that the receiver pulls.
//!
//! A transfer is an entry of the engine's table like a call: it has a deadline, can be
//! canceled, and completes a caller's slot. Its chunks are posted within the plan's window
//! as earlier ones complete. When it is over, its continuation ([`Then`]) runs: complete
//! the caller, land an overflow answer, or dispatch an overflow request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bulk::{Bulk, Descriptor, Seg};
use na::{Access, NaResult, PeerId};

use crate::RpcError;
use crate::driver::{Held, Shared, Waiter, lock};
use crate::handler::ReplyTo;
use crate::proto::{Entry, HEADER_LEN, Header, MsgKind, Over, Route, Status};
use crate::slot::{Answer, Slot};

/// What to do when a transfer is over. (Small: it moves with every entry of the table, so
/// what only overflow needs is boxed.)
pub(crate) enum Then {
    /// A call answered: complete the caller's slot with the answer. `keep` is the
    /// call's overflow input, which the server pulls from until it answers.
    Call { keep: Option<Box<Bulk<'static>>> },
    /// Complete the caller's slot.
    Done,
    /// An overflow answer landed in `buf`: tell the server to release it, and complete the
    /// call with it.
    Pulled {
        buf: Box<Bulk<'static>>,
        server: PeerId,
        release: u64,
    },
    /// An overflow request landed in its buffer: dispatch it.
    Request(Box<PulledRequest>),
    /// Hand the outcome to a closure (a transfer of a [`crate::Transfers`] set).
    Notify(Notify),
}

/// An overflow request being pulled: where it lands, who to answer, the budget it holds.
pub(crate) struct PulledRequest {
    buf: Bulk<'static>,
    reply: ReplyTo,
    held: Held,
}

/// A closure given a transfer's outcome, on the thread that ends the transfer.
pub(crate) type Notify = Box<dyn FnOnce(Result<(), RpcError>) + Send>;

/// What an overflow answer exposed for its caller keeps: the memory, and its share of
/// the overflow budget (both given back when it is dropped).
pub(crate) type Kept = (Bulk<'static>, Held);

/// All of `d`, pulled from `peer` into the start of `buf`: the route and the length.
fn pull_whole(peer: PeerId, buf: &Bulk<'_>, d: &Descriptor) -> (Route, u64) {
    let route = Route {
        peer,
        is_get: true,
        local: buf.mem().clone(),
        local_off: 0,
        remote: d.mem.clone(),
        remote_off: 0,
    };
    (route, d.len())
}

/// Whether an answer is the stub of an overflow answer (to pull, then release).
pub(crate) fn is_overflow_answer(m: &[u8]) -> bool {
    matches!(Header::decode(m), Ok((h, _)) if h.kind == MsgKind::Response && h.is_overflow())
}

impl Shared {
    /// Starts a transfer of `len` bytes; its outcome goes to `slot` through `then`.
    /// Returns its tag.
    pub(crate) fn post_transfer(
        self: &Arc<Self>,
        (route, len): (Route, u64),
        then: Then,
        slot: Option<Arc<Slot<Answer>>>,
        timeout: Option<Duration>,
    ) -> u64 {
        let w = Waiter { slot, then };
        let due = timeout.and_then(|t| Instant::now().checked_add(t));
        let (tag, over) = {
            let mut c = self.calls.lock();
            // Looked at under the table's lock: a stopping engine ends what its table holds
            // once (its `Guard`, after setting the flag), and nothing may join it after.
            if self.stopping.load(Ordering::Acquire) {
                drop(c);
                self.settle(w, Err(RpcError::Shutdown));
                return 0;
            }
            c.flight
                .transfer(due, route, len, self.chunk, w, self.poster())
        };
        if let Some((e, outcome)) = over {
            self.settle_done(e, outcome);
        }
        tag
    }

    /// Ends a transfer that is over with its outcome.
    pub(crate) fn settle_done(self: &Arc<Self>, e: Entry<Waiter>, outcome: NaResult<()>) {
        let result = outcome.map(|()| Vec::new()).map_err(RpcError::from);
        self.settle(e.value, result);
    }

    /// Gives an entry that is over its outcome: runs its continuation.
    pub(crate) fn settle(self: &Arc<Self>, w: Waiter, result: Answer) {
        match w.then {
            Then::Call { .. } | Then::Done => self.complete(w.slot, result),
            Then::Notify(f) => {
                self.count_outcome(&result);
                f(result.map(drop));
            }
            Then::Pulled {
                buf,
                server,
                release,
            } => {
                self.send_release(server, release);
                self.complete(w.slot, result.map(|_| buf.into_vec()));
            }
            Then::Request(r) => match result {
                Ok(_) => self.dispatch(r.reply, r.buf.into_vec(), Some(r.held)),
                Err(e) => r.reply.send(
                    self,
                    0,
                    Status::BadInput,
                    format!("cannot pull the request: {e}").as_bytes(),
                ),
            },
        }
    }

    /// A message too large to send becomes a stub carrying the descriptor of the exposed
    /// real message; the exposed memory must live until the receiver has pulled it.
    pub(crate) fn maybe_overflow(
        &self,
        msg: Vec<u8>,
    ) -> Result<(Vec<u8>, Option<Bulk<'static>>), RpcError> {
        if msg.len() <= self.max_message() {
            return Ok((msg, None));
        }
        if msg.len() as u64 > self.max_overflow {
            return Err(RpcError::TooLarge {
                size: msg.len(),
                limit: self.max_overflow as usize,
            });
        }
        let (h, _) = Header::decode(&msg).map_err(|e| RpcError::Encode(e.to_string()))?;
        let b = Bulk::new(&self.plugin, vec![Seg::from(msg)], Access::ReadOnly)?;
        let mut stub = Vec::with_capacity(256);
        h.overflow().write(&mut stub);
        rmp_serde::encode::write(&mut stub, &b.descriptor())
            .map_err(|e| RpcError::Encode(e.to_string()))?;
        Ok((stub, Some(b)))
    }

    /// The server's side of an answer too large to send: expose it until released.
    pub(crate) fn overflow_answer(&self, peer: PeerId, rpc_id: u64, msg: Vec<u8>) -> Vec<u8> {
        let mut stub = Vec::with_capacity(256);
        let mut refuse = |status: Status, why: String| {
            Header::response(rpc_id, status).write(&mut stub);
            stub.extend_from_slice(why.as_bytes());
            std::mem::take(&mut stub)
        };
        let len = msg.len() as u64;
        if len > self.max_overflow {
            let why = format!("answer over the limit of {} bytes", self.max_overflow);
            return refuse(Status::OutputTooLarge, why);
        }
        let held = match Held::take(&self.overflow, Some(peer), len) {
            Ok(h) => h,
            // Not `Busy`: the handler has run, and a caller that tries a refused call again
            // would run it twice (a directory page read twice loses a page).
            Err(over) => {
                let why = self.overflow_refusal(over, len);
                return refuse(
                    Status::OutputTooLarge,
                    format!("the answer was made and dropped: {why}"),
                );
            }
        };
        let b = match Bulk::new(&self.plugin, vec![Seg::from(msg)], Access::ReadOnly) {
            Ok(b) => b,
            Err(e) => return refuse(Status::OutputTooLarge, format!("cannot expose: {e}")),
        };
        let d = b.descriptor();
        let ttl = self.default_timeout.unwrap_or(Duration::from_secs(60));
        let release = self
            .exposed
            .lock()
            .expose(peer, Instant::now(), ttl, (b, held));
        Header::response(rpc_id, Status::Ok)
            .overflow()
            .write(&mut stub);
        // Encoding a descriptor into a Vec cannot fail.
        let _ = rmp_serde::encode::write(&mut stub, &(d, release));
        // The progress thread may be asleep with no deadline: let it arm this one.
        self.plugin.wake();
        stub
    }

    /// A call's answer is an overflow stub: pull the real answer, then complete the call.
    pub(crate) fn on_overflow_answer(self: &Arc<Self>, tag: u64, stub: &[u8]) {
        if let Err(e) = self.start_output_pull(tag, stub) {
            self.end_call(tag, Err(e), false);
        }
    }

    fn start_output_pull(self: &Arc<Self>, tag: u64, stub: &[u8]) -> Result<(), RpcError> {
        let (d, release): (Descriptor, u64) = rmp_serde::from_slice(&stub[HEADER_LEN..])
            .map_err(|e| RpcError::Protocol(format!("bad overflow answer: {e}")))?;
        let buf = self
            .landing(d.len())
            .map_err(|e| RpcError::Protocol(format!("overflow answer: {e}")))?;
        let mut c = self.calls.lock();
        // Ended meanwhile, or its pull started already (a second stub, handed over by
        // another thread at the same time): nothing to do. (A local call's answer never
        // comes from the transport.)
        let Some(server) = c.flight.peer(tag) else {
            return Ok(());
        };
        let (route, len) = pull_whole(server, &buf, &d);
        // (The call's overflow input, if any, is let go: the server answered.)
        let then = Then::Pulled {
            buf: Box::new(buf),
            server,
            release,
        };
        let spec = (route, len, self.chunk);
        let Some(over) = c
            .flight
            .pull_into(tag, spec, |w| w.then = then, self.poster())
        else {
            return Err(RpcError::Protocol(
                "overflow answer to a call not awaiting one".into(),
            ));
        };
        drop(c);
        if let Some((e, outcome)) = over {
            self.settle_done(e, outcome);
        }
        Ok(())
    }

    /// Memory to pull an overflow message into, bounded by the configured limit.
    fn landing(&self, len: u64) -> Result<Bulk<'static>, String> {
        if len > self.max_overflow {
            return Err(format!(
                "{len} bytes over the limit of {}",
                self.max_overflow
            ));
        }
        Bulk::new(
            &self.plugin,
            vec![Seg::from(vec![0u8; len as usize])],
            Access::WriteOnly,
        )
        .map_err(|e| e.to_string())
    }

    /// A request too large for a message arrived as a descriptor: pull it, then dispatch.
    pub(crate) fn start_input_pull(
        self: &Arc<Self>,
        from: Option<PeerId>,
        reply: ReplyTo,
        stub: &[u8],
    ) {
        let prepared = || -> Result<(Descriptor, PeerId, Bulk<'static>, Held), (Status, String)> {
            let bad = |why: String| (Status::BadInput, why);
            let d: Descriptor = rmp_serde::from_slice(&stub[HEADER_LEN..])
                .map_err(|e| bad(format!("bad overflow request: {e}")))?;
            let peer = from.ok_or_else(|| bad("overflow request from a local caller".into()))?;
            if d.len() > self.max_overflow {
                let limit = self.max_overflow;
                return Err(bad(format!(
                    "overflow request: {} bytes over the limit of {limit}",
                    d.len()
                )));
            }
            // Counted before a byte is allocated: a peer's pulls wait their turn.
            let held = Held::take(&self.overflow, Some(peer), d.len())
                .map_err(|over| (Status::Busy, self.overflow_refusal(over, d.len())))?;
            let buf = self
                .landing(d.len())
                .map_err(|e| bad(format!("overflow request: {e}")))?;
            Ok((d, peer, buf, held))
        };
        match prepared() {
            Err((status, why)) => reply.send(self, 0, status, why.as_bytes()),
            Ok((d, peer, buf, held)) => {
                self.post_transfer(
                    pull_whole(peer, &buf, &d),
                    Then::Request(Box::new(PulledRequest { buf, reply, held })),
                    None,
                    self.default_timeout,
                );
            }
        }
    }

    fn overflow_refusal(&self, over: Over, len: u64) -> String {
        let (mine, all) = lock(&self.overflow).limits();
        match over {
            Over::Peer => format!("{len} bytes of overflow past this client's {mine}"),
            Over::Total => format!("{len} bytes of overflow past the server's {all}"),
        }
    }

    fn send_release(&self, server: PeerId, release: u64) {
        let mut m = Vec::with_capacity(16);
        Header {
            kind: MsgKind::Release,
            status: Status::Ok,
            flags: 0,
            rpc_id: release,
        }
        .write(&mut m);
        if let Err(u) = self.plugin.send_quiet(server, false, 0, m) {
            tracing::debug!(error = %u.error, release, "release not sent; the server frees it at its deadline");
        }
    }

    /// The caller pulled an overflow answer: free it (only the peer it was for may).
    pub(crate) fn release_exposed(&self, id: u64, from: Option<PeerId>) {
        let freed = self.exposed.lock().release(id, from.as_ref());
        drop(freed);
    }

    /// Frees overflow answers never released; returns when the next one expires.
    pub(crate) fn expire_exposed(&self, now: Instant) -> Option<Instant> {
        let mut ex = self.exposed.lock();
        if ex.is_empty() {
            return None;
        }
        let freed = ex.expire(now);
        let next = ex.next_deadline();
        drop(ex);
        drop(freed);
        next
    }
}
