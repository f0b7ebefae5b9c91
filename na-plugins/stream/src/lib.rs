//! The stream core of Quicksilver's network abstraction: everything a plugin needs over a
//! reliable byte stream, whatever carries the bytes (TCP sockets, shared-memory rings).
//!
//! One connection per peer pair, driven by epoll (through `mio`), length-prefixed frames
//! (see [`frame`]), vectored writes. A stream has no remote memory access, so `put`/`get`
//! are emulated over it: a `get` is a request that the owner answers straight out of its
//! registered memory, a `put` carries the data, and the owner checks key, bounds and access
//! mode before touching a byte. Large transfers are split into chunks with a bounded window
//! in flight. A transport supplies a [`Connector`] and its [`Wire`]s; [`StreamPlugin`] is
//! the [`Plugin`].
#![deny(missing_docs)]

pub mod auth;
mod batch;
mod bell;
mod conn;
pub mod direct;
mod driver;
pub mod frame;
mod handshake;
mod landing;
mod mr;
mod munge;
mod ops;
mod outq;
mod queues;
mod rma;
mod single;
mod snapshot;
mod sync;
mod tail;
mod users;
mod verify;
mod wire;

pub use conn::Backlog;
pub use wire::{Connector, CopyDir, RawPiece, Wire};

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use na::{
    Access, Address, Auth, Caps, ChunkConfig, Event, Identity, MemHandle, NaError, NaResult, OpId,
    PeerId, Plugin, RemoteMem, Segment, Unsent,
};
use rustc_hash::FxHashMap;

use conn::{Conn, Flushed, OutFrame};
use frame::{Kind, RmaReq};
use mr::MemTable;
use ops::Ops;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_PEER: u64 = 2;

/// Tunables of the stream core.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Largest message (`send_*`) in bytes.
    pub max_eager: usize,
    /// How each RMA operation is cut into requests on the wire: the largest chunk, and
    /// chunks in flight per operation.
    pub chunks: ChunkConfig,
    /// The proof demanded of peers that dial us (where the wire cannot ask the kernel), and
    /// shown to peers we dial.
    pub auth: Auth,
    /// Bounds on answers queued for peers that do not read them.
    pub backlog: Backlog,
}

impl Default for StreamConfig {
    /// 64 KiB messages; 512 KiB chunks with 4 in flight per transfer (measured over TCP
    /// with `qs-bw` against 256 KiB × 8 and 1 MiB × 4; pushes gained the most).
    fn default() -> Self {
        StreamConfig {
            max_eager: 64 * 1024,
            chunks: ChunkConfig {
                size: 512 << 10,
                depth: 4,
            },
            auth: Auth::None,
            // A peer that does not read its answers is not read past 4 MiB of them; all
            // peers together hold at most 64 MiB before the largest are paused.
            backlog: Backlog {
                per_conn: 4 << 20,
                total: 64 << 20,
            },
        }
    }
}

/// A plugin over a stream transport. See the crate documentation.
pub struct StreamPlugin {
    cfg: StreamConfig,
    net: Box<dyn Connector>,
    poll: Mutex<(Poll, Events)>,
    poll_fd: RawFd,
    registry: Registry,
    /// Wake-ups for a pass that sleeps in `poll` ([`bell`]).
    bell: Arc<bell::Bell>,
    /// Checks credentials that need another process (MUNGE) off the progress thread.
    verifier: verify::Verifier,
    conns: Mutex<FxHashMap<PeerId, Arc<Conn>>>,
    /// The connections as of their last change, for a transport that polls memory to look
    /// at every pass without the table's lock (written under it); over sockets, the one
    /// connection if there is one alone, which spinning passes read directly.
    polled: snapshot::Snapshot,
    /// Connections held while a batch of their requests is handled ([`batch`]), and how
    /// many (looked at without the lock).
    batched: Mutex<smallvec::SmallVec<[Arc<Conn>; 4]>>,
    batched_n: AtomicUsize,
    by_addr: Mutex<FxHashMap<Address, PeerId>>,
    next_peer: AtomicU64,
    ops: Mutex<Ops>,
    /// How many receives `ops` has posted ([`Ops::posted`]).
    receives: Arc<AtomicUsize>,
    mem: MemTable,
    events: na::EventQueue,
    /// Connections with data left unread when their read budget ran out.
    unread: queues::PeerSet,
    /// Zero-timeout progress calls, to ask the kernel only now and then (memory polling,
    /// or a socket read alone: [`StreamPlugin::read_alone`]).
    spins: AtomicU64,
    /// The last full pass over memory found input: the next one is full too (under load
    /// more is likely, and a quiet pass's look would be a second one).
    found_last: AtomicBool,
    /// Bytes this side copied out of owners' memory itself ([`crate::tail`]).
    direct: AtomicU64,
    /// Tails of shared reads to copy at the next progress ([`crate::tail`]).
    tails: tail::Tails,
    /// Memory held by answers queued on all connections.
    backlog: Arc<AtomicUsize>,
    /// Why the most recently closed connections ended (at most [`GONE_KEPT`]).
    gone: Mutex<VecDeque<(PeerId, NaError)>>,
}

