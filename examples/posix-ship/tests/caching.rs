//! Client-side caching through the interposer, measured in server requests: a sequential
//! reader is read ahead (few large requests instead of one per 4 KiB read), writes through
//! the process are seen by its later reads, and the setting turns it off.

mod common;

use std::process::{Command, Output};

use common::{ServerProc, interposed, scratch};

const MOUNT: &str = "/qs-cache";

/// Runs `prog args` under the interposer on [`MOUNT`] (see [`common::interposed`]).
fn shipped(srv: &ServerProc, env: &[(&str, &str)], prog: &str, args: &[&str]) -> (Output, u64) {
    common::interposed(srv, MOUNT, env, prog, args)
}

fn sha(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_sequential_reader_makes_few_requests_and_reads_every_byte_right() {
    let export = scratch("cache-readahead");
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(export.join("big"), &data).unwrap();
    let srv = ServerProc::start(&export, "sm", &[]);
    let local = Command::new("sha256sum")
        .arg(export.join("big"))
        .output()
        .unwrap();
    let path = format!("{MOUNT}/big");
    let (out, calls) = shipped(&srv, &[], "sha256sum", &[&path]);
    assert_eq!(
        sha(&out),
        sha(&local),
        "the bytes read ahead are the file's"
    );
    // 16 MiB in windows of 128K doubling to 8M: a handful of reads (4096 without),
    // plus open, stat and close.
    assert!(calls <= 16, "{calls} requests for a 16 MiB sequential read");
    let (out, off) = shipped(
        &srv,
        &[("POSIX_SHIP_READAHEAD", "0")],
        "sha256sum",
        &[&path],
    );
    assert_eq!(sha(&out), sha(&local));
    assert!(off >= 512, "off: {off} requests (one per stdio buffer)");
    // Random reads are not read ahead: `tail -c` seeks to the end and reads once.
    let (out, calls) = shipped(&srv, &[], "tail", &["-c", "100", &path]);
    assert_eq!(out.stdout, &data[data.len() - 100..]);
    assert!(calls <= 6, "{calls}");
}

const PY: &str = r#"
import os, sys
p = sys.argv[1]
with open(p, "wb") as f:
    f.write(bytes(range(256)) * 4096)
r = open(p, "rb", buffering=0)
a = r.read(4096); b = r.read(4096)
w = open(p, "r+b", buffering=0)
w.seek(8192); w.write(b"X" * 4096)
c = r.read(4096)
print(a[:2].hex(), b[:2].hex(), c[:2].hex())
"#;

#[test]
fn a_write_through_another_descriptor_is_seen_by_the_next_read() {
    let export = scratch("cache-coherent");
    let srv = ServerProc::start(&export, "sm", &[]);
    let path = format!("{MOUNT}/f");
    let (out, _) = shipped(&srv, &[], "python3", &["-c", PY, &path]);
    // The third read comes from the window the second one filled, unless the write
    // through the other descriptor dropped it.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0001 0001 5858"
    );
}

const PY_WB: &str = r#"
import os, subprocess, sys
p = sys.argv[1]
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
# Overlapping writes in flight together land in order: the last one wins.
for i in range(200):
    os.pwrite(fd, bytes([i]) * 4096, 0)
# Sequential writes through the shared offset.
for i in range(1, 64):
    os.write(fd, bytes([i]) * 4096) if i > 1 else os.lseek(fd, 4096, 0)
# A program started now reads what was written.
out = subprocess.run(["od", "-An", "-tu1", "-N1", "-j", "0", p], capture_output=True, text=True)
print("child", out.stdout.split())
r = os.open(p, os.O_RDONLY)
print("first", os.pread(r, 4096, 0) == bytes([199]) * 4096)
print("size", os.fstat(fd).st_size)
# An error of a write already acknowledged is the next fsync's (and reported once).
print("acknowledged", os.pwrite(fd, b"x" * 4096, 2**63 - 100))
try:
    os.fsync(fd); print("fsync ok")
except OSError as e:
    print("fsync", e.errno)
os.fsync(fd); print("then fsync ok")
os.pwrite(fd, b"y" * 4096, 2**63 - 100)
try:
    os.close(fd); print("close ok")
