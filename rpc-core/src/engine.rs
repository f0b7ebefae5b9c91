//! The engine's public face: registration, calls and transfers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use na::Address;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::call::Call;
use crate::counters::{CounterSnapshot, Counters};
use crate::driver::{Registered, Shared, lock};
use crate::endpoint::Endpoint;
use crate::handler::{ReplyTo, Responder, erase};
use crate::proto::{HEADER_LEN, Header};
use crate::slot::Slot;
use crate::{Rpc, RpcError};

/// An RPC engine: registers handlers, calls peers, and drives a transport.
///
/// Cheap to clone; the engine stops when the last clone is dropped (calls still in flight
/// then fail with [`RpcError::Shutdown`]).
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
    /// `None` for non-owning handles ([`Engine::handle`]).
    guard: Option<Arc<Guard>>,
}

/// Stops the engine when the last owning [`Engine`] handle goes.
pub(crate) struct Guard {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.plugin.wake();
        if let Some(t) = lock(&self.thread).take() {
            // (It may be parked, standing aside for a caller's drive or poll.)
            t.thread().unpark();
            let _ = t.join();
        }
        self.shared.pool.shutdown();
        let tags = self.shared.calls.lock().flight.tags();
        for tag in tags {
            self.shared.end_call(tag, Err(RpcError::Shutdown), true);
        }
        self.shared.exposed.lock().clear();
    }
}

impl Engine {
    /// The first owning handle of an engine whose progress thread (if any) is `thread`.
    pub(crate) fn new_owning(shared: Arc<Shared>, thread: Option<JoinHandle<()>>) -> Engine {
        let guard = Guard {
            shared: shared.clone(),
            thread: Mutex::new(thread),
        };
        Engine {
            shared,
            guard: Some(Arc::new(guard)),
        }
    }

    pub(crate) fn non_owning(shared: Arc<Shared>) -> Engine {
        Engine {
            shared,
            guard: None,
        }
    }

    /// A handle that does not keep the engine running: give this to handlers (a handler
    /// holding an owning clone would keep its own engine alive for ever). Its calls fail
    /// with [`RpcError::Shutdown`] once the engine has stopped.
    pub fn handle(&self) -> Engine {
        Engine::non_owning(self.shared.clone())
    }

    /// Whether this handle keeps the engine running.
    pub fn is_owning(&self) -> bool {
        self.guard.is_some()
    }

