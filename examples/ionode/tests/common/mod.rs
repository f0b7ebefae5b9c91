//! Shared by the I/O node tests: a real posix-ship server process and a real `ionode`
//! process in front of it; clients are engines of the test process (one connection each)
//! or `posix-ship` CLI processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ionode::stats::{NodeStats, STATS};
use posix_ship::client::RemoteFs;

/// A fresh directory under the target dir, searchable by everyone.
pub fn scratch(name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    d
}

/// The `posix-ship` binary, built if missing (same profile as this test).
pub fn posix_ship_bin() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_ionode"));
    let dir = dir.parent().expect("target dir");
    let bin = dir.join("posix-ship");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "posix-ship", "--bin", "posix-ship"]);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    assert!(ok && bin.exists(), "cannot build {}", bin.display());
    bin
}

/// A daemon process that printed its address.
pub struct Proc {
    pub child: Child,
    pub addr: String,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("address");
        let addr = line.trim().to_string();
        assert!(addr.contains("://"), "printed {addr:?}");
        Proc { child, addr }
    }

    /// A posix-ship server exporting `export` over sm, trusting uid 0 (this test, the
    /// I/O node's user) as a forwarder unless `args` says otherwise, root not squashed.
    pub fn backend(export: &Path, args: &[&str]) -> Proc {
        Self::backend_on(export, "sm", args)
    }

    /// As `backend`, listening on `listen`.
    pub fn backend_on(export: &Path, listen: &str, args: &[&str]) -> Proc {
        Self::backend_with(export, listen, args, |_| {})
    }

    /// As `backend_on`, its command given to `tune` first (limits, environment).
    pub fn backend_with(
        export: &Path,
        listen: &str,
        args: &[&str],
        tune: impl FnOnce(&mut Command),
    ) -> Proc {
        let mut cmd = Command::new(posix_ship_bin());
        cmd.args(["server", "--listen", listen, "--no-root-squash", "--export"])
            .arg(export)
            .args(args);
        tune(&mut cmd);
        Proc::spawn(&mut cmd)
    }

    /// An I/O node in front of `backend`, over sm.
    pub fn node(backend: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ionode"));
        cmd.args(["serve", "--listen", "sm", "--backend", backend])
            .args(args);
        Proc::spawn(&mut cmd)
    }

    /// A client connection to it.
    pub fn client(&self) -> RemoteFs {
        RemoteFs::connect(&self.addr).expect("connect")
    }

    /// The I/O node's counters.
    pub fn stats(&self) -> NodeStats {
        let fs = self.client();
        let e = fs.engine();
        let peer = e.lookup(&self.addr).expect("lookup");
        e.call(&peer, STATS, &()).wait().expect("stats")
    }

    /// SIGTERM, and whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend exporting a fresh `name` directory and a node in front of it (extra node
/// arguments `node_args`).
pub fn pair(name: &str, node_args: &[&str]) -> (PathBuf, Proc, Proc) {
    let export = scratch(name);
    let backend = Proc::backend(&export, &["--trust-forwarder", "0"]);
    let node = Proc::node(&backend.addr, node_args);
    (export, backend, node)
}

/// Deterministic bytes of file `f` at `off`.
pub fn pattern(f: u64, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((off + i).wrapping_mul(31) ^ f.wrapping_mul(131)) as u8)
        .collect()
}

/// The errno of a call that must fail.
pub fn common_errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap()
}

/// A path as the protocol carries it.
pub fn path(p: &str) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(p.as_bytes().to_vec())
}

/// A backend of `export` at which each operation takes `delay` longer, and a node of one
/// worker in front of it.
pub fn slow_pair(export: &std::path::Path, delay: std::time::Duration) -> (Proc, Proc) {
    let delay = delay.as_micros().to_string();
    let backend = Proc::backend(export, &["--trust-forwarder", "0", "--op-delay-us", &delay]);
    let node = Proc::node(&backend.addr, &["--workers", "1"]);
    (backend, node)
}

/// Four calls of `what` through a node of one worker took `took` at a backend of
/// `delay` per operation: the backend's time (they waited for it), not four times it
/// (one after another), and no stand-in thread (no worker waited).
pub fn held_no_worker(
    node: &Proc,
    took: std::time::Duration,
    delay: std::time::Duration,
    what: &str,
) {
    let stand_ins = stand_ins_of(node.child.id());
    println!("4 {what} through one worker: {took:?}, {stand_ins} stand-in threads");
    assert!(
        took >= delay,
        "{took:?}: the backend's {what} not waited for?"
    );
    assert!(took < 3 * delay, "{took:?}: one after another?");
    assert_eq!(stand_ins, 0, "workers waited on the backend's {what}");
}

/// Threads of process `pid` the engine's pool started to stand in for waiting workers.
pub fn stand_ins_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("qs-worker-stand"))
        .count()
}
