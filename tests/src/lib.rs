//! Shared pieces of Quicksilver's tests: the RPCs of the test server, a handle on a server
//! process, and the plugin conformance suite that every NA plugin runs.
#![deny(missing_docs)]

pub mod conformance;
pub mod rpcs;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `qs-test-server` process, killed when dropped.
pub struct ServerProcess {
    /// The child process.
    pub child: Child,
    /// The address it printed.
    pub addr: String,
}

impl ServerProcess {
    /// Starts the test server with `args` and extra environment, and reads its address.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut cmd = Command::new(bin("qs-test-server"));
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.env_remove("RPC_TRANSPORT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn qs-test-server");
        let out = child.stdout.take().expect("server stdout");
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .expect("read server address");
        let addr = line
            .trim()
            .strip_prefix("ADDR ")
            .unwrap_or_else(|| panic!("server printed {line:?}"))
            .to_owned();
        ServerProcess { child, addr }
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The path of a binary of this package, built beside the test executables
/// (`target/<profile>/deps/test-…` → `target/<profile>/NAME`).
pub fn bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    dir.join(name)
}

/// The transport the process tests run over, from `QS_TEST_TRANSPORT`: `tcp` (default),
/// `sm`, or (built with the `ofi` feature) `ofi+tcp`, `ofi+shm`, `ofi+sockets`.
/// `scripts/test-all` runs them over each.
pub fn transport() -> String {
    std::env::var("QS_TEST_TRANSPORT")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "tcp".into())
}

/// An address to listen on over [`transport`]: an ephemeral port, or a fresh name.
pub fn listen_addr() -> String {
    rpc_core::transport::listen_address(Some(&transport()))
        .expect("QS_TEST_TRANSPORT names a transport built into this program")
        .to_string()
}

/// A client engine over [`transport`] with default settings.
pub fn client() -> rpc_core::Engine {
    rpc_core::Engine::new(&listen_addr()).expect("client engine")
}

/// A raw TCP-plugin frame, for tests that speak the wire protocol by hand.
pub fn raw_frame(kind: na_tcp::frame::Kind, tag: u64, body: &[u8]) -> Vec<u8> {
    let mut v = na_tcp::frame::Header {
        kind,
        len: body.len() as u32,
        tag,
    }
    .encode()
    .to_vec();
    v.extend_from_slice(body);
    v
}

/// A raw client's hello to the server at `to`, claiming to listen at `from`, with no
/// credential (servers without authentication accept it).
pub fn raw_hello(from: &str, to: &str) -> Vec<u8> {
    let (from, to) = (from.parse().unwrap(), to.parse().unwrap());
    raw_frame(
        na_tcp::frame::Kind::Hello,
        0,
        &na_tcp::auth::encode_hello(&from, &to, b""),
    )
}

/// Reads the challenge a tcp server sends first on every connection.
pub fn read_challenge(s: &mut impl std::io::Read) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let f = na_tcp::frame::Header::decode(&h, 1 << 20).unwrap();
    assert_eq!(f.kind, na_tcp::frame::Kind::Challenge);
    let mut body = vec![0u8; f.len as usize];
    s.read_exact(&mut body).unwrap();
}

/// Serializes the tests that take this lock (timing-sensitive ones, or ones that load both
/// cores), within one test binary; a test that panicked does not poison it for the others.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs to stderr when `RUST_LOG` is set (call at the top of a test or binary).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}

/// A minimal executor: polls on a thread-parking waker.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
