//! Shared by the posix-ship tests: a real server process on a temporary export.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use posix_ship::client::{ClientOptions, RemoteFs};

pub mod fuse;
pub mod rig;

/// The transports the library tests run over: tcp and sm, or the comma-separated list
/// in `QS_POSIX_SHIP_TRANSPORTS` (e.g. `ofi+tcp`, with the `ofi` feature).
pub fn transports() -> Vec<String> {
    std::env::var("QS_POSIX_SHIP_TRANSPORTS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|_| vec!["tcp".into(), "sm".into()])
}

/// A fresh directory under the target dir, removed first if present.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A `posix-ship server` process.
pub struct ServerProc {
    pub child: Child,
    pub addr: String,
    pub export: PathBuf,
    /// `QS_AUTH` for its clients (the test's own uid acts as itself, root included).
    pub auth: String,
}

impl ServerProc {
    /// Starts a server exporting `export` over `transport`, with extra arguments. Unless
    /// they name `--auth`, tcp clients prove themselves with a key made for this server
    /// and uid 0 is not squashed: the tests' own user acts as itself.
    pub fn start(export: &Path, transport: &str, args: &[&str]) -> ServerProc {
        Self::start_env(export, transport, args, &[])
    }

    /// As `start`, with environment variables for the server.
    pub fn start_env(
        export: &Path,
        transport: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProc {
        Self::start_with(export, transport, args, env, None)
    }

    /// As `start_env`, the server's descriptor limit (soft and hard) set to `nofile`.
    pub fn start_with(
        export: &Path,
        transport: &str,
        args: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> ServerProc {
        let mut own = Vec::new();
        let mut auth = String::from("none");
        if !args.contains(&"--auth") {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let key = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("qs-test-{}-{n}.key", std::process::id()));
            let _ = std::fs::remove_file(&key);
            rpc_core::Auth::create_key_file(&key).expect("key file");
            auth = format!("key:{}", key.display());
            own = vec![
                "--auth".to_string(),
                auth.clone(),
                "--no-root-squash".into(),
            ];
            if transport.starts_with("ofi") {
                // ofi peers are anonymous (no handshake credential yet): let the anonymous
                // user be the tests' own.
                // SAFETY: geteuid/getegid cannot fail.
                let (u, g) = unsafe { (libc::geteuid(), libc::getegid()) };
                own.extend([
                    "--anon-uid".into(),
                    u.to_string(),
                    "--anon-gid".into(),
                    g.to_string(),
                ]);
            }
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_posix-ship"));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd
            .args(["server", "--export"])
            .arg(export)
            .args(["--listen", transport])
            .args(&own)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("server address");
        let addr = line.trim().to_string();
        assert!(addr.contains("://"), "server printed {addr:?}");
        ServerProc {
            child,
            addr,
            export: export.to_path_buf(),
            auth,
        }
    }

    /// A client connected to it.
    pub fn client(&self) -> RemoteFs {
        RemoteFs::connect_with(&self.addr, self.options()).expect("connect")
    }

    /// Client options with this server's credentials.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            auth: Some(rpc_core::Auth::parse(&self.auth).expect("auth")),
            ..ClientOptions::default()
        }
    }

    /// Sends SIGTERM and waits; returns whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The errno of an I/O error.
pub fn errno(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

/// The interposer library, built if missing (same profile as this test).
pub fn preload_lib() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_posix-ship"));
    let dir = bin.parent().expect("target dir");
    let lib = dir.join("libposix_ship_preload.so");
    let release = dir.ends_with("release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "-q", "-p", "posix-ship-preload"]);
    if release {
        cmd.arg("--release");
    }
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    assert!(ok && lib.exists(), "cannot build {}", lib.display());
    lib
}

/// (For the tests that act as a second user.) An export with a root-only file and a sticky world-writable directory, in a tree the
/// second user can reach.
pub fn shared_export(name: &str) -> (PathBuf, PathBuf) {
    let base = scratch(name);
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let export = base.join("export");
    std::fs::create_dir_all(export.join("pub")).unwrap();
    std::fs::set_permissions(&export, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(export.join("pub"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(export.join("secret"), b"root only\n").unwrap();
    std::fs::set_permissions(
        export.join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(base.join("mine.txt"), b"made by nobody\n").unwrap();
    std::fs::set_permissions(
        base.join("mine.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    (base, export)
}

/// Runs `prog args` under the interposer on `mount` with extra environment; it must
/// succeed. Returns its output and the requests the server served meanwhile.
pub fn interposed(
    srv: &ServerProc,
    mount: &str,
    env: &[(&str, &str)],
    prog: &str,
    args: &[&str],
) -> (std::process::Output, u64) {
    let fs = srv.client();
    let before = fs.server_stats().unwrap().requests;
    let out = Command::new(prog)
        .args(args)
        .env("LD_PRELOAD", preload_lib())
        .env("POSIX_SHIP_SERVER", &srv.addr)
        .env("QS_AUTH", &srv.auth)
        .env("POSIX_SHIP_MOUNT", mount)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (The stats query is not counted among requests.)
    (out, fs.server_stats().unwrap().requests - before)
}
