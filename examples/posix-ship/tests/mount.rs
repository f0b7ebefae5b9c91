//! `posix-ship mount`: real programs on the FUSE mount, each script compared with the same
//! script on a local directory; a file deleted while open; the daemon killed and mounted
//! again; unmounting on SIGTERM.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fuse::{Mounted, PROGRAMS, dirs, fuse_usable, mounted, run, setup};
use common::{ServerProc, scratch};

#[test]
fn real_programs_on_the_mount_do_what_they_do_locally() {
    let Some((export, at, local, srv)) = setup("mount-programs") else {
        return;
    };
    let m = Mounted::start(&srv, &at, &[]);
    let there = run(&at, PROGRAMS);
    let here = run(&local, PROGRAMS);
    assert_eq!(there, here);
    assert!(there.contains("built") && there.contains("10000|50005000"));
    assert!(
        export.join("repo/c.txt").exists(),
        "the files are on the server"
    );
    // Unmounted on SIGTERM, and the daemon exits cleanly.
    m.signal(libc::SIGTERM);
    let mut m = m;
    assert!(m.child.wait().unwrap().success());
    assert!(!mounted(&at));
}

#[test]
fn with_the_writeback_cache_small_writes_travel_together() {
    let Some((_, at, local, srv)) = setup("mount-writeback") else {
        return;
    };
    let m = Mounted::start(&srv, &at, &["--writeback-cache"]);
    assert_eq!(run(&at, PROGRAMS), run(&local, PROGRAMS));
    let stats = srv.client();
    let before = stats.server_stats().unwrap().requests;
    let dd = "dd if=/dev/urandom of=w bs=4k count=1024 status=none && sync w && sha256sum w";
    let (there, here) = (
        run(&at, dd),
        run(&local, &dd.replace("/dev/urandom", "../mnt/w")),
    );
    let calls = stats.server_stats().unwrap().requests - before;
    println!("dd bs=4k of 4 MiB with the writeback cache: {calls} calls");
    assert_eq!(
        there.split(' ').next(),
        here.split(' ').next(),
        "same bytes"
    );
    assert!(calls < 256, "{calls} calls for 1024 writes of 4 KiB");
    drop(m);
}

#[test]
fn a_killed_daemon_leaves_errors_not_hangs_and_can_mount_again() {
    let Some((export, at)) = dirs("mount-kill") else {
        return;
    };
    std::fs::write(export.join("f"), b"data").unwrap();
    let srv = ServerProc::start(&export, "tcp", &[]);
    let mut m = Mounted::start(&srv, &at, &[]);
    assert_eq!(std::fs::read(at.join("f")).unwrap(), b"data");
    m.signal(libc::SIGKILL);
    let _ = m.child.wait();
    let t = Instant::now();
    let e = std::fs::read(at.join("f")).expect_err("the daemon is gone");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(m); // lazily unmounts the dead mount
    let m = Mounted::start(&srv, &at, &[]);
    assert_eq!(std::fs::read(at.join("f")).unwrap(), b"data");
    drop(m);
}

#[test]
fn a_missing_server_is_a_clear_error() {
    let at = scratch("mount-noserver");
    let out = Command::new(env!("CARGO_BIN_EXE_posix-ship"))
        .args(["mount"])
        .arg(&at)
        .env_remove("POSIX_SHIP_SERVER")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no server"), "{err}");
}

