//! The engine's public face: the builder, endpoints, registration and calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use na::Address;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::call::Call;
use crate::counters::{CounterSnapshot, Counters};
use crate::driver::{Calls, Registered, Shared, lock, progress_loop};
use crate::handler::{ReplyTo, Responder, erase};
use crate::pool::Pool;
use crate::proto::{HEADER_LEN, Header};
use crate::slot::Slot;
use crate::{Rpc, RpcError, transport};

/// How progress is driven.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A dedicated progress thread sleeps in the transport's poll and runs completions
    /// (the default, as Margo does). Callers block on a condition variable.
    #[default]
    Thread,
    /// No progress thread: the program calls [`Engine::progress`] and [`Engine::trigger`]
    /// (as with Mercury), and a caller in [`Call::wait`] drives progress itself.
    Manual,
    /// No progress thread, and nobody sleeps: waiting callers and [`Engine::drive_until`]
    /// spin on the transport. Lowest latency; burns a core per spinning thread.
    BusyPoll,
}

/// A peer to call: an address resolved by [`Engine::lookup`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    addr: Address,
}

impl Endpoint {
    /// The peer's address.
    pub fn addr(&self) -> &Address {
        &self.addr
    }
}

/// Builds an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineBuilder {
    listen: Option<String>,
    mode: ProgressMode,
    workers: usize,
    timeout: Option<Duration>,
    max_queued: u64,
    spin: Duration,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            listen: None,
            mode: ProgressMode::Thread,
            workers: 4,
            timeout: Some(Duration::from_secs(60)),
            max_queued: 65_536,
            spin: Duration::from_micros(200),
        }
    }
}

impl EngineBuilder {
    /// Listen on this address (`tcp://0.0.0.0:7000`), or just name a transport (`tcp`).
    /// Without it, `RPC_TRANSPORT` decides, then the default (`tcp` on an ephemeral port).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_owned());
        self
    }

    /// How progress is driven (default: a progress thread).
    pub fn progress_mode(mut self, mode: ProgressMode) -> Self {
        self.mode = mode;
        self
    }

    /// Handler threads (default 4). Zero runs handlers inline in the progress loop: the
    /// lowest latency, for handlers that never block.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Default timeout of calls (default 60 s; `None`: wait for ever).
    pub fn timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t;
        self
    }

    /// How long the progress thread keeps polling without sleeping after the last event
    /// (default 200 µs; zero: always sleep). A busy engine then never pays the wake-up
    /// latency of a sleeping thread, and an idle one sleeps after this short spin.
    pub fn spin_window(mut self, d: Duration) -> Self {
        self.spin = d;
        self
    }

    /// Requests queued for handlers before new ones are refused with `Busy` (default 65536).
    pub fn max_queued(mut self, n: u64) -> Self {
        self.max_queued = n.max(1);
        self
    }

    /// Opens the transport and starts the engine.
    pub fn build(self) -> Result<Engine, RpcError> {
        let addr = transport::listen_address(self.listen.as_deref())?;
        let plugin = transport::open(&addr)?;
        let pool = Pool::new(self.workers).map_err(|e| RpcError::Transport(e.into()))?;
        let shared = Arc::new(Shared {
            self_addr: plugin.self_addr().clone(),
            plugin,
            counters: Counters::default(),
            mode: self.mode,
            calls: Mutex::new(Calls::default()),
            registry: RwLock::new(HashMap::new()),
            pool,
            drive: Mutex::new(()),
            stopping: AtomicBool::new(false),
            max_queued: self.max_queued,
            spin: self.spin,
        });
        let thread = match self.mode {
            ProgressMode::Thread => {
                let s = shared.clone();
                let t = std::thread::Builder::new()
                    .name("qs-progress".into())
                    .spawn(move || progress_loop(&s));
                Some(t.map_err(|e| RpcError::Transport(e.into()))?)
            }
            _ => None,
        };
        tracing::info!(addr = %shared.self_addr, mode = ?self.mode, "engine started");
        let guard = Arc::new(Guard {
            shared: shared.clone(),
            thread: Mutex::new(thread),
        });
        Ok(Engine {
            shared,
            default_timeout: self.timeout,
            _guard: guard,
        })
    }
}

/// Stops the engine when the last [`Engine`] clone goes.
struct Guard {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.plugin.wake();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
        self.shared.pool.shutdown();
        let tags = lock(&self.shared.calls).table.tags();
        for tag in tags {
            self.shared.end_call(tag, Err(RpcError::Shutdown), true);
        }
    }
}

