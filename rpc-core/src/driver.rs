//! The driver around the sans-I/O protocol: the state shared by the engine handle, the
//! progress thread, workers and responders, and the code that turns transport events into
//! completed calls and dispatched requests (who drives the transport, and when, is in
//! `progress`).

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bulk::{Bulk, ChunkConfig};
use na::{Address, Event, NaError, OpId, PeerId, Plugin};

use crate::RpcError;
use crate::counters::Counters;
use crate::endpoint::Endpoint;
use crate::handler::{Handler, Incoming, ReplyTo};
use crate::handoff::Drivers;
use crate::mode::ProgressMode;
use crate::pool::Pool;
use crate::proto::{Budget, CallTable, Exposed, Header, MsgKind, Over, Phase, Status};
use crate::slot::{Answer, Slot};
use crate::spin::Backoff;
use crate::transfer::{Kept, Xfer};

/// What an entry of the table waits for.
pub(crate) enum Pending {
    /// An RPC awaiting its answer; `keep` is an overflow input the server pulls from.
    Call {
        peer: Option<PeerId>,
        recv: Option<OpId>,
        keep: Option<Bulk<'static>>,
    },
    /// A bulk transfer, and what to do when it is over.
    Transfer(Box<Xfer>),
}

impl Pending {
    /// The transport operations it has in flight.
    pub(crate) fn ops(&self) -> impl Iterator<Item = OpId> + '_ {
        let (recv, chunks) = match self {
            Pending::Call { recv, .. } => (*recv, &[][..]),
            Pending::Transfer(x) => (None, &x.ops[..]),
        };
        recv.into_iter().chain(chunks.iter().copied())
    }
}

/// An entry of the table: a caller's slot (none for server-side pulls) and what it awaits.
pub(crate) struct CallEntry {
    pub(crate) slot: Option<Arc<Slot<Answer>>>,
    pub(crate) pending: Pending,
}

impl CallEntry {
    /// A caller's RPC to `peer` (none: this engine), before its receive is posted.
    pub(crate) fn call(slot: &Arc<Slot<Answer>>, peer: Option<PeerId>) -> Self {
        CallEntry {
            slot: Some(slot.clone()),
            pending: Pending::Call {
                peer,
                recv: None,
                keep: None,
            },
        }
    }
}

#[derive(Default)]
pub(crate) struct Calls {
    pub(crate) table: CallTable<CallEntry>,
    /// Which entry each transport operation belongs to.
    pub(crate) ops: HashMap<OpId, u64>,
    /// When the progress thread will wake by itself; a call due earlier wakes it.
    pub(crate) armed: Option<Instant>,
    /// Whether the progress thread sleeps (or is about to) with `armed`: a spinning one
    /// sees new deadlines by itself and is not woken.
    pub(crate) asleep: bool,
}

impl Calls {
    /// Whether an entry due at `due` must wake the progress thread.
    fn must_wake(&self, due: Option<Instant>) -> bool {
        self.asleep && due.is_some_and(|d| self.armed.is_none_or(|a| d < a))
    }
}

pub(crate) struct Registered {
    pub(crate) name: &'static str,
    pub(crate) handler: Handler,
    /// Runs where the request is dispatched, not on a worker
    /// ([`crate::Engine::register_responder_inline`]).
    pub(crate) inline: bool,
}

