//! Unmodified programs through `libposix_ship_preload.so`: each runs once on a local
//! directory and once under the mount; outputs and files must be byte-identical.

mod common;

use std::path::Path;
use std::process::Command;

use common::rig::{MOUNT, Rig, assert_same_file};

#[test]
fn coreutils_copy_read_and_hash_through_the_mount() {
    let r = Rig::new("interpose-coreutils", "tcp");
    let src = r.src.to_str().unwrap();
    r.same("cp", &[src, "{}/cp.bin"]);
    assert_same_file(&r, "cp.bin");
    assert_eq!(
        r.same("cat", &["{}/cp.bin"]),
        std::fs::read(&r.src).unwrap()
    );
    let sum = r.same("sha256sum", &["{}/cp.bin"]);
    let local = Command::new("sha256sum")
        .arg(&r.src)
        .output()
        .unwrap()
        .stdout;
    assert_eq!(sum[..64], local[..64], "sha256sum through the mount");
    r.same(
        "dd",
        &[&format!("if={src}"), "of={}/dd.bin", "bs=1M", "status=none"],
    );
    assert_same_file(&r, "dd.bin");
    r.same(
        "dd",
        &["if={}/dd.bin", "of={}/dd2.bin", "bs=1M", "status=none"],
    );
    assert_same_file(&r, "dd2.bin");
    r.same("mkdir", &["{}/sub"]);
    r.same("cp", &[src, "{}/sub/a"]);
    r.same("mv", &["{}/sub/a", "{}/sub/b"]);
    assert_eq!(r.same("ls", &["{}/sub"]), b"b\n");
    r.same("rm", &["{}/sub/b"]);
    let listing = r.same("ls", &["-1", "{}"]);
    assert_eq!(
        String::from_utf8_lossy(&listing),
        "cp.bin\ndd.bin\ndd2.bin\nsub\n"
    );
}

