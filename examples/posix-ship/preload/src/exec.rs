//! What a program started by this one inherits: the working directory inside the
//! mount (`POSIX_SHIP_CWD`) and its shipped descriptors (`POSIX_SHIP_FDS`), added to the
//! environment `execve`, `execvpe`, `execv`, `execvp`, `posix_spawn` and `posix_spawnp`
//! pass (shells pass their own variables, not `environ`).
//!
//! A shipped descriptor is a placeholder the kernel passes on like any other; the child
//! learns what it stands for (path, status flags, offset) and opens it again on the
//! server at first use, so `cmd > /fwd/out`, `wc < /fwd/f` and `tar czf /fwd/x.tgz`
//! (gzip writing to tar's shipped descriptor) work. Parent and child share the offset
//! once the description was shared by a fork (`crate::offsets`), so `sh -c 'a; b' >
//! /fwd/f` writes `b` after `a`. Descriptors a `posix_spawn` file action moves are not
//! followed.

use std::ffi::{CStr, CString};

use libc::{c_char, c_int, pid_t, posix_spawn_file_actions_t, posix_spawnattr_t};

use crate::offsets;
use crate::real::call_real;
use crate::run;
use crate::table;

/// The variable the shipped descriptors are handed down in.
pub const FDS: &str = "POSIX_SHIP_FDS";

/// A shipped description and its descriptors.
type Group = (std::sync::Arc<table::Desc>, Vec<c_int>);

/// The shipped descriptions that survive `exec` (not close-on-exec).
fn surviving() -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (fd, d) in table::all_safely() {
        let cloexec = call_real!(fcntl: fn(c_int, c_int, usize) -> c_int, fd, libc::F_GETFD, 0);
        if cloexec < 0 || cloexec & libc::FD_CLOEXEC != 0 {
            continue;
        }
        match groups
            .iter_mut()
            .find(|(g, _)| std::sync::Arc::ptr_eq(g, &d))
        {
            Some((_, fds)) => fds.push(fd),
            None => groups.push((d, vec![fd])),
        }
    }
    groups
}

/// `fds:flags:offset[@slot]:dir:pass:hex(path)` for each of `groups`, `fds` the
/// comma-separated descriptors sharing it (`2>&1`: one offset for both), `slot` its
/// shared offset's (`crate::offsets`), `pass` the server's pass for its open file (32
/// hex digits, or `-`: the child opens the path again); and those slots.
fn inheritable(groups: Vec<Group>) -> Option<(Vec<u8>, Vec<u32>)> {
    let mut out = Vec::new();
    let mut slots = Vec::new();
    for (d, fds) in groups {
        // Not waited for: a thread that held these across a call may not exist in a
        // forked child; such a description is not handed down.
        let (Ok(flags), Some((pos, slot))) = (d.flags.try_lock(), d.pos.try_get()) else {
            continue;
        };
        let pos = match slot {
            Some(i) => {
                slots.push(i);
                format!("{pos}@{i}")
            }
            None => pos.to_string(),
        };
        if !out.is_empty() {
            out.push(b';');
        }
        let fds: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
        let hex: String = d.path.iter().map(|b| format!("{b:02x}")).collect();
        let dir = u8::from(d.is_dir);
        let pass = d
            .lend()
            .map_or("-".to_string(), |p| format!("{:032x}", p.0));
        let line = format!("{}:{}:{pos}:{dir}:{pass}:{hex}", fds.join(","), *flags);
        out.extend_from_slice(line.as_bytes());
    }
    (!out.is_empty()).then_some((out, slots))
}

/// Takes the descriptors handed down by the parent (run once, before `main`): each
/// must still be a placeholder (`O_PATH` on `/dev/null`), else it is left alone.
pub fn adopt() {
    let Some(v) = std::env::var_os(FDS) else {
        return;
    };
    if let Ok(k) = CString::new(FDS) {
        // SAFETY: a NUL-terminated name; this runs before the program's own threads.
        unsafe { libc::unsetenv(k.as_ptr()) };
    }
    crate::offsets::adopt();
    let shipping = crate::config().is_some();
    let v = std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec();
    for e in v.split(|b| *b == b';') {
        // (Parsed even when nothing is shipped: dropped, a description lets its shared
        // offset's slot go.)
        let Some((fds, desc)) = parse(e) else {
            continue;
        };
        if !shipping {
            continue;
        }
        let desc = std::sync::Arc::new(desc);
        for fd in fds.into_iter().filter(|fd| placeholder(*fd)) {
            table::insert(fd, desc.clone());
        }
    }
}

