//! The driver around the sans-I/O protocol: the state shared by the engine handle, the
//! progress thread, workers and responders, and the code that turns transport events into
//! completed calls and dispatched requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use na::{Address, Event, OpId, PeerId, Plugin};

use crate::RpcError;
use crate::call::Answer;
use crate::counters::Counters;
use crate::engine::{Endpoint, ProgressMode};
use crate::handler::{Handler, Incoming, ReplyTo};
use crate::pool::Pool;
use crate::proto::{CallTable, Header, MsgKind, Phase, Status};
use crate::slot::Slot;

pub(crate) struct CallEntry {
    pub(crate) slot: Arc<Slot<Answer>>,
    pub(crate) recv: Option<OpId>,
}

#[derive(Default)]
pub(crate) struct Calls {
    pub(crate) table: CallTable<CallEntry>,
    pub(crate) recv_ops: HashMap<OpId, u64>,
    /// When the progress thread will wake by itself; a call due earlier wakes it.
    pub(crate) armed: Option<Instant>,
}

pub(crate) struct Registered {
    pub(crate) name: &'static str,
    pub(crate) handler: Handler,
}

/// State shared by the engine handle, the progress thread, workers and responders.
pub(crate) struct Shared {
    pub(crate) plugin: Arc<dyn Plugin>,
    pub(crate) counters: Counters,
    pub(crate) mode: ProgressMode,
    pub(crate) self_addr: Address,
    pub(crate) calls: Mutex<Calls>,
    pub(crate) registry: RwLock<HashMap<u64, Registered>>,
    pub(crate) pool: Pool,
    pub(crate) drive: Mutex<()>,
    pub(crate) stopping: AtomicBool,
    pub(crate) max_queued: u64,
    pub(crate) spin: Duration,
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
        let now = Instant::now();
        let local = *target.addr() == self.self_addr;
        let phase = if local {
            Phase::Dispatched
        } else {
            Phase::Posted
        };
        let entry = CallEntry {
            slot: slot.clone(),
            recv: None,
        };
        let (tag, wake) = {
            let mut c = lock(&self.calls);
            let tag = c.table.insert(now, timeout, phase, entry);
            let due = timeout.and_then(|t| now.checked_add(t));
            (tag, due.is_some_and(|d| c.armed.is_none_or(|a| d < a)))
        };
        if wake && self.mode == ProgressMode::Thread {
            self.plugin.wake();
        }
        Counters::add(&self.counters.rpcs_sent, 1);
        Counters::add(&self.counters.bytes_sent, msg.len() as u64);
        if local {
            self.on_request(ReplyTo::Local { tag }, msg);
            return (tag, slot);
        }
        if let Err(e) = self.post_remote(tag, target.addr(), msg) {
            self.end_call(tag, Err(e), true);
        }
        (tag, slot)
    }

    fn post_remote(&self, tag: u64, addr: &Address, msg: Vec<u8>) -> Result<(), RpcError> {
        let peer = self.plugin.lookup(addr)?;
        // The receive goes first, so that the answer always finds it.
        let recv = self.plugin.recv_expected(peer, tag)?;
        {
            let mut c = lock(&self.calls);
            match c.table.get_mut(tag) {
                Some(e) => e.recv = Some(recv),
                None => {
                    // Timed out or canceled already.
                    drop(c);
                    self.plugin.cancel(recv);
                    return Ok(());
                }
            }
            c.recv_ops.insert(recv, tag);
        }
        self.plugin.send_unexpected(peer, tag, msg)?;
        Ok(())
    }

    /// Ends a call with `result` if it is still in flight. `withdraw` cancels its posted
    /// receive; it is false only when that receive is what completed.
    pub(crate) fn end_call(&self, tag: u64, result: Answer, withdraw: bool) {
        let entry = {
            let mut c = lock(&self.calls);
            let e = c.table.finish(tag);
            if let Some(op) = e.as_ref().and_then(|e| e.recv) {
                c.recv_ops.remove(&op);
            }
            e
        };
        let Some(e) = entry else { return };
        if let Some(op) = e.recv.filter(|_| withdraw) {
            self.plugin.cancel(op);
        }
        self.complete(e, result);
    }

    fn complete(&self, e: CallEntry, result: Answer) {
        match &result {
            Err(RpcError::Timeout) => Counters::add(&self.counters.timeouts, 1),
            Err(RpcError::Canceled) => Counters::add(&self.counters.canceled, 1),
            _ => {}
        }
        if result.is_err() {
            Counters::add(&self.counters.rpcs_failed, 1);
        }
        e.slot.complete(result);
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
        let h = match Header::decode(&msg) {
            Ok((h, _)) => h,
            Err(e) => {
                Counters::add(&self.counters.bad_requests, 1);
                return reply.send(self, 0, Status::BadHeader, e.to_string().as_bytes());
            }
        };
        let reply = match h.kind {
            MsgKind::Request => reply,
            MsgKind::OneWay => ReplyTo::Nobody,
            MsgKind::Response => {
                Counters::add(&self.counters.bad_requests, 1);
                return tracing::debug!(rpc_id = h.rpc_id, "answer sent as a request; dropped");
            }
        };
        let handler = self
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&h.rpc_id)
            .map(|r| r.handler.clone());
        let Some(handler) = handler else {
            Counters::add(&self.counters.bad_requests, 1);
            return reply.send(self, h.rpc_id, Status::UnknownRpc, b"");
        };
        if self.stopping.load(Ordering::Acquire) {
            return reply.send(self, h.rpc_id, Status::ShuttingDown, b"");
        }
        if self.counters.queue_depth.load(Ordering::Relaxed) >= self.max_queued {
            Counters::add(&self.counters.bad_requests, 1);
            return reply.send(
                self,
                h.rpc_id,
                Status::Busy,
                format!("{} requests queued", self.max_queued).as_bytes(),
            );
        }
        Counters::add(&self.counters.queue_depth, 1);
        let inc = Incoming {
            shared: self.clone(),
            reply,
            rpc_id: h.rpc_id,
            msg,
        };
        self.pool.execute(move || {
            let shared = inc.shared.clone();
            let _span = tracing::debug_span!("rpc_handler", rpc_id = inc.rpc_id).entered();
            handler(inc);
            Counters::sub(&shared.counters.queue_depth, 1);
        });
    }

    fn on_event(self: &Arc<Self>, ev: Event) {
        match ev {
            Event::Unexpected { peer, tag, data } => {
                Counters::add(&self.counters.bytes_received, data.len() as u64);
                self.on_request(ReplyTo::Remote { peer, tag }, data);
            }
            Event::Done { op, result } => {
                let tag = lock(&self.calls).recv_ops.get(&op).copied();
                // Not a call's receive: a send completing (its failure also fails the
                // peer's receives), or a withdrawn receive.
                let Some(tag) = tag else { return };
                let result = result.map_err(RpcError::from);
                if let Ok(m) = &result {
                    Counters::add(&self.counters.bytes_received, m.len() as u64);
                }
                self.end_call(tag, result, false);
            }
            Event::PeerLost { peer, error } => log_peer_lost(peer, &error),
        }
    }

    /// Drives the transport once, sleeping at most `timeout` or until the next deadline.
    pub(crate) fn progress(&self, timeout: Option<Duration>) -> Result<(), RpcError> {
        let now = Instant::now();
        let wait = {
            let mut c = lock(&self.calls);
            let until_deadline = c
                .table
                .next_deadline()
                .map(|d| d.saturating_duration_since(now));
            let wait = match (timeout, until_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            c.armed = wait.and_then(|w| now.checked_add(w));
            wait
        };
        self.plugin.progress(wait)?;
        Ok(())
    }

    /// Handles queued events and expired deadlines; returns how many events it handled.
    pub(crate) fn trigger(self: &Arc<Self>) -> usize {
        let mut n = 0;
        while let Some(ev) = self.plugin.poll_event() {
            self.on_event(ev);
            n += 1;
        }
        let expired = lock(&self.calls).table.expire(Instant::now());
        for (tag, e) in expired {
            tracing::debug!(tag, "call timed out");
            if let Some(op) = e.recv {
                lock(&self.calls).recv_ops.remove(&op);
                self.plugin.cancel(op);
            }
            self.complete(e, Err(RpcError::Timeout));
        }
        n
    }

    /// One round of progress and trigger by a waiting caller (manual and busy modes).
    pub(crate) fn drive_once(self: &Arc<Self>) {
        let Ok(_g) = self.drive.try_lock() else {
            std::thread::yield_now();
            return;
        };
        let t = if self.mode == ProgressMode::BusyPoll {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        };
        if let Err(e) = self.progress(Some(t)) {
            tracing::warn!(error = %e, "progress failed");
        }
        self.trigger();
    }
}

fn log_peer_lost(peer: PeerId, error: &na::NaError) {
    tracing::debug!(peer = peer.0, %error, "peer lost");
}

pub(crate) fn progress_loop(shared: &Arc<Shared>) {
    let mut last_event: Option<Instant> = None;
    while !shared.stopping.load(Ordering::Acquire) {
        let spinning = last_event.is_some_and(|t| t.elapsed() < shared.spin);
        if let Err(e) = shared.progress(if spinning { Some(Duration::ZERO) } else { None }) {
            tracing::error!(error = %e, "progress failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        if shared.trigger() > 0 {
            last_event = Some(Instant::now());
        } else if spinning {
            // Let a runnable caller or handler have this core between empty polls.
            std::thread::yield_now();
        }
    }
}
