//! Shared libraries in the mount that a shipped program needs (`DT_NEEDED`): the dynamic
//! loader reads them itself, before this library runs in the new image, so it cannot
//! see shipped files. Before the `exec`, each library the program (and, in turn, each
//! library found) needs is looked for where the loader would look — `DT_RPATH` (without
//! `DT_RUNPATH`), `LD_LIBRARY_PATH`, `DT_RUNPATH`, `$ORIGIN` being the object's
//! directory in the mount — and one found first in a shipped directory is copied into a
//! memfd the program inherits. A private local directory of links (`name ->
//! /proc/self/fd/N`) goes first in the program's `LD_LIBRARY_PATH`; this library, loaded
//! in the new image, removes it, closes the memfds and puts `LD_LIBRARY_PATH` back
//! ([`adopt`], from [`ENV`]). A library found first in a local directory is the loader's.
//!
//! Bounded: at most [`MAX_LIBS`] libraries and [`MAX_BYTES`] in all; past them the
//! program runs with what was found (the loader then says what it misses).

use std::collections::{HashSet, VecDeque};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};

use goblin::elf::Elf;
use libc::{c_char, c_int};
use posix_ship::proto::{self as p, Target};
use serde_bytes::ByteBuf;

use crate::real::call_real;

/// The variable that tells the new image what to undo: `hex(dir):fd,fd:hex(old)` where
/// `old` is `LD_LIBRARY_PATH` as it was (`-`: unset).
pub const ENV: &str = "POSIX_SHIP_LIBS";

/// Libraries copied for one program at most.
const MAX_LIBS: usize = 64;
/// Bytes copied for one program at most.
const MAX_BYTES: u64 = 1 << 30;
/// Where the directories of links are made: `/tmp/qs-libs-UID/` (0700, this user's: the
/// loader keeps searching a directory named in `LD_LIBRARY_PATH` at start-up for every
/// later `dlopen`, so nobody else may ever make one of that name).
fn parent(create: bool) -> Option<Vec<u8>> {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = format!("/tmp/qs-libs-{uid}");
    let c = CString::new(dir.clone()).ok()?;
    if create {
        call_real!(mkdir: fn(*const c_char, libc::mode_t) -> c_int, c.as_ptr(), 0o700);
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a NUL-terminated path and a buffer for one stat.
    let r =
        call_real!(lstat: fn(*const c_char, *mut libc::stat) -> c_int, c.as_ptr(), st.as_mut_ptr());
    if r != 0 {
        return None;
    }
    // SAFETY: lstat filled it.
    let st = unsafe { st.assume_init() };
    let ours = st.st_mode & libc::S_IFMT == libc::S_IFDIR
        && st.st_uid == uid
        && st.st_mode & 0o777 == 0o700;
    if !ours {
        crate::warn_once(&format!(
            "{dir} is not this user's private directory (0700): shipped libraries are not \
             handed to programs"
        ));
        return None;
    }
    Some(dir.into_bytes())
}

/// Directories of links older than this are swept when a new one is made (a program
/// that never loaded this library, a static one, leaves its own).
const STALE: std::time::Duration = std::time::Duration::from_secs(600);

/// The libraries found for one program: their memfds (inherited by it) and the
/// directory of links to them.
pub struct Libs {
    dir: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// The directory outlives this value (a spawned program's loader reads it after
    /// `posix_spawn` returns; the program removes it).
    keep: bool,
}

/// What the loader of `image` (the program at `path` in the mount, by its local name)
/// would not find itself, with `envp` the program's environment; `None` if nothing.
pub fn find(image: &[u8], path: &[u8], envp: *const *const c_char) -> Option<Libs> {
    let ld_path = env_value(envp, b"LD_LIBRARY_PATH");
    let mount = crate::config()?.mount().to_vec();
    let mut seen = HashSet::new();
    // Objects whose needs to read, with their directories in the mount: the program,
    // then each library found (its bytes shared with `found`).
    let mut todo: VecDeque<(Rc<[u8]>, Vec<u8>)> = VecDeque::from([(Rc::from(image), dir_of(path))]);
    let mut found: Vec<(Vec<u8>, Rc<[u8]>)> = Vec::new();
    let mut bytes = 0u64;
    let mut main = true;
    'all: while let Some((data, origin)) = todo.pop_front() {
        let is_main = std::mem::take(&mut main);
        let Ok(elf) = Elf::parse(&data) else { continue };
        for name in elf.libraries.iter().map(|l| l.as_bytes().to_vec()) {
            // A name with a `/` the loader opens as it is, searching nothing.
            if found.len() >= MAX_LIBS || name.contains(&b'/') || !seen.insert(name.clone()) {
                continue;
            }
            let Some((lib, size)) = locate(&name, &elf, &origin, ld_path.as_deref(), is_main)
            else {
                continue;
            };
            if bytes + size > MAX_BYTES {
                break 'all;
            }
            let Ok(lib_data) = crate::run::image(lib.clone(), libc::R_OK) else {
                continue;
            };
            bytes += lib_data.len() as u64;
            let lib_data: Rc<[u8]> = Rc::from(lib_data);
            todo.push_back((lib_data.clone(), dir_of(&[&mount[..], &lib].concat())));
            found.push((name, lib_data));
        }
    }
    if found.is_empty() {
        return None;
    }
    links(found)
}