/// State shared by the engine handle, the progress thread, workers and responders.
pub(crate) struct Shared {
    /// Which engine of the process this is (endpoints remember who resolved them).
    pub(crate) id: u64,
    pub(crate) plugin: Arc<dyn Plugin>,
    pub(crate) counters: Counters,
    pub(crate) mode: ProgressMode,
    pub(crate) self_addr: Address,
    pub(crate) calls: Mutex<Calls>,
    pub(crate) registry: RwLock<HashMap<u64, Registered>>,
    pub(crate) pool: Pool,
    pub(crate) drive: Mutex<()>,
    pub(crate) stopping: AtomicBool,
    /// Spinning passes, for `progress::TIMER_EVERY`; also the heartbeat of driving callers.
    pub(crate) passes: AtomicU32,
    /// A progress call waited since the last [`Shared::trigger`].
    pub(crate) waited: AtomicBool,
    /// Callers driving progress while they wait (thread mode, see [`Shared::drive_for`]).
    pub(crate) drivers: Drivers,
    /// Whether waiting callers drive at all, from how their last drives ended.
    pub(crate) backoff: Backoff,
    /// When a waiter should not yield before it sleeps ([`crate::spin::YIELD_WAIT`]).
    pub(crate) yield_backoff: Backoff,
    /// Requests queued for workers past the first `queue_counted_from`, per peer and in
    /// total (see the builder).
    pub(crate) queued: Arc<Mutex<Budget>>,
    pub(crate) queue_counted_from: u64,
    /// Bytes of overflow requests being pulled or served and answers exposed, per peer and
    /// in total (taken before the memory is allocated).
    pub(crate) overflow: Arc<Mutex<Budget>>,
    pub(crate) spin: Duration,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) chunk: ChunkConfig,
    pub(crate) inline_bulk: usize,
    pub(crate) max_overflow: u64,
    /// Overflow answers waiting for their caller to pull them, by release id.
    pub(crate) exposed: Mutex<Exposed<PeerId, Kept>>,
    /// Called with each peer the transport reports lost ([`crate::Engine::on_peer_lost`]).
    pub(crate) lost_hooks: RwLock<Vec<LostHook>>,
}

/// A callback run when a peer is lost.
pub(crate) type LostHook = Arc<dyn Fn(PeerId) + Send + Sync>;

/// A share of a [`Budget`], given back when dropped.
pub(crate) struct Held {
    budget: Arc<Mutex<Budget>>,
    peer: Option<PeerId>,
    n: u64,
}

impl Held {
    pub(crate) fn take(
        budget: &Arc<Mutex<Budget>>,
        peer: Option<PeerId>,
        n: u64,
    ) -> Result<Held, Over> {
        lock(budget).take(peer, n)?;
        Ok(Held {
            budget: budget.clone(),
            peer,
            n,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&self.budget).give(self.peer, self.n);
    }
}

/// A number for a new engine, unique in the process.
pub(crate) fn next_engine_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// The largest message the transport carries.
    pub(crate) fn max_message(&self) -> usize {
        self.plugin.max_eager_size()
    }

    pub(crate) fn post_call(
        self: &Arc<Self>,
        target: &Endpoint,
        msg: Vec<u8>,
        timeout: Option<Duration>,
    ) -> (u64, Arc<Slot<Answer>>) {
        let slot = Arc::new(Slot::default());
        // The clock is read only for a call that can time out.
        let due = timeout.and_then(|t| Instant::now().checked_add(t));
        Counters::add(&self.counters.rpcs_sent, 1);
        Counters::add(&self.counters.bytes_sent, msg.len() as u64);
        let posted = if target.is_local_to(self.id, &self.self_addr) {
            self.insert_local(due, &slot).inspect(|&tag| {
                self.on_request(ReplyTo::Local { tag }, msg);
            })
        } else {
            self.post_remote(target, &slot, due, msg)
        };
        match posted {
            Ok(tag) => (tag, slot),
            Err(e) => {
                self.complete(Some(slot.clone()), Err(e));
                (0, slot)
            }
        }
    }

    /// Enters a call to this engine itself into the table.
    fn insert_local(
        &self,
        due: Option<Instant>,
        slot: &Arc<Slot<Answer>>,
    ) -> Result<u64, RpcError> {
        let entry = CallEntry::call(slot, None);
        let (tag, wake) = {
            let mut c = lock(&self.calls);
            if self.stopping.load(Ordering::Acquire) {
                return Err(RpcError::Shutdown);
            }
            let tag = c.table.insert_due(due, Phase::Dispatched, entry);
            (tag, c.must_wake(due))
        };
        if wake && self.mode == ProgressMode::Thread {
            self.plugin.wake();
        }
        Ok(tag)
    }

