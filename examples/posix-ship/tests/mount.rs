//! `posix-ship mount`: real programs on the FUSE mount, each script compared with the same
//! script on a local directory; a file deleted while open; the daemon killed and mounted
//! again; unmounting on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ServerProc, scratch};

/// A `posix-ship mount` process; killed and lazily unmounted if the test fails.
struct Mounted {
    child: Child,
    at: PathBuf,
}

impl Mounted {
    fn start(srv: &ServerProc, at: &Path, args: &[&str]) -> Mounted {
        let mut child = Command::new(env!("CARGO_BIN_EXE_posix-ship"))
            .args(["-s", &srv.addr, "mount"])
            .arg(at)
            .args(args)
            .env("QS_AUTH", &srv.auth)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn mount");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("mounted"), "mount said {line:?}");
        Mounted {
            child,
            at: at.to_path_buf(),
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.at)
            .stderr(Stdio::null())
            .status();
    }
}

fn mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let at = at.canonicalize().unwrap_or(at.to_path_buf());
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(at.to_str().unwrap()))
}

/// Whether FUSE can be used here.
fn fuse_usable() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if !ok {
        println!("skipped: /dev/fuse cannot be opened here");
    }
    ok
}

/// Runs `script` with bash in `dir`, with a fixed git identity and time; its stdout.
fn run(dir: &Path, script: &str) -> String {
    // Its own HOME per test and place: tests run in parallel, and `scratch` empties it.
    let base = dir.parent().unwrap().file_name().unwrap().to_string_lossy();
    let place = dir.file_name().unwrap().to_string_lossy();
    let home = scratch(&format!("{base}-home-{place}"));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("HOME", &home)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "in {}: {}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const PROGRAMS: &str = r#"
mkdir d && cd d && echo hello > f && echo more >> f && wc -l < f && tr a-z A-Z < f | cat
cd .. && pwd -P >/dev/null
exec 3< d/f; rm d/f; cat <&3; exec 3<&-
git init -q repo && cd repo && echo a > a.txt && mkdir sub && echo b > sub/b.txt
git add -A && git commit -qm one && git mv a.txt c.txt && git commit -qm two
git log --format=%H%n%s && git status --short && git fsck --no-progress 2>&1 | wc -l
git gc -q && git clone -q . ../clone && cd ../clone && git log -1 --format=%s
cd .. && tar czf t.tgz repo && mkdir x && tar xzf t.tgz -C x && diff -r repo x/repo && echo tar ok
mkdir proj && printf '#include <stdio.h>\nint main(void){puts("built");return 0;}\n' > proj/main.c
printf 'main: main.c\n\tcc -o main main.c\n' > proj/Makefile && make -s -C proj && ./proj/main
sqlite3 db "pragma journal_mode=wal; create table t(x);
  with recursive c(i) as (select 1 union all select i+1 from c where i<10000)
  insert into t select i from c; select count(*), sum(x) from t;"
python3 -c "import os; os.chdir('repo'); print(sorted(f for _, _, fs in os.walk('.') for f in fs if 'objects' not in _))"
perl -MFile::Find -e 'my @n; find(sub { push @n, $_ if -f && $File::Find::dir !~ /objects/ }, "repo"); print join(",", sort @n), "\n"'
cp -a repo copy && diff -r repo copy && echo cp ok
ln -s c.txt repo/link && readlink repo/link && cat repo/link
mv copy moved && ls moved | sort | sed -n 1,2p
ln repo/c.txt hard && cat hard && stat -c %h hard repo/c.txt
chown 1:2 hard && stat -c %u:%g hard repo/c.txt
python3 -c "import os; os.setxattr('hard', 'user.k', b'v'); print(os.getxattr('hard', 'user.k'), os.listxattr('hard')); os.removexattr('hard', 'user.k'); print(os.listxattr('hard'))"
cp -a hard kept && stat -c %u:%g kept
"#;

/// An export with a server, a mount point and a local directory to compare with; `None`
/// where FUSE cannot be used.
fn setup(name: &str) -> Option<(PathBuf, PathBuf, PathBuf, ServerProc)> {
    if !fuse_usable() {
        return None;
    }
    let base = scratch(name);
    let (export, at, local) = (base.join("export"), base.join("mnt"), base.join("local"));
    for d in [&export, &at, &local] {
        std::fs::create_dir_all(d).unwrap();
    }
    let srv = ServerProc::start(&export, "tcp", &[]);
    Some((export, at, local, srv))
}

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
    if !fuse_usable() {
        return;
    }
    let base = scratch("mount-kill");
    let (export, at) = (base.join("export"), base.join("mnt"));
    std::fs::create_dir_all(&export).unwrap();
    std::fs::create_dir_all(&at).unwrap();
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
    let calls = |f: &mut dyn FnMut()| {
        let before = fs.server_stats().unwrap().requests;
        f();
        fs.server_stats().unwrap().requests - before
    };
    // Per mode: calls for a second open and read; calls for a re-read on the same fd.
    let mut cost = Vec::new();
    for mode in ["on", "otoc", "off"] {
        let m = Mounted::start(&srv, &at, &["--data-cache", mode]);
        assert_eq!(std::fs::read(at.join("f")).unwrap().len(), 1 << 20);
        let reopen = calls(&mut || assert_eq!(std::fs::read(at.join("f")).unwrap().len(), 1 << 20));
        let file = std::fs::File::open(at.join("f")).unwrap();
        let mut b = vec![0u8; 4096];
        file.read_exact_at(&mut b, 0).unwrap();
        let reread = calls(&mut || file.read_exact_at(&mut b, 0).unwrap());
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