/// How many closed connections' reasons are remembered.
const GONE_KEPT: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Zero-timeout passes over memory between two looks at the kernel (new connections,
/// hang-ups) when a transport polls memory.
pub(crate) const KERNEL_EVERY: u64 = 64;

/// Spinning passes over a socket alone ([`StreamPlugin::read_alone`]) per look at the
/// kernel's poll.
const ALONE_EVERY: u64 = 4;

/// Transfers shorter than this move through the connection even where the wire offers
/// single copy: for small ones the owner's copy syscall and its answer cost more than the
/// bytes in the ring. It was 16 KiB until the owner served a run of requests with one
/// call (`single.rs`); since, `qs-bw -t sm -r 3 -y 2048 -z 16384 [-d push]`, three
/// rounds alternated with 16 KiB (2026-12-02): pulls of 4 KiB 2260–3237 vs 1922–2386 MB/s,
/// 8 KiB 4181–6303 vs 2972–4040; pushes of 4 KiB level (2114–2538 vs 1967–2637).
const COPY_MIN: u64 = 4 << 10;

impl StreamPlugin {
    /// A plugin over `net`, which is already listening.
    pub fn new(net: Box<dyn Connector>, cfg: StreamConfig) -> NaResult<Self> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let bell = Arc::new(bell::Bell::new(Waker::new(&registry, WAKER)?));
        let verifier = verify::Verifier::new(cfg.auth.clone(), bell.clone());
        registry.register(
            &mut SourceFd(&net.listen_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let poll_fd = poll.as_raw_fd();
        tracing::debug!(addr = %net.self_addr(), "{} plugin listening", net.name());
        let mem = if net.direct_reads() {
            MemTable::with_direct_reads()
        } else {
            MemTable::default()
        };
        let ops = Ops::default();
        Ok(StreamPlugin {
            cfg,
            net,
            poll: Mutex::new((poll, Events::with_capacity(256))),
            poll_fd,
            registry,
            bell,
            verifier,
            conns: Mutex::new(FxHashMap::default()),
            polled: snapshot::Snapshot::default(),
            batched: Mutex::default(),
            batched_n: AtomicUsize::new(0),
            by_addr: Mutex::new(FxHashMap::default()),
            next_peer: AtomicU64::new(FIRST_PEER),
            receives: ops.posted(),
            ops: Mutex::new(ops),
            mem,
            events: na::EventQueue::default(),
            unread: queues::PeerSet::default(),
            spins: AtomicU64::new(0),
            found_last: AtomicBool::new(false),
            direct: AtomicU64::new(0),
            tails: tail::Tails::default(),
            backlog: Arc::default(),
            gone: Mutex::new(VecDeque::new()),
        })
    }

    /// Bytes of reads this side copied out of the owner's memory itself (the shared
    /// tails of large single-copy reads).
    pub fn direct_bytes(&self) -> u64 {
        self.direct.load(Ordering::Relaxed)
    }

    /// Operations posted and not yet completed (for leak checks).
    pub fn pending_ops(&self) -> usize {
        lock(&self.ops).len()
    }

    /// Memory held by answers queued for peers, on all connections.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        lock(&self.conns).len()
    }

    fn max_frame(&self) -> usize {
        // The largest RMA frame is a PutReq: its fixed part plus one chunk.
        self.cfg
            .max_eager
            .max(self.cfg.chunks.size as usize + RmaReq::PUT_LEN)
            .max(RmaReq::GET_LEN)
    }

    fn add_conn(
        &self,
        wire: Box<dyn Wire>,
        outgoing: bool,
        connected: bool,
        remote: Option<Address>,
    ) -> NaResult<PeerId> {
        let peer = PeerId(self.next_peer.fetch_add(1, Ordering::Relaxed));
        let fds = wire.fds();
        // An accepting side speaks first: the proof it demands, over a fresh nonce (the
        // kernel vouches for same-node peers, so they are asked for none).
        let challenge = if outgoing {
            None
        } else {
            let demand = match wire.peer_identity() {
                Some(_) => &Auth::None,
                None => &self.cfg.auth,
            };
            Some(auth::Challenge::new(demand).map_err(NaError::InvalidArgument)?)
        };
        let mut conn = Conn::new(
            peer,
            wire,
            outgoing,
            connected,
            self.max_frame(),
            self.backlog.clone(),
        );
        if let Some(ch) = &challenge {
            conn.nonce = ch.nonce;
        }
        let conn = Arc::new(conn);
        tail::watch(&conn);
        if let Some(a) = remote {
            let _ = conn.remote.set(a);
        }
        {
            let mut conns = lock(&self.conns);
            conns.insert(peer, conn);
            self.conns_changed(&conns);
        }
        // Registered after insertion, so that no event can find the map without it.
        let interest = Interest::READABLE | Interest::WRITABLE;
        for fd in fds {
            if let Err(e) =
                self.registry
                    .register(&mut SourceFd(&fd), Token(peer.0 as usize), interest)
            {
                self.close_conn(peer, e.into());
                return Err(NaError::Disconnected("cannot watch the connection".into()));
            }
        }
        if let Some(ch) = challenge {
            let f = OutFrame::new(Kind::Challenge, 0, ch.encode(), None);
            self.send_frames(&*self.conn(peer)?, vec![f]);
        }
        Ok(peer)
    }

    fn conn(&self, peer: PeerId) -> NaResult<Arc<Conn>> {
        let c = lock(&self.conns).get(&peer).cloned();
        c.ok_or_else(|| {
            // Why it ended, if it ended lately: a refused dial is Unreachable, not "lost".
            let gone = lock(&self.gone);
            let why = gone.iter().rev().find(|(p, _)| *p == peer);
            why.map_or_else(
                || NaError::Disconnected(format!("no connection to peer {}", peer.0)),
                |(_, e)| e.clone(),
            )
        })
    }

    fn push_events(&self, evs: impl IntoIterator<Item = Event>, wake: bool) {
        if self.events.extend(evs) && wake {
            self.bell.ring();
        }
    }

    /// Completes the sends a flush of `conn` finished, and reads `conn` again if it was
    /// paused for its backlog and the flush drained it.
    fn after_flush(&self, conn: &Conn, f: Flushed) {
        // A frame may have joined a connection another thread's batch holds: a sleeping
        // pass writes it.
        if batch::foreign_send(self) {
            self.bell.ring();
        }
        if conn.take_resume(&self.cfg.backlog) {
            tracing::debug!(peer = conn.peer.0, "backlog written: reading again");
            self.unread.insert(conn.peer);
            self.bell.ring();
        }
        self.complete_sends(f.done);
    }

    fn complete_sends(&self, done: Vec<OpId>) {
        if done.is_empty() {
            return;
        }
        let evs: Vec<Event> = {
            let mut ops = lock(&self.ops);
            done.into_iter()
                .filter_map(|op| ops.complete(op, Ok(Vec::new())))
                .collect()
        };
        self.push_events(evs, false);
    }

    fn post_message(&self, peer: PeerId, kind: Kind, tag: u64, data: Vec<u8>) -> NaResult<OpId> {
        self.check_eager(data.len())?;
        let conn = self.conn(peer)?;
        let op = lock(&self.ops).add_send(peer);
        match conn.send(OutFrame::new(kind, tag, data, Some(op)), &self.mem) {
            Ok(f) => self.after_flush(&conn, f),
            Err(_) => self.fail_op(op, NaError::Disconnected("connection closed".into())),
        }
        Ok(op)
    }

    /// As `post_message`, with no op to complete: the fast path of a plain send (one
    /// lookup of the connection and its write lock). A connection gone or closing hands
    /// the message back (`Caps::unposted_expected`).
    fn post_quiet(&self, peer: PeerId, kind: Kind, tag: u64, data: Vec<u8>) -> Result<(), Unsent> {
        if let Err(error) = self.check_eager(data.len()) {
            return Err(Unsent { error, data });
        }
        let conn = match self.conn(peer) {
            Ok(c) => c,
            Err(error) => return Err(Unsent { error, data }),
        };
        match conn.send(OutFrame::new(kind, tag, data, None), &self.mem) {
            Ok(f) => self.after_flush(&conn, f),
            Err(f) => {
                let error = self.conn(peer).err().unwrap_or_else(|| {
                    NaError::Disconnected(format!("connection to peer {} closed", peer.0))
                });
                return Err(Unsent {
                    error,
                    data: f.into_owned(),
                });
            }
        }
        Ok(())
    }

    fn check_eager(&self, len: usize) -> NaResult<()> {
        if len > self.cfg.max_eager {
            return Err(NaError::InvalidArgument(format!(
                "message of {len} bytes exceeds the eager limit of {}",
                self.cfg.max_eager
            )));
        }
        Ok(())
    }

    fn fail_op(&self, op: OpId, e: NaError) {
        let ev = lock(&self.ops).complete(op, Err(e));
        self.push_events(ev, true);
    }

    /// Reads the connections whose memory shows input; true if any did.
    fn poll_memory(&self) -> bool {
        self.polled.with(|conns| {
            let mut found = false;
            for c in conns {
                if !c.is_paused() && c.wire.has_input() {
                    found = true;
                    self.read_or_close(c);
                }
            }
            found
        })
    }

    /// Publishes the table's new state to [`StreamPlugin::poll_memory`] (its lock held);
    /// over sockets, to [`StreamPlugin::read_alone`]: the connection if it is alone, else
    /// none (published at two, so that a third and more need no publishing: the table
    /// changes one connection at a time).
    pub(crate) fn conns_changed(&self, conns: &FxHashMap<PeerId, Arc<Conn>>) {
        if self.net.polls_memory() || conns.len() <= 2 {
            let alone = self.net.polls_memory() || conns.len() == 1;
            self.polled
                .publish(conns.values().filter(|_| alone).cloned().collect());
        }
    }

    /// A spinning pass over sockets with one connection: reads it straight, but for one
    /// pass in [`ALONE_EVERY`], which asks the kernel's poll (the connection's events, new
    /// ones, wake-ups). A message that lands is then found by the read that would have
    /// followed the poll, one system call sooner: a microsecond of each hop of a busy
    /// round trip (`qs-rate -t tcp -b`). (What the poll then reports of it finds nothing
    /// to read, off the latency path.) False if this pass is for the poll.
    fn read_alone(&self) -> bool {
        let pass = self.spins.load(Ordering::Relaxed);
        self.spins.store(pass.wrapping_add(1), Ordering::Relaxed);
        if pass.is_multiple_of(ALONE_EVERY) {
            return false;
        }
        self.polled.with(|conns| match conns {
            [c] if c.is_connected() && !c.is_closed() => {
                self.read_or_close(c);
                true
            }
            _ => false,
        })
    }

    /// Declares to every peer that we are about to sleep; false if input already waits.
    fn prepare_sleep(&self) -> bool {
        self.polled
            .with(|conns| conns.iter().all(|c| c.wire.prepare_sleep()))
    }

    /// Posts frames from the read path; `read_or_close` writes them once the batch of
    /// frames read is handled, so that answering 64 small requests costs one `writev`.
    fn queue_frames(&self, conn: &Conn, frames: impl IntoIterator<Item = OutFrame>) {
        for f in frames {
            // A closing connection fails its ops in close_conn.
            if conn.post(f).is_err() {
                break;
            }
        }
    }

    fn send_frames(&self, conn: &Conn, frames: impl IntoIterator<Item = OutFrame>) {
        for f in frames {
            match conn.send(f, &self.mem) {
                Ok(fl) => self.after_flush(conn, fl),
                // The connection is closing; its ops fail in close_conn.
                Err(_) => break,
            }
        }
    }
}

impl Drop for StreamPlugin {
    /// Connections are shut down (a link whose peer declares a write into this process's
    /// memory, maybe another plugin's region, is kept for that write to end), and regions
    /// left registered end with the plugin: a peer's direct write into one lands before
    /// the plugin is gone (their entries in the process's arena would otherwise stay
    /// live, over other plugins' links, after their memory is freed).
    fn drop(&mut self) {
        let conns: Vec<Arc<Conn>> = std::mem::take(&mut *lock(&self.conns))
            .into_values()
            .collect();
        for c in &conns {
            c.close();
            c.wire.shutdown();
            self.linger_if_written(c);
        }
        self.mem.end_all();
    }
}

impl Plugin for StreamPlugin {
    fn name(&self) -> &'static str {
        self.net.name()
    }

    fn self_addr(&self) -> &Address {
        self.net.self_addr()
    }

    fn max_eager_size(&self) -> usize {
        self.cfg.max_eager
    }

    fn lookup(&self, addr: &Address) -> NaResult<PeerId> {
        let mut by_addr = lock(&self.by_addr);
        if let Some(p) = by_addr.get(addr) {
            return Ok(*p);
        }
        if addr.plugin() != self.net.name() {
            return Err(NaError::InvalidAddress {
                addr: addr.to_string(),
                reason: format!("not a {}:// address", self.net.name()),
            });
        }
        let (wire, up) = self.net.dial(addr)?;
        let peer = self.add_conn(wire, true, up, Some(addr.clone()))?;
        // Only connections we dialled are found by address: an accepted peer's hello names
        // its address, but a hostile process could name anyone's.
        by_addr.insert(addr.clone(), peer);
        Ok(peer)
    }

    fn send_unexpected(&self, peer: PeerId, tag: u64, data: Vec<u8>) -> NaResult<OpId> {
        self.post_message(peer, Kind::Unexpected, tag, data)
    }

    fn send_expected(&self, peer: PeerId, tag: u64, data: Vec<u8>) -> NaResult<OpId> {
        self.post_message(peer, Kind::Expected, tag, data)
    }

    fn send_quiet(
        &self,
        peer: PeerId,
        expected: bool,
        tag: u64,
        data: Vec<u8>,
    ) -> Result<(), Unsent> {
        let kind = match expected {
            true => Kind::Expected,
            false => Kind::Unexpected,
        };
        self.post_quiet(peer, kind, tag, data)
    }

    fn caps(&self) -> Caps {
        Caps {
            unposted_expected: true,
            // The engine's cut (1 MiB, 4 in flight, measured with `qs-bw`): each of its
            // chunks is one operation here, cut again into `StreamConfig::chunks` on the
            // wire, and a single-copy one shared with the owner from 128 KiB.
            chunks: ChunkConfig::default(),
            progress_threads: false,
        }
    }

    fn recv_expected(&self, peer: PeerId, tag: u64) -> NaResult<OpId> {
        let conn = self.conn(peer)?;
        let op = lock(&self.ops).add_recv(peer, tag)?;
        // A connection closed between the look and the post failed its receives before
        // this one was there (close_conn marks it closed before it fails them): fail it
        // here, with the reason it ended.
        if conn.is_closed() {
            let e = self.conn(peer).err().unwrap_or_else(|| {
                NaError::Disconnected(format!("connection to peer {} closed", peer.0))
            });
            lock(&self.ops).complete(op, Err(e.clone()));
            return Err(e);
        }
        Ok(op)
    }

    unsafe fn register(&self, segments: &[Segment], access: Access) -> NaResult<MemHandle> {
        // SAFETY: forwarded contract of Plugin::register.
        unsafe { self.mem.register(segments, access) }
    }

    fn deregister(&self, handle: &MemHandle) -> NaResult<()> {
        // Refuse new accesses, copy what queued frames still need, then forget the region:
        // after this returns, nothing reads or writes its memory.
        let written = self.mem.revoke(handle.id)?;
        // (Only where a frame built before the revocation may still read it.)
        if self.mem.pinned(handle.id) {
            let conns: Vec<Arc<Conn>> = lock(&self.conns).values().cloned().collect();
            for c in &conns {
                let f = c.materialize(handle.id, &self.mem);
                self.after_flush(c, f);
            }
        }
        // Peers may have been writing it directly: their writes end before it goes.
        if written {
            Self::await_leases(handle.id);
        }
        self.mem.remove(handle.id);
        Ok(())
    }

    fn hold(&self, peer: PeerId, on: bool) {
        // Writes into memory cost no system call: they go at once, and the peer starts
        // on them while more are posted (holding them measured slower over sm).
        if self.net.polls_memory() {
            return;
        }
        if let Ok(c) = self.conn(peer)
            && c.hold(on)
        {
            let f = c.flush(&self.mem);
            self.after_flush(&c, f);
        }
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
        self.post_rma(false, peer, local, local_off, remote, remote_off, len)
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
        self.post_rma(true, peer, local, local_off, remote, remote_off, len)
    }

    fn progress(&self, timeout: Option<Duration>) -> NaResult<()> {
        self.flush_held();
        let tails_left = self.run_tails();
        // What the last pass left unread (its read budget ran out, its hello's verdict
        // came, its backlog was written), first: at the end of that pass, it would sit
        // between the arrival of what the pass read and its delivery.
        self.read_leftovers();
        let busy = !self.events.is_empty() || !self.unread.is_empty() || tails_left;
        let mut timeout = if busy { Some(Duration::ZERO) } else { timeout };
        if self.net.polls_memory() {
            let found = self.poll_memory();
            self.found_last.store(found, Ordering::Relaxed);
            if timeout == Some(Duration::ZERO) {
                // Stepped by load and store, as in `quiet_pass`: no locked instruction.
                let pass = self.spins.load(Ordering::Relaxed);
                self.spins.store(pass.wrapping_add(1), Ordering::Relaxed);
                if found || !pass.is_multiple_of(KERNEL_EVERY) {
                    return Ok(());
                }
            } else if found || !self.prepare_sleep() {
                timeout = Some(Duration::ZERO);
            }
        }
        if timeout == Some(Duration::ZERO) && !self.net.polls_memory() && self.read_alone() {
            return Ok(());
        }
        let mut g = if timeout == Some(Duration::ZERO) {
            // A pass that does not sleep does not wait for one in the kernel's poll: that
            // one handles what the kernel has (and wakes on it).
            match self.poll.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    self.apply_verdicts();
                    return Ok(());
                }
            }
        } else {
            lock(&self.poll)
        };
        let (poll, events) = &mut *g;
        let asleep = match timeout {
            Some(Duration::ZERO) => None,
            _ => {
                let asleep = self.bell.sleep();
                if asleep.is_none() {
                    timeout = Some(Duration::ZERO);
                }
                asleep
            }
        };
        let polled = poll.poll(events, timeout);
        drop(asleep);
        match polled {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(()) => {}
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept_all(),
                WAKER => {}
                Token(t) => self.on_conn_event(PeerId(t as u64), ev),
            }
        }
        drop(g);
        self.apply_verdicts();
        Ok(())
    }

    fn poll_event(&self) -> Option<Event> {
        self.events.pop()
    }

    fn progress_events(
        &self,
        timeout: Option<Duration>,
        f: &mut dyn FnMut(Event),
    ) -> NaResult<usize> {
        if timeout == Some(Duration::ZERO) && self.quiet_pass() {
            return Ok(0);
        }
        let (r, n) = self
            .events
            .direct(|| self.progress(timeout), |made| self.hold_batch(made), f);
        r.map(|()| n)
    }

    fn poll_events(&self, f: &mut dyn FnMut(Event)) -> usize {
        self.events.drain(f)
    }

    fn cancel(&self, op: OpId) -> bool {
        let copying = lock(&self.ops).stop_copying(op);
        if let Some(peer) = copying {
            self.await_copies(op, peer);
            return true;
        }
        let ev = lock(&self.ops).complete(op, Err(NaError::Canceled));
        let found = ev.is_some();
        self.push_events(ev, true);
        found
    }

    fn wake(&self) {
        self.bell.ring();
    }

    fn poll_fd(&self) -> Option<RawFd> {
        // Whoever waits on it outside `progress` is woken by every ring.
        self.bell.ring_outside();
        Some(self.poll_fd)
    }

    fn peer_identity(&self, peer: PeerId) -> Option<Identity> {
        self.conn(peer).ok()?.identity.get().cloned().flatten()
    }
}
