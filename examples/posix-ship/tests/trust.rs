//! Trust boundaries: a second user against a root server acts with its own rights only,
//! over sm (the kernel's credentials) and over tcp (a shared key, MUNGE, or anonymous);
//! clients without a valid credential are refused; a descriptor cannot send the server
//! to a third party. The tests that act as a second user need root (CI runs as root).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{ServerProc, errno, preload_lib, scratch, shared_export as export};
use posix_ship::client::{ClientOptions, RemoteFs};
use posix_ship::proto::{WRITE, WriteData, WriteReq};
use rpc_core::{Access, Auth, Seg};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Every directory from / to `p` must be searchable by the second user.
fn reachable(p: &Path) {
    for a in p.ancestors() {
        let m = std::fs::metadata(a).unwrap().permissions().mode();
        assert!(
            m & 0o001 != 0,
            "{} is not searchable by others",
            a.display()
        );
    }
}

/// Runs `posix-ship ARGS` (or `python3 -c` through the interposer) as uid `nobody`.
fn as_nobody(srv: &ServerProc, auth: &str, prog: &[&str], interposed: bool) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(prog)
        .env("POSIX_SHIP_SERVER", &srv.addr)
        .env("QS_AUTH", auth);
    if interposed {
        c.env("LD_PRELOAD", preload_lib())
            .env("POSIX_SHIP_MOUNT", "/fwd");
    }
    c.output().expect("setpriv")
}

