//! What a transport supplies: a [`Wire`] (one connection's byte stream) and a
//! [`Connector`] (how connections are made and accepted).

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use na::{Address, Identity, NaResult};

/// Raw pieces of registered memory: pointer and length.
pub type RawPiece = (*mut u8, usize);

/// One connection's reliable, ordered byte stream, non-blocking.
///
/// Reads and writes return `WouldBlock` when nothing can move now; the readiness of
/// [`Wire::fds`] (edge-triggered) says when to try again. `Ok(0)` from a read is the end
/// of the stream.
pub trait Wire: Send + Sync + 'static {
    /// Reads into `buf`.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Reads into raw pieces of registered memory, in order.
    ///
    /// # Safety
    /// Every piece must be valid for writes of its length, with no live Rust reference to
    /// that memory while the call runs.
    unsafe fn read_raw(&self, pieces: &[RawPiece]) -> io::Result<usize>;

    /// Writes from `bufs` in order.
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Ends the stream both ways, so that the peer (and our own event loop) sees it close.
    fn shutdown(&self);

    /// The descriptors whose readiness drives this connection.
    fn fds(&self) -> Vec<RawFd>;

    /// Whether a connection still being established is up: `Ok(false)` not yet.
    fn connected(&self) -> io::Result<bool> {
        Ok(true)
    }

    /// After a readiness event: what to try, as (read, write).
    fn ready(&self, ev: &mio::event::Event) -> (bool, bool) {
        (
            ev.is_readable() || ev.is_read_closed() || ev.is_error(),
            ev.is_writable(),
        )
    }

    /// Whether input waits, found without a system call (memory transports); streams whose
    /// input only readiness reveals answer false.
    fn has_input(&self) -> bool {
        false
    }

    /// The peer's identity as the kernel tells it (same-node transports); `None` where
    /// the handshake's credential must prove it.
    fn peer_identity(&self) -> Option<Identity> {
        None
    }

    /// Whether RMA with this peer can copy directly between the two processes' memory
    /// ([`Wire::peer_copy`]) instead of streaming the data.
    fn single_copy(&self) -> bool {
        false
    }

    /// Copies between `local` pieces of our registered memory and `remote` pieces
    /// (address, length) of the peer's address space, in order; returns bytes copied.
    ///
    /// # Safety
    /// Every local piece must be valid for reads (`ToPeer`) or writes (`FromPeer`) of its
    /// length, with no live Rust reference to written memory while the call runs.
    unsafe fn peer_copy(
        &self,
        dir: CopyDir,
        local: &[RawPiece],
        remote: &[(u64, u64)],
    ) -> io::Result<usize> {
        let _ = (dir, local, remote);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// For reads by the requester ([`crate::direct`]): the peer's pid and what it
    /// announced on this connection, where [`Wire::single_copy`] holds and the peer
    /// announced it; `None` otherwise.
    fn direct_peer(&self) -> Option<(u32, crate::direct::Announced)> {
        None
    }

    /// Declares this side's direct write into the peer's region `key` (its write lease,
    /// [`crate::direct`]), until [`Wire::end_lease`]; false (declare nothing, write
    /// nothing) where writes by the requester are not offered or the connection is
    /// shutting down.
    fn lease(&self, key: u64) -> bool {
        let _ = key;
        false
    }

    /// Ends this side's write lease.
    fn end_lease(&self) {}

    /// The key of our region the peer declares it is writing directly, or 0 (also once
    /// the peer's end is gone: it writes nothing after).
    fn peer_lease(&self) -> u64 {
        0
    }

    /// Before the event loop sleeps: declares it, so that the peer's next write wakes us.
    /// False when input already waits (do not sleep).
    fn prepare_sleep(&self) -> bool {
        true
    }
}

/// The direction of a single copy, seen from the owner of the registered memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CopyDir {
    /// From our memory into the peer's (serving its get).
    ToPeer,
    /// From the peer's memory into ours (serving its put).
    FromPeer,
}

/// How a transport makes connections. The stream core does everything else.
pub trait Connector: Send + Sync + 'static {
    /// The plugin name addresses use (`tcp`, `sm`).
    fn name(&self) -> &'static str;

    /// The address peers dial to reach us.
    fn self_addr(&self) -> &Address;

    /// The listening descriptor, readable when peers connect.
    fn listen_fd(&self) -> RawFd;

    /// Starts a connection to `addr`; returns the wire and whether it is already up.
    fn dial(&self, addr: &Address) -> NaResult<(Box<dyn Wire>, bool)>;

    /// Takes every connection waiting on the listener (never blocks).
    fn accept(&self) -> Vec<Box<dyn Wire>>;

    /// Whether a peer that says it dialled `addr` reached us (credentials are bound to
    /// the address dialled, so that one server cannot replay them at another).
    fn is_self(&self, addr: &Address) -> bool {
        addr == self.self_addr()
    }

    /// Whether this process's regions are offered to peers' direct copies
    /// ([`crate::direct`]; the wires must then announce the arena and serve
    /// [`Wire::direct_peer`] and the write leases).
    fn direct_reads(&self) -> bool {
        false
    }

    /// Whether zero-timeout progress should look at memory before asking the kernel: true
    /// for shared memory, where busy polling must not make a system call per pass.
    fn polls_memory(&self) -> bool {
        false
    }
}
