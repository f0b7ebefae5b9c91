//! The driver around the sans-I/O protocol: the state shared by the engine handle, the
//! progress thread, workers and responders, and the code that turns transport events into
//! completed calls and dispatched requests (who drives the transport, and when, is in
//! `progress`).

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bulk::{Bulk, ChunkConfig};
use na::{Address, Event, NaError, NaResult, OpId, PeerId, Plugin};

use crate::RpcError;
use crate::counters::Counters;
use crate::handler::{Handler, Incoming, Places, ReplyTo};
use crate::handoff::Drivers;
use crate::mode::ProgressMode;
use crate::pool::Pool;
use crate::proto::{self, Budget, Entry, Exposed, Flight, Over, Owner, Route, Status, Verdict};
use crate::slot::{Answer, Slot};
use crate::spin::Backoff;
use crate::timed::{Earliest, Timed};
use crate::transfer::{Kept, Then};

/// What the driver keeps with an entry of the table: the caller's slot (none for
/// server-side pulls and transfers of a set) and what to do when the entry is over.
pub(crate) struct Waiter {
    pub(crate) slot: Option<Arc<Slot<Answer>>>,
    pub(crate) then: Then,
}

impl Waiter {
    /// A caller's RPC; `keep` is an overflow input the server pulls from.
    pub(crate) fn call(slot: &Arc<Slot<Answer>>, keep: Option<Box<Bulk<'static>>>) -> Self {
        Waiter {
            slot: Some(slot.clone()),
            then: Then::Call { keep },
        }
    }
}

/// The table the progress thread and posting threads share.
#[derive(Default)]
pub(crate) struct Calls {
    /// Calls and transfers in flight, and which transport operation is whose.
    pub(crate) flight: Flight<Waiter>,
    /// When the progress thread will wake by itself; a call due earlier wakes it.
    pub(crate) armed: Option<Instant>,
    /// Whether the progress thread sleeps (or is about to) with `armed`: a spinning one
    /// sees new deadlines by itself and is not woken. (Marked by the progress thread, or
    /// an application's own `Engine::progress`, never by a caller holding the poll.)
    pub(crate) asleep: bool,
}

impl Earliest for Calls {
    fn earliest(&self) -> Option<Instant> {
        self.flight.earliest()
    }
}

impl Earliest for Exposed<PeerId, Kept> {
    fn earliest(&self) -> Option<Instant> {
        self.next_deadline()
    }
}

impl Calls {
    /// Whether an entry due at `due` must wake the progress thread.
    pub(crate) fn must_wake(&self, due: Option<Instant>) -> bool {
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
    /// The plugin hands answers over unposted (`na::Caps::unposted_expected`): calls post
    /// no receive, and the driver matches answers and fails calls to a lost peer itself.
    pub(crate) unposted: bool,
    pub(crate) counters: Counters,
    pub(crate) mode: ProgressMode,
    pub(crate) self_addr: Address,
    pub(crate) calls: Timed<Calls>,
    pub(crate) registry: RwLock<HashMap<u64, Registered>>,
    pub(crate) pool: Pool,
    pub(crate) drive: Mutex<()>,
    pub(crate) stopping: AtomicBool,
    /// Spinning passes, for `progress::TIMER_EVERY`; also the heartbeat of driving callers.
    pub(crate) passes: AtomicU32,
    /// A progress call waited since the last [`Shared::trigger`].
    pub(crate) waited: AtomicBool,
    /// Callers driving progress while they wait (thread mode, see [`Shared::drive_for`]),
    /// and the one that holds the poll ([`Shared::poll_for`]).
    pub(crate) drivers: Drivers,
    /// Callers blocked in a wait (thread mode), and whether a future or a callback ever
    /// waited ([`Shared::waits_unseen`]): when the caller holding the poll leaves, the
    /// progress thread takes it back at once only if someone else waits.
    pub(crate) waiters: AtomicUsize,
    pub(crate) unseen_waits: AtomicBool,
    /// A handler was ever registered: requests may come at any time, so the progress
    /// thread keeps the poll (callers do not take it, [`Shared::poll_for`]).
    pub(crate) serves: AtomicBool,
    /// The progress thread (thread mode), unparked when the last driving caller leaves
    /// without its answer ([`Shared::drive_for`]).
    pub(crate) progress_thread: OnceLock<std::thread::Thread>,
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
    pub(crate) exposed: Timed<Exposed<PeerId, Kept>>,
    /// Called with each peer the transport reports lost ([`crate::Engine::on_peer_lost`]).
    pub(crate) lost_hooks: RwLock<Vec<LostHook>>,
}

/// How long calls to a lost peer wait for an answer read before the loss (over a plugin
/// that hands answers over unposted) before they fail with the loss.
const LOST_GRACE: Duration = Duration::from_millis(50);

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

