//! Programs run through `libposix_ship_preload.so` that live in the mount, or load or
//! look up what does: `exec` of shipped programs and of names found in `PATH`,
//! `freopen`, `glob` and `dlopen`; each compared with the same commands on a local
//! directory where the outcome is the same.

mod common;

use common::rig::{MOUNT, Rig};

#[test]
fn programs_in_the_mount_run() {
    let r = Rig::new("interpose-run", "tcp");
    let script = "cd {} && printf 'int main(int c, char **v){return c + 40;}' > m.c \
                  && cc -o m m.c && { ./m a b; echo rc=$?; } \
                  && printf '#!/bin/sh\\necho script \"$1\"\\n' > s.sh && chmod +x s.sh \
                  && ./s.sh one && sh -c './s.sh two' \
                  && python3 -c 'import os, subprocess\n\
print(subprocess.run([\"./m\"]).returncode)\n\
print(subprocess.run([\"./s.sh\", \"three\"], capture_output=True).stdout.decode().strip())\n\
pid = os.posix_spawn(\"./m\", [\"m\", \"x\"], os.environ)\n\
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))' \
                  && chmod -x s.sh && { ./s.sh 2>/dev/null; echo rc=$?; } \
                  && python3 -m venv --without-pip ve \
                  && ./ve/bin/python -c 'import sys; print(sys.prefix.endswith(\"ve\"))'";
    let out = r.same("sh", &["-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "rc=43\nscript one\nscript two\n41\nscript three\n42\nrc=126\nTrue\n"
    );
    // A shipped program larger than the 1 GiB copied into memory is refused (ENOMEM),
    // before any of it is read.
    let big = r.srv.export.join("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len((1 << 30) + 1).unwrap();
    std::fs::set_permissions(&big, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let code = "import os, sys\n\
                try: os.execv(sys.argv[1] + '/big', ['big'])\n\
                except OSError as e: print(e.errno)";
    let out = r.run(MOUNT, "python3", &["-c", code, "{}"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", libc::ENOMEM)
    );
    std::fs::remove_file(&big).unwrap();
}

#[test]
fn names_in_path_directories_in_the_mount_run() {
    let r = Rig::new("interpose-path", "tcp");
    let script = "cd {} && mkdir -p bin && printf '#!/bin/sh\\necho hi \"$@\"\\n' > bin/hi \
                  && printf '#!/bin/sh\\necho mine\\n' > bin/true && chmod +x bin/hi bin/true \
                  && PATH={}/bin:$PATH env hi one \
                  && PATH={}/bin:$PATH find bin -name hi -exec hi two \\; \
                  && echo three | PATH={}/bin:$PATH xargs hi \
                  && PATH=/usr/bin:/bin:{}/bin env true && echo system \
                  && cd bin && PATH=:/usr/bin:/bin python3 -c 'import os\n\
pid = os.posix_spawnp(\"hi\", [\"hi\", \"four\"], os.environ)\n\
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))' \
                  && { PATH={}/bin:/usr/bin env nothere 2>/dev/null; echo rc=$?; } \
                  && touch noexec && { PATH={}/bin:/usr/bin env noexec 2>/dev/null; echo rc=$?; }";
    let out = r.same("sh", &["-c", script]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "hi one\nhi two\nhi three\nsystem\nhi four\n0\nrc=127\nrc=126\n"
    );
}

#[test]
fn freopen_moves_streams_to_and_from_shipped_files() {
    let r = Rig::new("interpose-freopen", "tcp");
    let prog = r#"#include <errno.h>
#include <stdio.h>
static char *at(const char *d, const char *n) {
  static char p[4][512]; static int i; i = (i + 1) % 4;
  snprintf(p[i], 512, "%s/%s", d, n); return p[i];
}
int main(int c, char **v) {
  char b[8] = {0};
  FILE *f = fopen(at(v[2], "local-in"), "w"); fputs("xyz", f); fclose(f);
  if (c > 3) {
    fclose(fopen(at(v[1], "a"), "w"));
    f = fopen(at(v[1], "a"), "r"); errno = 0;
    FILE *g = freopen(at(v[1], "b"), "w", f); printf("%d %d\n", g == NULL, errno);
    f = fopen(at(v[2], "local-in"), "r"); errno = 0;
    g = freopen(at(v[1], "a"), "r", f); printf("%d %d\n", g == NULL, errno);
    return 0;
  }
  if (!freopen(at(v[1], "out.log"), "w", stdout)) return 1;
  printf("to the log\n");
  FILE *e = freopen(at(v[1], "err.log"), "a", stderr);
  fprintf(e, "err one\n"); fprintf(stderr, "err two\n");
  f = fopen(at(v[1], "a"), "w"); fputs("aaa", f);
  f = freopen(at(v[1], "b"), "w", f); fputs("bbb", f); fclose(f);
  f = fopen(at(v[1], "b"), "r"); f = freopen(at(v[1], "a"), "r", f);
  if (fread(b, 1, 3, f) != 3) return 2; fclose(f);
  f = fopen(at(v[1], "a"), "r"); f = freopen(at(v[2], "local-in"), "r", f);
  if (fread(b + 3, 1, 3, f) != 3) return 3; fclose(f);
  if (!freopen(at(v[2], "local.log"), "w", stdout)) return 4;
  printf("local %s\n", b);
  return 0;
}
"#;
    let script = |args: &str| {
        format!(
            "t=$(mktemp -d) && cat > $t/r.c <<'EOF'\n{prog}EOF\n\
             cc -o $t/r $t/r.c && $t/r {{}} $t {args} && \
             {{ [ -n '{args}' ] || cat {{}}/out.log {{}}/err.log {{}}/a {{}}/b $t/local.log; }} && rm -r $t"
        )
    };
    let out = r.same("sh", &["-c", &script("")]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "to the log\nerr one\nerr two\naaabbblocal aaaxyz\n"
    );
    let out = r.run(MOUNT, "sh", &["-c", &script("unsupported")]);
    let refused = format!("1 {}\n", libc::EOPNOTSUPP);
    assert_eq!(String::from_utf8_lossy(&out.stdout), refused.repeat(2));
}

#[test]
fn glob_lists_shipped_directories() {
    let r = Rig::new("interpose-glob", "tcp");
    let prog = r#"#include <glob.h>
#include <stdio.h>
#include <unistd.h>
static void show(const char *pat, int flags) {
  glob_t g; int rc = glob(pat, flags, NULL, &g);
  printf("%s rc=%d:", pat, rc);
  for (size_t i = 0; rc == 0 && i < g.gl_pathc; i++) printf(" %s", g.gl_pathv[i]);
  printf("\n"); if (rc == 0) globfree(&g);
}
int main(int c, char **v) {
  char p[512];
  snprintf(p, sizeof p, "%s/d*/*.dat", v[1]); show(p, 0);
  if (chdir(v[1])) return 1;
  show("*", GLOB_MARK); show("d1/[ab].dat", 0); show("none*", 0); show("none*", GLOB_NOCHECK);
  return 0;
}
"#;
    let script = format!(
        "t=$(mktemp -d) && cat > $t/g.c <<'EOF'\n{prog}EOF\n\
         cc -o $t/g $t/g.c && cd {{}} && mkdir d1 d2 && touch d1/a.dat d1/b.dat d1/c.txt d2/z.dat top \
         && $t/g {{}}; rc=$?; rm -r $t; exit $rc"
    );
    let out = r.same("sh", &["-c", &script]);
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!(
            "{MOUNT}/d*/*.dat rc=0: {MOUNT}/d1/a.dat {MOUNT}/d1/b.dat {MOUNT}/d2/z.dat\n\
             * rc=0: d1/ d2/ top\nd1/[ab].dat rc=0: d1/a.dat d1/b.dat\nnone* rc=3:\n\
             none* rc=0: none*\n"
        )
    );
}

#[test]
fn shipped_libraries_load_with_dlopen() {
    let r = Rig::new("interpose-dlopen", "tcp");
    let script = "cd {} && printf 'int twice(int x){return 2 * x;}\\nint calls;\\nint count(void){return ++calls;}\\n' > l.c \
                  && cc -shared -fPIC -o libl.so l.c && python3 -c 'import ctypes, sys\n\
a = ctypes.CDLL(sys.argv[1] + \"/libl.so\"); b = ctypes.CDLL(\"./libl.so\")\n\
print(a.twice(21), a.count(), b.count())\n\
try: ctypes.CDLL(\"./missing.so\")\n\
except OSError as e: print(\"missing\", \"No such file\" in str(e))' {}";
    let out = r.same("sh", &["-c", script]);
    assert_eq!(String::from_utf8_lossy(&out), "42 1 2\nmissing True\n");
}

/// A thread loads shipped libraries (each copied from the server on its first `dlopen`)
/// while the main thread forks children that load one: no child waits for ever for the
/// table of copies a thread of its parent held when the process was copied.
const FORKS_BESIDE_A_LOADER: &str = r#"cd {} && printf 'char pad[1 << 20] = {1};\nint one(void){return 1;}\n' > l.c && cc -shared -fPIC -o l0.so l.c && for i in $(seq 1 40); do cp l0.so l$i.so; done && cat > f.c <<'C'
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static const char *d;
static volatile int loading = 1;
static void *loader(void *x) {
    char p[4096];
    for (int i = 1; i <= 40; i++) {
        snprintf(p, sizeof p, "%s/l%d.so", d, i);
        if (!dlopen(p, RTLD_NOW)) printf("failed %s\n", p);
    }
    loading = 0;
    return x;
}
int main(int argc, char **argv) {
    char p0[4096];
    d = argv[1];
    snprintf(p0, sizeof p0, "%s/l0.so", d);
    if (!dlopen(p0, RTLD_NOW)) return 1;
    pthread_t t;
    pthread_create(&t, 0, loader, 0);
    int hung = 0, forks = 0;
    while (loading || forks < 20) {
        forks++;
        pid_t pid = fork();
        if (pid == 0) _exit(dlopen(p0, RTLD_NOW) ? 0 : 1);
        for (int ms = 0;; ms++) {
            int st;
            if (waitpid(pid, &st, WNOHANG) == pid) break;
            if (ms > 10000) { kill(pid, SIGKILL); waitpid(pid, &st, 0); hung++; break; }
            usleep(1000);
        }
    }
    pthread_join(t, 0);
    fprintf(stderr, "forks %d\n", forks);
    printf("hung %d\n", hung);
    return 0;
}
C
cc -O2 -pthread -o f f.c && ./f {}"#;

#[test]
fn children_forked_beside_a_loading_thread_do_not_hang() {
    let r = Rig::new("interpose-fork-loader", "tcp");
    let out = r.run(MOUNT, "bash", &["-c", FORKS_BESIDE_A_LOADER]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hung 0\n");
}

/// The mount's program script (git, tar, make, sqlite3, python, perl, cp -a, links,
/// xattrs, zip, rsync, fio) through the interposer alone, from a working directory in
/// the mount, compared with a local directory. One change: sqlite3's WAL needs writable
/// shared `mmap`, which the interposer alone cannot give (README), so its database keeps
/// the rollback journal here.
#[test]
fn the_mount_programs_run_through_the_interposer_alone() {
    use common::fuse::{PROGRAMS, run_env};
    use std::ffi::OsStr;
    let r = Rig::new("interpose-programs", "tcp");
    let script = PROGRAMS.replace("pragma journal_mode=wal;", "pragma journal_mode=delete;");
    let here = run_env(&r.local, &script, &[]).0;
    let env = [
        ("LD_PRELOAD", r.lib.as_os_str()),
        ("POSIX_SHIP_SERVER", OsStr::new(&r.srv.addr)),
        ("QS_AUTH", OsStr::new(&r.srv.auth)),
        ("POSIX_SHIP_MOUNT", OsStr::new(MOUNT)),
    ];
    let (there, err) = run_env(&r.local, &format!("cd {MOUNT}\n{script}"), &env);
    assert_eq!(there, here, "{err}");
    assert!(there.contains("built") && there.contains("10000|50005000"));
    assert!(r.srv.export.join("repo/c.txt").exists(), "on the server");
}

/// A file deleted while open stays readable by a forked child and by an exec'd one
/// that inherited its descriptor (they adopt the parent's open file: `posix.lend`).
#[test]
fn children_read_a_file_deleted_while_their_parent_held_it() {
    let r = Rig::new("interpose-lend", "tcp");
    let script = "import os, subprocess\n\
        fd = os.open('{}/f', os.O_RDWR | os.O_CREAT, 0o600)\n\
        os.write(fd, b'held')\n\
        os.unlink('{}/f')\n\
        pid = os.fork()\n\
        if pid == 0:\n    print('child', os.pread(fd, 4, 0), flush=True)\n    os._exit(0)\n\
        os.waitpid(pid, 0)\n\
        os.lseek(fd, 0, 0)\n\
        print(subprocess.run(['cat'], stdin=fd, capture_output=True).stdout)";
    let out = r.same("python3", &["-c", script]);
    assert_eq!(String::from_utf8_lossy(&out), "child b'held'\nb'held'\n");
}

/// A program built in the mount against libraries built there runs: found by its
/// `$ORIGIN` run path, by `LD_LIBRARY_PATH`, and one library needing another; the
/// program sees `LD_LIBRARY_PATH` as it was set (the loader's directory of links is
/// this library's, gone once the program runs).
#[test]
fn shipped_programs_load_shipped_libraries() {
    let r = Rig::new("interpose-libs", "tcp");
    let script = "L=/tmp/qs-libs-$(id -u) && B=$(mktemp) && { ls $L 2>/dev/null | sort > $B; } \
        && cd {} && mkdir -p lib \
        && printf 'int x(void){return 40;}' > x.c && cc -shared -fPIC -o lib/libx.so x.c \
        && printf 'int x(void); int y(void){return x() + 1;}' > y.c \
        && cc -shared -fPIC -o lib/liby.so y.c -Llib -lx -Wl,-rpath,'$ORIGIN' \
        && printf '%s\\n' '#include <stdio.h>' '#include <stdlib.h>' 'int y(void);' \
           'int main(void) { const char *l = getenv(\"LD_LIBRARY_PATH\");' \
           '  printf(\"%d %s\\n\", y() + 1, l ? l : \"unset\"); return 0; }' > m.c \
        && cc -o m m.c -Llib -ly -Wl,-rpath,'$ORIGIN/lib' && cc -o m2 m.c -Llib -ly \
        && cc -o m3 m.c -Llib -ly -Wl,--disable-new-dtags,-rpath,'$ORIGIN/lib' \
        && ./m && LD_LIBRARY_PATH=lib ./m2 && { ./m2 || echo m2 needs its path; } && ./m3 \
        && python3 -c 'import os; os.waitpid(os.posix_spawn(\"./m\", [\"m\"], os.environ), 0)' \
        && { ls $L 2>/dev/null | sort | comm -13 $B - | wc -l; rm -f $B; }";
    let out = r.same("sh", &["-c", script]);
    // (Compared with the local run: `LD_LIBRARY_PATH` is what the test's own was.)
    let out = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("42 ") && lines[1] == "42 lib", "{out}");
    assert_eq!(lines[2], "m2 needs its path", "{out}");
    // By DT_RPATH, and by posix_spawn; no directory of links left behind.
    assert!(
        lines[3].starts_with("42 ") && lines[4].starts_with("42 "),
        "{out}"
    );
    assert_eq!(lines[5], "0", "{out}");
}
