//! The interposer riding on a `posix-ship mount` (`POSIX_SHIP_MOUNT` naming the mount):
//! real programs do what they do locally while their data calls are shipped, and what
//! the interposer writes around the kernel is seen through the kernel at once.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::fuse::{Mounted, PROGRAMS, run, run_env, setup};
use common::{ServerProc, preload_lib};

/// The environment that makes a program ride on the mount at `at`, with its report
/// appended to `report`.
fn riding<'a>(
    srv: &'a ServerProc,
    at: &'a Path,
    lib: &'a Path,
    report: &'a Path,
) -> [(&'a str, &'a OsStr); 5] {
    [
        // Every file rides from its first data call (the default waits for 256 KiB).
        ("POSIX_SHIP_RIDE_AFTER", OsStr::new("0")),
        ("LD_PRELOAD", lib.as_os_str()),
        ("POSIX_SHIP_MOUNT", at.as_os_str()),
        ("POSIX_SHIP_REPORT", report.as_os_str()),
        ("QS_AUTH", OsStr::new(&srv.auth)),
    ]
}

/// The report lines' totals: files ridden on, reads and writes shipped.
fn shipped(report: &Path) -> (u64, u64, u64) {
    let lines = std::fs::read_to_string(report).unwrap_or_default();
    let mut t = (0, 0, 0);
    for l in lines.lines() {
        let nums: Vec<u64> = l
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        // pid, files, reads, MiB (int part), MiB (fraction), writes, ...
        if l.contains("rode on") && nums.len() >= 6 {
            t.0 += nums[1];
            t.1 += nums[2];
            t.2 += nums[5];
        }
    }
    t
}

/// A server, a mount point and a local directory to compare a Python script in.
struct Compare {
    _export: std::path::PathBuf,
    at: std::path::PathBuf,
    local: std::path::PathBuf,
    srv: ServerProc,
    lib: std::path::PathBuf,
    report: std::path::PathBuf,
}

impl Compare {
    fn new(name: &str) -> Option<Compare> {
        let (export, at, local, srv) = setup(name)?;
        let report = at.parent().unwrap().join("report");
        Some(Compare {
            _export: export,
            at,
            local,
            srv,
            lib: preload_lib(),
            report,
        })
    }

    /// Runs `code` in the local directory, then riding on a mount made with `args`
    /// (`POSIX_SHIP_RIDE_AFTER=ride_after`); asserts both print the same. Returns the
    /// output, the riding run's stderr, and what rode ([`shipped`]).
    fn run(
        &self,
        code: &str,
        ride_after: &str,
        args: &[&str],
    ) -> (String, String, (u64, u64, u64)) {
        let script = format!("python3 -c '{code}'");
        let here = run(&self.local, &script);
        let _ = std::fs::remove_file(&self.report);
        let m = Mounted::start(&self.srv, &self.at, args);
        let mut env = riding(&self.srv, &self.at, &self.lib, &self.report);
        env[0].1 = OsStr::new(ride_after);
        let (there, err) = run_env(&self.at, &script, &env);
        drop(m);
        assert_eq!(there, here, "{err}");
        (there, err, shipped(&self.report))
    }
}

#[test]
fn real_programs_riding_on_the_mount_do_what_they_do_locally() {
    let Some((export, at, local, srv)) = setup("ride-programs") else {
        return;
    };
    let lib = preload_lib();
    let m = Mounted::start(&srv, &at, &[]);
    let report = at.parent().unwrap().join("report");
    let (there, err) = run_env(&at, PROGRAMS, &riding(&srv, &at, &lib, &report));
    let here = run(&local, PROGRAMS);
    assert_eq!(there, here, "{err}");
    assert!(export.join("repo/c.txt").exists());
    let (files, reads, writes) = shipped(&report);
    println!("rode on {files} files: {reads} reads, {writes} writes shipped");
    assert!(
        files > 20 && reads > 20 && writes > 20,
        "the data calls went around the kernel"
    );
    drop(m);
}

