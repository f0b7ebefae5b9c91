//! The remote backend: a [`Service`] over [`Remote`] in this process, on sm, relaying to
//! a server process over tcp. Every operation lands on the server's disk, bulk data
//! crosses both hops, and each caller's identity reaches the server: a second user gets
//! its own rights there, not the relay's (the identity part needs root; CI runs as root).

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;

use common::{ServerProc, errno, scratch, shared_export};
use posix_ship::client::RemoteFs;
use posix_ship::server::{Limits, Remote, Service};
use rpc_core::Engine;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A relay on sm in front of `backend`, trusted by it as a forwarder (this process's uid).
fn relay(backend: &ServerProc) -> (Engine, Arc<Service<Remote>>) {
    let fs = RemoteFs::connect_with(&backend.addr, backend.options()).unwrap();
    let engine = Engine::builder().listen("sm").workers(4).build().unwrap();
    let remote = Arc::new(Remote::new(fs).unwrap());
    let svc = Service::register(&engine, remote, Limits::default(), Vec::new()).unwrap();
    (engine, svc)
}

fn uid() -> String {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }.to_string()
}

#[test]
fn every_kind_of_call_crosses_the_relay_to_the_server() {
    let export = scratch("relay-ops");
    let backend = ServerProc::start(&export, "tcp", &["--trust-forwarder", &uid()]);
    let (engine, svc) = relay(&backend);
    let fs = RemoteFs::connect(&engine.self_addr().to_string()).unwrap();

    fs.create_dir("/d").unwrap();
    assert_eq!(errno(fs.create_dir("/d")), libc::EEXIST);
    fs.write("/d/small", b"hello").unwrap();
    // Larger than a message: pulled by the relay from us, pushed by it to the server.
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    fs.write("/d/big", &big).unwrap();
    assert_eq!(std::fs::read(export.join("d/big")).unwrap(), big, "on disk");
    assert_eq!(
        fs.read("/d/big").unwrap(),
        big,
        "read back through both hops"
    );
    assert_eq!(fs.metadata("/d/big").unwrap().size, big.len() as u64);
    fs.rename("/d/small", "/d/hello").unwrap();
    fs.symlink("hello", "/d/link").unwrap();
    assert_eq!(fs.read_link("/d/link").unwrap(), b"hello");
    let mut names: Vec<_> = fs
        .read_dir("/d")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["big", "hello", "link"]);
    fs.truncate("/d/big", 10).unwrap();
    assert_eq!(std::fs::metadata(export.join("d/big")).unwrap().len(), 10);
    fs.set_permissions("/d/hello", 0o640).unwrap();
    let mode = std::fs::metadata(export.join("d/hello")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o640);
    assert_eq!(errno(fs.read("/nothing")), libc::ENOENT, "errno unchanged");
    for p in ["/d/big", "/d/hello", "/d/link"] {
        fs.remove_file(p).unwrap();
    }
    fs.remove_dir("/d").unwrap();
    assert!(!export.join("d").exists());
    assert_eq!(svc.stats().open_files, 0, "every relay handle closed");
    assert_eq!(
        fs.server_stats().unwrap().open_files,
        0,
        "the relay's own stats"
    );
    // A client that goes away holding a file: the relay closes it at the server too.
    let at_server = backend.client();
    fs.open_raw(b"/held", libc::O_CREAT | libc::O_RDWR, 0o644)
        .unwrap();
    assert_eq!(at_server.server_stats().unwrap().open_files, 1);
    drop(fs);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while at_server.server_stats().unwrap().open_files > 0 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        at_server.server_stats().unwrap().open_files,
        0,
        "closed when lost"
    );
    assert_eq!(svc.stats().open_files, 0);
}

#[test]
fn a_second_user_gets_its_own_rights_at_the_server_through_the_relay() {
    if !is_root() {
        eprintln!("skipped: acting as a second user needs root");
        return;
    }
    let (_base, export) = shared_export("relay-trust");
    let backend = ServerProc::start(&export, "tcp", &["--trust-forwarder", "0"]);
    let (engine, _svc) = relay(&backend);
    let ship = env!("CARGO_BIN_EXE_posix-ship");
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", ship])
            .args(args)
            .env("POSIX_SHIP_SERVER", engine.self_addr().to_string())
            .output()
            .expect("setpriv")
    };
    let out = as_nobody(&["cat", "/secret"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody read root's 0600 file");
    assert!(err.contains("Permission denied"), "{err}");
    let out = as_nobody(&["mkdir", "/pub/n"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(export.join("pub/n")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (NOBODY, NOBODY),
        "made as the caller"
    );
    // Root, through the same relay, is root at the server (not squashed there).
    let fs = RemoteFs::connect(&engine.self_addr().to_string()).unwrap();
    assert_eq!(fs.read("/secret").unwrap(), b"root only\n");
}

#[test]
fn the_relay_command_serves_until_sigterm() {
    use std::io::{BufRead, BufReader};
    let export = scratch("relay-cli");
    let backend = ServerProc::start(&export, "tcp", &["--trust-forwarder", &uid()]);
    let mut relay = Command::new(env!("CARGO_BIN_EXE_posix-ship"))
        .args(["relay", "--listen", "sm"])
        .env("POSIX_SHIP_SERVER", &backend.addr)
        .env("QS_AUTH", &backend.auth)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut addr = String::new();
    BufReader::new(relay.stdout.take().unwrap())
        .read_line(&mut addr)
        .unwrap();
    let fs = RemoteFs::connect(addr.trim()).unwrap();
    fs.write("/via-relay", b"relayed").unwrap();
    assert_eq!(std::fs::read(export.join("via-relay")).unwrap(), b"relayed");
    assert_eq!(fs.read("/via-relay").unwrap(), b"relayed");
    drop(fs);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(relay.id() as i32, libc::SIGTERM) };
    assert!(relay.wait().unwrap().success(), "a clean stop at SIGTERM");
}