    /// Posts a call's receive and sends its request. The entry, its receive (posted first,
    /// so that the answer always finds it) and the receive's owner go in under one lock
    /// of the table (once more if the peer's connection had ended, see `with_peer`); the
    /// receive is posted under it, as transfers' pieces are (a provider whose queue is
    /// full keeps the lock while it retries, up to its give-up time).
    fn post_remote(
        self: &Arc<Self>,
        target: &Endpoint,
        slot: &Arc<Slot<Answer>>,
        due: Option<Instant>,
        msg: Vec<u8>,
    ) -> Result<u64, RpcError> {
        let (msg, keep) = self.maybe_overflow(msg)?;
        let mut keep = Some(keep);
        let entered = self.with_peer(target, |peer| {
            let mut c = lock(&self.calls);
            // Looked at under the table's lock: a stopping engine ends what its table holds
            // once (its `Guard`, after setting the flag), and nothing may join it after.
            if self.stopping.load(Ordering::Acquire) {
                return Ok(None);
            }
            let entry = CallEntry::call(slot, Some(peer));
            let tag = c.table.insert_due(due, Phase::Posted, entry);
            let recv = match self.plugin.recv_expected(peer, tag) {
                Ok(r) => r,
                Err(e) => {
                    c.table.finish(tag);
                    return Err(e);
                }
            };
            if let Some(CallEntry {
                pending: Pending::Call {
                    recv: r, keep: k, ..
                },
                ..
            }) = c.table.get_mut(tag)
            {
                *r = Some(recv);
                *k = keep.take().flatten();
            }
            c.ops.insert(recv, tag);
            Ok(Some((peer, tag, c.must_wake(due))))
        })?;
        let Some((peer, tag, wake)) = entered else {
            return Err(RpcError::Shutdown);
        };
        if wake && self.mode == ProgressMode::Thread {
            self.plugin.wake();
        }
        if let Err(e) = self.plugin.send_quiet(peer, false, tag, msg) {
            self.end_call(tag, Err(e.into()), true);
        }
        Ok(tag)
    }

    /// Runs `f` with the transport's peer for `target`: the one resolved when it was
    /// looked up, or, if `f` finds that connection ended, a new one (dialled again).
    pub(crate) fn with_peer<R>(
        &self,
        target: &Endpoint,
        mut f: impl FnMut(PeerId) -> Result<R, NaError>,
    ) -> Result<R, RpcError> {
        let known = target.peer_in(self.id);
        let peer = match known {
            Some(p) => p,
            None => self.plugin.lookup(target.addr())?,
        };
        match f(peer) {
            Err(e) if known.is_some() => {
                let again = self.plugin.lookup(target.addr())?;
                if again == peer {
                    return Err(e.into());
                }
                target.remember(self.id, again);
                Ok(f(again)?)
            }
            r => Ok(r?),
        }
    }

    /// Ends an entry with `result` if it is still in flight. `withdraw` cancels its
    /// transport operations; it is false only when the one that completed was its last.
    pub(crate) fn end_call(self: &Arc<Self>, tag: u64, result: Answer, withdraw: bool) {
        let entry = {
            let mut c = lock(&self.calls);
            let e = c.table.finish(tag);
            if let Some(e) = &e {
                detach(&mut c, e);
            }
            e
        };
        let Some(e) = entry else { return };
        if withdraw {
            self.withdraw(&e);
        }
        self.settle(e, result);
    }

    /// Cancels an entry's transport operations; afterwards they touch no memory.
    pub(crate) fn withdraw(&self, e: &CallEntry) {
        for op in e.pending.ops() {
            self.plugin.cancel(op);
        }
    }

    /// Completes a caller's slot, counting failures.
    pub(crate) fn complete(&self, slot: Option<Arc<Slot<Answer>>>, result: Answer) {
        self.count_outcome(&result);
        if let Some(slot) = slot {
            slot.complete(result);
        }
    }

