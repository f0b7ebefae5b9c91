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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            open_files: 1024,
            total_open: usize::MAX,
            in_flight: 64,
            staging_per_client: 64 << 20,
            staging_total: 256 << 20,
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

#[derive(Default)]
struct Client {
    files: HashMap<u64, Arc<OpenFile>>,
    in_flight: usize,
    staged: u64,
}

#[derive(Default)]
struct Table {
    clients: HashMap<ClientId, Client>,
    /// Clients the transport reported lost, the most recent [`GONE_KEPT`]: a request
    /// already queued when its client was lost may still arrive, and must hold nothing.
    gone: HashSet<ClientId>,
    gone_order: VecDeque<ClientId>,
    open_files: u64,
    staged: u64,
}

/// Every client's state.
pub struct Clients {
    table: Mutex<Table>,
    limits: Limits,
    requests: AtomicU64,
    refused: AtomicU64,
    in_flight: AtomicU64,
    draining: AtomicBool,
}

/// A request being served; dropping it ends the request.
pub struct Admitted<'a> {
    clients: &'a Clients,
    id: ClientId,
}

/// Staging memory granted to one read or write; given back when dropped.
pub struct Staged<'a> {
    clients: &'a Clients,
    id: ClientId,
    /// Bytes granted (at most what was asked).
    pub len: u64,
}

