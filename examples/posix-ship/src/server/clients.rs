//! Per-client state: open handles and requests in flight, with their bounds.
//!
//! A client is a transport connection ([`rpc_core::PeerId`]): the transport names it, so
//! one client cannot reach another's handles, and handle numbers are random, so a
//! closed handle is never found again. When the transport reports the client lost, its
//! handles are dropped (the files close once requests using them finish).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::Dir;
use rustix::io::Errno;

use crate::proto::{Fh, ServerStats};

/// Bounds on what one client, and all clients together, may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open files and directories per client (past it: `EMFILE`).
    pub open_files: usize,
    /// Open files and directories of all clients (past it: `EMFILE`); the server lowers it
    /// to fit its descriptor limit with room to spare for connections, so that it never
    /// runs out itself (default: as many as that allows).
    pub total_open: usize,
    /// Requests served at once per client (past it: `EAGAIN`).
    pub in_flight: usize,
    /// Bytes of bulk data held for one client's reads and writes at once; past it (or
    /// past `staging_total`) reads and writes are served short, as POSIX allows, down to
    /// [`MIN_STAGE`] each.
    pub staging_per_client: u64,
    /// Bytes of bulk data held for all clients at once.
    pub staging_total: u64,
    /// What all the connections of one user (its verified uid; anonymous peers are one
    /// user) may hold together: requests in flight, open files, staging bytes. So that a
    /// user cannot multiply its share by opening connections.
    pub per_user: UserLimits,
}

/// Bounds on all the connections of one user.
#[derive(Clone, Copy, Debug)]
pub struct UserLimits {
    /// Requests served at once (past it: `EAGAIN`).
    pub in_flight: usize,
    /// Open files and directories (past it: `EMFILE`).
    pub open_files: usize,
    /// Bytes of bulk data held at once (past it: short reads and writes).
    pub staging: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            open_files: 1024,
            total_open: usize::MAX,
            in_flight: 64,
            staging_per_client: 64 << 20,
            staging_total: 256 << 20,
            per_user: UserLimits {
                in_flight: 128,
                open_files: 4096,
                staging: 128 << 20,
            },
        }
    }
}

/// The smallest share of staging memory a read or write gets, whatever the pressure (so
/// that every request makes progress; bounded by the in-flight bound).
pub const MIN_STAGE: u64 = 64 << 10;

/// An open file or directory on the server.
pub struct OpenFile {
    /// The file.
    pub fd: OwnedFd,
    /// Opened with `O_APPEND`.
    pub append: bool,
    /// Opened for writing.
    pub writable: bool,
    /// The directory stream, for a directory being listed.
    pub dir: Mutex<Option<Dir>>,
}

/// How many lost clients are remembered (a late request comes within moments of the loss).
const GONE_KEPT: usize = 4096;

/// Who asked: a transport connection, or the server itself.
pub type ClientId = u64;

/// The id of requests with no remote peer (calls to oneself).
pub const LOCAL: ClientId = u64::MAX;

/// Whose connection it is: the verified uid (`None`: anonymous).
pub type User = Option<u32>;

struct Client<F> {
    /// Open files, each with the user it counts against (a forwarder's connection carries
    /// many users).
    files: HashMap<u64, (Arc<F>, User)>,
    in_flight: usize,
    staged: u64,
}

impl<F> Default for Client<F> {
    fn default() -> Self {
        Client {
            files: HashMap::new(),
            in_flight: 0,
            staged: 0,
        }
    }
}

/// What one user's connections hold together.
#[derive(Default)]
struct Use {
    in_flight: usize,
    files: usize,
    staged: u64,
}

struct Table<F> {
    clients: HashMap<ClientId, Client<F>>,
    /// Clients the transport reported lost, the most recent [`GONE_KEPT`]: a request
    /// already queued when its client was lost may still arrive, and must hold nothing.
    gone: HashSet<ClientId>,
    gone_order: VecDeque<ClientId>,
    open_files: u64,
    staged: u64,
    users: HashMap<User, Use>,
}

impl<F> Default for Table<F> {
    fn default() -> Self {
        Table {
            clients: HashMap::new(),
            gone: HashSet::new(),
            gone_order: VecDeque::new(),
            open_files: 0,
            staged: 0,
            users: HashMap::new(),
        }
    }
}

impl<F> Table<F> {
    fn user(&mut self, u: User) -> &mut Use {
        self.users.entry(u).or_default()
    }

