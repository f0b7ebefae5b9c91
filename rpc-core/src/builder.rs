//! Building an engine.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bulk::ChunkConfig;

use crate::counters::Counters;
use crate::driver::{Calls, Shared};
use crate::engine::Engine;
use crate::mode::ProgressMode;
use crate::pool::Pool;
use crate::progress::progress_loop;
use crate::proto::Budget;
use crate::timed::Timed;
use crate::{RpcError, transport};

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
}

/// Builds an [`Engine`].
#[derive(Clone, Debug)]
pub struct EngineBuilder {
    listen: Option<String>,
    mode: ProgressMode,
    workers: usize,
    timeout: Option<Duration>,
    max_queued: u64,
    spin: Option<Duration>,
    chunk: Option<ChunkConfig>,
    inline_bulk: usize,
    max_overflow: u64,
    overflow_budget: (u64, u64),
    queued_per_peer: u64,
    stand_ins: usize,
    auth: Option<na::Auth>,
}

/// The progress thread's spin window unless set (`EngineBuilder::spin_window`).
const DEFAULT_SPIN: Duration = Duration::from_micros(200);

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            listen: None,
            mode: ProgressMode::Thread,
            workers: 4,
            timeout: Some(Duration::from_secs(60)),
            max_queued: 65_536,
            spin: None,
            chunk: None,
            inline_bulk: 16 << 10,
            max_overflow: 256 << 20,
            overflow_budget: (256 << 20, 1 << 30),
            queued_per_peer: 1024,
            stand_ins: 256,
            auth: None,
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
    /// lowest latency, for handlers that never block (a handler that waits for a bulk
    /// transfer blocks, so it needs workers).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Default timeout of calls and transfers (default 60 s; `None`: wait for ever).
    pub fn timeout(mut self, t: Option<Duration>) -> Self {
        self.timeout = t;
        self
    }

    /// How long the progress thread keeps polling without sleeping after the last event
    /// (default 200 µs, or zero over a transport that moves data on threads of its own,
    /// `na::Caps::progress_threads`; zero: always sleep), yielding the CPU between polls,
    /// and so does a caller holding the poll (a client's, see [`ProgressMode::Thread`])
    /// before it sleeps in it. A busy engine then never pays the wake-up latency of a
    /// sleeping thread, and an idle one sleeps after this short spin.
    pub fn spin_window(mut self, d: Duration) -> Self {
        self.spin = Some(d);
        self
    }

    /// Requests queued for handlers before new ones are refused with `Busy` (default 65536).
    pub fn max_queued(mut self, n: u64) -> Self {
        self.max_queued = n.max(1);
        self
    }

    /// Chunk size and chunks in flight of bulk transfers (default: what the transport
    /// asks for, `na::Caps::chunks`; 1 MiB, 4 on every plugin here).
    pub fn chunks(mut self, c: ChunkConfig) -> Self {
        self.chunk = Some(c);
        self
    }

    /// Readable bulk handles up to this size carry their bytes in their descriptor, so
    /// that a pull costs no round trip (default 16 KiB; 0 turns it off). Measured with
    /// `qs-bw -n 1 -i N`: one RPC plus a pull of up to 32 KiB costs about half with the
    /// bytes inline; past the eager size the RPC itself overflows and the gain is gone.
    pub fn inline_bulk(mut self, n: usize) -> Self {
        self.inline_bulk = n;
        self
    }

    /// Largest RPC input or output accepted by bulk when it exceeds a message (default
    /// 256 MiB); larger ones are refused rather than allocated.
    pub fn max_overflow(mut self, n: u64) -> Self {
        self.max_overflow = n;
        self
    }

    /// Bytes of overflow messages (large requests being pulled or served, large answers
    /// waiting to be pulled) one peer may hold, and all peers together; past either, a
    /// request is refused with `Busy` before its memory is allocated, and an answer (its
    /// handler ran: not to be tried again) fails with `OutputTooLarge` (default 256 MiB
    /// and 1 GiB).
    pub fn overflow_budget(mut self, per_peer: u64, total: u64) -> Self {
        self.overflow_budget = (per_peer, total);
        self
    }

    /// Threads the pool may add while handlers wait on the engine (a bulk transfer with
    /// their caller, a call elsewhere), so that waiting handlers do not starve the others
    /// (default 256).
    pub fn max_stand_ins(mut self, n: usize) -> Self {
        self.stand_ins = n;
        self
    }

    /// Requests one peer may have queued for the workers (default 1024; the total is
    /// [`EngineBuilder::max_queued`]); past it the peer gets `Busy`. A request holds its
    /// place until its answer leaves (a job that works on after answering holds a worker,
    /// not a place).
    pub fn max_queued_per_peer(mut self, n: u64) -> Self {
        self.queued_per_peer = n.max(1);
        self
    }

    /// Opens the transport and starts the engine.
    /// How peers prove who they are on transports where the kernel cannot tell (tcp):
    /// demanded of peers that dial this engine, and shown to servers it dials. Same-node
    /// transports (sm) always use the kernel's credentials. Default: `QS_AUTH` from the
    /// environment (`none`, `munge`, `key:FILE`), else none (peers are anonymous).
    pub fn auth(mut self, auth: na::Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Builds and starts the engine (and its progress thread in [`ProgressMode::Thread`]).
    pub fn build(self) -> Result<Engine, RpcError> {
        let addr = transport::listen_address(self.listen.as_deref())?;
        let auth = match self.auth {
            Some(a) => a,
            None => na::Auth::from_env()?,
        };
        let plugin = transport::open(&addr, auth, self.mode == ProgressMode::BusyPoll)?;
        let caps = plugin.caps();
        // The first `counted_from` requests of the queue are not counted per peer (no
        // lock on the common path); the budgets hold the rest, so that a peer still holds
        // at most its share and the queue at most `max_queued`.
        let per_peer = self.queued_per_peer.min(self.max_queued);
        let counted_from = (per_peer / 2).min(64);
        let pool =
            Pool::new(self.workers, self.stand_ins).map_err(|e| RpcError::Transport(e.into()))?;
        let shared = Arc::new(Shared {
            id: crate::driver::next_engine_id(),
            self_addr: plugin.self_addr().clone(),
            unposted: caps.unposted_expected,
            plugin,
            counters: Counters::default(),
            mode: self.mode,
            calls: Timed::new(Calls::default()),
            registry: RwLock::new(HashMap::default()),
            pool,
            drive: Mutex::new(()),
            stopping: AtomicBool::new(false),
            passes: AtomicU32::new(0),
            waited: AtomicBool::new(false),
            drivers: Default::default(),
            waiters: AtomicUsize::new(0),
            unseen_waits: AtomicBool::new(false),
            serves: AtomicBool::new(false),
            progress_thread: OnceLock::new(),
            backoff: Default::default(),
            yield_backoff: Default::default(),
            queued: Arc::new(Mutex::new(Budget::new(
                per_peer - counted_from,
                self.max_queued - counted_from,
            ))),
            queue_counted_from: counted_from,
            overflow: Arc::new(Mutex::new(Budget::new(
                self.overflow_budget.0,
                self.overflow_budget.1,
            ))),
            spin: self.spin.unwrap_or(if caps.progress_threads {
                Duration::ZERO
            } else {
                DEFAULT_SPIN
            }),
            default_timeout: self.timeout,
            chunk: self.chunk.unwrap_or(caps.chunks),
            inline_bulk: self.inline_bulk,
            max_overflow: self.max_overflow,
            exposed: Timed::new(Default::default()),
            lost_hooks: RwLock::new(Vec::new()),
        });
        let thread = match self.mode {
            ProgressMode::Thread => {
                let s = shared.clone();
                let t = std::thread::Builder::new()
                    .name("qs-progress".into())
                    .spawn(move || progress_loop(&s))
                    .map_err(|e| RpcError::Transport(e.into()))?;
                let _ = shared.progress_thread.set(t.thread().clone());
                Some(t)
            }
            _ => None,
        };
        tracing::info!(addr = %shared.self_addr, mode = ?self.mode, "engine started");
        Ok(Engine::new_owning(shared, thread))
    }
}
