//! One connection: its wire, the frames waiting to be written (see [`crate::outq`]), and
//! the decoder of what it reads.
//!
//! Writes are vectored and happen in whichever thread posts (or in the progress thread when
//! the socket was full).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

use na::{Address, Identity, OpId, PeerId};

use crate::wire::Wire;

use crate::frame::Decoder;
use crate::mr::MemTable;
pub use crate::outq::{Backlog, Body, OutFrame, Prefix};

/// A queued single-copy request's payload: its fixed part and a few pieces, inline.
pub type CopyReq = smallvec::SmallVec<[u8; 64]>;
use crate::outq::{Slices, WriteQ};

/// Read side state.
pub struct ReadState {
    /// The frame decoder.
    pub decoder: Decoder,
    /// A bulk frame body being received straight into registered memory.
    pub direct: Option<crate::landing::Direct>,
    /// Single-copy requests read and not yet served, in order.
    pub copies: VecDeque<(crate::frame::Header, CopyReq)>,
}

/// A connection to one peer.
pub struct Conn {
    /// Our id for the peer.
    pub peer: PeerId,
    /// The byte stream.
    pub wire: Box<dyn Wire>,
    /// Frames posted and not yet taken by a writer (held only briefly).
    inbox: Mutex<VecDeque<OutFrame>>,
    /// Frames being written (held by the writing thread for a whole flush).
    write: Mutex<WriteQ>,
    /// The non-blocking connect finished.
    connected: AtomicBool,
    /// No more writes: the connection failed or is closing.
    closed: AtomicBool,
    /// Frames posted and not yet written or dropped (inbox and write queue).
    queued: AtomicUsize,
    /// Bytes read and not yet framed.
    pub read: Mutex<ReadState>,
    /// The peer's listening address, once its Hello arrived (or the one we dialled).
    pub remote: OnceLock<Address>,
    /// Whether we dialled (true) or accepted (false).
    pub outgoing: bool,
    /// Our challenge's nonce (accepted connections): the peer's credential must cover it.
    pub nonce: [u8; crate::auth::NONCE_LEN],
    /// The peer's verified identity (`None`: anonymous), set once its hello is accepted.
    pub identity: OnceLock<Option<Identity>>,
    /// Whether our hello is queued (dialled connections write nothing before it).
    greeted: AtomicBool,
    /// Memory held by answers queued for the peer, and by all connections' answers.
    backlog: AtomicUsize,
    total_backlog: Arc<AtomicUsize>,
    /// Not read until its backlog is written (see [`Backlog`]).
    paused: AtomicBool,
    /// Not read until its hello's credential is checked (see `verify`).
    pub verifying: AtomicBool,
    /// Holds on its writes (`Plugin::hold`): while any, `send` posts instead of writing.
    held: std::sync::atomic::AtomicU32,
}

/// Outcome of a flush.
pub struct Flushed {
    /// Sends whose frames are fully written.
    pub done: Vec<OpId>,
}

