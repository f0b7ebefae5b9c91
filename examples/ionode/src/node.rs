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
use posix_ship::server::clients::{Clients, Limits};
use rpc_core::{Auth, Caller, Engine, Responder, Rpc, RpcError};
use serde::Serialize;
use serde::de::DeserializeOwned;

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
            limits: Limits::default(),
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
}

/// Who asked: the connection, its verified identity, bulk access to its memory.
pub(crate) struct Req {
    pub peer: u64,
    pub user: Option<Principal>,
    pub caller: Caller,
}

pub(crate) struct Node {
    pub backends: Vec<RemoteFs>,
    pub routes: Routes,
    pub clients: Clients<Handle>,
    pub files: Files,
    pub stats: Arc<Counters>,
    pub cfg: NodeConfig,
    pub attrs: crate::attrs::Attrs,
    /// Backend handles to close in the background.
    pub closer: Mutex<std::sync::mpsc::Sender<Behind>>,
}

/// Work done behind the clients' backs, on one thread, in order.
pub(crate) enum Behind {
    /// Let a closed handle go at the backend.
    Close(Arc<Handle>),
    /// A client is gone: close what it held (flushing, calling the backend).
    Lost(u64),
}

/// A running I/O node.
pub struct IoNode {
    engine: Engine,
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
            closer: Mutex::new(closer),
            backends,
            routes,
            clients: Clients::new(cfg.limits),
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
            .spawn(move || {
                for job in behind {
                    let Some(n) = n.upgrade() else { break };
                    match job {
                        Behind::Close(h) => {
                            if let Err(e) = n.backend_close(&h) {
                                tracing::debug!(errno = e, "closing a backend handle");
                            }
                        }
                        Behind::Lost(peer) => n.lost(peer),
                    }
                }
            })?;
        let n = Arc::downgrade(&node);
        engine.on_peer_lost(move |p| {
            // Closing flushes and calls the backend: not on the progress thread, and not
            // on a thread per lost client (a peer connecting and leaving in a loop).
            if let Some(n) = n.upgrade() {
                let _ = lock(&n.closer).send(Behind::Lost(p.0));
            }
        });
        register(&engine, &node).map_err(other)?;
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
        self.node.stats.snapshot()
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

/// Registers `rpc` with a body that gets the caller ([`Req`]) and answers its `errno`.
fn serve<In, Out, F>(
    e: &Engine,
    node: &Arc<Node>,
    rpc: Rpc<In, Reply<Out>>,
    f: F,
) -> Result<(), RpcError>
where
    In: DeserializeOwned + 'static,
    Out: Serialize + 'static,
    F: Fn(&Node, &Req, In) -> Result<Out, i32> + Send + Sync + 'static,
{
    let node = node.clone();
    let name = rpc.name();
    e.register_responder(rpc, move |input: In, r: Responder<Reply<Out>>| {
        let stats = &node.stats;
        stats.request_in(name);
        Counters::add(&stats.in_flight, 1);
        let req = Req {
            peer: r.peer().map_or(u64::MAX, |p| p.0),
            user: r.identity().map(|i| Principal {
                uid: i.uid,
                gid: i.gid,
                groups: i.groups,
            }),
            caller: r.caller(),
        };
        let out = match node
            .clients
            .admit(req.peer, req.user.as_ref().map(|u| u.uid))
        {
            Ok(_admitted) => f(&node, &req, input),
            Err(e) => Err(e.raw_os_error()),
        };
        r.respond(&out);
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    })
}

fn register(e: &Engine, n: &Arc<Node>) -> Result<(), RpcError> {
    serve(e, n, STAT, |n, r, (t, follow)| n.stat(r, t, follow))?;
    serve(e, n, OPEN, |n, r, o| n.open(r, o))?;
    serve(e, n, CLOSE, |n, r, fh| n.close(r, fh))?;
    serve(e, n, READ, |n, r, q| n.read(r, q))?;
    serve(e, n, WRITE, |n, r, q| n.write(r, q))?;
    serve(e, n, TRUNCATE, |n, r, (t, len)| n.truncate(r, t, len))?;
    serve(e, n, FSYNC, |n, r, (fh, data)| n.fsync(r, fh, data))?;
    serve(e, n, FALLOCATE, |n, r, (fh, m, o, l)| {
        n.fallocate(r, fh, m, o, l)
    })?;
    serve(e, n, UNLINK, |n, r, p| n.on_path(r, UNLINK, p))?;
    serve(e, n, RMDIR, |n, r, p| n.on_path(r, RMDIR, p))?;
    serve(e, n, READLINK, |n, r, p| n.on_path(r, READLINK, p))?;
    serve(e, n, STATFS, |n, r, p| n.on_path(r, STATFS, p))?;
    serve(e, n, MKDIR, |n, r, (p, mode)| {
        n.on_path_with(r, MKDIR, p, mode)
    })?;
    serve(e, n, ACCESS, |n, r, (p, mode)| {
        n.on_path_with(r, ACCESS, p, mode)
    })?;
    serve(e, n, SYMLINK, |n, r, (target, p)| n.symlink(r, target, p))?;
    serve(e, n, RENAME, |n, r, (a, b)| n.two_paths(r, RENAME, a, b))?;
    serve(e, n, LINK, |n, r, (a, b)| n.two_paths(r, LINK, a, b))?;
    serve(e, n, RENAME2, |n, r, (a, b, f)| n.rename2(r, a, b, f))?;
    serve(e, n, READDIR, |n, r, q| n.readdir(r, q))?;
    serve(e, n, CHMOD, |n, r, (t, m)| {
        n.on_target(r, CHMOD, t, |t| (t, m))
    })?;
    serve(e, n, UTIMENS, |n, r, (t, a, m, f)| {
        n.on_target(r, UTIMENS, t, |t| (t, a, m, f))
    })?;
    serve(e, n, CHOWN, |n, r, (t, u, g)| {
        n.on_target(r, CHOWN, t, |t| (t, u, g))
    })?;
    serve(e, n, GETXATTR, |n, r, (t, k)| {
        n.on_target(r, GETXATTR, t, |t| (t, k))
    })?;
    serve(e, n, SETXATTR, |n, r, (t, k, v, f)| {
        n.on_target(r, SETXATTR, t, |t| (t, k, v, f))
    })?;
    serve(e, n, LISTXATTR, |n, r, t| {
        n.on_target(r, LISTXATTR, t, |t| t)
    })?;
    serve(e, n, REMOVEXATTR, |n, r, (t, k)| {
        n.on_target(r, REMOVEXATTR, t, |t| (t, k))
    })?;
    let s = n.clone();
    e.register_infallible(SERVER_STATS, move |()| {
        let c = s.clients.stats();
        ServerStats {
            requests: s.stats.snapshot().totals().0,
            ..c
        }
    })?;
    let s = n.clone();
    e.register_infallible(STATS, move |()| {
        let mut st = s.stats.snapshot();
        let c = s.clients.stats();
        (st.handles, st.refused) = (c.open_files, c.refused);
        st
    })
}
