//! The plugin: its state, messages, registration, the op table (opening it: `open`).

use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use na::{
    Access, Address, Event, MemHandle, NaError, NaResult, OpId, PeerId, Plugin, RemoteMem, Segment,
    Unsent,
};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::addr;
use crate::config::OfiConfig;
pub(crate) use crate::ctx::{Ctx, What};
use crate::fabric::{Av, Cq, Domain, Ep, Fabric, Info};
use crate::mr::MemTable;
use crate::open::bad_addr;
use crate::peers::known_peer;
use crate::post::Route;
use crate::provider::Provider;
use crate::wire::{self, Kind};

/// Counters of the plugin's work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfiStats {
    /// Registrations the provider made (`fi_mr_reg`).
    pub provider_regs: u64,
    /// Registrations served from the cache.
    pub cache_hits: u64,
    /// Liveness probes sent.
    pub probes: u64,
    /// Peers declared lost.
    pub peers_lost: u64,
    /// Message posts the provider refused for a while (its queue full), sent later from
    /// the backlog.
    pub backlogged: u64,
    /// Sleeps between polls of a completion queue without a wait object (shm): how often
    /// an engine that waits woke to look (see `OfiConfig::idle_poll_max`).
    pub queue_polls: u64,
    /// Peers' messages dropped: malformed, of another wire version, or from an address
    /// the provider refuses.
    pub dropped: u64,
    /// Checks of transfers sent to their owners (`checked_rma`; transfers of one region
    /// that share a check count once, see `checks`).
    pub checks: u64,
    /// Receives of the unexpected pool posted, the first ones included: one per message
    /// received, about, without multi-receive buffers; one per buffer filled with them.
    pub pool_posts: u64,
}

/// Request payloads from this size on (and too long to inject) go behind their header
/// without being copied to it (`fi_sendv`); shorter ones are copied, which costs less than
/// a second piece.
pub(crate) const SENDV_MIN: usize = 1024;

/// The kind of a user operation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    Send,
    Recv,
    Rma,
}

/// A user operation in flight.
pub(crate) struct Op {
    pub(crate) peer: PeerId,
    pub(crate) kind: OpKind,
    /// Fabric completions still to come.
    pub(crate) parts: u32,
    /// The contexts posted for it and not completed yet, for `fi_cancel` (a message's
    /// one, a small transfer's piece or two, without allocating; more spill to the heap).
    pub(crate) ctxs: smallvec::SmallVec<[usize; 2]>,
    /// The first error of any part, or the reason it was failed.
    pub(crate) error: Option<NaError>,
    /// The message received.
    pub(crate) data: Vec<u8>,
    /// When a transfer to a lost peer is completed even if the provider has not returned
    /// it.
    pub(crate) abandon_at: Option<Instant>,
    /// Its `Done` event was already queued (canceled or failed with its peer); the fabric
    /// completions still to come only release its contexts.
    pub(crate) reported: bool,
    /// The shared check it rides on ([`crate::checks`]), left when it ends.
    pub(crate) shared: Option<u64>,
}

/// What the plugin knows of a peer.
pub(crate) struct Peer {
    pub(crate) raw: Vec<u8>,
    /// We sent to it or heard from it (a later failure is a lost connection, not an
    /// unreachable address).
    pub(crate) contacted: bool,
    /// Last sign of life (or when we started waiting on it), as of the last liveness
    /// check.
    pub(crate) last_heard: Instant,
    /// Heard from (or started waiting on) since the last liveness check, which sets
    /// `last_heard` to its own time: the data path reads no clock.
    pub(crate) heard: bool,
    /// Last traffic other than liveness probes and their answers (or when we started
    /// waiting on it), as of the last liveness check: how long it stays watched
    /// (`OfiConfig::watch_idle`). A peer that only answers probes is not watched for ever.
    pub(crate) last_active: Instant,
    /// Such traffic since the last liveness check (as `heard`).
    pub(crate) active: bool,
    /// The probing of its current silence, if it is probed.
    pub(crate) probing: Option<crate::liveness::Probing>,
    /// When the last probe went out.
    pub(crate) last_probe: Option<Instant>,
    /// User operations pending on it.
    pub(crate) pending: u32,
    /// Declared lost and not heard from since.
    pub(crate) lost: bool,
}