fn parse(e: &[u8]) -> Option<(Vec<c_int>, table::Desc)> {
    let s = std::str::from_utf8(e).ok()?;
    let mut it = s.splitn(6, ':');
    let fds = it
        .next()?
        .split(',')
        .map(|f| f.parse().ok())
        .collect::<Option<Vec<c_int>>>()?;
    let flags: c_int = it.next()?.parse().ok()?;
    let (pos, slot) = match it.next()?.split_once('@') {
        Some((p, i)) => (p.parse().ok()?, Some(i.parse().ok()?)),
        None => (s.split(':').nth(2)?.parse().ok()?, None),
    };
    // Made before the rest is checked: if the line is refused, its slot is let go.
    let pos = offsets::Pos::inherited(pos, slot);
    let dir = it.next()? == "1";
    let pass = match it.next()? {
        "-" => None,
        p if p.len() == 32 => Some(posix_ship::proto::Pass(u128::from_str_radix(p, 16).ok()?)),
        _ => return None,
    };
    let hex = it.next()?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let path = hex
        .chunks(2)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    (path.first() == Some(&b'/'))
        .then(|| (fds, table::Desc::inherited(path, flags, pos, dir, pass)))
}

/// Whether `fd` is an `O_PATH` descriptor of `/dev/null` (one of our placeholders).
fn placeholder(fd: c_int) -> bool {
    let fl = call_real!(fcntl: fn(c_int, c_int, usize) -> c_int, fd, libc::F_GETFL, 0);
    if fl < 0 || fl & libc::O_PATH == 0 {
        return false;
    }
    // SAFETY: all-zero is a valid `struct stat`, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid buffer.
    let r = unsafe { libc::fstat(fd, &mut st) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3)
}

/// `envp` with the working directory inside the mount added, owned for the call.
struct Env {
    _own: Vec<CString>,
    ptrs: Vec<*const c_char>,
    /// The shared offsets' region, open across the call.
    handed: Option<offsets::Handed>,
}

impl Env {
    /// `None` when there is nothing to hand down (`envp` is passed unchanged).
    /// `spawn`: `posix_spawn` (this process goes on), else `exec`.
    fn new(envp: *const *const c_char, spawn: bool) -> Option<Env> {
        let cwd = crate::cwd::env();
        let groups = surviving();
        if spawn {
            let descs: Vec<_> = groups.iter().map(|g| g.0.clone()).collect();
            offsets::before_spawn(&descs);
        }
        let fds = inheritable(groups);
        let handed = offsets::hand_down(fds.as_ref().map_or(&[][..], |f| &f.1), spawn);
        // Ours are always replaced: a stale value the shell kept (after a `cd` out of the
        // mount) must not reach the program.
        let ours: Vec<Vec<u8>> = [crate::cwd::ENV, FDS, offsets::ENV]
            .iter()
            .map(|k| [k.as_bytes(), b"="].concat())
            .collect();
        if cwd.is_none() && fds.is_none() && !has_any(envp, &ours) {
            return None;
        }
        let mut own = Vec::new();
        let region = handed
            .as_ref()
            .map(|h| (offsets::ENV, h.env().into_bytes()));
        for (k, v) in cwd.into_iter().chain(fds.map(|f| (FDS, f.0))).chain(region) {
            own.push(CString::new([k.as_bytes(), b"=", &v].concat()).ok()?);
        }
        for s in entries(envp) {
            if !ours.iter().any(|p| s.to_bytes().starts_with(p)) {
                own.push(s.to_owned());
            }
        }
        let mut ptrs: Vec<*const c_char> = own.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Some(Env {
            _own: own,
            ptrs,
            handed,
        })
    }
}