/// What the kernel shows after writes around it: `fstat`, `stat`, `lseek(SEEK_END)`,
/// `pwritev`/`preadv`, `mmap` (the file stops riding), a `dup`'s offset, a forked child,
/// an exec'd child writing to an inherited descriptor, `O_APPEND`, a stdio stream's
/// `fileno`, and a process not interposed.
const COHERENCE: &str = r#"
import mmap, os, subprocess, sys
fd = os.open("f", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.fstat(fd); os.stat("f")  # the kernel caches the attributes of the empty file
os.write(fd, b"a" * 100)
print(os.fstat(fd).st_size, os.stat("f").st_size, os.lseek(fd, 0, os.SEEK_END))
bufs = [bytearray(1), bytearray(2)]; os.pwritev(fd, [b"P", b"QR"], 10); os.preadv(fd, bufs, 10); print(bufs)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ); print(m[:3], m[99:100], m[10:13]); m.close()
d = os.dup(fd); os.write(d, b"b"); print(os.lseek(fd, 0, os.SEEK_CUR)); os.close(d)
pid = os.fork()
if pid == 0:
    os.write(fd, b"c" * 9); os._exit(0)
os.waitpid(pid, 0)
print(os.lseek(fd, 0, os.SEEK_CUR), os.fstat(fd).st_size)
subprocess.run(["sh", "-c", f"printf exec >&{fd}"], pass_fds=[fd], check=True)
print(os.lseek(fd, 0, os.SEEK_CUR), os.pread(fd, 4, 110))
a = os.open("f", os.O_WRONLY | os.O_APPEND); os.write(a, b"!"); print(os.lseek(a, 0, os.SEEK_CUR)); os.close(a)
with open("f", "rb") as s:
    print(os.fstat(s.fileno()).st_size, s.read()[-6:])
os.close(fd)
print(subprocess.run(["env", "-u", "LD_PRELOAD", "sha256sum", "f"], capture_output=True, text=True).stdout.split()[0][:16])
"#;

#[test]
fn writes_around_the_kernel_are_seen_through_it() {
    let Some(c) = Compare::new("ride-coherence") else {
        return;
    };
    let (there, _, (files, _, writes)) = c.run(COHERENCE, "0", &[]);
    assert!(there.starts_with("100 100 100\n"), "{there}");
    assert!(
        files >= 2 && writes >= 3,
        "shipped: {files} files, {writes} writes"
    );
}

