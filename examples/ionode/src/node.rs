//! The I/O node: serves the posix-ship protocol to clients on one engine and forwards to
//! its backends, each call made for the client's verified identity.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use posix_ship::client::{ClientOptions, DEFAULT_INLINE_MAX, RemoteFs};
use posix_ship::proto::*;
use posix_ship::server::Service;
use posix_ship::server::clients::{Limits, UserLimits};
use rpc_core::{Auth, Engine, RpcError};

use crate::behind::Behind;
use crate::files::{Files, SharedFile};
use crate::routes::{self, Routes};
use crate::stats::{Counters, NodeStats, STATS};

/// How to run an I/O node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where clients connect (`tcp://0.0.0.0:7100`, `sm://name`, or a transport name).
    pub listen: String,
    /// `--backend` arguments: `ADDR` (the whole namespace) or `/PREFIX=ADDR`.
    pub backends: Vec<String>,
    /// Bytes of acknowledged writes held for all files (0: every write goes through).
    pub write_behind: u64,
    /// Buffered writes older than this are flushed.
    pub flush_after: Duration,
    /// The largest read-ahead window (0: none).
    pub readahead_max: usize,
    /// Read-ahead memory of all files together.
    pub readahead_total: u64,
    /// Handler threads.
    pub workers: usize,
    /// What one client, one user (all its connections) and all clients may hold: open
    /// files, requests in flight, bulk staging memory (as a posix-ship server bounds them).
    pub limits: Limits,
    /// How long attributes (`stat` answers) are kept; zero: not at all.
    pub attr_timeout: Duration,
    /// How long `ENOENT` answers are kept.
    pub negative_timeout: Duration,
    /// The proof demanded of tcp clients (sm clients are known by the kernel).
    pub auth: Auth,
    /// Make buffered writes durable in this directory before acknowledging them, and
    /// replay them at start (see [`crate::journal`]).
    pub journal: Option<PathBuf>,
    /// Past this many journal bytes, everything buffered is flushed (and the journal
    /// emptied).
    pub journal_max: u64,
}

impl NodeConfig {
    /// A node's default bounds: a server's per client, and per user as many as 64
    /// clients' (an I/O node serves the processes of one job, of one user, mostly: with a
    /// server's 128 requests in flight per user, 256 clients of one user through a node
    /// were answered `EAGAIN` and asked again, `qs-fwd -n 256 --shapes shared-random`:
    /// 25 019 requests for 16 896 reads).
    pub fn limits() -> Limits {
        let d = Limits::default();
        Limits {
            per_user: UserLimits {
                in_flight: d.in_flight * 64,
                open_files: d.open_files * 16,
                staging: d.staging_total,
            },
            ..d
        }
    }

    /// Forwards everything to `backend`, listening on `listen`, with default sizes.
    pub fn new(listen: &str, backend: &str) -> NodeConfig {
        NodeConfig {
            listen: listen.into(),
            backends: vec![backend.into()],
            write_behind: 256 << 20,
            flush_after: Duration::from_millis(500),
            readahead_max: 8 << 20,
            readahead_total: 256 << 20,
            workers: 16,
            limits: NodeConfig::limits(),
            attr_timeout: Duration::from_secs(1),
            negative_timeout: Duration::from_secs(1),
            auth: Auth::None,
            journal: None,
            journal_max: 1 << 30,
        }
    }
}

/// An open file of a client.
pub(crate) struct Handle {
    pub backend: usize,
    /// Written or truncated through (its attributes changed).
    pub wrote: std::sync::atomic::AtomicBool,
    /// The backend path it was opened by.
    pub path: Vec<u8>,
    /// The backend's handle, acting for this client (opened again if the backend
    /// forgets it).
    pub backing: Arc<crate::backing::Backing>,
    pub file: Option<Arc<SharedFile>>,
    pub writable: bool,
    pub append: bool,
    pub token: u64,
    /// Sequential-read detection: where the last read ended, and the window now.
    pub seq: Mutex<(u64, usize)>,
    /// A directory above the prefixes, shown by the node itself (`crate::virt`).
    pub listing: Option<crate::virt::Listing>,
}

/// For whom a call is made: the client's verified identity (passed on to the backend).
pub(crate) struct Req {
    pub user: Option<Principal>,
    /// Served where it was dispatched (the progress thread): nothing may wait.
    pub inline: bool,
}

pub(crate) struct Node {
    pub backends: Vec<RemoteFs>,
    pub routes: Routes,
    pub files: Files,
    pub stats: Arc<Counters>,
    pub cfg: NodeConfig,
    pub attrs: crate::attrs::Attrs,
    /// Backend handles shared by clients of one user opening one file alike.
    pub opens: crate::opens::Opens,
    /// Backend handles to close in the background.
    pub closer: Mutex<std::sync::mpsc::Sender<Behind>>,
    /// Calls a busy backend did not take, made again in turn (`crate::then`).
    pub retries: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<crate::then::Retry>>>,
    /// Backend reads asked with no worker waiting, now (`crate::reads`).
    pub reads_out: std::sync::atomic::AtomicUsize,
    /// Per backend: it answered `posix.setattr` with `ENOSYS` (built before it), so each
    /// change is sent as the calls it names.
    pub no_setattr: Vec<AtomicBool>,
}