    /// Applies `f` to `u`'s use, forgetting users who hold nothing.
    fn with_user(&mut self, u: User, f: impl FnOnce(&mut Use)) {
        let e = self.user(u);
        f(e);
        if e.in_flight == 0 && e.files == 0 && e.staged == 0 {
            self.users.remove(&u);
        }
    }
}

/// Every client's state: its open files (`F`: what a handle stands for), requests in
/// flight and staging memory, with their bounds.
pub struct Clients<F = OpenFile> {
    table: Mutex<Table<F>>,
    limits: Limits,
    requests: AtomicU64,
    refused: AtomicU64,
    in_flight: AtomicU64,
    draining: AtomicBool,
}

/// A request being served; dropping it ends the request.
pub struct Admitted<'a, F> {
    clients: &'a Clients<F>,
    id: ClientId,
    user: User,
}

/// Staging memory granted to one read or write; given back when dropped.
pub struct Staged<'a, F> {
    clients: &'a Clients<F>,
    id: ClientId,
    user: User,
    /// Bytes granted (at most what was asked).
    pub len: u64,
}

impl<F> Clients<F> {
    /// Empty, with these bounds.
    pub fn new(limits: Limits) -> Clients<F> {
        Clients {
            table: Mutex::new(Table::default()),
            limits,
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table<F>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a request from `id`, a connection of `user`, or refuses it: `ESHUTDOWN`
    /// while draining, `ECONNRESET` for a client already lost, `EAGAIN` past the
    /// client's or the user's in-flight bound (answered as the transport's busy).
    pub fn admit(&self, id: ClientId, user: User) -> Result<Admitted<'_, F>, Errno> {
        let mut t = self.lock();
        let refuse = if self.draining.load(Ordering::Acquire) {
            Some(Errno::SHUTDOWN)
        } else if t.gone.contains(&id) {
            Some(Errno::CONNRESET)
        } else {
            let mine = t.clients.get(&id).map_or(0, |c| c.in_flight);
            let users = t.users.get(&user).map_or(0, |u| u.in_flight);
            (mine >= self.limits.in_flight || users >= self.limits.per_user.in_flight)
                .then_some(Errno::AGAIN)
        };
        if let Some(e) = refuse {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = id, errno = e.raw_os_error(), "request refused");
            return Err(e);
        }
        let c = t.clients.entry(id).or_default();
        c.in_flight += 1;
        t.user(user).in_flight += 1;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            clients: self,
            id,
            user,
        })
    }

    /// Keeps `file` for `id`, opened by `user`, under a fresh random handle (`EMFILE`
    /// past the bound).
    pub fn insert(&self, id: ClientId, user: User, file: impl Into<Arc<F>>) -> Result<Fh, Errno> {
        let mut t = self.lock();
        if t.gone.contains(&id) {
            return Err(Errno::CONNRESET);
        }
        let mine = t.clients.get(&id).map_or(0, |c| c.files.len());
        let users = t.users.get(&user).map_or(0, |u| u.files);
        if mine >= self.limits.open_files || users >= self.limits.per_user.open_files {
            return Err(Errno::MFILE);
        }
        if t.open_files >= self.limits.total_open as u64 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                client = id,
                total = t.open_files,
                "open refused: the server's file budget is spent (--max-open-total)"
            );
            return Err(Errno::MFILE);
        }
        let c = t.clients.entry(id).or_default();
        let fh = loop {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|_| Errno::IO)?;
            let h = u64::from_le_bytes(b);
            if !c.files.contains_key(&h) {
                break h;
            }
        };
        c.files.insert(fh, (file.into(), user));
        t.open_files += 1;
        t.user(user).files += 1;
        Ok(Fh(fh))
    }

    /// Grants `id`, serving `user`, up to `want` bytes of staging memory: less under
    /// pressure, never less than [`MIN_STAGE`] (or `want`, if smaller).
    pub fn stage(&self, id: ClientId, user: User, want: u64) -> Staged<'_, F> {
        let mut t = self.lock();
        let free_total = self.limits.staging_total.saturating_sub(t.staged);
        let free_user = (self.limits.per_user.staging).saturating_sub(t.user(user).staged);
        let c = t.clients.entry(id).or_default();
        let free_mine = self.limits.staging_per_client.saturating_sub(c.staged);
        let len = want.min(free_mine.min(free_user).min(free_total).max(MIN_STAGE));
        c.staged += len;
        t.staged += len;
        t.user(user).staged += len;
        Staged {
            clients: self,
            id,
            user,
            len,
        }
    }

    /// The file behind `fh` for `id` (`EBADF` if it is not one of theirs, or closed).
    pub fn get(&self, id: ClientId, fh: Fh) -> Result<Arc<F>, Errno> {
        self.get_owned(id, fh).map(|(f, _)| f)
    }

    /// [`Clients::get`], with the user the file was opened by.
    pub fn get_owned(&self, id: ClientId, fh: Fh) -> Result<(Arc<F>, User), Errno> {
        let t = self.lock();
        t.clients
            .get(&id)
            .and_then(|c| c.files.get(&fh.0))
            .map(|(f, u)| (f.clone(), *u))
            .ok_or(Errno::BADF)
    }

    /// Forgets `fh` (`EBADF` if it is not open); the file closes when unused.
    pub fn remove(&self, id: ClientId, fh: Fh) -> Result<Arc<F>, Errno> {
        let mut t = self.lock();
        let (f, user) = t
            .clients
            .get_mut(&id)
            .and_then(|c| c.files.remove(&fh.0))
            .ok_or(Errno::BADF)?;
        t.open_files -= 1;
        t.with_user(user, |u| u.files -= 1);
        Ok(f)
    }

    /// The transport lost `id`: forget everything it held, and return its files (for
    /// whatever closing them takes).
    pub fn lost(&self, id: ClientId) -> Vec<Arc<F>> {
        let mut t = self.lock();
        if t.gone.insert(id) {
            t.gone_order.push_back(id);
        }
        if t.gone_order.len() > GONE_KEPT
            && let Some(old) = t.gone_order.pop_front()
        {
            t.gone.remove(&old);
        }
        let Some(c) = t.clients.remove(&id) else {
            return Vec::new();
        };
        t.open_files -= c.files.len() as u64;
        tracing::info!(client = id, closed = c.files.len(), "client lost");
        c.files
            .into_values()
            .map(|(f, user)| {
                t.with_user(user, |u| u.files -= 1);
                f
            })
            .collect()
    }

    /// Refuses new requests from now on (graceful shutdown).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Requests being served.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The counters.
    pub fn stats(&self) -> ServerStats {
        let t = self.lock();
        ServerStats {
            clients: t.clients.len() as u64,
            open_files: t.open_files,
            in_flight: self.in_flight(),
            requests: self.requests.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

impl<F> Staged<'_, F> {
    /// Keeps the bytes granted past this guard (a transfer that ends on another
    /// thread): [`Clients::unstage`] with what this returns gives them back.
    pub fn keep(self) -> (ClientId, User, u64) {
        let k = (self.id, self.user, self.len);
        std::mem::forget(self);
        k
    }
}

impl<F> Clients<F> {
    /// Gives back staging memory [`Staged::keep`] kept.
    pub fn unstage(&self, (id, user, len): (ClientId, User, u64)) {
        let mut t = self.lock();
        t.staged -= len;
        t.with_user(user, |u| u.staged -= len);
        if let Some(c) = t.clients.get_mut(&id) {
            c.staged = c.staged.saturating_sub(len);
        }
    }
}

impl<F> Drop for Staged<'_, F> {
    fn drop(&mut self) {
        self.clients.unstage((self.id, self.user, self.len));
    }
}

impl<F> Admitted<'_, F> {
    /// Keeps the request counted past this guard (its answer comes later, from another
    /// thread): [`Clients::answered`] with what this returns ends it.
    pub fn keep(self) -> (ClientId, User) {
        let k = (self.id, self.user);
        std::mem::forget(self);
        k
    }
}

impl<F> Clients<F> {
    /// A request [`Admitted::keep`] kept is answered.
    pub fn answered(&self, (id, user): (ClientId, User)) {
        let mut t = self.lock();
        t.with_user(user, |u| u.in_flight -= 1);
        if let Some(c) = t.clients.get_mut(&id) {
            c.in_flight -= 1;
            if c.in_flight == 0 && c.files.is_empty() {
                t.clients.remove(&id);
            }
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<F> Drop for Admitted<'_, F> {
    fn drop(&mut self) {
        self.clients.answered((self.id, self.user));
    }
}

#[cfg(test)]
#[path = "clients_tests.rs"]
mod tests;
