//! The connection and the table of shipped file descriptors.
//!
//! A shipped file gets a real descriptor number: a placeholder opened on `/dev/null`
//! with `O_PATH`, so the number is the program's to keep and an uninstrumented call on it
//! fails (`EBADF`) instead of touching another file. The table maps the number to a
//! [`Desc`] (the open file description: handle, offset, status flags), shared by `dup`s.
//!
//! Every interposed fd call asks "is this fd shipped?" first, the progress thread's
//! socket reads included, so the answer is one atomic load from a bitmap for fds below
//! [`BITMAP_FDS`]; the table's lock is taken only for shipped fds, and never held across
//! an RPC (the progress thread could not then read its socket).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use libc::c_int;
use posix_ship::client::RemoteFs;
use posix_ship::client::readahead::ReadAhead;
use posix_ship::client::writebehind::WriteBehind;
use posix_ship::proto::{Fh, Pass};

use crate::offsets::Pos;
use crate::real::call_real;

/// Descriptors tracked in the bitmap (higher ones go to the table's lock).
const BITMAP_FDS: usize = 1 << 16;

/// An open file description on the server.
pub struct Desc {
    /// The path beneath the export (for reopening after `fork`).
    pub path: Vec<u8>,
    /// Status flags (`O_ACCMODE`, `O_APPEND`, `O_NONBLOCK`, ...).
    pub flags: Mutex<c_int>,
    /// The file offset (shared with other processes once they share the description).
    pub pos: Pos,
    /// A directory (opened with `O_DIRECTORY` or found to be one).
    pub is_dir: bool,
    /// The server handle, the process that opened it, and its pass for children.
    handle: Mutex<Handle>,
    /// Read-ahead for sequential readers (dropped by writes through it).
    pub ahead: ReadAhead,
    /// The local file whose `flock`s stand for this file's (`crate::compat::flock`).
    pub flock: OnceLock<std::os::fd::OwnedFd>,
}

impl Desc {
    /// A description for `fh`, opened now by this process.
    pub fn new(path: Vec<u8>, flags: c_int, fh: Fh, is_dir: bool, id: (u64, u64)) -> Desc {
        Desc {
            path,
            flags: Mutex::new(flags),
            pos: Pos::new(0),
            is_dir,
            handle: Mutex::new(Handle {
                fh,
                pid: std::process::id(),
                pass: Lent::Not,
            }),
            ahead: ReadAhead::new(Some(id)),
            flock: OnceLock::new(),
        }
    }

    /// A description handed down through `exec` (see `crate::exec`): adopted with the
    /// parent's `pass` (else opened again by path) on first use, at offset `pos` (or the
    /// shared one in `slot`).
    pub fn inherited(
        path: Vec<u8>,
        flags: c_int,
        pos: Pos,
        is_dir: bool,
        pass: Option<Pass>,
    ) -> Desc {
        Desc {
            path,
            flags: Mutex::new(flags),
            pos,
            is_dir,
            // No process has pid 0: the first use opens it.
            handle: Mutex::new(Handle {
                fh: Fh(0),
                pid: 0,
                pass: pass.map_or(Lent::Not, Lent::Yes),
            }),
            ahead: ReadAhead::new(None),
            flock: OnceLock::new(),
        }
    }

    /// The handle; in a child (forked, or exec'd with this description handed down),
    /// first one of its own: the parent's pass adopted (the same open file, whatever the
    /// path names now), else the path opened again (an older server, or a pass expired).
    pub fn fh(&self) -> Result<Fh, c_int> {
        let pid = std::process::id();
        // Held across the reopen so that two threads of a child reopen once (no other
        // lock is taken meanwhile, and the progress thread never takes this one).
        let mut h = lock(&self.handle);
        if h.pid != pid {
            let fs = client()?;
            let adopted = match h.pass {
                Lent::Yes(p) => fs.adopt(p).ok(),
                _ => None,
            };
            let o = match adopted {
                Some(o) => o,
                None => {
                    let flags =
                        *lock(&self.flags) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
                    fs.open_raw(&self.path, flags, 0).map_err(crate::errno_of)?
                }
            };
            *h = Handle {
                fh: o.fh,
                pid,
                pass: Lent::Not,
            };
        }
        Ok(h.fh)
    }