const BATCH: usize = 32;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// A connection over `stream`.
    pub fn new(
        peer: PeerId,
        wire: Box<dyn Wire>,
        outgoing: bool,
        connected: bool,
        max_frame: usize,
        total_backlog: Arc<AtomicUsize>,
    ) -> Self {
        Conn {
            peer,
            wire,
            inbox: Mutex::new(VecDeque::new()),
            write: Mutex::new(WriteQ::default()),
            connected: AtomicBool::new(connected),
            closed: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            read: Mutex::new(ReadState {
                decoder: Decoder::new(max_frame),
                direct: None,
                copies: VecDeque::new(),
            }),
            remote: OnceLock::new(),
            outgoing,
            nonce: [0; crate::auth::NONCE_LEN],
            identity: OnceLock::new(),
            greeted: AtomicBool::new(!outgoing),
            backlog: AtomicUsize::new(0),
            total_backlog,
            paused: AtomicBool::new(false),
            verifying: AtomicBool::new(false),
            held: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn charge(&self, n: usize) {
        if n > 0 {
            self.backlog.fetch_add(n, Ordering::SeqCst);
            self.total_backlog.fetch_add(n, Ordering::SeqCst);
        }
    }

    fn discharge(&self, n: usize) {
        if n > 0 {
            self.backlog.fetch_sub(n, Ordering::SeqCst);
            self.total_backlog.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Drops every queued frame, giving back what they held.
    fn drop_queued(&self, w: &mut WriteQ) {
        let mut inbox = lock(&self.inbox);
        let held: usize = w.frames_mut().map(|f| f.charge).sum::<usize>()
            + inbox.iter().map(|f| f.charge).sum::<usize>();
        let n = w.frames_mut().count() + inbox.len();
        w.clear();
        inbox.clear();
        self.discharge(held);
        self.queued.fetch_sub(n, Ordering::SeqCst);
    }

    /// Memory held by answers queued for the peer.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }

    /// Pauses reading when the peer's answers pile up unread; false if reading may go on.
    /// (Paused, then checked again: a writer that drained the backlog meanwhile either
    /// saw the pause and resumes, or is seen here.)
    pub fn pause_if_over(&self, b: &Backlog) -> bool {
        let total = &self.total_backlog;
        if !b.over(self.backlog(), total.load(Ordering::SeqCst)) {
            return false;
        }
        self.paused.store(true, Ordering::SeqCst);
        if b.over(self.backlog(), total.load(Ordering::SeqCst)) {
            return true;
        }
        self.paused.store(false, Ordering::SeqCst);
        false
    }

    /// Whether reading is paused for the backlog.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Whether a paused connection may now be read again (true once per pause).
    pub fn take_resume(&self, b: &Backlog) -> bool {
        self.paused.load(Ordering::SeqCst)
            && b.under(self.backlog(), self.total_backlog.load(Ordering::SeqCst))
            && self
                .paused
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }

    /// Whether the handshake is done on this side: an outgoing connection was greeted, an
    /// incoming one's hello verified.
    pub fn is_shaken(&self) -> bool {
        match self.outgoing {
            true => self.is_greeted(),
            false => self.identity.get().is_some(),
        }
    }

    /// Whether our hello is queued (always true of accepted connections).
    pub fn is_greeted(&self) -> bool {
        self.greeted.load(Ordering::Acquire)
    }

    /// Queues our hello ahead of everything posted so far, and lets writing begin.
    pub fn greet(&self, hello: OutFrame, mem: &MemTable) -> Flushed {
        {
            let mut w = lock(&self.write);
            w.absorb(&mut lock(&self.inbox));
            w.urgent.push_front(hello);
            self.queued.fetch_add(1, Ordering::SeqCst);
        }
        self.greeted.store(true, Ordering::Release);
        self.flush(mem)
    }

    /// Whether the connection failed or is closing (no more writes).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether frames may be written now: connected, greeted, not closed.
    fn writable(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.is_connected() && self.is_greeted()
    }

    /// Whether the non-blocking connect has finished.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Records that the connect finished.
    pub fn set_connected(&self) {
        self.connected.store(true, Ordering::Release);
    }

    /// Posts a frame and writes what the socket takes now, unless another thread is
    /// writing (it takes the frame before it stops). Returns the sends this thread
    /// completed, or the frame back if the connection is closed.
    ///
    /// A thread that finds nobody writing queues the frame straight behind the write lock
    /// (not through the inbox), and charges an answer to the backlog only if the wire does
    /// not take it at once.
    pub fn send(&self, f: OutFrame, mem: &MemTable) -> Result<Flushed, OutFrame> {
        if self.held.load(Ordering::SeqCst) > 0 {
            self.post(f)?;
            // The last hold may have gone, and its flush looked, before the frame was in
            // the inbox: then it is for us to write (both sides' steps are SeqCst, so one
            // of the two sees the other).
            if self.held.load(Ordering::SeqCst) == 0 {
                return Ok(self.flush(mem));
            }
            return Ok(Flushed { done: Vec::new() });
        }
        let mut w = match self.write.try_lock() {
            Ok(w) => w,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.post(f)?;
                return Ok(self.flush(mem));
            }
        };
        // Checked under the write lock: `fail` closes the connection holding it, and
        // `close` marks it closed before it takes the lock to drop what is queued.
        if self.closed.load(Ordering::Acquire) {
            return Err(f);
        }
        // Frames this thread posted before (to the inbox, while another wrote) go first.
        let alone = self.queued.fetch_add(1, Ordering::SeqCst) == 0;
        if !alone {
            w.absorb(&mut lock(&self.inbox));
        }
        let mut done = Vec::new();
        let mut direct = None;
        if alone && w.is_empty() && !f.names_memory() && self.writable() {
            // The common case, written from here without the queue; a frame the wire does
            // not take whole is queued with what went out, and the queue's flush goes on.
            let mut slices = Slices::new();
            f.slices(0, None, &mut slices);
            direct = Some(self.wire.write_vectored(&slices));
        }
        let blocked = match direct {
            Some(Ok(n)) if n == f.len() => {
                self.discharge(f.charge);
                self.queued.fetch_sub(1, Ordering::SeqCst);
                done.extend(f.op);
                drop(w);
                // Like every holder of the write lock: what others posted meanwhile.
                done.extend(self.flush(mem).done);
                return Ok(Flushed { done });
            }
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                w.push(f);
                true
            }
            Some(Ok(n)) if n > 0 => {
                w.head = Some((f, n));
                self.flush_locked(&mut w, mem, &mut done)
            }
            // Nothing written, or an error: the queue's flush knows what it means.
            _ => {
                w.push(f);
                self.flush_locked(&mut w, mem, &mut done)
            }
        };
        if blocked {
            let held: usize = w.frames_mut().map(Self::charge_answer).sum();
            self.charge(held);
        }
        drop(w);
        // Frames posted while we wrote wait in the inbox (`flush` looks at the count of
        // queued frames first, without a lock: none, the common case, costs nothing).
        if !blocked {
            done.extend(self.flush(mem).done);
        }
        Ok(Flushed { done })
    }

    /// Takes a hold on writes (`true`) or lets one go; true when the last one went (the
    /// caller then flushes). A release without a hold is ignored.
    pub fn hold(&self, on: bool) -> bool {
        if on {
            self.held.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            == Ok(1)
    }

    /// Posts a frame without writing it yet (the read path batches its answers and
    /// flushes once); returns it if the connection is closed.
    pub fn post(&self, mut f: OutFrame) -> Result<(), OutFrame> {
        if self.closed.load(Ordering::Acquire) {
            return Err(f);
        }
        let held = Self::charge_answer(&mut f);
        self.charge(held);
        // Counted before it is there to take, so that a writer never counts it out first.
        self.queued.fetch_add(1, Ordering::SeqCst);
        lock(&self.inbox).push_back(f);
        Ok(())
    }

    /// Sets an uncharged answer's charge to what it holds, and returns that.
    fn charge_answer(f: &mut OutFrame) -> usize {
        if f.charge > 0 || !f.is_answer() {
            return 0;
        }
        f.charge = f.held();
        f.charge
    }

    /// Writes posted frames until the socket would block, if no other thread is writing.
    /// Returns at once, taking no lock, when nothing is queued (the read path's flush
    /// after a batch that needed no answer).
    pub fn flush(&self, mem: &MemTable) -> Flushed {
        let mut done = Vec::new();
        if self.queued.load(Ordering::SeqCst) == 0 {
            return Flushed { done };
        }
        loop {
            let mut w = match self.write.try_lock() {
                Ok(w) => w,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // The writer re-checks the inbox after it lets go (and a writer the wire
                // blocked is called again by the writable event): nothing is stranded.
                Err(TryLockError::WouldBlock) => break,
            };
            w.absorb(&mut lock(&self.inbox));
            let blocked = self.flush_locked(&mut w, mem, &mut done);
            drop(w);
            if blocked || lock(&self.inbox).is_empty() {
                break;
            }
        }
        Flushed { done }
    }

    /// Writes the write queue in batches; returns true when the socket would block (or
    /// cannot be written), false when everything is out. Frames posted meanwhile wait in
    /// the inbox for the caller's look after it lets the write lock go.
    fn flush_locked(&self, w: &mut WriteQ, mem: &MemTable, done: &mut Vec<OpId>) -> bool {
        loop {
            if !self.writable() {
                return true;
            }
            if w.is_empty() {
                return false;
            }
            let written = {
                // Registered memory is read only for frames whose body names it.
                let guard = w
                    .frames_mut()
                    .take(BATCH)
                    .any(|f| f.names_memory())
                    .then(|| mem.read());
                let mut slices = Slices::new();
                let head = w.head.iter().map(|(f, off)| (f, *off));
                let rest = w.urgent.iter().chain(w.bulk.iter()).map(|f| (f, 0));
                for (f, skip) in head.chain(rest).take(BATCH) {
                    f.slices(skip, guard.as_ref(), &mut slices);
                }
                self.wire.write_vectored(&slices)
            };
            match written {
                Ok(0) => return self.fail(w),
                Ok(mut n) => {
                    while n > 0 {
                        let Some((f, off)) = w.pop() else { break };
                        let rest = f.len() - off;
                        if n >= rest {
                            n -= rest;
                            self.discharge(f.charge);
                            self.queued.fetch_sub(1, Ordering::SeqCst);
                            done.extend(f.op);
                        } else {
                            w.head = Some((f, off + n));
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(peer = self.peer.0, error = %e, "write failed");
                    return self.fail(w);
                }
            }
        }
    }

    /// Copies every queued byte of region `key` into its frame, so that the region can be
    /// deregistered while frames naming it wait.
    ///
    /// Like every holder of the write lock it flushes after letting go: a thread whose
    /// `flush` found the lock taken meanwhile left its frame to the holder, and a frame
    /// left to nobody waits for the next unrelated event on the connection (seen: an
    /// answer stuck for 10 s while another client's bulk buffer was deregistered).
    pub fn materialize(&self, key: u64, mem: &MemTable) -> Flushed {
        {
            let mut w = lock(&self.write);
            w.absorb(&mut lock(&self.inbox));
            let guard = mem.read();
            let grown = w.frames_mut().map(|f| f.materialize(key, &guard)).sum();
            self.charge(grown);
        }
        self.flush(mem)
    }

    /// Stops writing and shuts the socket down, so that the progress loop sees the
    /// connection end and fails its operations.
    fn fail(&self, w: &mut WriteQ) -> bool {
        self.closed.store(true, Ordering::Release);
        self.drop_queued(w);
        self.wire.shutdown();
        true
    }

    /// Marks the connection closed for writing and drops queued frames.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.drop_queued(&mut lock(&self.write));
    }
}

impl Drop for Conn {
    /// Frames posted while it closed are given back here.
    fn drop(&mut self) {
        let w = std::mem::take(self.write.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut w = w;
        self.drop_queued(&mut w);
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