/// A running I/O node.
pub struct IoNode {
    engine: Engine,
    service: Arc<Service<Node>>,
    node: Arc<Node>,
    stop: Arc<AtomicBool>,
    flusher: Option<JoinHandle<()>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl IoNode {
    /// Connects to the backends (failing if one does not answer), replays the journal,
    /// and starts serving.
    pub fn start(cfg: NodeConfig) -> io::Result<IoNode> {
        let listen = rpc_core::transport::listen_address(Some(&cfg.listen)).map_err(other)?;
        let engine = Engine::builder()
            .listen(&listen.to_string())
            .workers(cfg.workers)
            .max_overflow(4 << 20)
            .overflow_budget(8 << 20, 64 << 20)
            .max_queued_per_peer(256)
            .auth(cfg.auth.clone())
            .build()
            .map_err(other)?;
        let mut prefixes = Vec::new();
        let mut backends = Vec::new();
        for arg in &cfg.backends {
            let (prefix, addr) = routes::parse(arg).map_err(other)?;
            let a = rpc_core::Address::parse(&addr).map_err(other)?;
            // The node's own engine where the transport is the same: one engine for all.
            let fs = if a.transport() == listen.transport() {
                RemoteFs::on(&engine.handle(), &addr, DEFAULT_INLINE_MAX)
            } else {
                RemoteFs::connect_with(&addr, ClientOptions::default())
            }
            .map_err(|e| io::Error::new(e.kind(), format!("backend {addr}: {e}")))?;
            prefixes.push(prefix);
            backends.push(fs);
        }
        let routes = Routes::new(prefixes.iter().map(String::as_str))
            .ok_or_else(|| other("two --backend arguments name the same prefix"))?;
        let stats = Arc::new(Counters::default());
        let journal = match &cfg.journal {
            Some(dir) => {
                let j = crate::journal::Journal::open(dir, stats.clone())?;
                let n = j.replay(&backends).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("journal replay (kept in {}): {e}", dir.display()),
                    )
                })?;
                if n > 0 {
                    eprintln!("ionode: replayed {n} journaled writes to the backends");
                }
                Some(Arc::new(j))
            }
            None => None,
        };
        let (closer, behind) = std::sync::mpsc::channel::<Behind>();
        let node = Arc::new(Node {
            attrs: crate::attrs::Attrs::new(cfg.attr_timeout, cfg.negative_timeout, 1 << 16),
            opens: crate::opens::Opens::new(cfg.attr_timeout),
            closer: Mutex::new(closer),
            retries: Default::default(),
            reads_out: Default::default(),
            no_setattr: backends.iter().map(|_| AtomicBool::new(false)).collect(),
            backends,
            routes,
            files: Files::new(
                cfg.write_behind,
                cfg.readahead_total,
                journal,
                stats.clone(),
            ),
            stats,
            cfg: cfg.clone(),
        });
        let n = Arc::downgrade(&node);
        std::thread::Builder::new()
            .name("ionode-close".into())
            .spawn(move || crate::behind::run(n, behind))?;
        // Forwarded calls (an I/O node in front of this one) are not served: none trusted.
        let service =
            Service::register(&engine, node.clone(), cfg.limits, Vec::new()).map_err(other)?;
        register_stats(&engine, &service).map_err(other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (node, stop) = (node.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ionode-flush".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                        let full = node
                            .files
                            .journal
                            .as_ref()
                            .is_some_and(|j| j.size() > node.cfg.journal_max);
                        // Nothing buffered: no file to look at (each look locks the
                        // file's state, every open file, 50 times a second).
                        if !full && !node.files.holds_writes() {
                            continue;
                        }
                        let due = if full {
                            node.files.all().into_iter().map(|f| (f, true)).collect()
                        } else {
                            node.files.due(node.cfg.flush_after)
                        };
                        for (f, all) in due {
                            if all {
                                node.flush(&f);
                            } else {
                                node.files.flush_large(&f);
                            }
                        }
                    }
                })?
        };
        tracing::info!(addr = %engine.self_addr(), backends = ?cfg.backends, "I/O node serving");
        Ok(IoNode {
            engine,
            service,
            node,
            stop,
            flusher: Some(flusher),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> String {
        self.engine.self_addr().to_string()
    }

    /// The counters.
    pub fn stats(&self) -> NodeStats {
        snapshot(&self.service)
    }

    /// Serves until SIGINT or SIGTERM, then stops after flushing.
    pub fn serve_until_signal(self) -> io::Result<()> {
        let sig = self.engine.serve_until_signal().map_err(other)?;
        tracing::info!(signal = sig, "stopping: flushing buffered writes");
        self.shutdown();
        Ok(())
    }

    /// Flushes every buffered write, then stops.
    pub fn shutdown(mut self) -> NodeStats {
        self.stop_flusher();
        for f in self.node.files.all() {
            self.node.flush(&f);
        }
        self.stats()
    }

    fn stop_flusher(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
    }
}

impl Drop for IoNode {
    fn drop(&mut self) {
        self.stop_flusher();
    }
}

/// The node's own counters ([`STATS`]), with the service's handles and refusals.
fn register_stats(e: &Engine, s: &Arc<Service<Node>>) -> Result<(), RpcError> {
    let s = s.clone();
    e.register_infallible(STATS, move |()| snapshot(&s))
}

fn snapshot(s: &Service<Node>) -> NodeStats {
    s.backend.stats.snapshot(&s.stats())
}