    /// A pass a child can adopt this description's open file with: this process's
    /// handle lent once (then kept), or, not yet opened here, the pass this process was
    /// handed. `None` if the server lends nothing (an older one, or past its bound).
    pub fn lend(&self) -> Option<Pass> {
        let mut h = lock(&self.handle);
        if h.pid == std::process::id() && h.pass == Lent::Not {
            h.pass = match client().map(|fs| fs.lend(h.fh)) {
                Ok(Ok(p)) => Lent::Yes(p),
                _ => Lent::Refused,
            };
        }
        match h.pass {
            Lent::Yes(p) => Some(p),
            _ => None,
        }
    }
}

/// A description's server handle.
struct Handle {
    fh: Fh,
    /// The process whose connection the handle belongs to.
    pid: u32,
    /// Its pass, or (while `pid` is another process's) the pass to adopt.
    pass: Lent,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lent {
    Not,
    Yes(Pass),
    /// The server would not lend (asked once).
    Refused,
}

impl Desc {
    /// Waits for this description's writes in flight and takes the error of any write
    /// acknowledged earlier (reported at close, once).
    pub fn settle_writes(&self) -> Option<c_int> {
        let (fh, owner) = {
            let h = lock(&self.handle);
            (h.fh, h.pid)
        };
        if owner != std::process::id() {
            return None;
        }
        writes().settle(fh).err().map(crate::errno_of)
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        let (fh, owner) = {
            let h = lock(&self.handle);
            (h.fh, h.pid)
        };
        if owner == std::process::id()
            && let Ok(fs) = client()
        {
            let _ = fs.close_raw(fh);
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Descriptors mapped to what this library keeps for them: a bitmap answers "is this
/// one of ours?" with one atomic load below [`BITMAP_FDS`]; the map's lock is taken only
/// for ours.
pub struct FdMap<T> {
    bits: [AtomicU64; BITMAP_FDS / 64],
    map: Mutex<BTreeMap<c_int, Arc<T>>>,
}

impl<T> FdMap<T> {
    /// An empty map (for a `static`).
    pub const fn new() -> Self {
        FdMap {
            bits: [const { AtomicU64::new(0) }; BITMAP_FDS / 64],
            map: Mutex::new(BTreeMap::new()),
        }
    }

    fn bit(&self, fd: c_int) -> Option<(&AtomicU64, u64)> {
        let i = usize::try_from(fd).ok().filter(|&i| i < BITMAP_FDS)?;
        Some((&self.bits[i / 64], 1u64 << (i % 64)))
    }

    /// Whether `fd` may be in the map (exact below [`BITMAP_FDS`]; above, the lock tells).
    pub fn maybe(&self, fd: c_int) -> bool {
        match self.bit(fd) {
            Some((word, mask)) => word.load(Ordering::Acquire) & mask != 0,
            None => fd >= 0,
        }
    }

    /// What is kept for `fd`.
    pub fn get(&self, fd: c_int) -> Option<Arc<T>> {
        if !self.maybe(fd) {
            return None;
        }
        lock(&self.map).get(&fd).cloned()
    }

    /// Keeps `t` for `fd` (replacing what was kept).
    pub fn insert(&self, fd: c_int, t: Arc<T>) {
        let old = lock(&self.map).insert(fd, t);
        if let Some((word, mask)) = self.bit(fd) {
            word.fetch_or(mask, Ordering::Release);
        }
        drop(old);
    }

    /// Every entry.
    pub fn all(&self) -> Vec<(c_int, Arc<T>)> {
        lock(&self.map)
            .iter()
            .map(|(fd, d)| (*fd, d.clone()))
            .collect()
    }

    /// [`FdMap::all`], or `None` if the lock is held (by a thread a signal interrupted).
    pub fn try_all(&self) -> Option<Vec<(c_int, Arc<T>)>> {
        let m = self.map.try_lock().ok()?;
        Some(m.iter().map(|(fd, d)| (*fd, d.clone())).collect())
    }

    /// Forgets `fd`.
    pub fn remove(&self, fd: c_int) -> Option<Arc<T>> {
        if !self.maybe(fd) {
            return None;
        }
        if let Some((word, mask)) = self.bit(fd) {
            word.fetch_and(!mask, Ordering::Release);
        }
        lock(&self.map).remove(&fd)
    }
}

static SHIPPED: FdMap<Desc> = FdMap::new();

/// The shipped file behind `fd`, if it is one. Any other descriptor is about to be
/// handed to the kernel: one the interposer rides on first gets its writes landed and
/// the kernel's caches of it dropped ([`crate::ride::before_kernel`]).
pub fn get(fd: c_int) -> Option<Arc<Desc>> {
    let d = SHIPPED.get(fd);
    if d.is_none() {
        crate::ride::before_kernel(fd);
    }
    d
}

/// [`get`] for data calls (`read`, `write` and kin), which do not settle ridden files.
pub fn get_for_data(fd: c_int) -> Option<Arc<Desc>> {
    SHIPPED.get(fd)
}

/// Records `fd` as shipped (replacing what it was); a standard one gets a shipped
/// standard stream.
pub fn insert(fd: c_int, d: Arc<Desc>) {
    if SHIPPED.maybe(fd) {
        // What the standard stream holds goes to the file it was written for.
        crate::stdio::standard_restored(fd);
    }
    SHIPPED.insert(fd, d);
    crate::stdio::standard_stream(fd);
}

/// Every shipped descriptor.
pub fn all() -> Vec<(c_int, Arc<Desc>)> {
    SHIPPED.all()
}

/// [`all`], or `None` if the table's lock is held (by a thread a signal interrupted, or
/// one that does not exist in a forked child).
pub fn try_all() -> Option<Vec<(c_int, Arc<Desc>)>> {
    SHIPPED.try_all()
}

/// [`all`] where waiting for the lock is safe; in a forked child that has not `exec`ed,
/// [`try_all`] (its holder may be a thread left behind), nothing if it is held.
pub fn all_safely() -> Vec<(c_int, Arc<Desc>)> {
    if crate::offsets::forked() {
        try_all().unwrap_or_default()
    } else {
        all()
    }
}

/// Forgets `fd`; the description closes on the server when its last `dup` goes.
pub fn remove(fd: c_int) -> Option<Arc<Desc>> {
    if SHIPPED.maybe(fd) {
        // While the descriptor still ships what the standard stream holds.
        crate::stdio::standard_restored(fd);
    }
    SHIPPED.remove(fd)
}

/// A placeholder descriptor: `O_PATH` on `/dev/null`, close-on-exec as asked.
pub fn placeholder(cloexec: bool) -> Result<c_int, c_int> {
    let flags = libc::O_PATH | if cloexec { libc::O_CLOEXEC } else { 0 };
    let fd = call_real!(open: fn(*const libc::c_char, c_int, libc::mode_t) -> c_int,
        c"/dev/null".as_ptr(), flags, 0);
    if fd < 0 {
        Err(crate::last_errno())
    } else {
        Ok(fd)
    }
}

struct Conn {
    pid: u32,
    fs: RemoteFs,
}

/// The writes of this process in flight (see [`WriteBehind`]).
pub fn writes() -> &'static WriteBehind {
    static W: OnceLock<WriteBehind> = OnceLock::new();
    W.get_or_init(WriteBehind::new)
}

/// The connection, once every write in flight has landed: for any call that could
/// observe them (every call but a write).
pub fn client() -> Result<RemoteFs, c_int> {
    writes().drain();
    connection()
}

/// The connection, for a write (which goes behind those in flight).
pub fn writer() -> Result<RemoteFs, c_int> {
    connection()
}

/// How long a path's attributes are trusted (`POSIX_SHIP_ATTR_TIMEOUT`, seconds; default
/// 1, as the mount's `--attr-timeout`; 0: every `stat` asks the server).
fn attr_timeout() -> std::time::Duration {
    std::env::var("POSIX_SHIP_ATTR_TIMEOUT")
        .ok()
        .and_then(|v| std::time::Duration::try_from_secs_f64(v.parse().ok()?).ok())
        .unwrap_or(std::time::Duration::from_secs(1))
}

static CONN: Mutex<Option<Conn>> = Mutex::new(None);

thread_local! {
    /// The locks held by the forking thread across a `fork` ([`before_fork`]).
    static FORK_HELD: std::cell::RefCell<Vec<Box<dyn std::any::Any>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Before a `fork` (the last step of the prepare handler): every write in flight lands,
/// and the locks that calls of other threads take (the write-behind state's, the
/// connection's, the descriptor table's, the working directory's, the directory and
/// standard streams'; none is taken while another is held) are kept by this thread
/// across the fork, until [`after_fork`]. A child copied while another thread held one
/// would wait for it for ever at its first call that takes it (test
/// `children_forked_beside_a_writing_thread_do_not_hang`).
pub fn before_fork() {
    let mut held: Vec<Box<dyn std::any::Any>> = vec![
        writes().landed_and_held(),
        Box::new(lock(&CONN)),
        Box::new(lock(&SHIPPED.map)),
        Box::new(lock(&crate::cwd::CWD)),
        Box::new(lock(&crate::dirs::LIVE)),
        Box::new(lock(&crate::stdio::STREAMS)),
        Box::new(lock(&crate::dl::LOADED)),
    ];
    for s in &crate::stdio::STANDARD {
        held.push(Box::new(lock(s)));
    }
    FORK_HELD.with(|h| *h.borrow_mut() = held);
}

/// After a `fork`, in the parent and in the child: lets the locks of [`before_fork`] go.
pub fn after_fork() {
    drop(FORK_HELD.with(|h| std::mem::take(&mut *h.borrow_mut())));
}

/// Waits for children seen (see [`forget_attrs`]), and how many the connection has
/// forgotten its cached attributes for.
static WAITED: AtomicU64 = AtomicU64::new(0);
static FORGOTTEN: AtomicU64 = AtomicU64::new(0);

/// The connection is to forget the attributes it cached before its next use (a child
/// this process waited for may have changed anything): no lock, so no wait is missed.
pub fn forget_attrs() {
    WAITED.fetch_add(1, Ordering::AcqRel);
}

/// The connection to the server, made on first use and again in a forked child.
fn connection() -> Result<RemoteFs, c_int> {
    let cfg = crate::config().ok_or(libc::ENOENT)?;
    let pid = std::process::id();
    let mut c = lock(&CONN);
    if let Some(conn) = c.as_ref() {
        if conn.pid == pid {
            let waited = WAITED.load(Ordering::Acquire);
            if FORGOTTEN.swap(waited, Ordering::AcqRel) != waited {
                conn.fs.forget_attrs();
            }
            return Ok(conn.fs.clone());
        }
        // A forked child: the parent's engine threads do not exist here, so its engine
        // cannot be shut down; it is left as it is and a new connection made.
        if let Some(old) = c.take() {
            std::mem::forget(old);
        }
    }
    let opts = posix_ship::client::ClientOptions {
        attr_timeout: attr_timeout(),
        ..Default::default()
    };
    let fs = RemoteFs::connect_with(&cfg.server, opts).map_err(|e| {
        crate::warn_once(&format!("cannot reach server {}: {e}", cfg.server));
        crate::errno_of(e)
    })?;
    *c = Some(Conn {
        pid,
        fs: fs.clone(),
    });
    Ok(fs)
}
