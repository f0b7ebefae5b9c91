//! The plugin: the [`na_stream`] core over shared-memory links.
//!
//! A [`Link`]'s two rings are the byte stream; its eventfds wake a sleeping side and its
//! UNIX socket tells when the peer is gone. Nothing here makes a system call while both
//! sides are awake: a write signals the peer only when the ring says the peer sleeps, and
//! zero-timeout progress looks at the rings before it asks the kernel.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use na::{Address, Identity, NaError, NaResult};
use na_stream::{Connector, CopyDir, RawPiece, StreamConfig, StreamPlugin, Wire, direct};

use crate::cma;
use crate::lease;
use crate::link::{self, Link, Listener};
use crate::ring::{Ring, RingError};

/// Tunables of the shared-memory plugin.
#[derive(Clone, Debug)]
pub struct SmConfig {
    /// The stream core's tunables (eager size, RMA chunking).
    pub stream: StreamConfig,
    /// Bytes of each ring (one per direction per peer pair); a power of two.
    pub ring_size: usize,
    /// Move RMA data by single copy (`process_vm_readv`/`writev`) when the kernel allows
    /// it; otherwise, or when false, RMA data streams through the rings.
    pub single_copy: bool,
}

impl Default for SmConfig {
    fn default() -> Self {
        SmConfig {
            stream: StreamConfig::default(),
            ring_size: 256 * 1024,
            single_copy: true,
        }
    }
}

/// The shared-memory plugin: constructors of a [`StreamPlugin`] over shared memory.
pub struct SmPlugin;

impl SmPlugin {
    /// Listens on `addr` (`sm://name`; `sm://auto` picks a name unique on this node).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(addr: &Address) -> NaResult<StreamPlugin> {
        Self::with_config(addr, SmConfig::default())
    }

    /// Listens on `addr` with the given tunables.
    pub fn with_config(addr: &Address, cfg: SmConfig) -> NaResult<StreamPlugin> {
        if addr.plugin() != "sm" || addr.provider().is_some() {
            return Err(NaError::InvalidAddress {
                addr: addr.to_string(),
                reason: "not an sm:// address".into(),
            });
        }
        if !cfg.ring_size.is_power_of_two() || cfg.ring_size < 4096 {
            return Err(NaError::InvalidArgument(format!(
                "ring size {} is not a power of two of at least 4096",
                cfg.ring_size
            )));
        }
        let name = match addr.locator() {
            "auto" => auto_name(),
            n => n.to_owned(),
        };
        let listener = Listener::bind(&name).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => NaError::InvalidAddress {
                addr: addr.to_string(),
                reason: "a live process listens on this name".into(),
            },
            _ => NaError::from(e),
        })?;
        let self_addr = Address::new("sm", None, &name)?;
        let single_copy = cfg.single_copy
            && match cma::probe() {
                Ok(()) => {
                    tracing::info!(addr = %self_addr, "sm: RMA by single copy (process_vm_readv/writev)");
                    true
                }
                Err(why) => {
                    tracing::info!(addr = %self_addr, %why, "sm: RMA copies through the rings");
                    false
                }
            };
        let net = Sm {
            single_copy,
            listener,
            self_addr,
            ring_size: cfg.ring_size,
        };
        StreamPlugin::new(Box::new(net), cfg.stream)
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn auto_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct Sm {
    single_copy: bool,
    listener: Listener,
    self_addr: Address,
    ring_size: usize,
}