    /// Wakes the progress thread when a new deadline comes before the time it sleeps
    /// until (`must`, from `Calls::must_wake`); in the other modes nobody sleeps so.
    pub(crate) fn wake_for(&self, must: bool) {
        if must && self.mode == ProgressMode::Thread {
            self.plugin.wake();
        }
    }

    /// Ends an entry with `result` if it is still in flight. `withdraw` cancels its
    /// transport operations; it is false only when the one that completed was its last.
    pub(crate) fn end_call(self: &Arc<Self>, tag: u64, result: Answer, withdraw: bool) {
        let entry = self.calls.lock().flight.finish(tag);
        let Some(e) = entry else { return };
        if withdraw {
            self.withdraw(&e);
        }
        self.settle(e.value, result);
    }

    /// Cancels an entry's transport operations; afterwards they touch no memory.
    pub(crate) fn withdraw(&self, e: &Entry<Waiter>) {
        for op in e.ops() {
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

    /// Marks the engine as one where something waits with no thread blocked on it (a
    /// future, a transfer batch's callback): see [`Shared::poll_for`].
    pub(crate) fn waits_unseen(&self) {
        if !self.unseen_waits.load(Ordering::Relaxed) {
            self.unseen_waits.store(true, Ordering::SeqCst);
        }
    }

    /// Sets a new timeout for an entry in flight, waking the progress thread if needed.
    pub(crate) fn set_deadline(&self, tag: u64, t: Duration) {
        let now = Instant::now();
        let wake = {
            let mut c = self.calls.lock();
            let due = now.checked_add(t);
            c.flight.set_deadline(tag, due) && c.must_wake(due)
        };
        self.wake_for(wake);
    }

    /// Posts one chunk of a transfer for [`Flight`]: at `off` within it, `n` bytes.
    pub(crate) fn poster(&self) -> impl FnMut(&Route, u64, u64) -> NaResult<OpId> + '_ {
        let p = &*self.plugin;
        move |r, off, n| {
            let (lo, ro) = (r.local_off + off, r.remote_off + off);
            match r.is_get {
                true => p.get(r.peer, &r.local, lo, &r.remote, ro, n),
                false => p.put(r.peer, &r.local, lo, &r.remote, ro, n),
            }
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
        let mut handler = None;
        let served = |id| {
            let reg = self.registry.read().unwrap_or_else(|e| e.into_inner());
            let r = reg.get(&id)?;
            handler = Some(r.handler.clone());
            Some(r.inline)
        };
        let stopping = self.stopping.load(Ordering::Acquire);
        let verdict = proto::classify(&msg, served, held.is_some(), stopping);
        let from = reply.peer();
        let quiet = |one_way| match one_way {
            true => ReplyTo::Nobody { peer: from },
            false => reply,
        };
        let (rpc_id, reply, inline) = match verdict {
            Verdict::Run {
                rpc_id,
                one_way,
                inline,
            } => (rpc_id, quiet(one_way), inline),
            Verdict::Refuse {
                rpc_id,
                one_way,
                status,
                why,
                bad,
            } => {
                if bad {
                    Counters::add(&self.counters.bad_requests, 1);
                }
                return quiet(one_way).send(self, rpc_id, status, why.as_bytes());
            }
            Verdict::Pull { one_way } => return self.start_input_pull(from, quiet(one_way), &msg),
            Verdict::Release(id) => return self.release_exposed(id, from),
            Verdict::Drop => {
                Counters::add(&self.counters.bad_requests, 1);
                return tracing::debug!("answer sent as a request; dropped");
            }
        };
        let Some(handler) = handler else { return };
        let mut inc = Incoming {
            shared: self.clone(),
            reply,
            rpc_id,
            msg,
            places: Places::default(),
        };
        // (Not a pulled request: its memory's budget is held until its answer leaves,
        // and an inline handler may defer; pulled ones are large, and go to a worker.)
        if inline && held.is_none() {
            let _span = tracing::debug_span!("rpc_handler", rpc_id).entered();
            return handler(inc);
        }
        let (peer, rpc_id) = (inc.reply.peer(), inc.rpc_id);
        match self.queue_place(peer) {
            // (Given back as the answer leaves: `handler::Places`.)
            Ok(queue) => {
                inc.places = Places {
                    queue,
                    pulled: held,
                }
            }
            Err(why) => return inc.reply.send(self, rpc_id, Status::Busy, why.as_bytes()),
        };
        self.pool.execute(move || {
            let shared = inc.shared.clone();
            let _span = tracing::debug_span!("rpc_handler", rpc_id = inc.rpc_id).entered();
            handler(inc);
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

    /// An answer handed over unposted (`na::Caps::unposted_expected`): the call `tag` is
    /// over if it waits for it from `peer` (or its real answer is to be pulled); anything
    /// else (late, from another peer, to no call) is dropped.
    fn on_answer(self: &Arc<Self>, peer: PeerId, tag: u64, data: Vec<u8>) {
        let stub = crate::transfer::is_overflow_answer(&data);
        let entry = {
            let mut c = self.calls.lock();
            match c.flight.awaits_from(tag, peer) {
                true if stub => None,
                true => c.flight.finish(tag),
                false => return tracing::debug!(peer = peer.0, tag, "answer nobody waits for"),
            }
        };
        Counters::add(&self.counters.bytes_received, data.len() as u64);
        match entry {
            Some(e) => self.settle(e.value, Ok(data)),
            None => self.on_overflow_answer(tag, &data),
        }
    }

    pub(crate) fn on_event(self: &Arc<Self>, ev: Event) {
        match ev {
            Event::Unexpected { peer, tag, data } => {
                Counters::add(&self.counters.bytes_received, data.len() as u64);
                self.on_request(ReplyTo::Remote { peer, tag }, data);
            }
            Event::Done { op, result } => {
                // A call's receive leaves the table here with the call, unless its answer
                // is an overflow stub to pull; a chunk of a transfer posts what the window
                // allows and may end it; all under one lock. Anything else is a send
                // completing (its failure also fails the peer's receives) or an operation
                // withdrawn already.
                enum Got {
                    Answered(Entry<Waiter>),
                    /// A call whose answer is an overflow stub, to pull.
                    Stub(u64),
                    Over(Entry<Waiter>, NaResult<()>),
                    Nothing,
                }
                let stub = matches!(&result, Ok(m) if crate::transfer::is_overflow_answer(m));
                let got = {
                    let mut c = self.calls.lock();
                    match c.flight.owner(op) {
                        Owner::Call(_) if stub => c.flight.stub(op).map(|(t, _)| Got::Stub(t)),
                        Owner::Call(_) => c.flight.answered(op).map(|(_, e)| Got::Answered(e)),
                        Owner::Transfer(_) => {
                            let r = result.as_ref().map(drop).map_err(NaError::clone);
                            let over = c.flight.chunk_done(op, r, self.poster());
                            over.map(|(e, r)| Got::Over(e, r))
                        }
                        Owner::Nobody => None,
                    }
                    .unwrap_or(Got::Nothing)
                };
                if let (Got::Answered(_) | Got::Stub(_), Ok(m)) = (&got, &result) {
                    Counters::add(&self.counters.bytes_received, m.len() as u64);
                }
                match got {
                    Got::Answered(e) => self.settle(e.value, result.map_err(RpcError::from)),
                    Got::Stub(tag) => {
                        self.on_overflow_answer(tag, result.as_deref().unwrap_or_default())
                    }
                    Got::Over(e, outcome) => self.settle_done(e, outcome),
                    Got::Nothing => {}
                }
            }
            Event::Expected { peer, tag, data } => self.on_answer(peer, tag, data),
            Event::PeerLost { peer, error } => {
                tracing::debug!(peer = peer.0, %error, "peer lost");
                Counters::add(&self.counters.peers_lost, 1);
                if self.unposted {
                    // No receive of theirs failed with the connection: the calls fail,
                    // after a grace for answers read before the loss that another
                    // thread's pass is still handing over (`Flight::lose`).
                    let due = Instant::now() + LOST_GRACE;
                    let wake = {
                        let mut c = self.calls.lock();
                        c.flight.lose(peer, due, &error) > 0 && c.must_wake(Some(due))
                    };
                    self.wake_for(wake);
                }
                let freed = self.exposed.lock().peer_lost(&peer);
                drop(freed);
                let hooks = self.lost_hooks.read().unwrap_or_else(|e| e.into_inner());
                hooks.iter().for_each(|h| h(peer));
            }
        }
    }
}
#[cfg(test)]
mod tests {
    /// Entries move with every insertion and removal of the table (each move a copy of
    /// their bytes): what only overflow needs stays boxed.
    #[test]
    fn table_entries_stay_small() {
        assert!(std::mem::size_of::<crate::proto::Entry<super::Waiter>>() <= 72);
    }
}
