//! The plugin trait: messages, memory, RMA, progress and cancellation.

use std::os::fd::RawFd;
use std::time::Duration;

use crate::{Address, Identity, MemHandle, NaError, NaResult, RemoteMem, Segment};

/// A peer known to a plugin: an outgoing connection made by [`Plugin::lookup`] or an
/// incoming one. Cheap to copy; only meaningful to the plugin that issued it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// A posted operation, named again in its [`Event::Done`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// What progress produced.
#[derive(Debug)]
pub enum Event {
    /// An unexpected message (a new request) arrived from `peer`.
    Unexpected {
        /// The sender.
        peer: PeerId,
        /// The sender's tag (for RPC: where the sender expects the answer).
        tag: u64,
        /// The message.
        data: Vec<u8>,
    },
    /// An expected message (an answer) that matched no posted receive, from a plugin whose
    /// [`Caps::unposted_expected`] is set; other plugins drop such a message. The consumer
    /// matches it to what it waits for by `peer` and `tag`, and drops the rest (a late
    /// answer, or one a peer made up).
    Expected {
        /// The sender.
        peer: PeerId,
        /// The tag the request named.
        tag: u64,
        /// The message.
        data: Vec<u8>,
    },
    /// A posted operation completed. For an expected receive `data` holds the message;
    /// for sends and RMA it is empty.
    Done {
        /// The operation.
        op: OpId,
        /// The outcome.
        result: NaResult<Vec<u8>>,
    },
    /// The connection to `peer` was lost (closed, reset, or closed by us after the peer
    /// misbehaved). Every pending operation on it has completed with an error before this.
    PeerLost {
        /// The peer.
        peer: PeerId,
        /// Why.
        error: NaError,
    },
}

/// What a plugin does beyond the contract's minimum, for a consumer to take the faster way.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// Expected messages need no posted receive: one that matches none arrives as
    /// [`Event::Expected`], and [`Plugin::send_quiet`] fails on a connection known to be
    /// gone (handing the message back), so that a consumer that posts no receive learns
    /// of a dead connection when it sends. A consumer that relies on this matches answers
    /// itself and fails what it waits for from a peer once [`Event::PeerLost`] comes (an
    /// answer read before the loss may be handed over after it, by another thread's pass).
    pub unposted_expected: bool,
    /// How the engine should cut its transfers over this plugin (largest chunk, chunks in
    /// flight per transfer), unless told otherwise.
    pub chunks: crate::ChunkConfig,
    /// The transport moves data on threads of its own (libfabric's `sockets`): a thread
    /// that spins while it waits takes their CPU, so a consumer should sleep instead.
    pub progress_threads: bool,
}

/// A message [`Plugin::send_quiet`] did not send, with why.
#[derive(Debug)]
pub struct Unsent {
    /// Why.
    pub error: NaError,
    /// The message, to send again elsewhere (empty when the plugin could not keep it).
    pub data: Vec<u8>,
}

