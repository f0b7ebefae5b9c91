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
    // A relay closes upstream on a close: it lends no handles (children open by path).
    let o = fs.open_raw(b"/d/big", libc::O_RDONLY, 0).unwrap();
    assert_eq!(errno(fs.lend(o.fh)), libc::ENOSYS);
    fs.close_raw(o.fh).unwrap();
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

/// A server built before `posix.readdir_plus_xattrs` (this one, with the RPC removed).
fn old_server(export: &std::path::Path) -> Engine {
    let engine = Engine::builder().listen("sm").workers(2).build().unwrap();
    let mut cfg = posix_ship::server::ServerConfig::new(export, "sm");
    cfg.policy.root_squash = false;
    let fs = posix_ship::server::LocalFs::open(&cfg).unwrap();
    // Trusting this process's relays as forwarders.
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let svc = Service::register(&engine, Arc::new(fs), Limits::default(), vec![me]).unwrap();
    std::mem::forget(svc);
    use posix_ship::proto::{READDIR_PLUS_XATTRS, forwarded};
    assert!(engine.deregister(READDIR_PLUS_XATTRS));
    assert!(engine.deregister(forwarded(READDIR_PLUS_XATTRS)));
    engine
}

/// Lists `/d` asking whether entries have extended attributes, twice (the second time
/// the client knows the server cannot tell); the answers' `xattrs`, by name.
fn xattrs_listed(fs: &RemoteFs) -> Vec<(String, Option<bool>)> {
    let mut out = Vec::new();
    for _ in 0..2 {
        let o = fs
            .open_raw(b"/d", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .unwrap();
        let req = posix_ship::proto::ReaddirReq {
            fh: o.fh,
            max: 64,
            restart: true,
        };
        let page = fs.readdir_plus_page(&req, true).unwrap();
        fs.close_raw(o.fh).unwrap();
        let mut v: Vec<_> = page
            .entries
            .into_iter()
            .map(|(e, a)| {
                (
                    String::from_utf8_lossy(&e.name).into_owned(),
                    a.and_then(|a| a.xattrs),
                )
            })
            .filter(|(n, _)| n != "." && n != "..")
            .collect();
        v.sort();
        out = v;
    }
    out
}

#[test]
fn listings_with_xattrs_fall_back_at_a_server_built_before_them() {
    let export = scratch("relay-old-server");
    std::fs::create_dir_all(export.join("d")).unwrap();
    std::fs::write(export.join("d/plain"), b"x").unwrap();
    std::fs::write(export.join("d/tagged"), b"y").unwrap();
    let tagged = std::ffi::CString::new(export.join("d/tagged").to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated path and name, a 1-byte value.
    let r = unsafe {
        libc::setxattr(
            tagged.as_ptr(),
            c"user.k".as_ptr(),
            b"v".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());

    // A client of the old server: plain listings, no error.
    let old = old_server(&export);
    let fs = RemoteFs::connect(&old.self_addr().to_string()).unwrap();
    let none = vec![("plain".to_string(), None), ("tagged".to_string(), None)];
    assert_eq!(xattrs_listed(&fs), none);

    // A relay (as the I/O node) in front of it: it answers the new RPC, falling back
    // at the old server behind it.
    let engine = Engine::builder().listen("sm").workers(4).build().unwrap();
    let behind = RemoteFs::connect(&old.self_addr().to_string()).unwrap();
    let svc = Service::register(
        &engine,
        Arc::new(Remote::new(behind).unwrap()),
        Limits::default(),
        Vec::new(),
    )
    .unwrap();
    let via = RemoteFs::connect(&engine.self_addr().to_string()).unwrap();
    assert_eq!(xattrs_listed(&via), none);
    drop(svc);

    // A current server tells.
    let new = ServerProc::start(&export, "sm", &[]);
    let fs = RemoteFs::connect_with(&new.addr, new.options()).unwrap();
    assert_eq!(
        xattrs_listed(&fs),
        vec![
            ("plain".to_string(), Some(false)),
            ("tagged".to_string(), Some(true))
        ]
    );
}