/// Holds on control messages to one peer, and the bundles they keep.
pub(crate) struct Held {
    pub(crate) holds: u32,
    pub(crate) out: crate::bundler::Bundler,
}

/// Everything behind the state lock.
pub(crate) struct State {
    // Tables keyed by our own numbers (op ids, fabric addresses, context pointers) use a
    // fast hash: no peer chooses their keys. (Raw addresses, which peers send, keep
    // std's keyed hash.)
    pub(crate) ops: FxHashMap<u64, Op>,
    pub(crate) peers: FxHashMap<u64, Peer>,
    pub(crate) by_addr: FxHashMap<Vec<u8>, PeerId>,
    /// The peer last found by its raw address: messages come in runs from one peer, and
    /// comparing its address costs less than hashing it (entries are never removed).
    pub(crate) last_peer: Option<PeerId>,
    /// The address last looked up and its raw form (a pure function of it): transfers
    /// look their owner up one after another, and parsing its locator cost more than the
    /// rest of the lookup.
    pub(crate) last_lookup: Option<(Address, Vec<u8>)>,
    pub(crate) mem: MemTable,
    /// Transfers waiting for their owner's grant (providers with `checked_rma`).
    pub(crate) awaiting: FxHashMap<u64, crate::rma::Awaiting>,
    /// Checks shared by transfers of one region (providers with `checked_rma`).
    pub(crate) checks: crate::checks::Checks,
    /// RMA pieces waiting for room in the window, and the bytes posted and not completed.
    pub(crate) rma_queue: VecDeque<crate::rma::Queued>,
    pub(crate) rma_inflight: usize,
    /// Transfers we granted peers and have not seen end (`leased_rma` only).
    pub(crate) leases: crate::leases::Leases,
    /// Leased transfers of ours that ended, by owner, to be released at the end of the pass.
    pub(crate) releases: Vec<(u64, u64)>,
    /// Every context posted and not yet completed (freed on drop).
    pub(crate) live: FxHashSet<usize>,
    pub(crate) stats: OfiStats,
    /// Expected-receive buffers ready for reuse: empty, with room for `max_eager` bytes
    /// (a receive is posted over the capacity, never zeroed; at more calls in flight than
    /// are kept, each zeroed 64 KiB had cost the caller more than the call: `memset` 13 %
    /// of the client at 1 024 in flight).
    pub(crate) recv_bufs: Vec<Vec<u8>>,
    /// Message posts waiting for room at the provider, in order (see [`crate::post`]).
    pub(crate) backlog: VecDeque<crate::post::Backlogged>,
    pub(crate) backlog_seq: u64,
}

/// Receive buffers kept for reuse (the rest are freed).
pub(crate) const RECV_BUFS_KEPT: usize = 64;

impl Drop for State {
    fn drop(&mut self) {
        self.mem.clear();
        // (Empty once the plugin is dropped: its endpoint's `Posted` took them.)
        drop(crate::local::Posted(self.live.drain().collect()));
    }
}

impl Drop for OfiPlugin {
    fn drop(&mut self) {
        let posted = crate::local::Posted(lock(&self.state).live.drain().collect());
        // SAFETY: each is taken once, here, and not used after: the other fields (which
        // do not touch them when dropped) drop after this.
        let fids = unsafe {
            crate::local::Fids {
                ep: ManuallyDrop::take(&mut self.ep),
                posted,
                av: ManuallyDrop::take(&mut self.av),
                cq: ManuallyDrop::take(&mut self.cq),
                domain: ManuallyDrop::take(&mut self.domain),
                fabric: ManuallyDrop::take(&mut self.fabric),
            }
        };
        let fids = match self.local {
            Some(id) => crate::local::closing(id, fids),
            None => Some(fids),
        };
        if let Some(crate::local::Fids {
            ep,
            posted,
            av,
            cq,
            domain,
            fabric,
        }) = fids
        {
            drop((ep, posted));
            // Registrations before the domain (a lingering endpoint's go as the state
            // drops, its domain open).
            lock(&self.state).mem.clear();
            drop((av, cq, domain, fabric));
        }
    }
}

