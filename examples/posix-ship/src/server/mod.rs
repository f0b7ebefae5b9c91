//! The server: exports one directory tree and performs clients' calls beneath it.
//!
//! ```no_run
//! use posix_ship::server::{Server, ServerConfig};
//!
//! let server = Server::start(ServerConfig::new("/srv/export", "tcp://0.0.0.0:7000"))?;
//! println!("{}", server.addr());
//! // ... until a signal:
//! server.shutdown(std::time::Duration::from_secs(10));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The protocol itself is a [`Service`] over a [`Backend`]: [`Server`] serves [`LocalFs`];
//! any engine can serve another backend, e.g. a relay to another server ([`Remote`]):
//!
//! ```no_run
//! use std::sync::Arc;
//! use posix_ship::client::RemoteFs;
//! use posix_ship::server::{Limits, Remote, Service};
//!
//! let engine = rpc_core::Engine::builder().listen("sm").build().map_err(std::io::Error::other)?;
//! let remote = Remote::new(RemoteFs::connect("tcp://storage1:7000")?)?;
//! let svc = Service::register(&engine, Arc::new(remote), Limits::default(), vec![])
//!     .map_err(std::io::Error::other)?;
//! println!("relaying on {}", engine.self_addr());
//! # drop(svc);
//! # Ok::<(), std::io::Error>(())
//! ```

mod answer;
mod backend;
pub mod clients;
mod confine;
mod creds;
pub mod lending;
mod listio;
mod meta;
mod now;
mod ops;
mod query;
mod remote;
pub mod service;
mod sys;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::Engine;

pub use clients::{Limits, UserLimits};
use confine::Export;
pub use creds::Policy;
pub use query::{Found, Query, query};
pub use remote::{Remote, RemoteFile};
pub use rpc_core::Auth;
pub use rustix::io::Errno;
pub use service::{
    AttrChange, Backend, Begin, Change, Done, On, Owned, Payload, Service, Who, set_attr,
};

use crate::proto::*;

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The directory exported.
    pub export: PathBuf,
    /// Address to listen on (`tcp://0.0.0.0:7000`, `sm://name`, or a transport name).
    pub listen: String,
    /// Refuse every change with `EACCES`.
    pub read_only: bool,
    /// Per-client bounds.
    pub limits: Limits,
    /// Handler threads (handlers block on the file system and on bulk transfers).
    pub workers: usize,
    /// The proof demanded of tcp clients (sm clients are known by the kernel).
    pub auth: Auth,
    /// Whom requests run as.
    pub policy: Policy,
    /// A benchmark knob: each operation takes this much longer (the latency of a real
    /// parallel file system behind the export, emulated). Zero by default.
    pub op_delay: Duration,
    /// Serve list I/O ([`READ_MANY`], [`WRITE_MANY`]); without, they are answered
    /// `ENOSYS`, as by a server built before them (for testing the clients' fallback).
    pub list_io: bool,
}

impl ServerConfig {
    /// Exports `export` on `listen`, read-write, with default bounds.
    pub fn new(export: impl Into<PathBuf>, listen: &str) -> ServerConfig {
        ServerConfig {
            export: export.into(),
            listen: listen.into(),
            read_only: false,
            limits: Limits::default(),
            workers: 8,
            auth: Auth::None,
            policy: Policy::default(),
            op_delay: Duration::ZERO,
            list_io: true,
        }
    }
}

/// The local backend: one exported directory tree, each call made with its caller's
/// rights (see the `creds` module) and confined beneath the export (see `confine`).
pub struct LocalFs {
    export: Export,
    read_only: bool,
    policy: Policy,
    op_delay: Duration,
    list_io: bool,
}

impl LocalFs {
    /// Opens `cfg`'s export.
    pub fn open(cfg: &ServerConfig) -> std::io::Result<LocalFs> {
        Ok(LocalFs {
            export: Export::open(&cfg.export)?,
            read_only: cfg.read_only,
            policy: cfg.policy.clone(),
            op_delay: cfg.op_delay,
            list_io: cfg.list_io,
        })
    }
}

/// A running server; it stops when dropped or shut down.
pub struct Server {
    engine: Engine,
    service: Arc<Service<LocalFs>>,
}

impl Server {
    /// Opens the export and starts serving.
    pub fn start(cfg: ServerConfig) -> std::io::Result<Server> {
        let fs = LocalFs::open(&cfg)?;
        let mut limits = cfg.limits;
        limits.total_open = limits.total_open.min(file_budget());
        let listen = rpc_core::transport::listen_address(Some(&cfg.listen)).map_err(io)?;
        // Nothing in this protocol needs large messages (directory pages are the largest):
        // keep what one client can make the engine hold small.
        let engine = Engine::builder()
            .listen(&listen.to_string())
            .workers(cfg.workers)
            .max_overflow(4 << 20)
            .overflow_budget(8 << 20, 64 << 20)
            .max_queued_per_peer(2 * limits.in_flight as u64)
            .auth(cfg.auth.clone())
            .build()
            .map_err(io)?;
        let trusted = cfg.policy.trusted_forwarders.clone();
        let service = Service::register(&engine, Arc::new(fs), limits, trusted).map_err(io)?;
        tracing::info!(addr = %engine.self_addr(), export = %cfg.export.display(), auth = ?cfg.auth, policy = ?cfg.policy, "serving");
        Ok(Server { engine, service })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> String {
        self.engine.self_addr().to_string()
    }

    /// Open files, clients and request counts.
    pub fn stats(&self) -> ServerStats {
        self.service.clients.stats()
    }

    /// Refuses new requests (`ESHUTDOWN`), waits up to `grace` for those in flight to be
    /// answered, then stops. Returns the counters at the end.
    pub fn shutdown(self, grace: Duration) -> ServerStats {
        self.service.clients.drain();
        let until = Instant::now() + grace;
        while self.service.clients.in_flight() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Let the transport send the last answers.
        std::thread::sleep(Duration::from_millis(50));
        self.stats()
    }
}

/// How many files clients may hold open together: the descriptor limit (raised to its
/// hard value) less a quarter (at least 64) kept for connections and the server itself.
fn file_budget() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::debug!(error = %e, "cannot raise the descriptor limit");
        }
    }
    let n = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20) as usize;
    let budget = n.saturating_sub((n / 4).max(64));
    tracing::info!(fd_limit = n, files = budget, "file budget");
    budget
}

fn io(e: rpc_core::RpcError) -> std::io::Error {
    std::io::Error::other(e)
}
