//! File offsets shared between processes, as a kernel descriptor's are.
//!
//! A shipped description's offset lives in this process's memory, so a forked child, or
//! a program started with the descriptor (`sh -c 'a; b' > /fwd/f`), used to get a copy:
//! `b` started where the shell stood, not where `a` ended, and wrote over it. Now, when a
//! process forks while it has shipped descriptions, each one's offset moves into a slot
//! of a small shared region (a sealed `memfd`, mapped shared, so parent and child see one
//! value), and `exec` and `posix_spawn` hand the region and the slot down
//! ([`ENV`], the slot in `POSIX_SHIP_FDS`). A description never shared keeps its offset
//! private, and costs nothing more.
//!
//! Each slot counts the processes holding it; a slot whose count falls to zero is free
//! again. A process releases its slots when it closes the description or exits through
//! `exit`/`_exit`; one killed keeps its slots taken (the region has [`SLOTS`]; when all
//! are taken, descriptions stay private, as before). Within a process the description's
//! own lock orders its threads; processes using one offset at the same moment are not
//! ordered with each other (Linux orders them): the shell's case, one after another, is
//! exact.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use libc::c_int;

use crate::real::call_real;

/// The variable naming the inherited region's descriptor.
pub const ENV: &str = "POSIX_SHIP_OFFSETS";

/// Slots in a region (16 bytes each).
pub const SLOTS: u32 = 1024;

/// Where the region's descriptor is moved (out of the way of the program's own, which
/// take the lowest free numbers; shells keep theirs from 10 and at 255).
const REGION_FD_MIN: c_int = 600;

/// No slot.
const NONE: u32 = u32::MAX;

#[repr(C)]
struct Slot {
    /// Processes holding it; zero: free.
    refs: AtomicU32,
    _pad: u32,
    pos: AtomicU64,
}

const LEN: usize = SLOTS as usize * std::mem::size_of::<Slot>();

struct Region {
    fd: c_int,
    /// `(st_dev, st_ino)` of the memfd, to know it is still ours at `exec`.
    id: (u64, u64),
    slots: &'static [Slot],
}

static REGION: OnceLock<Region> = OnceLock::new();

/// The region, made on first need.
fn region() -> Option<&'static Region> {
    if let Some(r) = REGION.get() {
        return Some(r);
    }
    let r = create()?;
    // Another thread may have made one meanwhile: theirs is kept (this one leaks a
    // mapping and a descriptor, once).
    Some(REGION.get_or_init(|| r))
}