#[test]
fn tar_creates_and_extracts_archives_under_the_mount() {
    let r = Rig::new("interpose-tar", "tcp");
    let tree = r.local.parent().unwrap().join("tree");
    std::fs::create_dir_all(tree.join("d/e")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha\n").unwrap();
    std::fs::copy(&r.src, tree.join("d/e/big.bin")).unwrap();
    let tree = tree.to_str().unwrap();
    r.same(
        "tar",
        &["--mtime=2020-01-01", "-cf", "{}/t.tar", "-C", tree, "."],
    );
    assert_same_file(&r, "t.tar");
    assert!(r.same("tar", &["-tvf", "{}/t.tar"]).len() > 10);
    let out = r.local.parent().unwrap().join("out");
    std::fs::create_dir_all(&out).unwrap();
    r.run(
        MOUNT,
        "tar",
        &["-xf", "{}/t.tar", "-C", out.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(out.join("d/e/big.bin")).unwrap(),
        std::fs::read(&r.src).unwrap()
    );
}

const PY: &str = r#"
import os, sys
d = sys.argv[1]
with open(d + "/p.txt", "w") as f:
    for i in range(2000):
        f.write("line %d\n" % i)
with open(d + "/p.txt", "a") as f:
    f.write("appended\n")
with open(d + "/p.txt", "r+b") as f:
    f.seek(5); f.write(b"X"); f.seek(0, 2); print("size", f.tell())
data = open(d + "/p.txt").read()
print(len(data), data[:12].replace("\n", "|"), data[-9:].strip())
st = os.stat(d + "/p.txt"); print("stat", st.st_size, oct(st.st_mode & 0o777))
os.rename(d + "/p.txt", d + "/q.txt"); print(sorted(os.listdir(d)))
fd = os.open(d + "/q.txt", os.O_RDONLY); print(os.pread(fd, 4, 10)); os.close(fd)
pid = os.fork()
if pid == 0:
    with open(d + "/child.txt", "w") as f: f.write("from the child\n")
    os._exit(0)
os.waitpid(pid, 0)
print(open(d + "/child.txt").read().strip())
os.unlink(d + "/q.txt"); print(os.path.exists(d + "/q.txt"))
"#;

#[test]
fn python_file_io_and_fork_work_under_the_mount() {
    let r = Rig::new("interpose-python", "tcp");
    let out = r.same("python3", &["-c", PY, "{}"]);
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("from the child"), "{out}");
    assert_same_file(&r, "child.txt");
}

/// A thread writes a shipped file in small writes (behind, under the write-behind lock)
/// and another asks for the working directory (inside the mount) while the main thread
/// forks children that change directory and write shipped files of their own: no child
/// waits for ever for a lock one of its parent's threads held when the process was
/// copied.
const FORKS_BESIDE_A_WRITER: &str = r#"
import os, sys, threading, time
d = sys.argv[1]
os.chdir(d)
stop = False
def writer():
    with open(d + "/w.txt", "w") as f:
        while not stop:
            f.write("x" * 100); f.flush()
def asker():
    while not stop:
        os.getcwd()
ts = [threading.Thread(target=writer), threading.Thread(target=asker)]
for t in ts: t.start()
hung = 0
for k in range(200):
    pid = os.fork()
    if pid == 0:
        os.chdir(d)
        with open("c%d.txt" % (k % 4), "w") as f: f.write("child %d\n" % k)
        os._exit(0)
    end = time.time() + 10
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.time() > end:
            os.kill(pid, 9); os.waitpid(pid, 0); hung += 1; break
        time.sleep(0.0005)
stop = True
for t in ts: t.join()
print("hung", hung)
"#;

#[test]
fn children_forked_beside_a_writing_thread_do_not_hang() {
    let r = Rig::new("interpose-fork-writer", "sm");
    let out = r.run(MOUNT, "python3", &["-c", FORKS_BESIDE_A_WRITER, "{}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hung 0\n");
}

const SQL: &str = "create table t(a integer primary key, b text);
begin;
with recursive c(x) as (select 1 union all select x + 1 from c where x < 10000)
insert into t select x, 'row ' || x from c;
commit;
select count(*), sum(a), min(b), max(b) from t;
select b from t where a % 2500 = 0;";

#[test]
fn sqlite_builds_and_queries_a_database_under_the_mount() {
    let r = Rig::new("interpose-sqlite", "sm");
    let out = r.same("sqlite3", &["{}/db.sqlite", SQL]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "10000|50005000|row 1|row 9999\nrow 2500\nrow 5000\nrow 7500\nrow 10000\n"
    );
    let again = r.same("sqlite3", &["{}/db.sqlite", "select count(*) from t;"]);
    assert_eq!(again, b"10000\n");
}

#[test]
fn fio_psync_writes_reads_and_mixes_with_verification_under_the_mount() {
    let r = Rig::new("interpose-fio", "sm");
    let script = "for rw in write read randrw; do fio --name=t --ioengine=psync --rw=$rw \
                  --bs=4k --size=4m --filename={}/fio.dat --verify=crc32c \
                  --verify_state_save=0 --randseed=1 --output=/dev/null && echo $rw ok; done";
    let out = r.same("bash", &["-c", script]);
    assert_eq!(out, b"write ok\nread ok\nrandrw ok\n");
    assert_eq!(
        std::fs::metadata(r.srv.export.join("fio.dat"))
            .unwrap()
            .len(),
        4 << 20
    );
}

#[test]
fn unsupported_calls_fail_clearly_and_local_files_are_untouched() {
    let r = Rig::new("interpose-refuse", "tcp");
    let code = "import mmap, sys\nf = open(sys.argv[1] + '/m', 'w+b'); f.write(b'x' * 4096); f.flush()\n\
                try:\n    mmap.mmap(f.fileno(), 4096)\nexcept OSError as e:\n    print('mmap', e.errno)";
    let out = r.run(MOUNT, "python3", &["-c", code, "{}"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("mmap {}", libc::ENODEV)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mmap of a shipped file is not supported")
    );
    // Without a server, the interposer says so instead of failing silently.
    let out = Command::new("cat")
        .arg(format!("{MOUNT}/nothing"))
        .env("LD_PRELOAD", &r.lib)
        .env_remove("POSIX_SHIP_SERVER")
        .env("POSIX_SHIP_MOUNT", MOUNT)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("POSIX_SHIP_SERVER is not"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A path outside the mount is the C library's.
    let f = r.local.join("plain.txt");
    r.run(MOUNT, "cp", &[r.src.to_str().unwrap(), f.to_str().unwrap()]);
    assert_eq!(std::fs::read(&f).unwrap(), std::fs::read(&r.src).unwrap());
    assert!(!Path::new(&r.srv.export).join("plain.txt").exists());
}

#[test]
fn cd_into_the_mount_then_relative_paths_work_in_shells_make_and_python() {
    let r = Rig::new("interpose-cwd", "tcp");
    let proj = r.srv.export.join("proj");
    std::fs::create_dir_all(proj.join("sub")).unwrap();
    std::fs::write(proj.join("input"), "data\n").unwrap();
    std::fs::write(
        proj.join("Makefile"),
        "output: input\n\tcp input output\n\tmkdir -p made && touch made/stamp\n",
    )
    .unwrap();
    let script = "cd {}/proj && pwd && /bin/pwd && ls && cd sub && cd .. && make -s && cat output \
                  && ls made && cd / && /bin/pwd";
    let out = r.run(MOUNT, "sh", &["-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{MOUNT}/proj\n{MOUNT}/proj\nMakefile\ninput\nsub\ndata\nstamp\n/\n")
    );
    assert_eq!(std::fs::read(proj.join("output")).unwrap(), b"data\n");
    let code = "import os, subprocess, sys\n\
                os.chdir(sys.argv[1] + '/proj/sub')\n\
                print(os.getcwd())\n\
                open('p.txt', 'w').write('x')\n\
                os.chdir('..')\n\
                print(sorted(os.listdir('.')))\n\
                print(subprocess.run(['cat', 'sub/p.txt'], capture_output=True, text=True).stdout)\n\
                for bad in ['input', 'missing']:\n\
                \x20   try:\n\
                \x20       os.chdir(bad)\n\
                \x20   except OSError as e:\n\
                \x20       print(bad, e.errno)\n\
                os.chdir('/tmp')\n\
                print(os.getcwd())";
    let out = r.run(MOUNT, "python3", &["-c", code, "{}"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{MOUNT}/proj/sub\n['Makefile', 'input', 'made', 'output', 'sub']\nx\ninput {}\nmissing {}\n/tmp\n",
            libc::ENOTDIR,
            libc::ENOENT
        )
    );
    assert_eq!(std::fs::read(proj.join("sub/p.txt")).unwrap(), b"x");
    // A shell started inside the mount that leaves it: its programs run in the local
    // directory (the shell's own copy of the inherited variable is not passed on), and a
    // `..` above the mount's root stays at the root.
    std::fs::write(r.local.join("here.txt"), "local").unwrap();
    let out = Command::new("sh")
        .args(["-c", "ls ../../.. | head -1 && cd \"$1\" && ls", "sh"])
        .arg(&r.local)
        .env("LD_PRELOAD", &r.lib)
        .env("POSIX_SHIP_SERVER", &r.srv.addr)
        .env("QS_AUTH", &r.srv.auth)
        .env("POSIX_SHIP_MOUNT", MOUNT)
        .env("POSIX_SHIP_CWD", format!("{MOUNT}/proj/sub"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "proj\nhere.txt\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A working directory entered through `..` is named without it.
    let out = r.run(MOUNT, "sh", &["-c", "cd {}/proj/sub/.. && /bin/pwd"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{MOUNT}/proj\n")
    );
}

#[test]
fn git_init_add_commit_log_and_status_work_inside_the_mount() {
    let r = Rig::new("interpose-git", "tcp");
    let home = r.local.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".gitconfig"),
        "[user]\n\tname = t\n\temail = t@example.com\n[safe]\n\tdirectory = *\n",
    )
    .unwrap();
    let v2 = r.local.join("v2.txt");
    std::fs::write(&v2, "two\n").unwrap();
    let script = format!(
        "export HOME={home} && cd {{}} && git init -q repo && cd repo && cp {src} f && git add f \
         && git commit -qm one && git log --format=%s && cp {v2} f && git status --short \
         && git diff --stat | tail -1",
        home = home.display(),
        src = r.src.display(),
        v2 = v2.display()
    );
    let out = r.run(MOUNT, "sh", &["-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("one\n M f\n 1 file changed"), "{text}");
    // The repository on the server is sound by git's own check.
    let fsck = std::process::Command::new("git")
        .args(["fsck", "--strict"])
        .current_dir(r.srv.export.join("repo"))
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn redirections_and_pipelines_of_programs_reach_shipped_files() {
    let r = Rig::new("interpose-redirect", "tcp");
    let script = "cd {} && /bin/echo hi > out && /bin/echo more >> out && wc -c < out \
                  && cat < out | tr a-z A-Z && sort -r < out > sorted && cat sorted \
                  && tar czf x.tgz out sorted && tar tzf x.tgz && gzip -dc < x.tgz | tar tf - \
                  && python3 -c 'print(42)' > py && cat py; ls /nonexistent-qs 2> err; cat err; \
                  ls /nonexistent-qs > both 2>&1; cat both";
    let out = r.same("sh", &["-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "8\nHI\nMORE\nmore\nhi\nout\nsorted\nout\nsorted\n42\n\
         ls: cannot access '/nonexistent-qs': No such file or directory\n\
         ls: cannot access '/nonexistent-qs': No such file or directory\n"
    );
    for f in ["out", "sorted", "py", "err", "both"] {
        assert_same_file(&r, f);
    }
}

/// Programs run one after another into one redirection share its offset, as on a kernel
/// descriptor (each used to start at the offset handed down to it and wrote over the one
/// before); so do a forked child and its parent.
#[test]
fn programs_sharing_a_redirection_share_its_offset() {
    let r = Rig::new("interpose-shared-offset", "tcp");
    let script = "cd {} && sh -c '/bin/echo one; /bin/echo two; (/bin/echo three; cat)' \
                  < /etc/hostname > seq && cat seq \
                  && { /bin/echo four; /bin/echo five; } > group && cat group \
                  && python3 -c 'import os, sys\n\
f = open(\"forked\", \"w\"); f.write(\"parent \"); f.flush()\n\
pid = os.fork()\n\
if pid == 0:\n    f.write(\"child \"); f.flush(); os._exit(0)\n\
os.waitpid(pid, 0); f.write(\"after\\n\"); f.close()' && cat forked \
                  && exec 3> held && /bin/echo a >&3 && /bin/echo b >&3 && exec 3>&- && cat held \
                  && python3 -c 'import os\n\
f = open(\"spawned\", \"w\"); f.write(\"x\\n\"); f.flush(); fd = f.fileno(); os.set_inheritable(fd, True)\n\
pid = os.posix_spawn(\"/bin/sh\", [\"sh\", \"-c\", \"echo y >&%d\" % fd], os.environ)\n\
os.waitpid(pid, 0); f.write(\"z\\n\"); f.close()' && cat spawned";
    let out = r.same("sh", &["-c", script]);
    let host = std::fs::read_to_string("/etc/hostname").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("one\ntwo\nthree\n{host}four\nfive\nparent child after\na\nb\nx\ny\nz\n")
    );
    for f in ["seq", "group", "forked", "held", "spawned"] {
        assert_same_file(&r, f);
    }
}

/// A shell's builtins print through the C library's `stdout`, which writes with its
/// internal calls: a shipped stream stands in for it while the descriptor is shipped.
#[test]
fn shell_builtins_write_into_redirections() {
    let r = Rig::new("interpose-builtins", "tcp");
    let script = "cd {} && echo one > b1 && echo two >> b1 && printf '%s\\n' three >> b1 \
                  && for i in 1 2 3; do echo $i; done > b2 \
                  && { echo x; /bin/echo y; echo z; } > b3 \
                  && exec 4>&1 && exec > b4 && echo redirected && pwd > /dev/null \
                  && exec 1>&4 && echo back && echo err 2> b5 >&2 && read v < b1 \
                  && echo \"$v\" && cat b1 b2 b3 b4 b5";
    let out = r.same("bash", &["-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "back\none\none\ntwo\nthree\n1\n2\n3\nx\ny\nz\nredirected\nerr\n"
    );
    for f in ["b1", "b2", "b3", "b4", "b5"] {
        assert_same_file(&r, f);
    }
}

/// `zip`/`unzip` (temporary files made with `mkstemp`, renamed into place) and `rsync -a`
/// (temporary names, renames, times and modes) into and out of the tree.
#[test]
fn zip_unzip_and_rsync_in_and_out() {
    let r = Rig::new("interpose-zip-rsync", "tcp");
    let script = "cd {} && mkdir -p src/sub && echo a > src/a && echo b > src/sub/b \
                  && chmod 640 src/a && zip -qr z.zip src && unzip -Z1 z.zip | sort \
                  && mkdir zout && unzip -q z.zip -d zout && diff -r src zout/src && echo zip ok \
                  && out=$(mktemp -d) && rsync -a src/ \"$out\"/ && diff -r src \"$out\" \
                  && rsync -a \"$out\"/ back/ && rm -r \"$out\" && diff -r src back \
                  && stat -c '%a %s' back/a src/a && echo rsync ok";
    let out = r.same("sh", &["-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "src/\nsrc/a\nsrc/sub/\nsrc/sub/b\nzip ok\n640 2\n640 2\nrsync ok\n"
    );
    // (Not the archives themselves: they hold the times the two runs wrote at.)
    for f in ["back/a", "back/sub/b", "zout/src/a"] {
        assert_same_file(&r, f);
    }
}

/// Calls the C library makes from its internal ones, and older forms of interposed
/// calls, reach shipped files: `realpath`, `remove`, `mkdtemp`, `statvfs`, `utime`,
/// `utimes`, `lutimes`, `futimes`, `eaccess`, `flock`; and ownership is shipped (`chown`
/// following a link, `lchown`, `fchown`; as root, the server not squashing root).
#[test]
fn derived_and_older_calls_reach_shipped_files() {
    let r = Rig::new("interpose-compat", "tcp");
    let code = "import ctypes, fcntl, os, sys\n\
                os.chdir(sys.argv[1])\n\
                c = ctypes.CDLL(None, use_errno=True)\n\
                c.realpath.restype = c.mkdtemp.restype = ctypes.c_char_p\n\
                os.makedirs('d/e'); open('d/e/f', 'w').write('x'); open('d/e/h', 'w'); os.symlink('e/f', 'd/l')\n\
                print(c.realpath(b'd/e/../l', None).decode())\n\
                print(c.realpath(b'd/missing', None), ctypes.get_errno())\n\
                t = c.mkdtemp(b'd/tmpXXXXXX').decode(); print(os.path.isdir(t), oct(os.stat(t).st_mode & 0o777))\n\
                print(c.remove(t.encode()), c.remove(b'd/e/h'), os.path.exists('d/e/h'))\n\
                print(os.statvfs('d').f_namemax > 0)\n\
                open('g', 'w').write('y')\n\
                class B(ctypes.Structure): _fields_ = [('a', ctypes.c_long), ('m', ctypes.c_long)]\n\
                print(c.utime(b'g', ctypes.byref(B(1000, 2000))), os.stat('g').st_mtime)\n\
                class T(ctypes.Structure): _fields_ = [('s', ctypes.c_long), ('u', ctypes.c_long)]\n\
                tv = (T * 2)(T(5, 0), T(3000, 500000))\n\
                print(c.utimes(b'g', tv), os.stat('g').st_mtime_ns)\n\
                print(c.lutimes(b'd/l', tv), os.lstat('d/l').st_mtime, os.stat('d/l').st_mtime != 3000.5)\n\
                bad = (T * 2)(T(5, 0), T(6, 1000000))\n\
                print(c.utimes(b'g', bad), ctypes.get_errno() == 22)\n\
                fd = os.open('g', os.O_RDWR); print(c.futimes(fd, tv), os.stat('g').st_mtime_ns)\n\
                fcntl.flock(fd, fcntl.LOCK_EX); other = os.open('g', os.O_RDONLY)\n\
                try:\n    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)\n\
                except BlockingIOError:\n    print('excluded')\n\
                fcntl.flock(fd, fcntl.LOCK_UN); fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB); print('taken')\n\
                os.close(other); os.close(fd)\n\
                print(c.eaccess(b'g', os.R_OK | os.W_OK), c.eaccess(b'nothing', os.F_OK))\n\
                if os.geteuid() == 0:\n\
                \x20   os.chown('g', 1, 2); print(os.stat('g').st_uid, os.stat('g').st_gid)\n\
                \x20   os.chown('d/l', 3, 4, follow_symlinks=False); print(os.lstat('d/l').st_uid, os.stat('d/l').st_uid)\n\
                \x20   os.chown('d/l', 5, -1); print(os.lstat('d/l').st_uid, os.stat('d/l').st_uid, os.stat('d/l').st_gid)\n\
                \x20   fd = os.open('g', os.O_RDONLY); os.fchown(fd, 7, -1); os.close(fd); print(os.stat('g').st_uid, os.stat('g').st_gid)";
    let out = r.same("python3", &["-c", code, "{}"]);
    // SAFETY: geteuid cannot fail.
    let owners = if unsafe { libc::geteuid() } == 0 {
        "1 2\n3 0\n3 5 0\n7 2\n"
    } else {
        ""
    };
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!(
            "{MOUNT}/d/e/f\nNone 2\nTrue 0o700\n0 0 False\nTrue\n0 2000.0\n\
             0 3000500000000\n0 3000.5 True\n-1 True\n0 3000500000000\nexcluded\ntaken\n0 -1\n{owners}"
        )
    );
}

/// `preadv2`/`pwritev2` reach shipped files (flags honoured or `EOPNOTSUPP`, offset -1 the
/// file's); `splice` and special nodes are refused as the kernel refuses them on a file
/// system without them, and `mknod` of a regular file creates it.
#[test]
fn vectored_v2_splice_and_special_nodes() {
    let r = Rig::new("interpose-v2", "tcp");
    let v2 = "import os, sys\n\
              os.chdir(sys.argv[1])\n\
              fd = os.open('v', os.O_RDWR | os.O_CREAT, 0o644)\n\
              print(os.pwritev(fd, [b'abc', b'def'], 0, os.RWF_DSYNC))\n\
              print(os.pwritev(fd, [b'gh'], -1, os.RWF_SYNC | os.RWF_HIPRI), os.lseek(fd, 0, os.SEEK_CUR))\n\
              b = bytearray(3); print(os.preadv(fd, [b], 1, os.RWF_HIPRI), bytes(b))\n\
              b = bytearray(3); print(os.preadv(fd, [b], -1, os.RWF_HIPRI), bytes(b), os.lseek(fd, 0, os.SEEK_CUR))\n\
              os.close(fd); print(open('v').read())";
    let out = r.same("python3", &["-c", v2, "{}"]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "6\n2 2\n3 b'hcd'\n3 b'cde' 5\nghcdef\n"
    );
    let refused = "import os, stat, sys\n\
                   os.chdir(sys.argv[1])\n\
                   fd = os.open('w', os.O_RDWR | os.O_CREAT, 0o644)\n\
                   try: os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)\n\
                   except OSError as e: print('nowait', e.errno)\n\
                   r, w = os.pipe()\n\
                   try: os.splice(fd, w, 3)\n\
                   except OSError as e: print('splice', e.errno)\n\
                   try: os.mkfifo('p')\n\
                   except OSError as e: print('mkfifo', e.errno)\n\
                   os.mknod('n', 0o640 | stat.S_IFREG); st = os.stat('n'); print(stat.S_ISREG(st.st_mode), oct(st.st_mode & 0o777))\n\
                   try: os.mknod('n', 0o640)\n\
                   except OSError as e: print('again', e.errno)";
    let out = r.run(MOUNT, "python3", &["-c", refused, "{}"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "nowait {}\nsplice {}\nmkfifo {}\nTrue 0o640\nagain {}\n",
            libc::EOPNOTSUPP,
            libc::EINVAL,
            libc::EPERM,
            libc::EEXIST
        )
    );
    assert!(r.srv.export.join("n").is_file() && !r.srv.export.join("p").exists());
}

/// Programs that live in the mount run: a binary built there (from a memfd), a script
/// (its interpreter on its path), through `execve`, `posix_spawn` and `subprocess`, a
/// venv's `bin/python` (a link out of the mount); not without execute permission.
/// Names looked for in `PATH` are found in its directories in the mount, by the C
/// library's `execvp` (`env`, `find -exec`, `xargs`) and `posix_spawnp`, an empty entry
/// being the working directory; a local directory earlier in `PATH` still wins, and a
/// name found nowhere fails as before.
/// `freopen` of a shipped path: `stdout` and `stderr` redirected into the mount (the
/// stream used after, or the one returned), a shipped stream reopened on another shipped
/// file and on a local one, and `stdout` back to a local file. What cannot be done in the
/// caller's stream fails with `EOPNOTSUPP` (a shipped stream's access mode changed, the C
/// library's own stream moved onto a shipped file).
/// The C library's `glob` lists shipped directories: absolute and relative patterns,
/// several levels of wildcards, `GLOB_MARK`, and no match with and without `GLOB_NOCHECK`.
/// A library built in the mount is loaded by `dlopen` (Python's `ctypes`), once per
/// process whatever the number of opens; a missing one fails as the C library says.
#[test]
fn hard_links_and_extended_attributes_are_shipped() {
    let r = Rig::new("interpose-xattr", "tcp");
    let code = "import os, sys\n\
                d = sys.argv[1]\n\
                open(d + '/a', 'w').write('x')\n\
                os.link(d + '/a', d + '/b')\n\
                print(os.stat(d + '/b').st_nlink, os.stat(d + '/a').st_ino == os.stat(d + '/b').st_ino)\n\
                os.setxattr(d + '/a', 'user.k', b'v1')\n\
                print(os.getxattr(d + '/b', 'user.k'), sorted(os.listxattr(d + '/a')))\n\
                os.removexattr(d + '/a', 'user.k')\n\
                print(os.listxattr(d + '/a'))\n\
                try:\n\
                \x20   os.getxattr(d + '/a', 'user.k')\n\
                except OSError as e:\n\
                \x20   print('missing', e.errno)\n\
                fd = os.open(d + '/a', os.O_RDONLY)\n\
                os.setxattr(fd, 'user.f', b'2')\n\
                print(os.getxattr(fd, 'user.f'))\n\
                os.close(fd)";
    let out = r.same("python3", &["-c", code, "{}"]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!(
            "2 True\nb'v1' ['user.k']\n[]\nmissing {}\nb'2'\n",
            libc::ENODATA
        )
    );
    // cp -a keeps a file's attributes on the way in.
    let src = r.local.join("attrs.txt");
    std::fs::write(&src, "y").unwrap();
    let c = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated path and name, a 4-byte value.
    let set = unsafe {
        libc::setxattr(
            c(&src).as_ptr(),
            c"user.tag".as_ptr(),
            b"kept".as_ptr().cast(),
            4,
            0,
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    r.run(
        MOUNT,
        "cp",
        &["-a", src.to_str().unwrap(), &format!("{MOUNT}/attrs.txt")],
    );
    let mut v = [0u8; 16];
    // SAFETY: as above, into a 16-byte buffer.
    let n = unsafe {
        libc::getxattr(
            c(&r.srv.export.join("attrs.txt")).as_ptr(),
            c"user.tag".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    assert_eq!(&v[..n.max(0) as usize], b"kept");
}

#[test]
fn fallocate_is_shipped() {
    let r = Rig::new("interpose-fallocate", "tcp");
    let script = "fallocate -l 65536 {}/fa && stat -c %s {}/fa \
                  && fallocate -n -l 1048576 {}/fa && stat -c %s {}/fa \
                  && fallocate -p -o 0 -l 4096 {}/fa && stat -c %s {}/fa";
    let out = r.same("sh", &["-c", script]);
    assert_eq!(String::from_utf8_lossy(&out), "65536\n65536\n65536\n");
}