/// Where the loader would take `name` from, if that is a shipped file: the path beneath
/// the export, and its size. `None` if it finds it locally first (or not at all).
///
/// `main`: `elf` is the program, run from a memfd, whose `$ORIGIN` the loader takes to
/// be `/`: a `DT_RPATH` entry with `$ORIGIN` (searched before the directory of links)
/// is first looked for locally as the loader sees it (`$ORIGIN/../lib` as `/lib`), and
/// a local file there is the loader's.
fn locate(
    name: &[u8],
    elf: &Elf,
    origin: &[u8],
    ld_path: Option<&[u8]>,
    main: bool,
) -> Option<(Vec<u8>, u64)> {
    let split = |s: &str| {
        s.split(':')
            .map(|d| d.as_bytes().to_vec())
            .collect::<Vec<_>>()
    };
    // (Each with whether the loader searches it before `LD_LIBRARY_PATH`, where the
    // directory of links goes first: only `DT_RPATH`, and only without `DT_RUNPATH`.)
    let mut dirs: Vec<(Vec<u8>, bool)> = Vec::new();
    if elf.runpaths.is_empty() {
        elf.rpaths
            .iter()
            .for_each(|r| dirs.extend(split(r).into_iter().map(|d| (d, true))));
    }
    if let Some(l) = ld_path {
        dirs.extend(l.split(|b| *b == b':').map(|d| (d.to_vec(), false)));
    }
    elf.runpaths
        .iter()
        .for_each(|r| dirs.extend(split(r).into_iter().map(|d| (d, false))));
    for (d, before) in dirs.into_iter().filter(|(d, _)| !d.is_empty()) {
        if main && before && d.windows(7).any(|w| w == b"$ORIGIN" || w == b"{ORIGIN") {
            let seen_as = [&expand_origin(&d, b"/")[..], b"/", name].concat();
            if local_file(&seen_as) {
                return None;
            }
        }
        let d = expand_origin(&d, origin);
        let full = [&d[..], b"/", name].concat();
        if let Some(p) = shipped_file(&full) {
            return Some(p);
        }
        if shipped_path(&full).is_none() && local_file(&full) {
            return None;
        }
    }
    None
}

/// `d` with `$ORIGIN` and `${ORIGIN}` made `origin`.
fn expand_origin(d: &[u8], origin: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(d);
    let o = String::from_utf8_lossy(origin);
    s.replace("${ORIGIN}", &o)
        .replace("$ORIGIN", &o)
        .into_bytes()
}

/// The directory of `path` (`.` for a bare name).
fn dir_of(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/".to_vec(),
        Some(i) => path[..i].to_vec(),
        None => b".".to_vec(),
    }
}

