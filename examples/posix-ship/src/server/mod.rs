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

pub mod clients;
mod confine;
mod creds;
mod meta;
mod ops;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_core::{Engine, Responder, Rpc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use clients::{Clients, LOCAL};
pub use clients::{Limits, UserLimits};
use confine::Export;
pub use creds::Policy;
use ops::Ctx;
pub use rpc_core::Auth;

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
        }
    }
}

struct State {
    op_delay: Duration,
    export: Export,
    clients: Clients,
    read_only: bool,
    policy: Policy,
}

/// A running server; it stops when dropped or shut down.
pub struct Server {
    engine: Engine,
    state: Arc<State>,
}

impl Server {
    /// Opens the export and starts serving.
    pub fn start(cfg: ServerConfig) -> std::io::Result<Server> {
        let export = Export::open(&cfg.export)?;
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
        let state = Arc::new(State {
            op_delay: cfg.op_delay,
            export,
            clients: Clients::<clients::OpenFile>::new(limits),
            read_only: cfg.read_only,
            policy: cfg.policy.clone(),
        });
        let s = state.clone();
        engine.on_peer_lost(move |p| drop(s.clients.lost(p.0)));
        register(&engine, &state).map_err(io)?;
        tracing::info!(addr = %engine.self_addr(), export = %cfg.export.display(), auth = ?cfg.auth, policy = ?cfg.policy, "serving");
        Ok(Server { engine, state })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> String {
        self.engine.self_addr().to_string()
    }

    /// Open files, clients and request counts.
    pub fn stats(&self) -> ServerStats {
        self.state.clients.stats()
    }

    /// Refuses new requests (`ESHUTDOWN`), waits up to `grace` for those in flight to be
    /// answered, then stops. Returns the counters at the end.
    pub fn shutdown(self, grace: Duration) -> ServerStats {
        self.state.clients.drain();
        let until = Instant::now() + grace;
        while self.state.clients.in_flight() > 0 && Instant::now() < until {
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

/// Registers `rpc`, and its [`forwarded`] twin, with a body that runs with the caller's
/// context and rights (see [`creds`]), inside the caller's in-flight bound; a refusal or a
/// failed system call answers with its `errno`. The twin runs with the rights of the
/// user a trusted forwarder names, and answers `EPERM` to any other peer.
fn serve<In, Out, F>(
    e: &Engine,
    st: &Arc<State>,
    rpc: Rpc<In, Reply<Out>>,
    f: F,
) -> Result<(), rpc_core::RpcError>
where
    In: DeserializeOwned + 'static,
    Out: Serialize + 'static,
    F: Fn(&Ctx<'_>, In) -> Result<Out, rustix::io::Errno> + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let (st2, f2) = (st.clone(), f.clone());
    e.register_responder(rpc, move |input: In, r: Responder<Reply<Out>>| {
        let identity = r.identity();
        answer(&st2, r, identity, input, &*f2)
    })?;
    let st = st.clone();
    e.register_responder(
        forwarded(rpc),
        move |(principal, input): (Option<Principal>, In), r: Responder<Reply<Out>>| {
            let trusted = r
                .identity()
                .is_some_and(|i| st.policy.trusted_forwarders.contains(&i.uid));
            if !trusted {
                tracing::warn!(peer = ?r.peer(), rpc = rpc.name(), "a call for another user from an untrusted peer");
                return r.respond(&Err(libc::EPERM));
            }
            let identity = match principal.map(acting_for) {
                None => None,
                Some(Some(i)) => Some(i),
                Some(None) => return r.respond(&Err(libc::EINVAL)),
            };
            answer(&st, r, identity, input, &*f)
        },
    )
}

/// The identity a trusted forwarder asserts (`None` if it names too many groups).
fn acting_for(p: Principal) -> Option<rpc_core::Identity> {
    (p.groups.len() <= 65536).then_some(rpc_core::Identity {
        uid: p.uid,
        gid: p.gid,
        groups: p.groups,
        proof: rpc_core::Proof::Forwarded,
    })
}

fn answer<In, Out>(
    st: &State,
    r: Responder<Reply<Out>>,
    identity: Option<rpc_core::Identity>,
    input: In,
    f: &dyn Fn(&Ctx<'_>, In) -> Result<Out, rustix::io::Errno>,
) where
    Out: Serialize + 'static,
{
    let id = r.peer().map_or(LOCAL, |p| p.0);
    let user = identity.as_ref().map(|i| i.uid);
    let admitted = match st.clients.admit(id, user) {
        Ok(a) => a,
        Err(errno) => return r.respond(&Err(errno.raw_os_error())),
    };
    let ctx = Ctx {
        export: &st.export,
        clients: &st.clients,
        id,
        user,
        caller: r.caller(),
        read_only: st.read_only,
        policy: &st.policy,
    };
    if !st.op_delay.is_zero() {
        std::thread::sleep(st.op_delay);
    }
    let out = st
        .policy
        .creds(identity.as_ref())
        .and_then(|c| creds::AsUser::enter(&c))
        .and_then(|_as_user| f(&ctx, input))
        .map_err(|e| e.raw_os_error());
    tracing::trace!(client = id, errno = out.as_ref().err(), "answered");
    r.respond(&out);
    drop(admitted);
}

fn register(e: &Engine, st: &Arc<State>) -> Result<(), rpc_core::RpcError> {
    serve(e, st, STAT, |c, (t, follow)| c.stat(&t, follow))?;
    serve(e, st, OPEN, |c, r| c.open(&r))?;
    serve(e, st, CLOSE, |c, fh| c.close(fh))?;
    serve(e, st, READ, |c, r| c.read(&r))?;
    serve(e, st, WRITE, |c, r| c.write(r))?;
    serve(e, st, TRUNCATE, |c, (t, len)| c.truncate(&t, len))?;
    serve(e, st, FSYNC, |c, (fh, data)| c.fsync(fh, data))?;
    serve(e, st, FALLOCATE, |c, (fh, m, o, l)| {
        c.fallocate(fh, m, o, l)
    })?;
    serve(e, st, UNLINK, |c, p| c.remove(&p, false))?;
    serve(e, st, RMDIR, |c, p| c.remove(&p, true))?;
    serve(e, st, MKDIR, |c, (p, mode)| c.mkdir(&p, mode))?;
    serve(e, st, RENAME, |c, (a, b)| c.rename(&a, &b))?;
    serve(e, st, RENAME2, |c, (a, b, f)| c.rename_with(&a, &b, f))?;
    serve(e, st, READDIR, |c, r| c.readdir(&r))?;
    serve(e, st, SYMLINK, |c, (t, p)| c.symlink(&t, &p))?;
    serve(e, st, READLINK, |c, p| c.readlink(&p))?;
    serve(e, st, STATFS, |c, p| c.statfs(&p))?;
    serve(e, st, CHMOD, |c, (t, mode)| c.chmod(&t, mode))?;
    serve(e, st, UTIMENS, |c, (t, a, m, f)| c.utimens(&t, a, m, f))?;
    serve(e, st, ACCESS, |c, (p, mode)| c.access(&p, mode))?;
    serve(e, st, LINK, |c, (from, to)| c.link(&from, &to))?;
    serve(e, st, CHOWN, |c, (t, u, g)| c.chown(&t, u, g))?;
    serve(e, st, GETXATTR, |c, (t, n)| c.getxattr(&t, &n))?;
    serve(e, st, SETXATTR, |c, (t, n, v, f)| c.setxattr(&t, &n, &v, f))?;
    serve(e, st, LISTXATTR, |c, t| c.listxattr(&t))?;
    serve(e, st, REMOVEXATTR, |c, (t, n)| c.removexattr(&t, &n))?;
    let s = st.clone();
    e.register(SERVER_STATS, move |()| Ok::<_, String>(s.clients.stats()))
}