/// A transport plugin.
///
/// Every call takes `&self`: posting is thread-safe, so a handler thread can answer while
/// another thread drives progress. Operations never block: they queue work and return an
/// [`OpId`]; outcomes arrive as [`Event`]s after [`Plugin::progress`]. Each posted operation
/// yields exactly one [`Event::Done`], whether it succeeds, fails, or is canceled.
///
/// Messages are bounded by [`Plugin::max_eager_size`]. Unexpected messages need no posted
/// receive (the plugin owns the buffers); expected messages are delivered to a receive
/// posted with [`Plugin::recv_expected`] for the same peer and tag, and otherwise dropped
/// (a late answer to a canceled request), or handed over as [`Event::Expected`] by a
/// plugin whose [`Caps::unposted_expected`] says so.
pub trait Plugin: Send + Sync + 'static {
    /// The plugin name as addresses spell it (`tcp`).
    fn name(&self) -> &'static str;

    /// An address that peers can pass to [`Plugin::lookup`] to reach this endpoint.
    fn self_addr(&self) -> &Address;

    /// The largest message, in bytes, that `send_*` accepts.
    fn max_eager_size(&self) -> usize;

    /// Resolves an address to a peer, starting a connection if the transport needs one.
    /// Never blocks on the network: an unreachable peer surfaces as failed operations.
    fn lookup(&self, addr: &Address) -> NaResult<PeerId>;

    /// Sends an unexpected message (a new request) to `peer`.
    fn send_unexpected(&self, peer: PeerId, tag: u64, data: Vec<u8>) -> NaResult<OpId>;

    /// Sends an expected message (an answer) to `peer`, matched there by `tag`.
    fn send_expected(&self, peer: PeerId, tag: u64, data: Vec<u8>) -> NaResult<OpId>;

    /// Sends a message nobody waits on: an answer (`expected`) or a request whose answer
    /// is awaited. No [`OpId`], no [`Event::Done`]: a message that cannot be delivered
    /// surfaces as the loss of `peer` (which fails its posted receives), or, where the
    /// connection is known gone already, as an error with the message handed back whole
    /// (what [`Caps::unposted_expected`] promises; the default keeps none). Plugins may
    /// keep the default, a tracked send whose event the engine ignores.
    fn send_quiet(
        &self,
        peer: PeerId,
        expected: bool,
        tag: u64,
        data: Vec<u8>,
    ) -> Result<(), Unsent> {
        match expected {
            true => self.send_expected(peer, tag, data),
            false => self.send_unexpected(peer, tag, data),
        }
        .map(drop)
        .map_err(|error| Unsent {
            error,
            data: Vec::new(),
        })
    }

    /// What this plugin does beyond the minimum.
    fn caps(&self) -> Caps {
        Caps::default()
    }

    /// Posts a receive for the expected message with `tag` from `peer`.
    fn recv_expected(&self, peer: PeerId, tag: u64) -> NaResult<OpId>;

    /// Registers local memory for remote access with `access`, as one linear region over
    /// the segments in order.
    ///
    /// # Safety
    /// Every segment must stay valid for reads and writes, and must not move, until
    /// [`Plugin::deregister`] returns for the handle; while a remote peer may access it, the
    /// caller must not read or write the same bytes.
    unsafe fn register(&self, segments: &[Segment], access: Access) -> NaResult<MemHandle>;

    /// Revokes remote access to a registration. Later remote accesses fail with
    /// [`NaError::AccessDenied`]; local operations naming it fail with
    /// [`NaError::InvalidArgument`].
    ///
    /// Once it returns, no peer reads or writes the memory: a peer's access already under
    /// way is waited for first (sm: writes by the peer itself; ofi: transfers the owner
    /// granted), which may block the calling thread: until the peer is declared lost
    /// (ofi, 11.5 s by default), or, where a peer's copies pass no check of the owner's
    /// (sm's own writes, ofi's `shm` provider), for as long as that peer's process exists
    /// (a stopped one resumes its copy), with a warning each second.
    fn deregister(&self, handle: &MemHandle) -> NaResult<()>;

    /// Writes `len` bytes from `local` at `local_off` into `remote` at `remote_off` on `peer`.
    fn put(
        &self,
        peer: PeerId,
        local: &MemHandle,
        local_off: u64,
        remote: &RemoteMem,
        remote_off: u64,
        len: u64,
    ) -> NaResult<OpId>;

    /// Reads `len` bytes from `remote` at `remote_off` on `peer` into `local` at `local_off`.
    fn get(
        &self,
        peer: PeerId,
        local: &MemHandle,
        local_off: u64,
        remote: &RemoteMem,
        remote_off: u64,
        len: u64,
    ) -> NaResult<OpId>;

    /// Holds (`on`) or lets go of (`!on`) what is written to `peer`: while held, messages
    /// and transfer requests posted for it queue, and they leave together when the last
    /// hold is let go (or sooner, with other traffic), in as few writes as the transport
    /// can. Holds nest; every hold must be let go. Transports that write nothing
    /// themselves ignore it.
    fn hold(&self, peer: PeerId, on: bool) {
        let _ = (peer, on);
    }

    /// Drives the transport: waits at most `timeout` (`None`: until something happens) for
    /// activity, and queues the events it produces. Returns at once when events are queued.
    fn progress(&self, timeout: Option<Duration>) -> NaResult<()>;

    /// Takes the next queued event.
    fn poll_event(&self) -> Option<Event>;

    /// Hands queued events to `f` in one batch (a plugin takes its queue's lock once, not
    /// once per event); events that `f` causes may wait for the next call. Returns how
    /// many it handed.
    fn poll_events(&self, f: &mut dyn FnMut(Event)) -> usize {
        let mut n = 0;
        while let Some(ev) = self.poll_event() {
            f(ev);
            n += 1;
        }
        n
    }

    /// [`Plugin::progress`], then every queued event handed to `f` as
    /// [`Plugin::poll_events`] does; returns how many. A plugin may hand over the events
    /// its pass made on this thread without queueing them (no lock per event): for a
    /// caller that handles events where it drives progress (one that handles them in
    /// another thread makes the two calls).
    fn progress_events(
        &self,
        timeout: Option<Duration>,
        f: &mut dyn FnMut(Event),
    ) -> NaResult<usize> {
        self.progress(timeout)?;
        Ok(self.poll_events(f))
    }

    /// Completes a pending operation with [`NaError::Canceled`]. Returns false when the
    /// operation had already completed (its event is then the real outcome).
    ///
    /// Once `cancel` returns, the plugin no longer reads or writes the local memory of a
    /// canceled RMA operation: callers may release that memory. A plugin whose fabric
    /// cannot stop an operation in flight must wait here for it to finish.
    fn cancel(&self, op: OpId) -> bool;

    /// Makes a `progress` call that is waiting in another thread return.
    fn wake(&self);

    /// A file descriptor that becomes readable when progress has work, for engines that
    /// wait in their own poll loop; `None` when the plugin has none.
    fn poll_fd(&self) -> Option<RawFd>;

    /// The verified identity of a connected peer: from the kernel on same-node transports,
    /// from the credential of the connection's hello on others. `None` for an anonymous
    /// peer (no proof demanded), an unknown peer, or a plugin that cannot tell. Never a
    /// claim taken on faith: a plugin that cannot verify one returns `None`.
    fn peer_identity(&self, peer: PeerId) -> Option<Identity> {
        let _ = peer;
        None
    }
}

use crate::Access;