/// `path` beneath the export, if it is shipped (a relative one from the working
/// directory, which may be inside the mount).
fn shipped_path(path: &[u8]) -> Option<Vec<u8>> {
    let c = CString::new(path).ok()?;
    crate::shipped(c.as_ptr())
}

/// `full` beneath the export and its size, if it is a shipped regular file (or a link
/// to one).
fn shipped_file(full: &[u8]) -> Option<(Vec<u8>, u64)> {
    let p = shipped_path(full)?;
    let a = crate::call(p::STAT, &(Target::Path(ByteBuf::from(p.clone())), true)).ok()?;
    a.is_file().then_some((p, a.size))
}

/// Whether `full` is a local file the loader would open.
fn local_file(full: &[u8]) -> bool {
    let Ok(c) = CString::new(full) else {
        return false;
    };
    call_real!(access: fn(*const c_char, c_int) -> c_int, c.as_ptr(), libc::R_OK) == 0
}

/// The value of `name` in `envp`.
fn env_value(envp: *const *const c_char, name: &[u8]) -> Option<Vec<u8>> {
    crate::exec::entries(envp).find_map(|s| {
        let v = s.to_bytes().strip_prefix(name)?.strip_prefix(b"=")?;
        Some(v.to_vec())
    })
}

/// Memfds for `found` and a fresh local directory of links to them by name.
fn links(found: Vec<(Vec<u8>, Rc<[u8]>)>) -> Option<Libs> {
    let parent = parent(true)?;
    sweep(&parent);
    let mut tmpl = [&parent[..], b"/XXXXXX\0"].concat();
    let made = call_real!(mkdtemp: fn(*mut c_char) -> *mut c_char, tmpl.as_mut_ptr().cast());
    if made.is_null() {
        return None;
    }
    tmpl.pop();
    let mut libs = Libs {
        dir: tmpl,
        fds: Vec::new(),
        keep: false,
    };
    for (name, data) in found {
        // Close-on-exec until the program is started ([`Libs::arm`]), and above the
        // numbers programs use (a closed stdin would take a library otherwise).
        let fd = crate::run::memfd_named(&data, c"posix-ship-lib", libc::MFD_CLOEXEC).ok()?;
        let mut high = call_real!(fcntl: fn(c_int, c_int, c_int) -> c_int,
            fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD);
        if high < 0 {
            // (A descriptor limit at or below `HIGH_FD`: above the standard streams.)
            high = call_real!(fcntl: fn(c_int, c_int, c_int) -> c_int,
                fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3);
        }
        if high < 0 {
            return None;
        }
        // SAFETY: a descriptor just made, owned by nothing else.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) };
        let link = CString::new([&libs.dir[..], b"/", &name].concat()).ok()?;
        let to = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        if call_real!(symlink: fn(*const c_char, *const c_char) -> c_int, to.as_ptr(), link.as_ptr())
            != 0
        {
            return None;
        }
        libs.fds.push(fd);
    }
    Some(libs)
}

/// The lowest number a library's memfd takes (if the descriptor limit allows; never
/// below 3).
const HIGH_FD: c_int = 512;

/// Memfds made inheritable and not yet handed to a program ([`Libs::arm`]), in slots
/// (-1: free) without a lock: a child another thread forks meanwhile closes them
/// ([`in_child`]), whatever a lock would have been held by at the fork.
static ARMED: [AtomicI32; 2 * MAX_LIBS] = [const { AtomicI32::new(-1) }; 2 * MAX_LIBS];

/// In the child of a `fork`: closes memfds armed for another program.
pub fn in_child() {
    for slot in &ARMED {
        let fd = slot.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            call_real!(close: fn(c_int) -> c_int, fd);
        }
    }
}

/// Removes directories of links in `parent` older than [`STALE`].
fn sweep(parent: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(d) = std::fs::read_dir(std::ffi::OsStr::from_bytes(parent)) else {
        return;
    };
    for e in d.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE));
        if old {
            remove_dir(e.path().as_os_str().as_bytes());
        }
    }
}