/// The libfabric plugin. When dropped, the endpoint closes first, then the registrations
/// and posted buffers are released, then the queues, domain and fabric (or, over shm,
/// its libfabric objects linger while another endpoint of this process has it as a peer:
/// `local`).
pub struct OfiPlugin {
    pub(crate) ep: ManuallyDrop<Ep>,
    pub(crate) state: Mutex<State>,
    pub(crate) av: ManuallyDrop<Av>,
    pub(crate) cq: ManuallyDrop<Cq>,
    pub(crate) domain: ManuallyDrop<Domain>,
    pub(crate) fabric: ManuallyDrop<Fabric>,
    /// This endpoint among the process's shm endpoints (`local`); `None` over other
    /// providers.
    pub(crate) local: Option<u64>,
    pub(crate) wait_fd: Option<RawFd>,
    pub(crate) wake_fd: OwnedFd,
    pub(crate) events: na::EventQueue,
    pub(crate) cq_lock: Mutex<()>,
    /// Owners' grants read from the queue, acted on (their pieces posted) once its lock is
    /// released. (Carried answers are settled as they are read.)
    pub(crate) answers: Mutex<Vec<crate::rma::Answer>>,
    /// Control messages held per peer (`Plugin::hold`), sent bundled at the last release.
    pub(crate) held: Mutex<FxHashMap<u64, Held>>,
    /// When the liveness check last ran, and when it next needs to.
    pub(crate) liveness: Mutex<(Option<Instant>, Option<Instant>)>,
    /// An operation made a peer watched since the last check.
    pub(crate) liveness_dirty: std::sync::atomic::AtomicBool,
    /// `State::releases` may hold some (set after pushing, cleared when taken).
    pub(crate) releases_pending: std::sync::atomic::AtomicBool,
    /// A thread is posting queued RMA pieces.
    pub(crate) pumping: std::sync::atomic::AtomicBool,
    /// RMA pieces may be queued (cleared under the state lock when the queue is seen
    /// empty; set after pushing), so that progress skips the lock when there are none.
    pub(crate) queued: std::sync::atomic::AtomicBool,
    /// The backlog of message posts may hold some (cleared under the state lock when it is
    /// seen empty): while set, new posts join it.
    pub(crate) backlogged: std::sync::atomic::AtomicBool,
    /// A thread is posting the backlog.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Without a wait object: where the poll policy stands (`poll::Poll`, packed: how
    /// long the next idle poll sleeps, and the idle polls since the last activity).
    pub(crate) poll: AtomicU64,
    /// `OfiStats::queue_polls`.
    pub(crate) queue_polls: AtomicU64,
    /// `OfiStats::dropped`, and when a drop was last logged at `warn`.
    pub(crate) dropped: AtomicU64,
    /// `OfiStats::pool_posts`.
    pub(crate) pool_posts: AtomicU64,
    pub(crate) drop_warned: Mutex<Option<Instant>>,
    /// A progress call sleeps longer than `poll::IDLE_POLL` on a queue without a wait
    /// object: a new operation wakes it (its completion would wait for the sleep). With
    /// several sleepers at once (progress called from more than one thread) the flag is
    /// one of theirs: another may sleep its interval out.
    pub(crate) deep_asleep: std::sync::atomic::AtomicBool,
    /// Zero-timeout progress calls, to check liveness only now and then.
    pub(crate) spins: AtomicU64,
    /// Bundles of control messages sent (two or more messages in one).
    pub(crate) bundles_sent: AtomicU64,
    pub(crate) next_op: AtomicU64,
    pub(crate) cfg: OfiConfig,
    pub(crate) provider: &'static Provider,
    pub(crate) info: Info,
    pub(crate) self_addr: Address,
    pub(crate) self_raw: Vec<u8>,
    pub(crate) max_eager: usize,
    pub(crate) inject: usize,
    /// The unexpected pool is made of multi-receive buffers ([`crate::pool`]).
    pub(crate) multi_recv: bool,
    /// Sends may gather two pieces (`fi_sendv`): a request's payload is not copied behind
    /// its header.
    pub(crate) sendv: bool,
    /// Transfers up to this size to checked providers' peers are carried in messages.
    pub(crate) carry_max: usize,
    /// Bytes of RMA pieces in flight at once (the config's, else the provider's).
    pub(crate) rma_window: usize,
    pub(crate) mr_local: bool,
    pub(crate) write_flags: u64,
    /// Granted transfers are leased ([`crate::leases`]): on providers whose RMA the owner
    /// checks (`checked_rma`), one granted before a deregistration would otherwise reach
    /// the region after it (`shm` writes or reads it anyway, `tcp;ofi_rxm` refuses it by
    /// closing the connection).
    pub(crate) leased_rma: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OfiPlugin {
    /// The provider description in use.
    pub fn provider(&self) -> &'static Provider {
        self.provider
    }