#[test]
fn a_multi_user_mount_makes_each_request_as_its_caller() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !fuse_usable() {
        return;
    }
    let base = scratch("mount-multi");
    let (export, at) = (base.join("export"), base.join("mnt"));
    std::fs::create_dir_all(export.join("shared")).unwrap();
    std::fs::create_dir_all(&at).unwrap();
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(&export.join("shared"), 0o1777).unwrap();
    std::fs::write(export.join("secret"), "root only").unwrap();
    mode(&export.join("secret"), 0o600).unwrap();
    // The daemon (root) is the forwarder the server trusts.
    let srv = ServerProc::start(&export, "tcp", &["--trust-forwarder", "0"]);
    let m = Mounted::start(&srv, &at, &["--multi-user"]);
    let script = format!(
        "echo mine > {at}/shared/n && cat {at}/shared/n && cat {at}/secret",
        at = at.display()
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(&script)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mine\n", "{err}");
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "{err}"
    );
    let made = std::fs::metadata(export.join("shared/n")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (65534, 65534),
        "created as its caller"
    );
    std::fs::write(at.join("shared/r"), "root's").unwrap();
    assert_eq!(std::fs::metadata(export.join("shared/r")).unwrap().uid(), 0);
    drop(m);
    // A server that does not trust the daemon: a clear error, nothing mounted.
    let untrusting = ServerProc::start(&export, "tcp", &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_posix-ship"))
        .args(["-s", &untrusting.addr, "mount", "--multi-user"])
        .arg(&at)
        .env("QS_AUTH", &untrusting.auth)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--trust-forwarder 0"),
        "{err}"
    );
    assert!(!mounted(&at));
}

#[test]
fn data_cache_modes_decide_what_a_second_read_costs() {
    use std::os::unix::fs::FileExt;
    let Some((export, at, _local, srv)) = setup("mount-data-cache") else {
        return;
    };
    std::fs::write(export.join("f"), vec![7u8; 1 << 20]).unwrap();
    let fs = srv.client();
    // The kernel releases a closed file after close returns: wait for the handles to be
    // let go (`open`: those the test holds), so a release is counted with the open it
    // ends (stats calls are not counted).
    let settle = |open: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if fs.server_stats().unwrap().open_files == open {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a handle was never released"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let calls = |open: u64, f: &mut dyn FnMut()| {
        settle(open);
        let before = fs.server_stats().unwrap().requests;
        f();
        settle(open);
        fs.server_stats().unwrap().requests - before
    };
    // Per mode: calls for a second open and read; calls for a re-read on the same fd.
    let mut cost = Vec::new();
    for mode in ["on", "otoc", "off"] {
        // Long timeouts: whether the kernel asks for attributes again must not depend on
        // how fast this machine runs the test (a lookup or getattr is a call too).
        let args = [
            "--data-cache",
            mode,
            "--attr-timeout",
            "600",
            "--entry-timeout",
            "600",
        ];
        let m = Mounted::start(&srv, &at, &args);
        assert_eq!(std::fs::read(at.join("f")).unwrap().len(), 1 << 20);
        let reopen = calls(0, &mut || {
            assert_eq!(std::fs::read(at.join("f")).unwrap().len(), 1 << 20)
        });
        let file = std::fs::File::open(at.join("f")).unwrap();
        let mut b = vec![0u8; 4096];
        file.read_exact_at(&mut b, 0).unwrap();
        let reread = calls(1, &mut || file.read_exact_at(&mut b, 0).unwrap());
        drop(file);
        cost.push((reopen, reread));
        m.signal(libc::SIGTERM);
        let mut m = m;
        m.child.wait().unwrap();
    }
    let (on, otoc, off) = (cost[0], cost[1], cost[2]);
    assert!(on.0 < otoc.0, "kept across opens: {on:?} vs {otoc:?}");
    assert_eq!(otoc.1, 0, "kept while open: {otoc:?}");
    assert!(off.1 >= 1, "never cached: {off:?}");
}