impl Libs {
    /// `envp` with the directory first in `LD_LIBRARY_PATH` and [`ENV`] set, owned.
    pub fn env(&self, envp: *const *const c_char) -> Option<EnvArray> {
        let old = env_value(envp, b"LD_LIBRARY_PATH");
        let mut ld = self.dir.clone();
        if let Some(o) = old.as_ref().filter(|o| !o.is_empty()) {
            ld.push(b':');
            ld.extend_from_slice(o);
        }
        let fds: Vec<String> = self.fds.iter().map(|f| f.as_raw_fd().to_string()).collect();
        let undo = format!(
            "{}:{}:{}",
            hex(&self.dir),
            fds.join(","),
            old.map_or("-".to_string(), |o| hex(&o))
        );
        let mut own = vec![
            CString::new([&b"LD_LIBRARY_PATH="[..], &ld].concat()).ok()?,
            CString::new(format!("{ENV}={undo}")).ok()?,
        ];
        let undo_var = format!("{ENV}=");
        for s in crate::exec::entries(envp) {
            let b = s.to_bytes();
            if !b.starts_with(b"LD_LIBRARY_PATH=") && !b.starts_with(undo_var.as_bytes()) {
                own.push(s.to_owned());
            }
        }
        let mut ptrs: Vec<*const c_char> = own.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Some(EnvArray { _own: own, ptrs })
    }

    /// The memfds are to be inherited by the program started next (just before it is;
    /// [`Libs::disarm`] once it is, or failed to be).
    pub fn arm(&self) {
        for fd in &self.fds {
            let fd = fd.as_raw_fd();
            // (No free slot: a fork meanwhile would keep this one open in its child.)
            let _ = ARMED.iter().any(|s| {
                s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            });
            call_real!(fcntl: fn(c_int, c_int, c_int) -> c_int, fd, libc::F_SETFD, 0);
        }
    }

