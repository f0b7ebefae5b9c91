//! A `posix-ship mount` for the tests that need one, and real programs to run on it.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{ServerProc, scratch};

/// A `posix-ship mount` process; killed and lazily unmounted if the test fails.
pub struct Mounted {
    pub child: Child,
    at: PathBuf,
}

impl Mounted {
    pub fn start(srv: &ServerProc, at: &Path, args: &[&str]) -> Mounted {
        Mounted::of(&srv.addr, &srv.auth, at, args)
    }

    /// A mount of the server at `addr` (whose proof is `auth`) on `at`.
    pub fn of(addr: &str, auth: &str, at: &Path, args: &[&str]) -> Mounted {
        // `mount ADDR MOUNTPOINT` (the mount tests of ionode use `-s ADDR mount MOUNTPOINT`).
        let mut child = Command::new(env!("CARGO_BIN_EXE_posix-ship"))
            .args(["mount", addr])
            .arg(at)
            .args(args)
            .env("QS_AUTH", auth)
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

    pub fn signal(&self, sig: i32) {
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

pub fn mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let at = at.canonicalize().unwrap_or(at.to_path_buf());
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(at.to_str().unwrap()))
}

/// Whether FUSE can be used here.
pub fn fuse_usable() -> bool {
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
pub fn run(dir: &Path, script: &str) -> String {
    run_env(dir, script, &[]).0
}

/// [`run`] with extra environment; its stdout and stderr.
pub fn run_env(dir: &Path, script: &str, env: &[(&str, &OsStr)]) -> (String, String) {
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
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "in {}: {}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (String::from_utf8(out.stdout).unwrap(), err)
}

pub const PROGRAMS: &str = r#"
mkdir d && cd d && echo hello > f && echo more >> f && wc -l < f && tr a-z A-Z < f | cat
cd .. && pwd -P >/dev/null
exec 3< d/f; rm d/f; cat <&3; exec 3<&-
git init -q repo && cd repo && echo a > a.txt && mkdir sub && echo b > sub/b.txt
git add -A && git commit -qm one && git mv a.txt c.txt && git commit -qm two
git log --format=%H%n%s && git status --short && git fsck --no-progress 2>&1 | wc -l
git gc -q && git clone -q . ../clone && cd ../clone && git log -1 --format=%s
cd .. && tar czf t.tgz repo && mkdir x && tar xzf t.tgz -C x && diff -r repo x/repo && echo tar ok
lr=$(mktemp -d) && git init -q "$lr/src" && echo l > "$lr/src/l" && git -C "$lr/src" add l && git -C "$lr/src" commit -qm local
git clone -q "$lr/src" cin && git -C cin log -1 --format=%s && git clone -q repo "$lr/out" && git -C "$lr/out" log -1 --format=%s && rm -rf "$lr"
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
chmod 640 repo/c.txt && touch -d '2020-01-02 03:04:05' repo/c.txt && cp -a repo/c.txt kept2 && stat -c '%a %Y %s' kept2
mkdir -p zsrc/sub && echo a > zsrc/a && echo b > zsrc/sub/b && zip -qr z.zip zsrc && unzip -q z.zip -d zout && diff -r zsrc zout/zsrc && echo zip ok
out=$(mktemp -d) && rsync -a zsrc/ "$out"/ && rsync -a "$out"/ rsback/ && rm -r "$out" && diff -r zsrc rsback && echo rsync ok
for rw in write read randrw; do fio --name=t --ioengine=psync --rw=$rw --bs=4k --size=2m --filename=fio.dat --verify=crc32c --verify_state_save=0 --randseed=1 --output=/dev/null && echo fio $rw ok; done
"#;

/// An empty export and mount point under a scratch directory `name`; `None` where FUSE
/// cannot be used.
pub fn dirs(name: &str) -> Option<(PathBuf, PathBuf)> {
    if !fuse_usable() {
        return None;
    }
    let base = scratch(name);
    let (export, at) = (base.join("export"), base.join("mnt"));
    std::fs::create_dir_all(&export).unwrap();
    std::fs::create_dir_all(&at).unwrap();
    Some((export, at))
}

/// An export with a server, a mount point and a local directory to compare with; `None`
/// where FUSE cannot be used.
pub fn setup(name: &str) -> Option<(PathBuf, PathBuf, PathBuf, ServerProc)> {
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