impl Clients {
    /// Empty, with these bounds.
    pub fn new(limits: Limits) -> Clients {
        Clients {
            table: Mutex::new(Table::default()),
            limits,
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a request from `id`, or refuses it: `ESHUTDOWN` while draining,
    /// `ECONNRESET` for a client already lost, `EAGAIN` past the in-flight bound.
    pub fn admit(&self, id: ClientId) -> Result<Admitted<'_>, Errno> {
        let mut t = self.lock();
        let refuse = if self.draining.load(Ordering::Acquire) {
            Some(Errno::SHUTDOWN)
        } else if t.gone.contains(&id) {
            Some(Errno::CONNRESET)
        } else {
            t.clients
                .get(&id)
                .filter(|c| c.in_flight >= self.limits.in_flight)
                .map(|_| Errno::AGAIN)
        };
        if let Some(e) = refuse {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = id, errno = e.raw_os_error(), "request refused");
            return Err(e);
        }
        let c = t.clients.entry(id).or_default();
        c.in_flight += 1;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted { clients: self, id })
    }

    /// Keeps `file` for `id` under a fresh random handle (`EMFILE` past the bound).
    pub fn insert(&self, id: ClientId, file: OpenFile) -> Result<Fh, Errno> {
        let mut t = self.lock();
        if t.gone.contains(&id) {
            return Err(Errno::CONNRESET);
        }
        let c = t.clients.entry(id).or_default();
        if c.files.len() >= self.limits.open_files {
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
        c.files.insert(fh, Arc::new(file));
        t.open_files += 1;
        Ok(Fh(fh))
    }

    /// Grants `id` up to `want` bytes of staging memory: less under pressure, never less
    /// than [`MIN_STAGE`] (or `want`, if smaller).
    pub fn stage(&self, id: ClientId, want: u64) -> Staged<'_> {
        let mut t = self.lock();
        let free_total = self.limits.staging_total.saturating_sub(t.staged);
        let c = t.clients.entry(id).or_default();
        let free_mine = self.limits.staging_per_client.saturating_sub(c.staged);
        let len = want.min(free_mine.min(free_total).max(MIN_STAGE));
        c.staged += len;
        t.staged += len;
        Staged {
            clients: self,
            id,
            len,
        }
    }

    /// The file behind `fh` for `id` (`EBADF` if it is not one of theirs, or closed).
    pub fn get(&self, id: ClientId, fh: Fh) -> Result<Arc<OpenFile>, Errno> {
        let t = self.lock();
        t.clients
            .get(&id)
            .and_then(|c| c.files.get(&fh.0))
            .cloned()
            .ok_or(Errno::BADF)
    }

    /// Forgets `fh` (`EBADF` if it is not open); the file closes when unused.
    pub fn remove(&self, id: ClientId, fh: Fh) -> Result<Arc<OpenFile>, Errno> {
        let mut t = self.lock();
        let f = t
            .clients
            .get_mut(&id)
            .and_then(|c| c.files.remove(&fh.0))
            .ok_or(Errno::BADF)?;
        t.open_files -= 1;
        Ok(f)
    }

    /// The transport lost `id`: drop everything it held.
    pub fn lost(&self, id: ClientId) {
        let mut t = self.lock();
        if t.gone.insert(id) {
            t.gone_order.push_back(id);
        }
        if t.gone_order.len() > GONE_KEPT
            && let Some(old) = t.gone_order.pop_front()
        {
            t.gone.remove(&old);
        }
        if let Some(c) = t.clients.remove(&id) {
            t.open_files -= c.files.len() as u64;
            tracing::info!(client = id, closed = c.files.len(), "client lost");
        }
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

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        let mut t = self.clients.lock();
        t.staged -= self.len;
        if let Some(c) = t.clients.get_mut(&self.id) {
            c.staged -= self.len;
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut t = self.clients.lock();
        if let Some(c) = t.clients.get_mut(&self.id) {
            c.in_flight -= 1;
            if c.in_flight == 0 && c.files.is_empty() {
                t.clients.remove(&self.id);
            }
        }
        self.clients.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> OpenFile {
        OpenFile {
            fd: rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY, 0.into()).unwrap(),
            append: false,
            writable: false,
            dir: Mutex::new(None),
        }
    }

    #[test]
    fn handles_belong_to_their_client_and_die_with_it() {
        let c = Clients::new(Limits {
            open_files: 2,
            in_flight: 1,
            ..Limits::default()
        });
        let a = c.insert(1, devnull()).unwrap();
        assert!(c.get(1, a).is_ok());
        assert_eq!(
            c.get(2, a).err(),
            Some(Errno::BADF),
            "another client's handle"
        );
        assert_eq!(c.get(1, Fh(a.0 ^ 1)).err(), Some(Errno::BADF), "forged");
        c.insert(1, devnull()).unwrap();
        assert_eq!(c.insert(1, devnull()).err(), Some(Errno::MFILE));
        assert_eq!(c.stats().open_files, 2);
        c.remove(1, a).unwrap();
        assert_eq!(c.get(1, a).err(), Some(Errno::BADF), "used after close");
        assert_eq!(c.remove(1, a).err(), Some(Errno::BADF), "closed twice");
        c.lost(1);
        assert_eq!(c.stats().open_files, 0);
        assert_eq!(c.admit(1).err(), Some(Errno::CONNRESET));
        assert_eq!(
            c.stats().clients,
            0,
            "a refused request leaves no state behind"
        );
        assert_eq!(c.insert(1, devnull()).err(), Some(Errno::CONNRESET));
        for id in 100..100 + GONE_KEPT as u64 {
            c.lost(id);
        }
        assert!(
            c.admit(1).is_ok(),
            "only the most recent lost clients are remembered"
        );
    }

    #[test]
    fn the_file_budget_and_staging_memory_hold_across_clients() {
        let c = Clients::new(Limits {
            total_open: 3,
            staging_per_client: 1 << 20,
            staging_total: 3 << 19,
            ..Limits::default()
        });
        for id in 1..=3 {
            c.insert(id, devnull()).unwrap();
        }
        assert_eq!(c.insert(4, devnull()).err(), Some(Errno::MFILE));
        let _busy = c.admit(1).unwrap();
        let a = c.stage(1, 4 << 20);
        assert_eq!(a.len, 1 << 20, "the client's share");
        let b = c.stage(2, 4 << 20);
        assert_eq!(b.len, 1 << 19, "what is left in total");
        assert_eq!(c.stage(3, 4 << 20).len, MIN_STAGE, "the floor");
        assert_eq!(c.stage(3, 100).len, 100);
        drop((a, b));
        assert_eq!(c.stage(2, 4 << 20).len, 1 << 20, "given back");
    }

    #[test]
    fn requests_past_the_bound_and_after_drain_are_refused() {
        let c = Clients::new(Limits {
            open_files: 2,
            in_flight: 1,
            ..Limits::default()
        });
        let first = c.admit(5).unwrap();
        assert_eq!(c.admit(5).err(), Some(Errno::AGAIN));
        assert!(c.admit(6).is_ok(), "other clients are not affected");
        drop(first);
        assert!(c.admit(5).is_ok());
        c.drain();
        assert_eq!(c.admit(7).err(), Some(Errno::SHUTDOWN));
        assert_eq!(c.stats().refused, 2);
        assert_eq!(
            c.stats().clients,
            0,
            "no state for refused or finished requests"
        );
    }
}