    /// The program was started (or failed to be): the memfds are this process's again.
    pub fn disarm(&self) {
        for fd in &self.fds {
            let fd = fd.as_raw_fd();
            for s in &ARMED {
                let _ = s.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// The directory stays for the program to remove (it was started and reads it).
    pub fn started(mut self) {
        self.keep = true;
    }
}

impl Drop for Libs {
    fn drop(&mut self) {
        if !self.keep {
            remove_dir(&self.dir);
        }
    }
}

/// An environment array built for one call.
pub struct EnvArray {
    _own: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl EnvArray {
    /// The array, valid while `self` lives.
    pub fn ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Removes a directory of links this library made (its links, then it).
fn remove_dir(dir: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::OsStr::from_bytes(dir);
    let Ok(d) = std::fs::read_dir(dir) else {
        return;
    };
    for e in d.flatten() {
        if e.file_type().is_ok_and(|t| t.is_symlink()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// In the new image (run once, before `main`): undoes what the parent set up for the
/// loader, if [`ENV`] names it. Hostile values are ignored: the directory must be one of
/// ours (its name's prefix, links only), each descriptor a memfd of ours.
pub fn adopt() {
    let Some(v) = std::env::var_os(ENV) else {
        return;
    };
    let v = v.to_string_lossy().into_owned();
    // SAFETY: NUL-terminated names; this runs before the program's own threads.
    unsafe { libc::unsetenv(c"POSIX_SHIP_LIBS".as_ptr()) };
    // (What is not the directory is undone whatever: the directory is removed only if
    // it is in this user's private one.)
    let parent = parent(false).unwrap_or_default();
    let Some(undo) = Undo::parse(&v, &parent) else {
        return;
    };
    if let Some(dir) = &undo.dir {
        remove_dir(dir);
    }
    for fd in undo.fds {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"));
        if link.is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:posix-ship-lib")) {
            call_real!(close: fn(c_int) -> c_int, fd);
        }
    }
    match undo.old.and_then(|o| CString::new(o).ok()) {
        // SAFETY: NUL-terminated; this runs before the program's own threads.
        Some(o) => unsafe {
            libc::setenv(c"LD_LIBRARY_PATH".as_ptr(), o.as_ptr(), 1);
        },
        // SAFETY: as above.
        None => unsafe {
            libc::unsetenv(c"LD_LIBRARY_PATH".as_ptr());
        },
    }
}

/// What [`ENV`] asks the new image to undo.
#[derive(Debug, PartialEq, Eq)]
struct Undo {
    /// The directory of links, if it is one of ours (one name in [`parent`]).
    dir: Option<Vec<u8>>,
    fds: Vec<c_int>,
    /// `LD_LIBRARY_PATH` as it was (`None`: unset).
    old: Option<Vec<u8>>,
}

impl Undo {
    /// `v` as [`ENV`] holds it; the directory only if it is in `parent`.
    fn parse(v: &str, parent: &[u8]) -> Option<Undo> {
        let parent = parent.to_vec();
        let mut it = v.splitn(3, ':');
        let (dir, fds, old) = (it.next()?, it.next()?, it.next()?);
        let dir = unhex(dir)?;
        let ours = !parent.is_empty()
            && dir
                .strip_prefix(parent.as_slice())
                .and_then(|r| r.strip_prefix(b"/"))
                .is_some_and(|n| !n.is_empty() && !n.contains(&b'/') && n != b"." && n != b"..");
        let fds = fds
            .split(',')
            .filter_map(|f| f.parse().ok())
            .filter(|&n: &c_int| n > 2)
            .collect();
        let old = match old {
            "-" => None,
            h => Some(unhex(h)?),
        };
        Some(Undo {
            dir: ours.then_some(dir),
            fds,
            old,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_and_directories() {
        assert_eq!(
            expand_origin(b"$ORIGIN/../lib", b"/fwd/p/bin"),
            b"/fwd/p/bin/../lib"
        );
        assert_eq!(expand_origin(b"${ORIGIN}/x", b"/o"), b"/o/x");
        assert_eq!(dir_of(b"/fwd/p/prog"), b"/fwd/p");
        assert_eq!(dir_of(b"/prog"), b"/");
        assert_eq!(dir_of(b"prog"), b".");
    }

    #[test]
    fn what_to_undo_is_checked() {
        let parent = b"/tmp/qs-libs-1000";
        let p = |v: &str| Undo::parse(v, parent);
        let ok = format!(
            "{}:515,2,7:{}",
            hex(b"/tmp/qs-libs-1000/Ab12Cd"),
            hex(b"/opt/lib")
        );
        assert_eq!(
            p(&ok),
            Some(Undo {
                dir: Some(b"/tmp/qs-libs-1000/Ab12Cd".to_vec()),
                fds: vec![515, 7],
                old: Some(b"/opt/lib".to_vec()),
            }),
            "the standard streams are not ours"
        );
        let no_parent = Undo::parse(&ok, b"").unwrap();
        assert_eq!(
            (no_parent.dir, no_parent.fds.len()),
            (None, 2),
            "the rest is undone"
        );
        // Another directory is left alone; junk is refused.
        for d in [
            &b"/tmp/qs-libs-1000/x/../../etc"[..],
            b"/tmp/qs-libs-1000/..",
            b"/tmp/qs-libs-1000/.",
            b"/home/u",
        ] {
            assert_eq!(p(&format!("{}::-", hex(d))).unwrap().dir, None, "{d:?}");
        }
        assert_eq!(
            p(&format!("{}::-", hex(b"/tmp/qs-libs-1000"))).unwrap().dir,
            None
        );
        assert_eq!(p("zz:5:-"), None);
        assert_eq!(p("2f:5"), None);
        assert_eq!(p("2f:x,600:-").unwrap().fds, vec![600]);
        assert_eq!(p("2f:1,0:-").unwrap().fds, Vec::<c_int>::new());
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        assert_eq!(unhex(&hex(b"/tmp/x:y")), Some(b"/tmp/x:y".to_vec()));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