    /// Counts an operation's failure.
    pub(crate) fn count_outcome<T>(&self, result: &Result<T, RpcError>) {
        match result {
            Err(RpcError::Timeout { .. }) => Counters::add(&self.counters.timeouts, 1),
            Err(RpcError::Canceled) => Counters::add(&self.counters.canceled, 1),
            _ => {}
        }
        if result.is_err() {
            Counters::add(&self.counters.rpcs_failed, 1);
        }
    }

    /// Gives an entry that is over its outcome.
    pub(crate) fn settle(self: &Arc<Self>, e: CallEntry, result: Answer) {
        match e.pending {
            Pending::Call { .. } => self.complete(e.slot, result),
            Pending::Transfer(x) => self.settle_transfer(e.slot, x, result),
        }
    }

    /// Sets a new timeout for an entry in flight, waking the progress thread if needed.
    pub(crate) fn set_deadline(&self, tag: u64, t: Duration) {
        let now = Instant::now();
        let wake = {
            let mut c = lock(&self.calls);
            let due = now.checked_add(t);
            c.table.set_deadline(tag, due) && c.must_wake(due)
        };
        if wake && self.mode == ProgressMode::Thread {
            self.plugin.wake();
        }
    }

    /// Counts a call whose answer itself reports an error, and flattens the result.
    pub(crate) fn count_answer<T>(
        &self,
        r: Result<Result<T, RpcError>, RpcError>,
    ) -> Result<T, RpcError> {
        let r = r?;
        if r.is_err() {
            Counters::add(&self.counters.rpcs_failed, 1);
        }
        r
    }

    pub(crate) fn on_request(self: &Arc<Self>, reply: ReplyTo, msg: Vec<u8>) {
        Counters::add(&self.counters.rpcs_received, 1);
        self.dispatch(reply, msg, None);
    }