#[test]
fn rename_flags_work_on_the_mount() {
    let Some((_export, at, _local, srv)) = setup("mount-rename2") else {
        return;
    };
    let m = Mounted::start(&srv, &at, &[]);
    let code = "import ctypes, os, sys\n\
                libc = ctypes.CDLL(None, use_errno=True)\n\
                os.chdir(sys.argv[1])\n\
                open('a', 'w').write('A'); open('b', 'w').write('B')\n\
                def r2(x, y, f):\n\
                \x20   r = libc.renameat2(-100, x.encode(), -100, y.encode(), f)\n\
                \x20   return 0 if r == 0 else ctypes.get_errno()\n\
                print(r2('a', 'b', 1), r2('a', 'b', 2), open('a').read(), open('b').read())\n\
                print(r2('a', 'c', 1), sorted(os.listdir('.')), open('c').read())";
    let out = Command::new("python3")
        .args(["-c", code])
        .arg(&at)
        .output()
        .unwrap();
    drop(m);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{} 0 B A\n0 ['b', 'c'] B\n", libc::EEXIST),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mount of `n` files in `d` (file `i` holds `len(i)` bytes), with timeouts longer
/// than a loaded machine's walk of them (the counts below assume nothing expires).
fn listed_dir(
    name: &str,
    n: usize,
    len: impl Fn(usize) -> usize,
) -> Option<(std::path::PathBuf, std::path::PathBuf, ServerProc, Mounted)> {
    let (export, at, _local, srv) = setup(name)?;
    std::fs::create_dir(export.join("d")).unwrap();
    for i in 0..n {
        std::fs::write(export.join(format!("d/f{i}")), vec![b'x'; len(i)]).unwrap();
    }
    let long = ["--attr-timeout", "60", "--entry-timeout", "60"];
    let m = Mounted::start(&srv, &at, &long);
    Some((export, at, srv, m))
}

/// `script`'s output at `dir`, and the requests the server served meanwhile.
fn counted(srv: &ServerProc, dir: &Path, script: &str) -> (String, u64) {
    let fs = srv.client();
    let before = fs.server_stats().unwrap().requests;
    let out = run(dir, script);
    (out, fs.server_stats().unwrap().requests - before)
}

#[test]
fn a_listing_brings_attributes_so_stat_of_each_entry_costs_no_call() {
    let n = 2000;
    let Some((_export, at, srv, _m)) = listed_dir("mount-readdirplus", n, |i| i % 100) else {
        return;
    };
    // find stats every entry it lists: the sizes must be the files' own.
    let find = "find d -type f -printf '%s\\n' | sort -n | uniq -c | wc -l";
    let (sizes, calls) = counted(&srv, &at, find);
    println!("listing and stat of {n} files through the mount: {calls} calls");
    assert_eq!(sizes.trim(), "100", "every size from 0 to 99");
    assert!(
        calls * 20 <= n as u64,
        "{calls} calls to list and stat {n} files (a lookup each without attributes in the listing)"
    );
}

#[test]
fn ls_l_asks_the_server_nothing_per_file_for_acls_the_listing_ruled_out() {
    let n = 2000;
    let Some((export, at, srv, _m)) = listed_dir("mount-ls-acl", n, |_| 1) else {
        return;
    };
    run(
        &export,
        "python3 -c \"import os; os.setxattr('d/f7', 'user.k', b'v')\"",
    );
    // `ls -l` asks for every file's ACL (and SELinux label) after its stat.
    let modes = "ls -l d | awk 'NR > 1 { print $1 }' | sort | uniq -c";
    let (there, calls) = counted(&srv, &at, modes);
    println!("ls -l of {n} files through the mount: {calls} calls");
    assert_eq!(there, run(&export, modes), "the same modes, no ACL marks");
    assert!(
        calls * 20 <= n as u64,
        "{calls} calls for ls -l of {n} files (an ACL question each without the listing's word)"
    );
    // A file with attributes is asked about; one changed through the mount at once.
    let list = "python3 -c \"import os; print(os.listxattr('d/f7'), os.listxattr('d/f8'))\"";
    let set = "python3 -c \"import os; os.setxattr('d/f8', 'user.n', b'w')\"";
    let listed = run(&at, &format!("ls -l d > /dev/null; {list}; {set}; {list}"));
    assert_eq!(
        listed, "['user.k'] []\n['user.k'] ['user.n']\n",
        "a listed file's attributes as the server has them"
    );
}

#[test]
fn a_sequential_reader_costs_a_call_per_mib() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root may widen the mount's read-ahead");
        return;
    }
    let Some((export, at, _local, srv)) = setup("mount-read-ahead") else {
        return;
    };
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(export.join("big"), &data).unwrap();
    let m = Mounted::start(&srv, &at, &[]);
    let fs = srv.client();
    let before = fs.server_stats().unwrap().requests;
    let read = run(&at, "sha256sum big | cut -c1-16");
    let calls = fs.server_stats().unwrap().requests - before;
    let here = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sha256sum {} | cut -c1-16",
            export.join("big").display()
        ))
        .output()
        .unwrap();
    assert_eq!(read, String::from_utf8_lossy(&here.stdout));
    // At the kernel's own window (128 KiB) this read costs 133 calls here.
    println!("sha256sum of 32 MiB on the mount: {calls} calls");
    assert!(calls <= 48, "{calls} calls for 32 MiB read in order");
    drop(m);
}