except OSError as e:
    print("close", e.errno)
"#;

#[test]
fn writes_go_behind_in_order_and_their_errors_come_at_fsync_and_close() {
    let export = scratch("cache-writebehind");
    let srv = ServerProc::start(&export, "sm", &[]);
    let path = format!("{MOUNT}/w");
    let (out, _) = shipped(&srv, &[], "python3", &["-c", PY_WB, &path]);
    let out = String::from_utf8_lossy(&out.stdout);
    let efbig = format!("fsync {}", libc::EFBIG);
    for want in [
        "child ['199']",
        "first True",
        "size 258048",
        "acknowledged 4096",
        efbig.as_str(),
        "then fsync ok",
        &format!("close {}", libc::EFBIG),
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let on_disk = std::fs::read(export.join("w")).unwrap();
    assert_eq!(on_disk.len(), 63 * 4096);
    assert!(on_disk[..4096].iter().all(|&b| b == 199));
    // Block k (1..=62) was the write of value k + 1 through the shared offset.
    for k in 1..63 {
        assert!(
            on_disk[k * 4096..(k + 1) * 4096]
                .iter()
                .all(|&b| b == k as u8 + 1)
        );
    }
}

#[test]
fn a_server_bound_on_requests_in_flight_slows_writes_behind_but_fails_none() {
    let export = scratch("cache-eagain");
    let src = export.parent().unwrap().join("eagain-src");
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    // Two requests in flight per client: most writes behind are refused (EAGAIN) at first.
    let srv = ServerProc::start(&export, "sm", &["--max-in-flight", "2"]);
    let of = format!("of={MOUNT}/copy");
    let iff = format!("if={}", src.display());
    shipped(&srv, &[], "dd", &[&iff, &of, "bs=4k", "status=none"]);
    assert!(std::fs::read(export.join("copy")).unwrap() == data);
}

#[test]
fn dot_dot_at_the_mount_root_is_the_local_parent() {
    let export = scratch("interpose-dotdot");
    std::fs::write(export.join("f"), b"x").unwrap();
    let srv = ServerProc::start(&export, "sm", &[]);
    let (out, _) = shipped(&srv, &[], "ls", &["-la", MOUNT]);
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.lines().any(|l| l.ends_with(" ..")), "{out}");
    let ino = |p: &str| {
        let (o, _) = shipped(&srv, &[], "stat", &["-c", "%i", p]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(ino(&format!("{MOUNT}/..")), ino("/"));
    assert_eq!(ino(&format!("{MOUNT}/a/../../tmp")), ino("/tmp"));
    assert_ne!(
        ino(&format!("{MOUNT}/")),
        ino("/"),
        "the mount root is the export's"
    );
}

/// `posix-ship put` and `get` of `data` through `srv`; the file must come back intact.
fn put_get(srv: &ServerProc, name: &str, data: &[u8]) {
    let dir = scratch(&format!("local-{name}"));
    let (src, back) = (dir.join("src"), dir.join("back"));
    std::fs::write(&src, data).unwrap();
    let ship = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_posix-ship"))
            .args(args)
            .env("POSIX_SHIP_SERVER", &srv.addr)
            .env("QS_AUTH", &srv.auth)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let remote = format!("/{name}");
    ship(&["put", src.to_str().unwrap(), &remote]);
    assert!(std::fs::read(srv.export.join(name)).unwrap() == data, "put");
    ship(&["get", &remote, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "get");
}

#[test]
fn put_and_get_copy_whole_files_even_when_the_server_answers_short() {
    let data: Vec<u8> = (0..(20u32 << 20) + 12345)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let srv = ServerProc::start(&scratch("putget"), "sm", &[]);
    put_get(&srv, "plain", &data);
    put_get(&srv, "empty", &[]);
    // 1 MiB of staging per client: every large read and write is answered short.
    let tight = ServerProc::start(&scratch("putget-tight"), "tcp", &["--staging-mib", "1"]);
    put_get(&tight, "tight", &data);
}

#[test]
fn large_writes_behind_land_whole_when_the_server_takes_them_in_parts() {
    let base = scratch("behind-large");
    std::fs::create_dir_all(base.join("export")).unwrap();
    let src = base.join("src");
    let data: Vec<u8> = (0..(12u32 << 20) + 777)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    // 1 MiB of staging per client: each 2 MiB write behind is taken in parts.
    let tight = ServerProc::start(&base.join("export"), "tcp", &["--staging-mib", "1"]);
    let src = src.to_str().unwrap();
    let (_, calls) = interposed(
        &tight,
        "/qs-fwd",
        &[],
        "dd",
        &[
            &format!("if={src}"),
            "of=/qs-fwd/big",
            "bs=2M",
            "status=none",
        ],
    );
    assert_eq!(std::fs::read(base.join("export/big")).unwrap(), data);
    assert!(calls >= 12, "{calls} calls: the writes were answered short");
}

#[test]
fn a_remote_files_writes_go_behind_and_an_error_comes_at_flush_once() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let srv = ServerProc::start(&scratch("file-behind"), "sm", &[]);
    let fs = srv.client();
    let data: Vec<u8> = (0..(40u32 << 20) + 5)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let mut f = fs
        .open_with("/f", libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o644)
        .unwrap();
    for piece in data.chunks(4 << 20) {
        f.write_all(piece).unwrap();
    }
    // Reads wait for the writes in flight.
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert!(back == data, "read back what was written behind");
    f.seek(SeekFrom::Start((1 << 63) - 100)).unwrap();
    assert_eq!(f.write(&[7u8; 4096]).unwrap(), 4096, "acknowledged");
    assert_eq!(common::errno(f.flush()), libc::EFBIG);
    f.flush().unwrap();
    f.close().unwrap();
    // Opened read-only: a write fails at once.
    let mut ro = fs.open("/f").unwrap();
    assert_eq!(common::errno(ro.write(b"x")), libc::EBADF);
}

#[test]
fn exit_gives_up_on_writes_behind_that_a_stopped_server_does_not_take() {
    // A process whose last writes went behind, to a server that stopped answering, ends
    // at `_exit` within the interposer's half-second bound instead of hanging with it:
    // a full window of 16 writes in flight, and a gathered one that must wait for room.
    use std::io::{BufRead, BufReader, Write};
    let export = scratch("cache-exit-give-up");
    let srv = ServerProc::start(&export, "sm", &[]);
    let script = "import os, sys\n\
        f = os.open('/qs-cache/f', os.O_WRONLY | os.O_CREAT, 0o644)\n\
        os.write(f, b'a' * 4096)\n\
        os.fsync(f)\n\
        print('ready', flush=True)\n\
        sys.stdin.readline()\n\
        for i in range(16): os.write(f, b'b' * 32768)\n\
        os.write(f, b'c' * 100)\n\
        os._exit(3)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("LD_PRELOAD", common::preload_lib())
        .env("POSIX_SHIP_SERVER", &srv.addr)
        .env("QS_AUTH", &srv.auth)
        .env("POSIX_SHIP_MOUNT", MOUNT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let server = srv.child.id() as i32;
    // SAFETY: kill(2) on the test's own server process.
    unsafe { libc::kill(server, libc::SIGSTOP) };
    let t = std::time::Instant::now();
    writeln!(child.stdin.take().unwrap()).unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // SAFETY: as above.
    unsafe { libc::kill(server, libc::SIGCONT) };
    let took = t.elapsed();
    println!("_exit with a stopped server took {took:?}");
    let status = status.unwrap_or_else(|| panic!("still running after {took:?}"));
    assert_eq!(status.code(), Some(3), "{status:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

/// The attribute cache: a listing's attributes answer the stats and ACL questions of
/// `ls -l` and `du`; a change made through the process is seen at once; one made by
/// another client is seen once the lifetime is over (at once with it 0).
#[test]
fn attributes_are_kept_for_their_lifetime_and_changes_through_the_process_seen_at_once() {
    let export = scratch("cache-attrs");
    std::fs::create_dir(export.join("d")).unwrap();
    for i in 0..500 {
        std::fs::write(export.join(format!("d/f{i}")), vec![b'x'; i]).unwrap();
    }
    let srv = ServerProc::start(&export, "sm", &[]);
    let dir = format!("{MOUNT}/d");
    let (ls, calls) = shipped(&srv, &[], "ls", &["-ln", "--time-style=+%s", &dir]);
    let (ls0, off) = shipped(
        &srv,
        &[("POSIX_SHIP_ATTR_TIMEOUT", "0")],
        "ls",
        &["-ln", "--time-style=+%s", &dir],
    );
    assert_eq!(ls.stdout, ls0.stdout, "the same listing");
    let local = Command::new("ls")
        .args(["-ln", "--time-style=+%s"])
        .arg(export.join("d"))
        .output()
        .unwrap();
    assert_eq!(ls.stdout, local.stdout, "as the local one");
    println!("ls -l of 500 files: {calls} requests, {off} without the cache");
    assert!(calls <= 20 && off >= 1000, "{calls} / {off}");
    let (_, du) = shipped(&srv, &[], "du", &["-s", &dir]);
    assert!(du <= 20, "du: {du} requests");
    // Entries stat'ed one by one by name (as `git status` walks its index): the second
    // miss in the directory lists it.
    // Names not there are answered by the whole listing too (100 more stats, no call);
    // a path that is not plain (`f1/`) is asked: ENOTDIR, not f1's attributes.
    let each = format!(
        "import os\n\
         print(sum(os.lstat(f'{dir}/f{{i}}').st_size for i in range(500)))\n\
         print(sum(os.path.exists(f'{dir}/g{{i}}') for i in range(100)))\n\
         try:\n    os.stat('{dir}/f1/'); print('a directory?')\n\
         except NotADirectoryError:\n    print('notdir')"
    );
    let (out, by_name) = shipped(&srv, &[], "python3", &["-c", &each]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "124750\n0\nnotdir\n");
    assert!(by_name <= 20, "stat by name: {by_name} requests");

    let script = format!(
        "import os, time\n\
         p = '{MOUNT}/d/f1'\n\
         a = os.stat(p).st_size\n\
         with open(p, 'ab') as f: f.write(b'yy')\n\
         b = os.stat(p).st_size\n\
         with open('{}', 'ab') as f: f.write(b'zzz')\n\
         c = os.stat(p).st_size\n\
         time.sleep(1.2)\n\
         print(a, b, c, os.stat(p).st_size)",
        export.join("d/f1").display()
    );
    let (out, _) = shipped(&srv, &[], "python3", &["-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1 3 3 6\n",
        "within the lifetime"
    );
    let (out, _) = shipped(
        &srv,
        &[("POSIX_SHIP_ATTR_TIMEOUT", "0")],
        "python3",
        &["-c", &script.replace("time.sleep(1.2)", "")],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "6 8 11 11\n",
        "without the cache"
    );
}

/// A child's changes are seen by the parent once it has waited for the child (autoconf's
/// `rm -f conftest`, then `test -s conftest` in the shell), within the lifetime too.
#[test]
fn what_a_waited_for_child_changed_is_seen_at_once() {
    let export = scratch("cache-children");
    let srv = ServerProc::start(&export, "sm", &[]);
    let script = format!(
        "cd {MOUNT} && mkdir d && test -e d/a || test -e d/b || echo listed; \
         touch d/new; test -e d/new && echo new; test -e d//new && echo new; \
         echo x > conftest && test -s conftest && echo made; \
         rm -f conftest; test -s conftest && echo stale || echo gone; \
         sh -c 'echo longer > conftest'; wc -c < conftest; \
         python3 -c 'import os, subprocess; a = os.stat(\"conftest\").st_size; \
         subprocess.run([\"truncate\", \"-s\", \"3\", \"conftest\"]); \
         print(a, os.stat(\"conftest\").st_size)'"
    );
    // A lifetime far longer than the test: only forgetting at the wait can pass it.
    let (out, _) = shipped(
        &srv,
        &[("POSIX_SHIP_ATTR_TIMEOUT", "60")],
        "bash",
        &["-c", &script],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "listed\nnew\nnew\nmade\ngone\n7\n7 3\n"
    );
}