    /// Whether the unexpected pool is made of multi-receive buffers (`FI_MULTI_RECV`: see
    /// [`OfiConfig::multi_recv`]).
    pub fn has_multi_recv(&self) -> bool {
        self.multi_recv
    }

    /// Whether progress sleeps on the completion queue's wait fd (else it polls).
    pub fn has_wait_fd(&self) -> bool {
        self.wait_fd.is_some()
    }

    /// The libfabric provider string and domain actually opened (`tcp;ofi_rxm`, `lo`).
    pub fn fabric_names(&self) -> (String, String) {
        (self.info.prov_name(), self.info.domain_name())
    }

    /// The plugin's counters.
    pub fn stats(&self) -> OfiStats {
        let s = lock(&self.state);
        OfiStats {
            provider_regs: s.mem.provider_regs,
            cache_hits: s.mem.cache_hits,
            queue_polls: self.queue_polls.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            pool_posts: self.pool_posts.load(Ordering::Relaxed),
            ..s.stats.clone()
        }
    }

    /// Registers a new operation of `parts` fabric completions and returns its id.
    pub(crate) fn new_op(&self, s: &mut State, peer: PeerId, kind: OpKind, parts: u32) -> u64 {
        let id = self.next_op.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = s.peers.get_mut(&peer.0) {
            if p.pending == 0 {
                p.heard = true;
                p.active = true;
                self.liveness_dirty.store(true, Ordering::Release);
            }
            p.pending += 1;
            if kind != OpKind::Recv {
                p.contacted = true;
            }
        }
        s.ops.insert(
            id,
            Op {
                peer,
                kind,
                parts,
                ctxs: Default::default(),
                error: None,
                data: Vec::new(),
                abandon_at: None,
                reported: false,
                shared: None,
            },
        );
        // (SeqCst, after the insertion: see `deep_asleep`, and the sleeper's mark in
        // `progress::sleep`.)
        if self.deep_asleep.load(Ordering::SeqCst) {
            Plugin::wake(self);
        }
        id
    }

    /// A message as it leaves: a request goes into the peer's pool behind its header (a
    /// payload of [`SENDV_MIN`] bytes or more that cannot be injected, in a message up to
    /// the provider's `gather_max`, stays where it is, gathered by the provider: the
    /// second `Vec`), an answer to the receive posted for its tag.
    pub(crate) fn message(
        &self,
        tag: u64,
        data: Vec<u8>,
        unexpected: bool,
    ) -> NaResult<(Vec<u8>, Vec<u8>, Route)> {
        if data.len() > self.max_eager {
            return Err(NaError::InvalidArgument(format!(
                "message of {} bytes exceeds the eager limit of {}",
                data.len(),
                self.max_eager
            )));
        }
        Ok(if !unexpected {
            (data, Vec::new(), Route::Expected(tag))
        } else if self.sendv
            && data.len() >= SENDV_MIN
            && (self.inject + 1..=self.provider.gather_max)
                .contains(&(wire::header_len(&self.self_raw) + data.len()))
        {
            let h = wire::header(Kind::Request, tag, &self.self_raw, 0);
            (h, data, Route::Pool)
        } else {
            let mut b = wire::header(Kind::Request, tag, &self.self_raw, data.len());
            b.extend_from_slice(&data);
            na::buf::give(data);
            (b, Vec::new(), Route::Pool)
        })
    }