    /// Sends a request to its handler (or answers why not).
    /// `held` is the overflow budget the request's memory took, if it was pulled.
    pub(crate) fn dispatch(self: &Arc<Self>, reply: ReplyTo, msg: Vec<u8>, held: Option<Held>) {
        let h = match Header::decode(&msg) {
            Ok((h, _)) => h,
            Err(e) => {
                Counters::add(&self.counters.bad_requests, 1);
                return reply.send(self, 0, Status::BadHeader, e.to_string().as_bytes());
            }
        };
        let from = reply.peer();
        let reply = match h.kind {
            MsgKind::Request => reply,
            MsgKind::OneWay => ReplyTo::Nobody { peer: from },
            MsgKind::Release => return self.release_exposed(h.rpc_id, from),
            MsgKind::Response => {
                Counters::add(&self.counters.bad_requests, 1);
                return tracing::debug!(rpc_id = h.rpc_id, "answer sent as a request; dropped");
            }
        };
        if h.is_overflow() {
            return self.start_input_pull(from, reply, &msg);
        }
        let handler = self
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h.rpc_id)
            .map(|r| (r.handler.clone(), r.inline));
        let Some((handler, inline)) = handler else {
            Counters::add(&self.counters.bad_requests, 1);
            return reply.send(self, h.rpc_id, Status::UnknownRpc, b"");
        };
        if self.stopping.load(Ordering::Acquire) {
            return reply.send(self, h.rpc_id, Status::ShuttingDown, b"");
        }
        let inc = Incoming {
            shared: self.clone(),
            reply,
            rpc_id: h.rpc_id,
            msg,
        };
        // (Not a pulled request: its memory's budget is held until its handler is done,
        // and an inline handler may defer; pulled ones are large, and go to a worker.)
        if inline && held.is_none() {
            let _span = tracing::debug_span!("rpc_handler", rpc_id = h.rpc_id).entered();
            return handler(inc);
        }
        let (peer, rpc_id) = (inc.reply.peer(), inc.rpc_id);
        let queued = match self.queue_place(peer) {
            Ok(q) => q,
            Err(why) => return inc.reply.send(self, rpc_id, Status::Busy, why.as_bytes()),
        };
        self.pool.execute(move || {
            let shared = inc.shared.clone();
            let _span = tracing::debug_span!("rpc_handler", rpc_id = inc.rpc_id).entered();
            handler(inc);
            drop((queued, held));
            Counters::sub(&shared.counters.queue_depth, 1);
        });
    }

    /// A place in the workers' queue for a job of `peer` (counted in `queue_depth`; the
    /// job gives it back): `Err` with the reason past the queue's bounds.
    pub(crate) fn queue_place(&self, peer: Option<PeerId>) -> Result<Option<Held>, String> {
        // Requests are counted per peer only once the queue is deep enough for one peer to
        // matter (so a peer holds at most that depth plus its share): the common case
        // takes no lock.
        let depth = self.counters.queue_depth.load(Ordering::Relaxed);
        let count = depth >= self.queue_counted_from;
        let queued = match count.then(|| Held::take(&self.queued, peer, 1)) {
            None => None,
            Some(Ok(q)) => Some(q),
            Some(Err(over)) => {
                Counters::add(&self.counters.bad_requests, 1);
                let (mine, all) = lock(&self.queued).limits();
                return Err(match over {
                    Over::Peer => format!("{mine} requests of this client queued"),
                    Over::Total => format!("{all} requests queued"),
                });
            }
        };
        Counters::add(&self.counters.queue_depth, 1);
        Ok(queued)
    }

    pub(crate) fn on_event(self: &Arc<Self>, ev: Event) {
        match ev {
            Event::Unexpected { peer, tag, data } => {
                Counters::add(&self.counters.bytes_received, data.len() as u64);
                self.on_request(ReplyTo::Remote { peer, tag }, data);
            }
            Event::Done { op, result } => {
                // A call's receive is taken out of the op map here and, unless its answer
                // is an overflow stub to pull, the call out of the table, under one lock.
                // A chunk of a transfer is handled by the transfer. Anything else is a
                // send completing (its failure also fails the peer's receives) or an
                // operation withdrawn already.
                enum Owner {
                    Answered(CallEntry),
                    /// A call whose answer is an overflow stub, to pull.
                    Stub(u64),
                    Transfer,
                    Nobody,
                }
                let stub = matches!(&result, Ok(m) if crate::transfer::is_overflow_answer(m));
                let owner = {
                    let mut c = lock(&self.calls);
                    let tag = c.ops.get(&op).copied();
                    let call = |e: &CallEntry| matches!(e.pending, Pending::Call { .. });
                    match tag.map(|t| (t, c.table.get(t).map(call))) {
                        Some((tag, Some(true))) => {
                            c.ops.remove(&op);
                            if stub {
                                Owner::Stub(tag)
                            } else {
                                let e = c.table.finish(tag);
                                e.iter().for_each(|e| detach(&mut c, e));
                                e.map_or(Owner::Nobody, Owner::Answered)
                            }
                        }
                        Some((_, Some(false))) => Owner::Transfer,
                        _ => Owner::Nobody,
                    }
                };
                if let (Owner::Answered(_) | Owner::Stub(_), Ok(m)) = (&owner, &result) {
                    Counters::add(&self.counters.bytes_received, m.len() as u64);
                }
                match owner {
                    Owner::Answered(e) => self.settle(e, result.map_err(RpcError::from)),
                    Owner::Stub(tag) => {
                        self.on_overflow_answer(tag, result.as_deref().unwrap_or_default())
                    }
                    Owner::Transfer => self.on_transfer_op(op, result.map(drop)),
                    Owner::Nobody => {}
                }
            }
            Event::PeerLost { peer, error } => {
                tracing::debug!(peer = peer.0, %error, "peer lost");
                Counters::add(&self.counters.peers_lost, 1);
                let freed = lock(&self.exposed).peer_lost(&peer);
                drop(freed);
                let hooks = self.lost_hooks.read().unwrap_or_else(|e| e.into_inner());
                hooks.iter().for_each(|h| h(peer));
            }
        }
    }
}

/// Forgets which transport operations belonged to an entry that left the table.
pub(crate) fn detach(c: &mut Calls, e: &CallEntry) {
    for op in e.pending.ops() {
        c.ops.remove(&op);
    }
}