#[test]
fn read_only_mounts_refuse_changes_and_statfs_is_the_exports() {
    let Some((export, at, _local, srv)) = setup("mount-ro") else {
        return;
    };
    std::fs::write(export.join("f"), b"kept").unwrap();
    let m = Mounted::start(&srv, &at, &["--read-only"]);
    assert_eq!(std::fs::read(at.join("f")).unwrap(), b"kept");
    for e in [
        std::fs::write(at.join("f"), b"x").unwrap_err(),
        std::fs::write(at.join("new"), b"x").unwrap_err(),
        std::fs::remove_file(at.join("f")).unwrap_err(),
        std::fs::create_dir(at.join("d")).unwrap_err(),
    ] {
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
    assert_eq!(std::fs::read(export.join("f")).unwrap(), b"kept");
    // statfs answers for the export's file system.
    let vfs = |p: &Path| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: all-zero is a valid statvfs, filled by the call.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid buffer.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        (s.f_blocks, s.f_bsize, s.f_files)
    };
    assert_eq!(vfs(&at), vfs(&export));
    drop(m);
}

#[test]
fn negative_lookups_are_remembered_for_their_timeout_only() {
    let Some((export, at, _local, srv)) = setup("mount-negative") else {
        return;
    };
    let fs = srv.client();
    for (timeout, remembered) in [("30", true), ("0", false)] {
        let m = Mounted::start(&srv, &at, &["--negative-timeout", timeout]);
        let name = format!("late-{timeout}");
        assert!(!at.join(&name).exists());
        // Made behind the mount's back: a remembered absence hides it.
        std::fs::write(export.join(&name), b"x").unwrap();
        let before = fs.server_stats().unwrap().requests;
        let seen = at.join(&name).exists();
        let calls = fs.server_stats().unwrap().requests - before;
        assert_eq!(seen, !remembered, "--negative-timeout {timeout}");
        assert_eq!(calls == 0, remembered, "{calls} calls");
        drop(m);
    }
}

/// A server built before `posix.setattr` (this one, with the RPC removed): the mount
/// makes a call per change, as before.
#[test]
fn setattr_falls_back_at_a_server_built_before_it() {
    use posix_ship::proto::{SETATTR, forwarded};
    use posix_ship::server::{Limits, LocalFs, ServerConfig, Service};
    let Some((export, at)) = dirs("mount-old-setattr") else {
        return;
    };
    std::fs::write(export.join("f"), b"0123456789").unwrap();
    let engine = rpc_core::Engine::builder()
        .listen("sm")
        .workers(2)
        .build()
        .unwrap();
    let mut cfg = ServerConfig::new(&export, "sm");
    cfg.policy.root_squash = false;
    let fs = LocalFs::open(&cfg).unwrap();
    let svc = Service::register(&engine, std::sync::Arc::new(fs), Limits::default(), vec![]);
    let _svc = svc.unwrap();
    assert!(engine.deregister(SETATTR) && engine.deregister(forwarded(SETATTR)));
    let m = Mounted::of(&engine.self_addr().to_string(), "none", &at, &[]);
    let script = "chmod 600 f && truncate -s 3 f && touch -d @1000000000 f && stat -c '%a %Y %s' f";
    assert_eq!(run(&at, script), "600 1000000000 3\n");
    drop(m);
}