    fn send(&self, peer: PeerId, tag: u64, data: Vec<u8>, unexpected: bool) -> NaResult<OpId> {
        let made = self.message(tag, data, unexpected)?;
        let id = {
            let mut s = lock(&self.state);
            self.fi_addr(&s, peer)?;
            self.new_op(&mut s, peer, OpKind::Send, 1)
        };
        match self.send_made(peer.0, made, What::Op(id), unexpected) {
            Ok(true) => {}
            Ok(false) => self.part_done(id, Ok(0)),
            Err(e) => {
                self.forget_op(id);
                return Err(e);
            }
        }
        Ok(OpId(id))
    }

    /// Drops an operation whose post failed (no event).
    pub(crate) fn forget_op(&self, id: u64) {
        let mut s = lock(&self.state);
        if let Some(op) = s.ops.remove(&id)
            && let Some(p) = s.peers.get_mut(&op.peer.0)
        {
            p.pending = p.pending.saturating_sub(1);
        }
    }

    pub(crate) fn push_event(&self, e: Event) {
        self.events.extend([e]);
    }
}

impl Plugin for OfiPlugin {
    fn name(&self) -> &'static str {
        "ofi"
    }

    fn self_addr(&self) -> &Address {
        &self.self_addr
    }

    fn max_eager_size(&self) -> usize {
        self.max_eager
    }

    fn lookup(&self, addr: &Address) -> NaResult<PeerId> {
        if addr.plugin() != "ofi" || addr.provider() != Some(self.provider.name) {
            return Err(bad_addr(
                addr,
                format!("this endpoint speaks ofi+{}", self.provider.name),
            ));
        }
        let mut s = lock(&self.state);
        let last = match s.last_lookup.take() {
            Some(last) if last.0 == *addr => last,
            _ => {
                let (_, loc) = addr::split_domain(addr.locator());
                let raw = addr::from_locator_like(self.info.raw().addr_format, loc, &self.self_raw)
                    .map_err(|e| bad_addr(addr, e.to_string()))?;
                (addr.clone(), raw)
            }
        };
        if let Some(p) = known_peer(&mut s, &last.1) {
            s.last_lookup = Some(last);
            return Ok(p);
        }
        let raw = last.1.clone();
        s.last_lookup = Some(last);
        if crate::provider::certainly_dead(self.provider.death_check, &raw) {
            // (shm crashes on a send to a region that is gone: never insert one.)
            return Err(NaError::Unreachable(format!("{addr}: no endpoint there")));
        }
        self.peer_for(&mut s, &raw)
    }

    fn send_unexpected(&self, peer: PeerId, tag: u64, data: Vec<u8>) -> NaResult<OpId> {
        self.send(peer, tag, data, true)
    }

    fn send_expected(&self, peer: PeerId, tag: u64, data: Vec<u8>) -> NaResult<OpId> {
        self.send(peer, tag, data, false)
    }

    /// No operation, no event: a message is injected when it fits (the provider copies
    /// it), else sent with a completion; a failed completion, or a backlogged post that
    /// fails, is the loss of `peer`. A post the provider refuses at once is returned as
    /// the error (not a loss), without the message (the plugin does not promise
    /// [`na::Caps::unposted_expected`]). A client that died while its handler ran is
    /// found lost though its answer, injected, has no completion to fail: a peer once
    /// contacted stays watched, at the idle pace once idle (test
    /// `a_requester_gone_while_its_handler_ran_is_found_lost`).
    fn send_quiet(
        &self,
        peer: PeerId,
        expected: bool,
        tag: u64,
        data: Vec<u8>,
    ) -> Result<(), Unsent> {
        let unsent = |error| Unsent {
            error,
            data: Vec::new(),
        };
        let made = self.message(tag, data, !expected).map_err(unsent)?;
        match lock(&self.state).peers.get_mut(&peer.0) {
            Some(p) => p.contacted = true,
            None => {
                return Err(unsent(NaError::InvalidArgument(format!(
                    "unknown peer {peer:?}"
                ))));
            }
        }
        self.send_made(peer.0, made, What::Quiet(peer), true)
            .map(drop)
            .map_err(unsent)
    }

    fn caps(&self) -> na::Caps {
        na::Caps {
            progress_threads: self.provider.progress_threads,
            ..Default::default()
        }
    }

    fn recv_expected(&self, peer: PeerId, tag: u64) -> NaResult<OpId> {
        let (id, ctx) = {
            let mut s = lock(&self.state);
            self.fi_addr(&s, peer)?;
            let id = self.new_op(&mut s, peer, OpKind::Recv, 1);
            let buf = s.recv_bufs.pop();
            let ctx = Ctx::new(
                What::Op(id),
                buf.unwrap_or_else(|| Vec::with_capacity(self.max_eager)),
            );
            s.live.insert(ctx as usize);
            if let Some(op) = s.ops.get_mut(&id) {
                op.ctxs.push(ctx as usize);
            }
            (id, ctx)
        };
        if let Err(e) = self.post_recv(id, tag, ctx) {
            self.forget_op(id);
            return Err(e);
        }
        Ok(OpId(id))
    }

    unsafe fn register(&self, segments: &[Segment], access: Access) -> NaResult<MemHandle> {
        if segments.is_empty() {
            return Err(NaError::InvalidArgument("no segments to register".into()));
        }
        let mut s = lock(&self.state);
        // SAFETY: forwarded from the trait's contract.
        unsafe { s.mem.register(&self.domain, &self.ep, segments, access) }
    }

    fn deregister(&self, handle: &MemHandle) -> NaResult<()> {
        {
            let mut s = lock(&self.state);
            if !s.leases.held(handle.id) {
                return s.mem.deregister(handle.id);
            }
            // No new check of it is granted; the ones granted end first, with the region
            // open (`tcp;ofi_rxm` would fail them and close the connection).
            s.mem.revoke(handle.id);
        }
        self.await_leases(handle.id);
        lock(&self.state).mem.deregister(handle.id)
    }

    fn hold(&self, peer: PeerId, on: bool) {
        self.hold_control(peer.0, on);
    }

    fn put(
        &self,
        peer: PeerId,
        local: &MemHandle,
        local_off: u64,
        remote: &RemoteMem,
        remote_off: u64,
        len: u64,
    ) -> NaResult<OpId> {
        self.rma(true, peer, local, local_off, remote, remote_off, len)
    }

    fn get(
        &self,
        peer: PeerId,
        local: &MemHandle,
        local_off: u64,
        remote: &RemoteMem,
        remote_off: u64,
        len: u64,
    ) -> NaResult<OpId> {
        self.rma(false, peer, local, local_off, remote, remote_off, len)
    }

    fn progress(&self, timeout: Option<Duration>) -> NaResult<()> {
        self.drive(timeout)
    }

    fn poll_event(&self) -> Option<Event> {
        self.events.pop()
    }

    fn progress_events(
        &self,
        timeout: Option<Duration>,
        f: &mut dyn FnMut(Event),
    ) -> NaResult<usize> {
        if timeout != Some(Duration::ZERO) {
            // A pass that may sleep returns once an event is queued: it looks at the
            // queue, where a direct pass would not put its own.
            self.drive(timeout)?;
            return Ok(self.events.drain(f));
        }
        // What this pass completes goes straight to `f`, off the queue.
        let (r, n) = self.events.direct(|| self.drive(timeout), |_| (), f);
        r.map(|()| n)
    }

    fn poll_events(&self, f: &mut dyn FnMut(Event)) -> usize {
        self.events.drain(f)
    }

    fn cancel(&self, op: OpId) -> bool {
        self.cancel_op(op.0)
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local to our eventfd.
        unsafe { libc::write(self.wake_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn poll_fd(&self) -> Option<RawFd> {
        None
    }
}