/// Whether `envp` holds a variable starting with one of `prefixes`.
fn has_any(envp: *const *const c_char, prefixes: &[Vec<u8>]) -> bool {
    entries(envp).any(|s| prefixes.iter().any(|p| s.to_bytes().starts_with(p)))
}

/// The entries of `envp`, a NULL-terminated array of C strings (execve's contract; a
/// null `envp` has none), valid while the caller's array is.
pub(crate) fn entries<'a>(envp: *const *const c_char) -> impl Iterator<Item = &'a CStr> {
    let mut i = 0;
    std::iter::from_fn(move || {
        if envp.is_null() {
            return None;
        }
        // SAFETY: within the NULL-terminated array: `i` never passes its NULL.
        let e = unsafe { *envp.add(i) };
        if e.is_null() {
            return None;
        }
        i += 1;
        // SAFETY: each entry is a NUL-terminated string.
        Some(unsafe { CStr::from_ptr(e) })
    })
}

/// The environment to pass: ours if made, else the caller's.
fn pick<T>(env: &Option<Env>, envp: *const *const T) -> *const *const T {
    env.as_ref().map_or(envp, |e| e.ptrs.as_ptr().cast())
}

macro_rules! exec {
    ($($name:ident searching $search:expr),*) => {$(
        #[doc = concat!("Interposed `", stringify!($name), "`: the program inherits the working directory inside the mount.")]
        ///
        /// # Safety
        /// As the C call's contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            file: *const c_char,
            argv: *const *const c_char,
            envp: *const *const c_char,
        ) -> c_int {
            // The program started may read what this one wrote.
            crate::ride::settle_all();
            let env = Env::new(envp, false);
            let envp = pick(&env, envp);
            // A name found in a directory of the mount `PATH` names.
            let found = if $search { run::search(file) } else { None };
            let file = found.as_ref().map_or(file, |f| f.as_ptr());
            // A program in the mount (a path, not a name to look for in PATH).
            // SAFETY: a non-null `file` is NUL-terminated (execve's contract).
            let path = !file.is_null() && unsafe { CStr::from_ptr(file) }.to_bytes().contains(&b'/');
            match if path { run::program(file, envp) } else { run::Program::Elsewhere } {
                run::Program::Elsewhere => call_real!($name:
                    fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
                    file, argv, envp),
                run::Program::Local(p) => call_real!(execve:
                    fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
                    p.as_ptr(), argv, envp),
                run::Program::Image(fd, libs) => {
                    let with = libs.as_ref().and_then(|l| l.env(envp));
                    // (Armed only with the variable that tells the program to close them.)
                    let armed = libs.as_ref().filter(|_| with.is_some());
                    armed.inspect(|l| l.arm());
                    let r = run::exec_image(&fd, argv, with.as_ref().map_or(envp, |e| e.ptr()));
                    // Failed: the memfds and links go, with the exec's errno kept.
                    let e = crate::last_errno();
                    armed.inspect(|l| l.disarm());
                    drop((with, libs, fd, env));
                    crate::fail(e);
                    r
                }
                run::Program::Script(words) => {
                    // SAFETY: `argv` is the caller's, NULL-terminated.
                    let a = unsafe { run::Argv::after(words, argv) };
                    call_real!(execve:
                        fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
                        a.program(), a.ptr(), envp)
                }
                run::Program::Refused(e) => crate::fail(e),
            }
        }
    )*};
}