/// An RPC engine: registers handlers, calls peers, and drives a transport.
///
/// Cheap to clone; the engine stops when the last clone is dropped (calls still in flight
/// then fail with [`RpcError::Shutdown`]).
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    default_timeout: Option<Duration>,
    _guard: Arc<Guard>,
}

impl Engine {
    /// An engine builder.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// An engine listening on `addr` with default settings.
    pub fn new(addr: &str) -> Result<Engine, RpcError> {
        Engine::builder().listen(addr).build()
    }

    /// An engine on the transport named by `RPC_TRANSPORT` (default `tcp`).
    pub fn from_env() -> Result<Engine, RpcError> {
        Engine::builder().build()
    }

    /// The address peers use to reach this engine.
    pub fn self_addr(&self) -> &Address {
        &self.shared.self_addr
    }

    /// Resolves a peer's address and starts connecting to it.
    pub fn lookup(&self, addr: &str) -> Result<Endpoint, RpcError> {
        let addr = Address::parse(addr)?;
        if addr != self.shared.self_addr {
            self.shared.plugin.lookup(&addr)?;
        }
        Ok(Endpoint { addr })
    }

    /// The largest encoded input (or output) a call carries.
    pub fn max_payload(&self) -> usize {
        self.shared.max_message() - HEADER_LEN
    }

    /// Registers a handler that answers with its return value; an `Err` reaches the
    /// caller as [`RpcError::Handler`], a panic as [`RpcError::HandlerPanicked`].
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

    /// Registers a handler that answers through a [`Responder`], which it may keep and
    /// use later from another thread.
    pub fn register_responder<In, Out, F>(&self, rpc: Rpc<In, Out>, f: F) -> Result<(), RpcError>
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        F: Fn(In, Responder<Out>) + Send + Sync + 'static,
    {
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
                handler: erase(f),
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
        self.call_timeout(target, rpc, input, self.default_timeout)
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
            tracing::trace_span!("rpc_call", rpc = rpc.name(), peer = %target.addr).entered();
        match self.encode(rpc.id(), false, input) {
            Ok(msg) => {
                let (tag, slot) = self.shared.post_call(target, msg, timeout);
                Call::new(self.shared.clone(), tag, slot)
            }
            Err(e) => {
                let slot = Arc::new(Slot::default());
                slot.complete(Err(e));
                Call::new(self.shared.clone(), 0, slot)
            }
        }
    }

    /// Sends a one-way request: no answer, no completion beyond being handed to the
    /// transport.
    pub fn notify<In: Serialize>(
        &self,
        target: &Endpoint,
        rpc: Rpc<In, ()>,
        input: &In,
    ) -> Result<(), RpcError> {
        let msg = self.encode(rpc.id(), true, input)?;
        Counters::add(&self.shared.counters.rpcs_sent, 1);
        Counters::add(&self.shared.counters.bytes_sent, msg.len() as u64);
        if target.addr == self.shared.self_addr {
            self.shared.on_request(ReplyTo::Nobody, msg);
            return Ok(());
        }
        let peer = self.shared.plugin.lookup(&target.addr)?;
        self.shared.plugin.send_unexpected(peer, 0, msg)?;
        Ok(())
    }

    fn encode<In: Serialize>(
        &self,
        rpc_id: u64,
        one_way: bool,
        input: &In,
    ) -> Result<Vec<u8>, RpcError> {
        let mut msg = Vec::with_capacity(64);
        Header::request(rpc_id, one_way).write(&mut msg);
        rmp_serde::encode::write(&mut msg, input).map_err(|e| RpcError::Encode(e.to_string()))?;
        let limit = self.shared.max_message();
        if msg.len() > limit {
            return Err(RpcError::TooLarge {
                size: msg.len() - HEADER_LEN,
                limit: limit - HEADER_LEN,
            });
        }
        Ok(msg)
    }

    /// Drives the transport, waiting at most `timeout` for activity (manual mode).
    pub fn progress(&self, timeout: Option<Duration>) -> Result<(), RpcError> {
        let _g = lock(&self.shared.drive);
        self.shared.progress(timeout)
    }

    /// Runs completions and dispatches requests that progress queued; returns how many.
    pub fn trigger(&self) -> usize {
        let _g = lock(&self.shared.drive);
        self.shared.trigger()
    }

    /// Drives progress (manual and busy modes) until `done` returns true.
    pub fn drive_until(&self, done: impl Fn() -> bool) {
        while !done() {
            self.shared.drive_once();
        }
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> CounterSnapshot {
        let in_flight = lock(&self.shared.calls).table.len() as u64;
        self.shared.counters.snapshot(in_flight)
    }
}