/// Through the kernel first, then riding: what the kernel cached of the file is dropped
/// before the first shipped call.
const SWITCH: &str = r#"
import os
fd = os.open("f", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(16):
    os.write(fd, bytes([97 + i]) * 4096)
os.write(fd, b"z" * 65536)
b = os.pread(fd, 131072, 0)
print(len(b), b[4095:4097], b[65535:65537], os.fstat(fd).st_size)
os.lseek(fd, 0, os.SEEK_SET)
print([os.read(fd, 16384)[:1] for _ in range(4)])  # sequential: read ahead
os.ftruncate(fd, 70000)  # through the kernel: what was read ahead is stale
print(os.pread(fd, 10, 69995), os.read(fd, 16384)[:1])
os.close(fd)
"#;

#[test]
fn a_file_rides_once_enough_went_through_the_kernel() {
    let Some(c) = Compare::new("ride-switch") else {
        return;
    };
    let (_, _, rode) = c.run(SWITCH, "64K", &[]);
    assert_eq!(rode, (1, 7, 1), "only the large calls rode");
    // With the writeback cache the kernel keeps file sizes itself: no riding, said once.
    let (_, err, rode) = c.run(SWITCH, "64K", &["--writeback-cache"]);
    assert!(err.contains("--writeback-cache"), "{err}");
    assert_eq!(rode, (0, 0, 0));
}

/// What must not ride: an `O_SYNC` file (each write durable before it returns: the kernel
/// path does that), and a file whose flags change (here to `O_APPEND`, whose writes go to
/// the end wherever the offset is) stops riding; `fsync` of a ridden file lands its writes.
const NOT_RIDING: &str = r#"
import fcntl, os
s = os.open("sync", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_SYNC, 0o644)
os.write(s, b"s" * 100000); os.fsync(s); print(os.fstat(s).st_size); os.close(s)
f = os.open("flags", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(f, b"a" * 70000)
fcntl.fcntl(f, fcntl.F_SETFL, fcntl.fcntl(f, fcntl.F_GETFL) | os.O_APPEND)
os.lseek(f, 0, os.SEEK_SET); os.write(f, b"b" * 10)
print(os.fstat(f).st_size, os.pread(f, 3, 69999), os.lseek(f, 0, os.SEEK_CUR))
os.fsync(f); os.close(f)
print(open("sync", "rb").read()[:2], os.stat("flags").st_size)
"#;

#[test]
fn sync_files_and_changed_flags_stay_on_the_kernel_path() {
    let Some(c) = Compare::new("ride-not") else {
        return;
    };
    let (here, _, rode) = c.run(NOT_RIDING, "0", &[]);
    assert!(here.starts_with("100000\n70010 b'abb' 70010\n"), "{here}");
    // Rode: the first write of "flags", and the reads of "sync" reopened without O_SYNC.
    assert_eq!(rode, (2, 2, 1), "what rode");
}

/// A path renamed over on the server between the kernel's open and the first shipped
/// call names another file: the descriptor keeps reading the file it opened, through
/// the kernel.
#[test]
fn a_file_replaced_under_its_path_is_not_ridden() {
    let Some((export, at, _local, srv)) = setup("ride-replaced") else {
        return;
    };
    std::fs::write(export.join("a"), vec![b'a'; 1 << 20]).unwrap();
    std::fs::write(export.join("b"), vec![b'b'; 1 << 20]).unwrap();
    let lib = preload_lib();
    let m = Mounted::start(&srv, &at, &[]);
    let report = at.parent().unwrap().join("report");
    let script = format!(
        "python3 -c 'import os; f = os.open(\"a\", os.O_RDONLY); \
         os.rename(\"{0}/b\", \"{0}/a\"); print(os.read(f, 1 << 20)[:3])'",
        export.display()
    );
    let (out, err) = run_env(&at, &script, &riding(&srv, &at, &lib, &report));
    assert_eq!(out, "b'aaa'\n", "{err}");
    assert_eq!(shipped(&report), (0, 0, 0), "nothing rode");
    drop(m);
}

/// A program riding on the mount when its daemon is killed: what goes to the kernel
/// fails with ENOTCONN, what it ships still reaches the (living) server, nothing hangs.
const KILLED: &str = r#"
import errno, os, sys
fd = os.open("f", os.O_RDONLY)
first = os.read(fd, 1 << 20)
print("ready", flush=True)
sys.stdin.readline()
def attempt(f):
    try:
        return f()
    except OSError as e:
        return errno.errorcode[e.errno]
print(len(first), attempt(lambda: len(os.read(fd, 1 << 20))))
print(attempt(lambda: os.fstat(fd).st_size), attempt(lambda: os.open("f", os.O_RDONLY)))
print(attempt(lambda: os.close(fd)))
"#;

#[test]
fn a_killed_daemon_leaves_a_riding_program_errors_not_hangs() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let Some((export, at, _local, srv)) = setup("ride-killed") else {
        return;
    };
    std::fs::write(export.join("f"), vec![b'f'; 2 << 20]).unwrap();
    let lib = preload_lib();
    let mut m = Mounted::start(&srv, &at, &[]);
    let report = at.parent().unwrap().join("report");
    let mut p = Command::new("python3")
        .args(["-c", KILLED])
        .current_dir(&at)
        .envs(riding(&srv, &at, &lib, &report))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(p.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    m.signal(libc::SIGKILL);
    let _ = m.child.wait();
    let t = Instant::now();
    writeln!(p.stdin.take().unwrap()).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(p.wait().unwrap().success(), "{rest}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let lines: Vec<&str> = rest.lines().collect();
    // The second MiB: shipped, the server lives on.
    assert_eq!(lines[0], "1048576 1048576", "{rest}");
    // fstat of a ridden file is shipped too; a new open is the kernel's.
    assert!(
        ["2097152 ENOTCONN", "ENOTCONN ENOTCONN"].contains(&lines[1]),
        "{rest}"
    );
    // Closing it: the kernel's flush fails as on a plain mount whose daemon died.
    assert!(["None", "ENOTCONN"].contains(&lines[2]), "{rest}");
    assert_eq!(shipped(&report).0, 1, "it rode: {rest}");
    drop(m);
}