/// The second user's view: it reads and creates what its own rights allow, nothing more.
fn nobody_has_only_its_own_rights(srv: &ServerProc, base: &Path, auth: &str) {
    let ship = env!("CARGO_BIN_EXE_posix-ship");
    reachable(Path::new(ship));
    let out = as_nobody(srv, auth, &[ship, "cat", "/secret"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody read root's 0600 file");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("root only"));
    let mine = base.join("mine.txt");
    let out = as_nobody(
        srv,
        auth,
        &[ship, "put", mine.to_str().unwrap(), "/secret"],
        false,
    );
    assert!(!out.status.success(), "nobody overwrote root's file");
    assert_eq!(
        std::fs::read(srv.export.join("secret")).unwrap(),
        b"root only\n"
    );
    let out = as_nobody(
        srv,
        auth,
        &[ship, "put", mine.to_str().unwrap(), "/pub/m"],
        false,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(srv.export.join("pub/m")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (NOBODY, NOBODY),
        "created as the caller"
    );
    // A setuid bit set by a client never lands (nosuid), through the interposer's chmod.
    let out = as_nobody(srv, auth, &["chmod", "4755", "/fwd/pub/m"], true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(srv.export.join("pub/m")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid bit stripped");
    // Root's own file in the sticky directory cannot be removed by nobody.
    std::fs::write(srv.export.join("pub/roots"), b"x").unwrap();
    let out = as_nobody(srv, auth, &[ship, "rm", "/pub/roots"], false);
    assert!(!out.status.success(), "sticky directory ignored");
    assert!(srv.export.join("pub/roots").exists());
}

/// A copy of the server's key that the second user owns (key holders claim who they are).
fn nobody_key(base: &Path, auth: &str) -> String {
    let src = auth.strip_prefix("key:").expect("a key server");
    let dst = base.join("nobody.key");
    std::fs::copy(src, &dst).unwrap();
    std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("key:{}", dst.display())
}

/// A root server on a fresh export for the second-user tests; `None` (the test is skipped,
/// as the README says) when the tests do not run as root.
fn root_server(name: &str, transport: &str, args: &[&str]) -> Option<(PathBuf, ServerProc)> {
    if !is_root() {
        eprintln!("skipped: needs root to act as a second user");
        return None;
    }
    let (base, export) = export(name);
    Some((base, ServerProc::start(&export, transport, args)))
}

#[test]
fn a_second_user_acts_with_its_own_rights_over_sm() {
    let Some((base, srv)) = root_server("trust-sm", "sm", &[]) else {
        return;
    };
    nobody_has_only_its_own_rights(&srv, &base, "none");
}

#[test]
fn a_second_user_acts_with_its_own_rights_over_tcp_with_a_shared_key() {
    let Some((base, srv)) = root_server("trust-key", "tcp", &[]) else {
        return;
    };
    let auth = nobody_key(&base, &srv.auth);
    nobody_has_only_its_own_rights(&srv, &base, &auth);
}

#[test]
fn a_second_user_acts_with_its_own_rights_over_tcp_with_munge() {
    let Some((base, srv)) = root_server("trust-munge", "tcp", &["--auth", "munge"]) else {
        return;
    };
    nobody_has_only_its_own_rights(&srv, &base, "munge");
    // Root through MUNGE is squashed by default: it cannot read its own 0600 file.
    let fs = RemoteFs::connect_with(
        &srv.addr,
        ClientOptions {
            auth: Some(Auth::Munge),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    assert_eq!(common::errno(fs.read("/secret")), libc::EACCES);
}

#[test]
fn without_authentication_everyone_is_the_anonymous_user() {
    let (_base, export) = export("trust-none");
    let srv = ServerProc::start(&export, "tcp", &["--auth", "none"]);
    let fs = RemoteFs::connect(&srv.addr).unwrap();
    if is_root() {
        assert_eq!(common::errno(fs.read("/secret")), libc::EACCES);
        fs.write("/pub/anon", b"x").unwrap();
        let meta = std::fs::metadata(export.join("pub/anon")).unwrap();
        assert_eq!(
            meta.uid(),
            NOBODY,
            "acts as the anonymous uid, never as root"
        );
    } else {
        // A server that is not root cannot act as another user: it refuses.
        assert_eq!(common::errno(fs.metadata("/secret")), libc::EACCES);
    }
}

#[test]
fn links_owners_and_attributes_are_checked_as_the_caller() {
    use posix_ship::proto::{CHOWN, LINK, SETXATTR, Target};
    use serde_bytes::ByteBuf;
    let Some((_base, srv)) = root_server("trust-meta", "tcp", &["--auth", "none"]) else {
        return;
    };
    let export = &srv.export;
    let fs = RemoteFs::connect(&srv.addr).unwrap();
    let b = |s: &str| ByteBuf::from(s.as_bytes().to_vec());
    fs.write("/pub/anon", b"x").unwrap();
    let path = |s: &str| Target::Path(b(s));
    // The anonymous user cannot give its file to root, nor hard-link root's 0600 file
    // (protected_hardlinks), nor set attributes outside user.* (a root server keeps
    // CAP_SYS_ADMIN: trusted.* and security.capability would be its).
    assert_eq!(
        common::errno(fs.call(CHOWN, &(path("/pub/anon"), Some(0), None))),
        libc::EPERM
    );
    let protected =
        std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").is_ok_and(|v| v.trim() == "1");
    if protected {
        assert_eq!(
            common::errno(fs.call(LINK, &(b("/secret"), b("/pub/stolen")))),
            libc::EPERM
        );
    }
    for name in ["trusted.x", "security.capability", "system.evil"] {
        let req = (path("/pub/anon"), b(name), b("v"), 0);
        assert_eq!(
            common::errno(fs.call(SETXATTR, &req)),
            libc::EOPNOTSUPP,
            "{name}"
        );
    }
    let req = (path("/pub/anon"), b("user.note"), b("v"), 0);
    fs.call(SETXATTR, &req).unwrap();
    fs.call(LINK, &(b("/pub/anon"), b("/pub/again"))).unwrap();
    let meta = std::fs::metadata(export.join("pub/again")).unwrap();
    assert_eq!((meta.uid(), meta.nlink()), (NOBODY, 2));
}

#[test]
fn a_port_nobody_listens_on_is_connection_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = RemoteFs::connect(&format!("tcp://127.0.0.1:{port}"))
        .err()
        .expect("nobody listens");
    assert_eq!(e.raw_os_error(), None, "a message with its kind: {e}");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn a_tcp_client_without_a_valid_credential_is_refused() {
    let (base, export) = export("trust-refused");
    let srv = ServerProc::start(&export, "tcp", &[]);
    let no_key = RemoteFs::connect_with(
        &srv.addr,
        ClientOptions {
            auth: Some(Auth::None),
            ..ClientOptions::default()
        },
    );
    let e = no_key.err().expect("connected without the key").to_string();
    assert!(e.contains("shared key"), "{e}");
    let wrong = base.join("wrong.key");
    Auth::create_key_file(&wrong).unwrap();
    let bad = RemoteFs::connect_with(
        &srv.addr,
        ClientOptions {
            auth: Some(Auth::key_file(&wrong).unwrap()),
            ..ClientOptions::default()
        },
    );
    let e = bad.err().expect("connected with another key").to_string();
    assert!(e.contains("does not verify"), "{e}");
    // The server is alive and serves a good client.
    assert!(srv.client().metadata("/pub").is_ok());
}

#[test]
fn a_descriptor_naming_a_third_party_moves_data_with_the_caller_only() {
    let (_base, export) = export("trust-ssrf");
    std::fs::write(export.join("pub/t"), b"").unwrap();
    let srv = ServerProc::start(&export, "tcp", &[]);
    let fs = srv.client();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let elsewhere = format!("tcp://{}", listener.local_addr().unwrap());
    let f = fs.open_with("/pub/t", libc::O_WRONLY, 0).unwrap();
    let data = vec![0x5au8; 512 << 10];
    let b = fs
        .engine()
        .expose(vec![Seg::from(&data[..])], Access::ReadOnly)
        .unwrap();
    let mut d = b.descriptor();
    d.owner = elsewhere.parse().unwrap();
    let req = WriteReq {
        fh: f.handle().expect("open"),
        offset: Some(0),
        data: WriteData::Bulk(d),
    };
    let n = fs.call(WRITE, &req).unwrap();
    assert_eq!(n.n, data.len() as u64);
    assert_eq!(std::fs::read(export.join("pub/t")).unwrap(), data);
    let e = listener
        .accept()
        .expect_err("the server dialled the descriptor's address");
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn one_way_requests_belong_to_their_client_and_leave_no_fd_behind() {
    use posix_ship::proto::{OPEN, OpenReq};
    let (_base, export) = export("trust-oneway");
    std::fs::write(export.join("pub/f"), b"x").unwrap();
    let srv = ServerProc::start(&export, "tcp", &[]);
    let watcher = srv.client();
    {
        // OPEN sent one-way: the answer (and its handle) is never seen by the sender.
        let fs = srv.client();
        let one_way: rpc_core::Rpc<OpenReq, ()> = rpc_core::Rpc::new(OPEN.name());
        let server = fs.engine().lookup(&srv.addr).unwrap();
        let req = OpenReq {
            path: serde_bytes::ByteBuf::from(b"/pub/f".to_vec()),
            flags: libc::O_RDONLY,
            mode: 0,
        };
        // In batches within the per-client bounds (past them one-way requests are
        // dropped like any other: that is tested in `bounds`).
        for batch in 1..=4 {
            for _ in 0..50 {
                fs.engine().notify(&server, one_way, &req).unwrap();
            }
            let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while watcher.server_stats().unwrap().open_files < 50 * batch {
                assert!(
                    std::time::Instant::now() < until,
                    "one-way opens not served"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    // The sender is gone: its handles, one-way ones included, are closed.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while watcher.server_stats().unwrap().open_files > 0 {
        assert!(
            std::time::Instant::now() < until,
            "{} files left open by a client that left",
            watcher.server_stats().unwrap().open_files
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A user the server does not serve (`--allow-uid`) gets `EACCES` for every operation,
/// those answered later (open, stat, unlink) included, and its refused requests do not
/// stay counted against its bounds (200 of them, past the 64 a client may have in flight).
#[test]
fn a_user_the_server_does_not_serve_is_refused_and_not_left_counted() {
    let export = scratch("trust-allow-uid");
    std::fs::write(export.join("f"), b"x").unwrap();
    let srv = ServerProc::start(&export, "sm", &["--allow-uid", "4242"]);
    let fs = posix_ship::client::RemoteFs::connect_with(&srv.addr, srv.options()).unwrap();
    for _ in 0..200 {
        assert_eq!(errno(fs.open("/f")), libc::EACCES, "open");
        assert_eq!(errno(fs.metadata("/f")), libc::EACCES, "stat");
        assert_eq!(errno(fs.remove_file("/f")), libc::EACCES, "unlink");
    }
    let s = fs.server_stats().unwrap();
    assert_eq!((s.in_flight, s.open_files), (0, 0), "nothing left counted");
    assert!(export.join("f").exists());
}