fn create() -> Option<Region> {
    // SAFETY: a NUL-terminated name; flags as memfd_create(2) documents.
    let fd = unsafe {
        libc::memfd_create(
            c"posix-ship-offsets".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return None;
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: `fd` is the memfd just made; plain integer arguments.
    let ok = unsafe { libc::ftruncate(fd, LEN as libc::off_t) } == 0
        && call_real!(fcntl: fn(c_int, c_int, usize) -> c_int, fd, libc::F_ADD_SEALS, seals as usize)
            == 0;
    let high = call_real!(fcntl: fn(c_int, c_int, usize) -> c_int,
        fd, libc::F_DUPFD_CLOEXEC, REGION_FD_MIN as usize);
    call_real!(close: fn(c_int) -> c_int, fd);
    if !ok || high < 0 {
        if high >= 0 {
            call_real!(close: fn(c_int) -> c_int, high);
        }
        return None;
    }
    map(high)
}

/// Maps the region behind `fd`, which must be a memfd of at least [`LEN`] bytes that
/// cannot shrink (else a slot's page could vanish under a reader: `SIGBUS`).
fn map(fd: c_int) -> Option<Region> {
    // A memfd of ours by name (what the environment names is the parent's, or anyone's;
    // where there is no /proc to ask, the seals and the size below decide).
    if let Ok(link) = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        && !link
            .as_os_str()
            .as_encoded_bytes()
            .starts_with(b"/memfd:posix-ship-offsets")
    {
        return None;
    }
    let seals = call_real!(fcntl: fn(c_int, c_int, usize) -> c_int, fd, libc::F_GET_SEALS, 0);
    // SAFETY: all-zero is a valid `struct stat`, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid buffer.
    if seals < 0
        || seals & libc::F_SEAL_SHRINK == 0
        || unsafe { libc::fstat(fd, &mut st) } != 0
        || (st.st_size as u64) < LEN as u64
    {
        return None;
    }
    // SAFETY: a fresh shared mapping of `LEN` bytes of a file at least that long that
    // cannot shrink; nothing else is mapped there.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `p` is page-aligned, `LEN` bytes long, mapped for the life of the process
    // (never unmapped), and every bit pattern is a valid `Slot` (atomics of integers).
    let slots = unsafe { std::slice::from_raw_parts(p.cast::<Slot>(), SLOTS as usize) };
    Some(Region {
        fd,
        id: (st.st_dev, st.st_ino),
        slots,
    })
}

/// Takes the region named by [`ENV`] (run once, before `main`, by `exec::adopt`).
pub fn adopt() {
    let Some(v) = std::env::var_os(ENV) else {
        return;
    };
    if let Ok(k) = std::ffi::CString::new(ENV) {
        // SAFETY: a NUL-terminated name; this runs before the program's own threads.
        unsafe { libc::unsetenv(k.as_ptr()) };
    }
    let Some(fd) = v.to_str().and_then(|s| s.parse::<c_int>().ok()) else {
        return;
    };
    if fd < 0 {
        return;
    }
    if let Some(r) = map(fd) {
        // Not handed on to programs this one starts unless it hands them a slot.
        call_real!(fcntl: fn(c_int, c_int, usize) -> c_int, fd, libc::F_SETFD, libc::FD_CLOEXEC as usize);
        let _ = REGION.set(r);
    }
}

fn slot(i: u32) -> Option<&'static Slot> {
    REGION.get()?.slots.get(i as usize)
}

/// Takes a free slot holding `pos`.
fn alloc(pos: u64) -> Option<u32> {
    let r = region()?;
    (0..SLOTS).find(|&i| {
        let s = &r.slots[i as usize];
        s.refs
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
            && {
                s.pos.store(pos, Ordering::Release);
                true
            }
    })
}

fn hold(i: u32) {
    if let Some(s) = slot(i) {
        s.refs.fetch_add(1, Ordering::AcqRel);
    }
}

fn release(i: u32) {
    if let Some(s) = slot(i) {
        // Never below zero, whatever another process did to the count.
        let _ = s
            .refs
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// A description's offset: private, or in a shared slot once the description is shared
/// with another process. The lock orders this process's threads either way.
pub struct Pos {
    local: Mutex<u64>,
    slot: AtomicU32,
}

impl Pos {
    /// A private offset.
    pub fn new(pos: u64) -> Pos {
        Pos {
            local: Mutex::new(pos),
            slot: AtomicU32::new(NONE),
        }
    }

    /// An offset handed down in `slot` of the inherited region (its count already
    /// includes this process); private at `pos` if there is no such slot here.
    pub fn inherited(pos: u64, slot: Option<u32>) -> Pos {
        let p = Pos::new(pos);
        if let Some(i) = slot.filter(|&i| i < SLOTS)
            && self::slot(i).is_some()
        {
            p.slot.store(i, Ordering::Release);
        }
        p
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the offset, this process's other users of it waiting.
    pub fn with<R>(&self, f: impl FnOnce(&mut u64) -> R) -> R {
        let mut local = self.lock();
        match slot(self.slot.load(Ordering::Acquire)) {
            Some(s) => {
                let mut v = s.pos.load(Ordering::Acquire);
                let r = f(&mut v);
                s.pos.store(v, Ordering::Release);
                r
            }
            None => f(&mut local),
        }
    }

    /// The offset and its slot, or `None` if a thread is using it (see `exec`).
    pub fn try_get(&self) -> Option<(u64, Option<u32>)> {
        let local = self.local.try_lock().ok()?;
        Some(match slot(self.slot.load(Ordering::Acquire)) {
            Some(s) => (
                s.pos.load(Ordering::Acquire),
                Some(self.slot.load(Ordering::Acquire)),
            ),
            None => (*local, None),
        })
    }

    /// Its shared slot, if it has one.
    fn slot(&self) -> Option<u32> {
        Some(self.slot.load(Ordering::Acquire)).filter(|&i| i != NONE)
    }

    /// Moves the offset into a shared slot (before a fork or a spawn); returns the slot.
    fn share(&self) -> Option<u32> {
        let i = self.slot.load(Ordering::Acquire);
        if i != NONE {
            return Some(i);
        }
        // In a forked child the lock's holder may be a thread left behind: not waited for.
        let local = if forked() {
            self.local.try_lock().ok()?
        } else {
            self.lock()
        };
        let i = self.slot.load(Ordering::Acquire);
        if i != NONE {
            return Some(i);
        }
        let i = alloc(*local)?;
        self.slot.store(i, Ordering::Release);
        Some(i)
    }

    /// Lets go of the slot for a process about to end or `exec`: as [`Pos::detach`], but
    /// without waiting for the lock (its holder may be a thread a fork left behind). A
    /// slot whose lock is held is not given back (a live thread may still write it; a
    /// freed slot could be another description's by then): it stays taken.
    fn let_go(&self) {
        match self.local.try_lock() {
            Ok(g) => {
                drop(g);
                self.detach();
            }
            Err(_) => {
                self.slot.store(NONE, Ordering::Release);
            }
        }
    }

    /// Stops sharing: the offset is private again (at close, at exit).
    pub fn detach(&self) {
        let mut local = self.lock();
        let i = self.slot.swap(NONE, Ordering::AcqRel);
        if let Some(s) = slot(i) {
            *local = s.pos.load(Ordering::Acquire);
            release(i);
        }
    }
}

impl Drop for Pos {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Slots the forking thread shared, for the child to count itself in.
static FORKING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Before a fork: every shipped description's offset goes to a shared slot.
pub fn before_fork() {
    let shared: Vec<u32> = crate::table::all_safely()
        .iter()
        .filter_map(|(_, d)| d.pos.share())
        .collect();
    let mut f = FORKING.lock().unwrap_or_else(|e| e.into_inner());
    f.clear();
    // Once per description, not per descriptor (dups share one).
    f.extend(shared);
    f.sort_unstable();
    f.dedup();
}

/// Set in the child of a fork (until it `exec`s): locks other threads held at the fork
/// may never be let go, so calls on the way out take them only if free.
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is a forked child that has not `exec`ed.
pub fn forked() -> bool {
    FORKED.load(Ordering::Relaxed)
}

/// In the child of a fork: it holds the slots too.
pub fn in_child() {
    FORKED.store(true, Ordering::Relaxed);
    // Only the forking thread takes this lock between `before_fork` and here.
    if let Ok(f) = FORKING.try_lock() {
        f.iter().for_each(|&i| hold(i));
    }
}

/// Hands the region down to a program started now, for the slots in `handed`: the
/// descriptor stays open across `exec` until the returned guard goes (a failed `exec`,
/// or the parent's side of `posix_spawn`). `spawn`: the parent keeps its own hold, so
/// the child gets another (taken back if the spawn fails: see [`Handed::failed`]).
/// An `exec` lets go of the slots it does not hand down (close-on-exec descriptions;
/// should the `exec` fail, they stay private from then on).
pub fn hand_down(handed: &[u32], spawn: bool) -> Option<Handed> {
    let r = REGION.get()?;
    let ours = still_ours(r);
    if !spawn {
        // What is not handed down (close-on-exec, or no region to hand) is let go.
        for (_, d) in crate::table::all_safely() {
            if d.pos.slot().is_some_and(|i| !ours || !handed.contains(&i)) {
                d.pos.let_go();
            }
        }
    }
    if handed.is_empty() || !ours {
        return None;
    }
    // Open across the call for as long as any thread hands it down (concurrent spawns).
    {
        let mut n = HANDING.lock().unwrap_or_else(|e| e.into_inner());
        if *n == 0 {
            call_real!(fcntl: fn(c_int, c_int, usize) -> c_int, r.fd, libc::F_SETFD, 0);
        }
        *n += 1;
    }
    if spawn {
        handed.iter().for_each(|&i| hold(i));
    }
    Some(Handed {
        fd: r.fd,
        slots: if spawn { handed.to_vec() } else { Vec::new() },
    })
}

/// Whether the region's descriptor is still the memfd (a program may have closed it or
/// put another file at its number).
fn still_ours(r: &Region) -> bool {
    // SAFETY: all-zero is a valid `struct stat`, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid buffer.
    unsafe { libc::fstat(r.fd, &mut st) == 0 && (st.st_dev, st.st_ino) == r.id }
}

/// The region handed down for the length of an `exec` or `posix_spawn` call.
pub struct Handed {
    fd: c_int,
    slots: Vec<u32>,
}

impl Handed {
    /// The value of [`ENV`].
    pub fn env(&self) -> String {
        self.fd.to_string()
    }

    /// The program was not started: the holds taken for it go.
    pub fn failed(&mut self) {
        self.slots.drain(..).for_each(release);
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        let mut n = HANDING.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            call_real!(fcntl: fn(c_int, c_int, usize) -> c_int,
                self.fd, libc::F_SETFD, libc::FD_CLOEXEC as usize);
        }
    }
}

/// Calls handing the region down now (its descriptor is open across `exec` meanwhile; a
/// program another thread starts then inherits it too, unnamed, and may ignore it).
static HANDING: Mutex<usize> = Mutex::new(0);

/// At exit: this process lets go of its slots (a shell's commands end before it does).
pub fn at_exit() {
    if let Some(all) = crate::table::try_all() {
        all.iter().for_each(|(_, d)| d.pos.let_go());
    }
}

/// Before `posix_spawn`: the offsets of the descriptions the program will inherit go to
/// shared slots (a program that spawns and never forks — make, Rust's `Command` — would
/// otherwise keep them private, and write over what its children wrote).
pub fn before_spawn(inherited: &[std::sync::Arc<crate::table::Desc>]) {
    inherited.iter().for_each(|d| {
        d.pos.share();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(name: &std::ffi::CStr, len: usize, seals: c_int) -> c_int {
        // SAFETY: a NUL-terminated name; plain integer arguments on the new fd.
        unsafe {
            let fd = libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, seals), 0);
            fd
        }
    }

    #[test]
    fn a_region_that_could_shrink_is_short_or_is_not_ours_is_refused() {
        let ours = c"posix-ship-offsets";
        assert!(map(memfd(ours, LEN, 0)).is_none(), "unsealed: could shrink");
        assert!(
            map(memfd(ours, LEN - 1, libc::F_SEAL_SHRINK)).is_none(),
            "short"
        );
        assert!(
            map(memfd(c"other", LEN, libc::F_SEAL_SHRINK)).is_none(),
            "not ours"
        );
        // SAFETY: opening a path; the fd is only fstat'ed.
        let file = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        assert!(map(file).is_none(), "not a memfd");
        assert!(map(-1).is_none());
        assert!(map(memfd(ours, LEN, libc::F_SEAL_SHRINK)).is_some());
    }

    #[test]
    fn slots_are_counted_shared_and_freed() {
        let a = Pos::new(7);
        let i = a.share().expect("a slot");
        assert_eq!(a.share(), Some(i), "shared once");
        a.with(|p| *p += 5);
        // Another process's view of the same slot (as a forked child's would be).
        hold(i);
        let b = Pos::inherited(0, Some(i));
        assert_eq!(b.with(|p| *p), 12, "one offset");
        b.with(|p| *p = 40);
        assert_eq!(a.with(|p| *p), 40);
        drop(b);
        assert_eq!(slot(i).unwrap().refs.load(Ordering::Relaxed), 1);
        a.detach();
        assert_eq!(slot(i).unwrap().refs.load(Ordering::Relaxed), 0, "free");
        assert_eq!(a.with(|p| *p), 40, "private again, where it was");
        release(i);
        assert_eq!(
            slot(i).unwrap().refs.load(Ordering::Relaxed),
            0,
            "never below zero"
        );
        let c = Pos::inherited(3, Some(SLOTS + 5));
        assert_eq!(c.slot(), None, "a slot out of range is not taken");
        assert_eq!(c.with(|p| *p), 3);
    }
}