    /// Runs `job` on one of the engine's workers (at once on this thread if it has none:
    /// `workers(0)`): for what a completion's callback must not do on the thread that
    /// completes it, the progress thread usually, such as wait. A panic in `job` is
    /// caught and logged.
    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        self.shared.pool.execute(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::warn!("a job given to Engine::execute panicked");
            }
        });
    }

    /// The address peers use to reach this engine.
    pub fn self_addr(&self) -> &Address {
        &self.shared.self_addr
    }

    /// Resolves a peer's address and starts connecting to it.
    pub fn lookup(&self, addr: &str) -> Result<Endpoint, RpcError> {
        let addr = Address::parse(addr)?;
        let peer = match addr == self.shared.self_addr {
            true => None,
            false => Some(self.shared.plugin.lookup(&addr)?),
        };
        Ok(Endpoint::resolved(addr, self.shared.id, peer))
    }

    /// The largest encoded input (or output) that travels in the message itself; larger
    /// ones travel by bulk, up to [`crate::EngineBuilder::max_overflow`].
    pub fn max_payload(&self) -> usize {
        self.shared.max_message() - HEADER_LEN
    }

    /// Registers a handler that answers with its return value; an `Err` reaches the
    /// caller as [`RpcError::Handler`] (its message), a panic as
    /// [`RpcError::HandlerPanicked`].
    ///
    /// For a failure the caller can match on, make it part of the output: a typed value,
    /// encoded like any other.
    ///
    /// ```
    /// use rpc_core::{Engine, Rpc};
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// enum DivError {
    ///     ByZero,
    /// }
    /// const DIV: Rpc<(u64, u64), Result<u64, DivError>> = Rpc::new("doc.div");
    /// let server = Engine::new("tcp://127.0.0.1:0")?;
    /// server.register_infallible(DIV, |(a, b)| a.checked_div(b).ok_or(DivError::ByZero))?;
    /// let client = Engine::new("tcp")?;
    /// let to = client.lookup(&server.self_addr().to_string())?;
    /// assert_eq!(client.call(&to, DIV, &(7, 2)).wait()?, Ok(3));
    /// assert_eq!(client.call(&to, DIV, &(7, 0)).wait()?, Err(DivError::ByZero));
    /// # Ok::<(), rpc_core::RpcError>(())
    /// ```
    pub fn register<In, Out, E, F>(&self, rpc: Rpc<In, Out>, f: F) -> Result<(), RpcError>
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        E: std::fmt::Display,
        F: Fn(In) -> Result<Out, E> + Send + Sync + 'static,
    {
        self.register_responder(rpc, move |input, r: Responder<Out>| match f(input) {
            Ok(out) => r.respond(&out),
            Err(e) => r.fail(e),
        })
    }

    /// Removes `rpc`'s handler (as `HG_Deregister`): requests for it are answered
    /// [`RpcError::UnknownRpc`] from then on, as by an engine that never had it (a peer
    /// built before the RPC existed); requests already dispatched run on. Returns whether
    /// it was registered.
    pub fn deregister<In, Out>(&self, rpc: Rpc<In, Out>) -> bool {
        let mut reg = self
            .shared
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match reg.get(&rpc.id()) {
            Some(r) if r.name == rpc.name() => reg.remove(&rpc.id()).is_some(),
            _ => false,
        }
    }

    /// Registers a handler that answers through a [`Responder`], which it may keep and
    /// use later from another thread.
    pub fn register_responder<In, Out, F>(&self, rpc: Rpc<In, Out>, f: F) -> Result<(), RpcError>
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        F: Fn(In, Responder<Out>) + Send + Sync + 'static,
    {
        self.insert_handler(rpc, f, false)
    }

    /// As [`Engine::register_responder`], for a handler that runs where its request is
    /// dispatched — the progress thread, or a caller driving progress while it waits —
    /// instead of waking a worker: for work that never waits (an answer from memory).
    /// Work that might wait goes to a worker with [`Responder::defer`]; a handler that
    /// blocks here stalls every call and answer of the engine meanwhile. It may run on
    /// any thread waiting in a call of this engine (one driving progress), so it must not
    /// take a lock such a caller could hold while it calls. Requests large enough to be
    /// pulled (overflow inputs) still go to a worker.
    ///
    /// ```
    /// use rpc_core::{Engine, Rpc};
    ///
    /// const GET: Rpc<u64, u64> = Rpc::new("doc.inline.get");
    /// let server = Engine::new("tcp://127.0.0.1:0")?;
    /// server.register_responder_inline(GET, |k, r| {
    ///     if k < 100 {
    ///         r.respond(&(k * 2)); // cheap: answered on the progress thread
    ///     } else {
    ///         r.defer(move |r| r.respond(&(k + 1))); // on a worker
    ///     }
    /// })?;
    /// let client = Engine::new("tcp")?;
    /// let to = client.lookup(&server.self_addr().to_string())?;
    /// assert_eq!(client.call(&to, GET, &7).wait()?, 14);
    /// assert_eq!(client.call(&to, GET, &700).wait()?, 701);
    /// # Ok::<(), rpc_core::RpcError>(())
    /// ```
    pub fn register_responder_inline<In, Out, F>(
        &self,
        rpc: Rpc<In, Out>,
        f: F,
    ) -> Result<(), RpcError>
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        F: Fn(In, Responder<Out>) + Send + Sync + 'static,
    {
        self.insert_handler(rpc, f, true)
    }

    fn insert_handler<In, Out, F>(
        &self,
        rpc: Rpc<In, Out>,
        f: F,
        inline: bool,
    ) -> Result<(), RpcError>
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        F: Fn(In, Responder<Out>) + Send + Sync + 'static,
    {
        self.shared.serves.store(true, Ordering::SeqCst);
        let mut reg = self
            .shared
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(r) = reg.get(&rpc.id()) {
            return Err(if r.name == rpc.name() {
                RpcError::AlreadyRegistered(rpc.name().into())
            } else {
                RpcError::IdCollision {
                    name: rpc.name().into(),
                    other: r.name.into(),
                    id: rpc.id(),
                }
            });
        }
        reg.insert(
            rpc.id(),
            Registered {
                name: rpc.name(),
                handler: erase(rpc.name(), f),
                inline,
            },
        );
        Ok(())
    }

    /// Calls `rpc` on `target` with the engine's default timeout.
    pub fn call<In: Serialize, Out: DeserializeOwned>(
        &self,
        target: &Endpoint,
        rpc: Rpc<In, Out>,
        input: &In,
    ) -> Call<Out> {
        self.call_timeout(target, rpc, input, self.shared.default_timeout)
    }

    /// Calls `rpc` on `target`, failing with [`RpcError::Timeout`] after `timeout`.
    pub fn call_timeout<In: Serialize, Out: DeserializeOwned>(
        &self,
        target: &Endpoint,
        rpc: Rpc<In, Out>,
        input: &In,
        timeout: Option<Duration>,
    ) -> Call<Out> {
        let _span =
            tracing::trace_span!("rpc_call", rpc = rpc.name(), peer = %target.addr()).entered();
        match self.encode(rpc.id(), false, input) {
            Ok(msg) => {
                let (tag, slot) = self.shared.post_call(target, msg, timeout);
                Call::new(self.shared.clone(), tag, slot, rpc.name(), target)
            }
            Err(e) => {
                let slot = Arc::new(Slot::default());
                slot.complete(Err(e));
                Call::new(self.shared.clone(), 0, slot, rpc.name(), target)
            }
        }
    }

    /// Sends a one-way request: no answer; returns once the transport has taken it, or
    /// with why it could not (an unreachable peer, a connection lost), within the
    /// engine's default timeout.
    pub fn notify<In: Serialize>(
        &self,
        target: &Endpoint,
        rpc: Rpc<In, ()>,
        input: &In,
    ) -> Result<(), RpcError> {
        let msg = self.encode(rpc.id(), true, input)?;
        // Nothing tells a one-way sender when an overflow input was pulled: refuse those.
        let limit = self.shared.max_message();
        if msg.len() > limit && !target.is_local_to(self.shared.id, &self.shared.self_addr) {
            return Err(RpcError::TooLarge {
                size: msg.len() - HEADER_LEN,
                limit: limit - HEADER_LEN,
            });
        }
        Counters::add(&self.shared.counters.rpcs_sent, 1);
        Counters::add(&self.shared.counters.bytes_sent, msg.len() as u64);
        if target.is_local_to(self.shared.id, &self.shared.self_addr) {
            self.shared.on_request(ReplyTo::Nobody { peer: None }, msg);
            return Ok(());
        }
        let (tag, slot) =
            self.shared
                .post_one_way(target.addr(), msg, self.shared.default_timeout)?;
        crate::call::wait_sent(self.shared.clone(), tag, slot)
            .map_err(|e| e.in_call(rpc.name(), target.addr(), "()"))
    }

    fn encode<In: Serialize>(
        &self,
        rpc_id: u64,
        one_way: bool,
        input: &In,
    ) -> Result<Vec<u8>, RpcError> {
        // A kept buffer (or a new one) with room for a small message: no regrowth while
        // encoding (`na::buf::MIN_ROOM`).
        let mut msg = na::buf::take(HEADER_LEN);
        Header::request(rpc_id, one_way).write(&mut msg);
        rmp_serde::encode::write(&mut msg, input).map_err(|e| RpcError::Encode(e.to_string()))?;
        Ok(msg)
    }

    /// Drives the transport, waiting at most `timeout` for activity (manual mode).
    pub fn progress(&self, timeout: Option<Duration>) -> Result<(), RpcError> {
        let _g = lock(&self.shared.drive);
        self.shared.progress(timeout)
    }

    /// Runs completions and dispatches requests that progress queued; returns how many.
    /// Calls past their timeout fail here: at the first trigger after a `progress` that
    /// waited, else once in 64 triggers (a loop of zero-timeout `progress` and `trigger`
    /// does not read the clock at every pass).
    pub fn trigger(&self) -> usize {
        let _g = lock(&self.shared.drive);
        self.shared.trigger()
    }

    /// One pass that does not wait: [`Engine::progress`] with a zero timeout, then
    /// [`Engine::trigger`], the events of the pass handled as it brings them rather than
    /// queued for the trigger (the loop of a program that polls; cheaper than the two
    /// calls). Returns how many events it handled.
    pub fn poll(&self) -> Result<usize, RpcError> {
        let _g = lock(&self.shared.drive);
        self.shared.poll()
    }

    /// Drives progress (manual and busy modes) until `done` returns true.
    pub fn drive_until(&self, done: impl Fn() -> bool) {
        while !done() {
            self.shared.drive_once();
        }
    }

    /// Runs `f` with every peer the transport reports lost (connection closed, process
    /// gone), on the progress path: `f` must be quick and must not wait for calls. Servers
    /// use it to release what a client held ([`Responder::peer`] names the client).
    pub fn on_peer_lost(&self, f: impl Fn(na::PeerId) + Send + Sync + 'static) {
        self.shared
            .lost_hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(f));
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> CounterSnapshot {
        let in_flight = self.shared.calls.lock().flight.len() as u64;
        self.shared.counters.snapshot(
            in_flight,
            self.shared.exposed.lock().len() as u64,
            self.shared.pool.stand_ins() as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_names_with_one_id_are_refused_at_registration() {
        let e = Engine::new("tcp://127.0.0.1:0").unwrap();
        let a: Rpc<u8, u8> = Rpc::with_id("alpha", 7);
        let b: Rpc<u8, u8> = Rpc::with_id("beta", 7);
        e.register(a, Ok::<_, String>).unwrap();
        let r = e.register(b, Ok::<_, String>);
        assert_eq!(
            r,
            Err(RpcError::IdCollision {
                name: "beta".into(),
                other: "alpha".into(),
                id: 7
            })
        );
    }

    #[test]
    fn requests_past_the_queue_bound_are_refused_with_busy() {
        const SLOW: Rpc<u64, ()> = Rpc::new("slow");
        let server = Engine::builder()
            .listen("tcp://127.0.0.1:0")
            .workers(1)
            .max_queued(1)
            .build()
            .unwrap();
        server
            .register(SLOW, |ms| {
                std::thread::sleep(Duration::from_millis(ms));
                Ok::<_, String>(())
            })
            .unwrap();
        let client = Engine::new("tcp://127.0.0.1:0").unwrap();
        let peer = client.lookup(&server.self_addr().to_string()).unwrap();
        let first = client.call(&peer, SLOW, &1000);
        // Once the server has the first request, the one slot is taken: the next are
        // refused at once (the handler sleeps long enough for a loaded machine).
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while server.counters().rpcs_received == 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..3 {
            assert!(matches!(
                client.call(&peer, SLOW, &0).wait(),
                Err(RpcError::Busy(_))
            ));
        }
        assert_eq!(first.wait(), Ok(()));
        // The worker lets its place go just after its handler returns, which may be after
        // the answer arrived here.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while server.counters().queue_depth > 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            client.call(&peer, SLOW, &0).wait(),
            Ok(()),
            "served again once the queue drained"
        );
        assert_eq!(server.counters().bad_requests, 3);
    }

    #[test]
    fn a_handler_learns_its_caller_and_the_server_hears_when_it_leaves() {
        const WHO: Rpc<(), u64> = Rpc::new("who");
        let server = Engine::new("tcp://127.0.0.1:0").unwrap();
        server
            .register_responder(WHO, |(), r: Responder<u64>| {
                let p = r.peer().map_or(u64::MAX, |p| p.0);
                r.respond(&p)
            })
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        server.on_peer_lost(move |p| {
            let _ = lock(&tx).send(p.0);
        });
        let client = Engine::new("tcp://127.0.0.1:0").unwrap();
        let peer = client.lookup(&server.self_addr().to_string()).unwrap();
        let id = client.call(&peer, WHO, &()).wait().unwrap();
        assert_ne!(id, u64::MAX, "a remote caller has a peer id");
        let me = server.lookup(&server.self_addr().to_string()).unwrap();
        assert_eq!(server.call(&me, WHO, &()).wait(), Ok(u64::MAX), "self call");
        drop(client);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(id));
    }
}