impl Connector for Sm {
    fn name(&self) -> &'static str {
        "sm"
    }

    fn self_addr(&self) -> &Address {
        &self.self_addr
    }

    fn direct_reads(&self) -> bool {
        self.single_copy
    }

    fn listen_fd(&self) -> RawFd {
        self.listener.fd()
    }

    fn dial(&self, addr: &Address) -> NaResult<(Box<dyn Wire>, bool)> {
        let link = link::connect(addr.locator(), self.listener.name(), self.ring_size)
            .map_err(|e| NaError::Unreachable(format!("{addr}: {e}")))?;
        let same_uid = link.peer.uid == euid();
        Ok((
            Box::new(SmWire::new(link, self.single_copy && same_uid)),
            true,
        ))
    }

    fn accept(&self) -> Vec<Box<dyn Wire>> {
        let mut out: Vec<Box<dyn Wire>> = Vec::new();
        loop {
            match self.listener.accept() {
                Ok(link) => {
                    tracing::trace!(peer = %link.peer_name, pid = link.peer_pid, "sm link");
                    // One copy only between processes of one uid: we copy with our rights
                    // into a pid the peer had at connect, which may since have become
                    // another program (exec of a setuid binary). Between equal uids the
                    // kernel's own ptrace checks then refuse what the peer could not do.
                    let same_uid = link.peer.uid == euid();
                    out.push(Box::new(SmWire::new(link, self.single_copy && same_uid)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::TimedOut
                    ) =>
                {
                    tracing::warn!(error = %e, "sm: refused a connection");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sm accept failed");
                    return out;
                }
            }
        }
    }

    fn polls_memory(&self) -> bool {
        true
    }
}

/// A link as a byte stream.
struct SmWire {
    link: Link,
    /// The liveness socket hung up: once the ring is drained, the stream ends.
    hup: AtomicBool,
    /// RMA by single copy with this peer.
    single_copy: bool,
    /// The peer process, for its write lease: ended once this is readable.
    pidfd: Option<std::os::fd::OwnedFd>,
    /// The outbox's consumer index as last read ([`Ring::write_seen`]).
    head_seen: crate::sync::AtomicU64,
}

fn corrupt(e: RingError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl SmWire {
    fn new(link: Link, single_copy: bool) -> Self {
        // The peer is watched for its end (a write lease of a peer that died counts as
        // ended): without a pidfd (a kernel before 5.3, a filter that refuses it), the
        // link offers no direct copies at all.
        let pidfd = single_copy.then(|| lease::pidfd(link.peer_pid)).flatten();
        // Only to a peer of our uid: an arena's address tells where this process's heap is.
        if pidfd.is_some() && direct::SUPPORTED {
            link.announce(direct::Arena::get().announced());
        }
        SmWire {
            pidfd,
            link,
            hup: AtomicBool::new(false),
            single_copy,
            head_seen: crate::sync::AtomicU64::new(0),
        }
    }

    fn inbox(&self) -> Ring<'_> {
        self.link.inbox()
    }

    /// After taking bytes: lets a producer waiting for space go on.
    fn consumed(&self, n: usize) -> io::Result<usize> {
        if n > 0 && self.inbox().producer_needs_wake() {
            self.link.wake_peer()?;
        }
        if n == 0 {
            return if self.hup.load(Ordering::Acquire) {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        Ok(n)
    }
}

impl Wire for SmWire {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inbox().read(buf).map_err(corrupt)?;
        self.consumed(n)
    }

    unsafe fn read_raw(&self, pieces: &[RawPiece]) -> io::Result<usize> {
        let ring = self.inbox();
        let mut total = 0;
        for &(p, len) in pieces {
            // SAFETY: the caller guarantees the piece is valid for writes of `len` bytes
            // and unaliased while we run.
            let dst = unsafe { std::slice::from_raw_parts_mut(p, len) };
            let n = ring.read(dst).map_err(corrupt)?;
            total += n;
            if n < len {
                break;
            }
        }
        self.consumed(total)
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let ring = self.link.outbox();
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        loop {
            let want = bufs.iter().map(|b| b.len() as u64).sum();
            let n = ring
                .write_seen(&self.head_seen, want, bufs.iter().map(|b| &**b))
                .map_err(corrupt)?;
            if n > 0 {
                if ring.consumer_needs_wake() {
                    self.link.wake_peer()?;
                }
                return Ok(n);
            }
            // Full: ask the consumer to wake us, unless space appeared meanwhile.
            if ring.wait_for_space().map_err(corrupt)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    fn shutdown(&self) {
        // SAFETY: shutting down our own socket; the peer and our epoll see it hang up.
        unsafe { libc::shutdown(self.link.sock.as_raw_fd(), libc::SHUT_RDWR) };
    }

    fn fds(&self) -> Vec<RawFd> {
        vec![self.link.sock.as_raw_fd(), self.link.wake_me.as_raw_fd()]
    }

    fn ready(&self, ev: &mio::event::Event) -> (bool, bool) {
        // Only the socket reports hang-ups; the eventfd means "data or space": try both.
        if ev.is_read_closed() || ev.is_error() {
            self.hup.store(true, Ordering::Release);
        }
        self.link.drain_wakeups();
        (true, true)
    }

    fn single_copy(&self) -> bool {
        self.single_copy
    }

    fn peer_identity(&self) -> Option<Identity> {
        Some(self.link.peer.clone())
    }

    fn direct_peer(&self) -> Option<(u32, direct::Announced)> {
        let arena = self.link.peer_arena().filter(|_| self.single_copy)?;
        Some((self.link.peer_pid as u32, arena))
    }

    unsafe fn peer_copy(
        &self,
        dir: CopyDir,
        local: &[RawPiece],
        remote: &[(u64, u64)],
    ) -> io::Result<usize> {
        // SAFETY: forwarded contract of Wire::peer_copy.
        unsafe { cma::copy(self.link.peer_pid, dir, local, remote) }
    }

    fn lease(&self, key: u64) -> bool {
        self.pidfd.is_some() && lease::take(self.link.lease(), self.link.sock.as_raw_fd(), key)
    }

    fn end_lease(&self) {
        lease::end(self.link.lease());
    }

    fn peer_lease(&self) -> u64 {
        match &self.pidfd {
            Some(fd) => lease::peer(self.link.peer_lease_word(), fd),
            None => 0,
        }
    }

    fn has_input(&self) -> bool {
        // A corrupted ring counts as input: the read reports it.
        self.inbox().is_empty().map_or(true, |empty| !empty)
    }

    fn prepare_sleep(&self) -> bool {
        self.inbox().prepare_sleep().unwrap_or(false)
    }
}