macro_rules! spawn {
    ($($name:ident searching $search:expr),*) => {$(
        #[doc = concat!("Interposed `", stringify!($name), "`: the program inherits the working directory inside the mount.")]
        ///
        /// # Safety
        /// As the C call's contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            pid: *mut pid_t,
            file: *const c_char,
            actions: *const posix_spawn_file_actions_t,
            attr: *const posix_spawnattr_t,
            argv: *const *mut c_char,
            envp: *const *mut c_char,
        ) -> c_int {
            // The program started may read what this one wrote.
            crate::ride::settle_all();
            let mut env = Env::new(envp.cast(), true);
            let envp: *const *mut c_char = pick(&env, envp.cast::<*const c_char>()).cast();
            let found = if $search { run::search(file) } else { None };
            let file = found.as_ref().map_or(file, |f| f.as_ptr());
            // SAFETY: a non-null `file` is NUL-terminated (posix_spawn's contract).
            let path = !file.is_null() && unsafe { CStr::from_ptr(file) }.to_bytes().contains(&b'/');
            let real = |file: *const c_char, argv: *const *mut c_char, envp: *const *mut c_char|
                call_real!($name:
                fn(*mut pid_t, *const c_char, *const posix_spawn_file_actions_t,
                *const posix_spawnattr_t, *const *mut c_char, *const *mut c_char) -> c_int,
                pid, file, actions, attr, argv, envp);
            let r = match if path { run::program(file, envp.cast()) } else { run::Program::Elsewhere } {
                run::Program::Elsewhere => real(file, argv, envp),
                run::Program::Local(p) => real(p.as_ptr(), argv, envp),
                run::Program::Image(fd, libs) => {
                    let with = libs.as_ref().and_then(|l| l.env(envp.cast()));
                    let e = with.as_ref().map_or(envp, |e| e.ptr().cast());
                    let armed = libs.as_ref().filter(|_| with.is_some());
                    armed.inspect(|l| l.arm());
                    let r = real(run::image_path(&fd).as_ptr(), argv, e);
                    armed.inspect(|l| l.disarm());
                    if let Some(l) = libs.filter(|_| r == 0 && with.is_some()) {
                        l.started();
                    }
                    r
                }
                run::Program::Script(words) => {
                    // SAFETY: `argv` is the caller's, NULL-terminated.
                    let a = unsafe { run::Argv::after(words, argv.cast()) };
                    real(a.program(), a.ptr().cast(), envp)
                }
                run::Program::Refused(e) => e,
            };
            if r != 0 && let Some(h) = env.as_mut().and_then(|e| e.handed.as_mut()) {
                h.failed();
            }
            r
        }
    )*};
}

exec!(execve searching false, execvpe searching true);
spawn!(posix_spawn searching false, posix_spawnp searching true);

unsafe extern "C" {
    static environ: *const *const c_char;
}

/// Interposed `execv`: `execve` with this process's environment.
///
/// # Safety
/// As `execv(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: `environ` is the C library's; the caller's contract is execve's.
    unsafe { execve(path, argv, environ) }
}

/// Interposed `execvp`: `execvpe` with this process's environment.
///
/// # Safety
/// As `execvp(3)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: as above.
    unsafe { execvpe(file, argv, environ) }
}

/// Interposed `_exit`: the writes in flight land first, as at `exit` (a forked child
/// ending with `_exit` would otherwise lose what it wrote), within half a second; the
/// report is made.
#[unsafe(no_mangle)]
pub extern "C" fn _exit(status: c_int) -> ! {
    crate::ride::settle_at_exit();
    crate::report::at_exit();
    crate::offsets::at_exit();
    if let Some(f) = crate::real::real!(_exit: fn(c_int) -> ()) {
        // SAFETY: the C library's `_exit` with the caller's status.
        unsafe { f(status) };
    }
    // SAFETY: exit_group(2) ends the process; it takes the status and cannot fail.
    unsafe { libc::syscall(libc::SYS_exit_group, status) };
    unreachable!("exit_group returned")
}

/// Interposed `_Exit`: `_exit`.
#[unsafe(no_mangle)]
pub extern "C" fn _Exit(status: c_int) -> ! {
    _exit(status)
}

/// Interposed `vfork`: a `fork`, after the writes in flight have landed. A vforked child
/// shares this process's memory until it execs, so it could neither send the writes
/// gathered here nor forget them (the parent's state) — and the program it starts may read
/// them. `fork` is what POSIX allows `vfork` to be; it costs a copy of the page tables.
#[unsafe(no_mangle)]
pub extern "C" fn vfork() -> pid_t {
    crate::ride::settle_all();
    call_real!(fork: fn() -> pid_t,)
}
