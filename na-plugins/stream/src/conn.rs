//! One connection: its wire, the frames waiting to be written, and the decoder of
//! what it reads.
//!
//! Writes are vectored and happen in whichever thread posts (or in the progress thread when
//! the socket was full). Frames come in two classes: messages and RMA requests go ahead of
//! bulk data (get answers, put requests), so that small RPCs are not stuck behind transfers;
//! a frame started is always finished first. Bulk data is not copied into the queue: its
//! body names registered memory, read straight into `writev` at write time.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

use na::{Address, Identity, OpId, PeerId};

use crate::wire::Wire;

use crate::frame::{Decoder, HEADER_LEN, Header, Kind};
use crate::mr::{MemRead, MemTable};

/// The body of a frame to write.
pub enum Body {
    /// Bytes owned by the frame.
    Owned(Vec<u8>),
    /// A small prefix, then `len` bytes of registered region `key` at `offset`.
    Region {
        prefix: Vec<u8>,
        key: u64,
        offset: u64,
        len: usize,
    },
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Owned(v) => v.len(),
            Body::Region { prefix, len, .. } => prefix.len() + len,
        }
    }
}

/// A frame waiting to be written.
pub struct OutFrame {
    hdr: [u8; HEADER_LEN],
    body: Body,
    op: Option<OpId>,
    bulk: bool,
    /// What the frame holds against its connection's backlog bound (answers only).
    charge: usize,
}

/// Bookkeeping cost of a queued frame beyond its bytes.
const FRAME_OVERHEAD: usize = 64;

/// Bounds on the answers queued for peers that do not read them.
#[derive(Clone, Copy, Debug)]
pub struct Backlog {
    /// Per connection: past it, the connection is not read until half of it is written.
    pub per_conn: usize,
    /// All connections: past it, connections holding more than a fair share
    /// (`per_conn / 16`) are not read until half of that share is written.
    pub total: usize,
}

impl Backlog {
    fn fair(&self) -> usize {
        self.per_conn / 16
    }

    /// Whether a connection holding `mine` (of `total`) must not be read.
    pub fn over(&self, mine: usize, total: usize) -> bool {
        mine > self.per_conn || (total > self.total && mine > self.fair())
    }

    /// Whether a paused connection may be read again.
    pub fn under(&self, mine: usize, total: usize) -> bool {
        mine <= self.per_conn / 2 && (total <= self.total || mine <= self.fair() / 2)
    }
}

impl OutFrame {
    /// A frame of `kind` with `tag` and `body`, completing `op` once written.
    pub fn new(kind: Kind, tag: u64, body: Vec<u8>, op: Option<OpId>) -> Self {
        Self::with_body(kind, tag, Body::Owned(body), op)
    }

    /// A frame whose body may name registered memory.
    pub fn with_body(kind: Kind, tag: u64, body: Body, op: Option<OpId>) -> Self {
        let hdr = Header {
            kind,
            len: body.len() as u32,
            tag,
        }
        .encode();
        // Status-only answers (single copy, refusals) are as urgent as messages.
        let bulk = matches!(kind, Kind::GetResp | Kind::PutReq) && body.len() > 1;
        OutFrame {
            hdr,
            body,
            op,
            bulk,
            charge: 0,
        }
    }

    /// Whether the frame answers something the peer sent (and so counts against the
    /// peer's backlog): our own requests and data never do, so two busy peers cannot
    /// stop reading each other.
    fn is_answer(&self) -> bool {
        const ANSWERS: [u8; 5] = [
            Kind::Expected as u8,
            Kind::GetResp as u8,
            Kind::PutResp as u8,
            Kind::Challenge as u8,
            Kind::Refused as u8,
        ];
        ANSWERS.contains(&self.hdr[3])
    }

    /// Memory the frame holds (registered regions are the owner's, not the queue's).
    fn held(&self) -> usize {
        FRAME_OVERHEAD
            + HEADER_LEN
            + match &self.body {
                Body::Owned(v) => v.len(),
                Body::Region { prefix, .. } => prefix.len(),
            }
    }

    fn len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Whether the body is read from registered memory when written.
    fn names_memory(&self) -> bool {
        matches!(self.body, Body::Region { .. })
    }

    /// Appends the frame's bytes from `skip` on to `out`.
    fn slices<'a>(&'a self, skip: usize, mem: Option<&'a MemRead<'_>>, out: &mut Vec<IoSlice<'a>>) {
        let mut push = |part: &'a [u8], skip: &mut usize| {
            if *skip >= part.len() {
                *skip -= part.len();
            } else {
                out.push(IoSlice::new(&part[*skip..]));
                *skip = 0;
            }
        };
        let mut skip = skip;
        push(&self.hdr, &mut skip);
        match &self.body {
            Body::Owned(v) => push(v, &mut skip),
            Body::Region {
                prefix,
                key,
                offset,
                len,
            } => {
                push(prefix, &mut skip);
                // Regions are materialized before they are deregistered, so this holds.
                let parts = mem.and_then(|m| m.slices(*key, *offset, *len));
                for part in parts.unwrap_or_default() {
                    push(part, &mut skip);
                }
            }
        }
    }

    /// Copies region bytes into the frame, so that the region can go away; returns how
    /// much more the frame holds against its backlog.
    fn materialize(&mut self, key_gone: u64, mem: &MemRead<'_>) -> usize {
        if let Body::Region {
            prefix,
            key,
            offset,
            len,
        } = &mut self.body
            && *key == key_gone
        {
            let want = prefix.len() + *len;
            let mut v = std::mem::take(prefix);
            for part in mem.slices(*key, *offset, *len).unwrap_or_default() {
                v.extend_from_slice(part);
            }
            v.resize(want, 0);
            let grown = *len;
            self.body = Body::Owned(v);
            if self.charge > 0 {
                self.charge += grown;
                return grown;
            }
        }
        0
    }
}

/// Write side state, owned by whichever thread is writing.
#[derive(Default)]
pub struct WriteQ {
    /// The frame being written, and how many of its bytes are out.
    head: Option<(OutFrame, usize)>,
    urgent: VecDeque<OutFrame>,
    bulk: VecDeque<OutFrame>,
}

impl WriteQ {
    fn is_empty(&self) -> bool {
        self.head.is_none() && self.urgent.is_empty() && self.bulk.is_empty()
    }

    fn clear(&mut self) {
        self.head = None;
        self.urgent.clear();
        self.bulk.clear();
    }

    /// Sorts newly posted frames into their classes.
    fn absorb(&mut self, inbox: &mut VecDeque<OutFrame>) {
        for f in inbox.drain(..) {
            self.push(f);
        }
    }

    fn push(&mut self, f: OutFrame) {
        if f.bulk {
            self.bulk.push_back(f)
        } else {
            self.urgent.push_back(f)
        }
    }

    fn frames(&self) -> impl Iterator<Item = &OutFrame> {
        self.head
            .iter()
            .map(|(f, _)| f)
            .chain(self.urgent.iter())
            .chain(self.bulk.iter())
    }

    fn frames_mut(&mut self) -> impl Iterator<Item = &mut OutFrame> {
        self.head
            .iter_mut()
            .map(|(f, _)| f)
            .chain(self.urgent.iter_mut())
            .chain(self.bulk.iter_mut())
    }

    /// Takes the next frame in write order (head, then urgent, then bulk).
    fn pop(&mut self) -> Option<(OutFrame, usize)> {
        self.head.take().or_else(|| {
            self.urgent
                .pop_front()
                .or_else(|| self.bulk.pop_front())
                .map(|f| (f, 0))
        })
    }
}

/// Read side state.
pub struct ReadState {
    /// The frame decoder.
    pub decoder: Decoder,
    /// A bulk frame body being received straight into registered memory.
    pub direct: Option<crate::landing::Direct>,
    /// Single-copy requests read and not yet served, in order.
    pub copies: VecDeque<(crate::frame::Header, Vec<u8>)>,
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
        if self.queued.fetch_add(1, Ordering::SeqCst) != 0 {
            w.absorb(&mut lock(&self.inbox));
        }
        w.push(f);
        let mut done = Vec::new();
        let blocked = self.flush_locked(&mut w, mem, &mut done);
        if blocked {
            let held: usize = w.frames_mut().map(Self::charge_answer).sum();
            self.charge(held);
        }
        drop(w);
        if !blocked && !lock(&self.inbox).is_empty() {
            done.extend(self.flush(mem).done);
        }
        Ok(Flushed { done })
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
            if self.closed.load(Ordering::Acquire) || !self.is_connected() || !self.is_greeted() {
                return true;
            }
            if w.is_empty() {
                return false;
            }
            let written = {
                // Registered memory is read only for frames whose body names it.
                let guard = w
                    .frames()
                    .take(BATCH)
                    .any(OutFrame::names_memory)
                    .then(|| mem.read());
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * BATCH);
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
mod tests {
    use super::*;
    use crate::frame::Decoder;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A wire over one end of a real socket pair.
    struct Sock(UnixStream);

    impl Wire for Sock {
        fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
            (&self.0).read(buf)
        }
        unsafe fn read_raw(&self, _: &[crate::wire::RawPiece]) -> io::Result<usize> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            (&self.0).write_vectored(bufs)
        }
        fn shutdown(&self) {
            let _ = self.0.shutdown(std::net::Shutdown::Both);
        }
        fn fds(&self) -> Vec<std::os::fd::RawFd> {
            vec![self.0.as_raw_fd()]
        }
    }

    /// Tags of the frames that came out of `r`.
    fn tags(r: &mut UnixStream) -> Vec<u64> {
        let mut d = Decoder::new(1 << 20);
        let n = r.read(d.spare(1 << 16)).unwrap();
        d.commit(n);
        std::iter::from_fn(|| d.next_frame().unwrap().map(|(h, _)| h.tag)).collect()
    }

    #[test]
    fn a_frame_left_in_the_inbox_goes_out_before_a_send_made_after_it() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let c = Conn::new(
            PeerId(2),
            Box::new(Sock(ours)),
            false,
            true,
            1 << 20,
            Arc::default(),
        );
        let mem = MemTable::default();
        let frame = |tag| OutFrame::new(Kind::Unexpected, tag, vec![tag as u8; 8], None);
        // Another thread writes (here: holds the lock and lets go without writing, as a
        // writer the socket blocked does): the first send waits in the inbox.
        let held = lock(&c.write);
        std::thread::scope(|t| {
            t.spawn(|| assert!(c.send(frame(1), &mem).is_ok()));
        });
        drop(held);
        // A send made after the first returned finds the lock free: it must not overtake.
        assert!(c.send(frame(2), &mem).is_ok());
        assert_eq!(tags(&mut theirs), [1, 2]);
    }

    #[test]
    fn a_connection_pauses_on_its_own_share_or_on_a_fair_share_under_pressure() {
        let b = Backlog {
            per_conn: 1600,
            total: 10_000,
        };
        // Alone: paused past its own bound, resumed at half of it.
        assert!(!b.over(1600, 1600) && b.over(1601, 1601));
        assert!(!b.under(801, 801) && b.under(800, 800));
        // Under total pressure: paused past the fair share (per_conn / 16), resumed at
        // half of that while the pressure lasts, at half its own bound once it is over.
        assert!(!b.over(100, 20_000) && b.over(101, 20_000));
        assert!(!b.under(51, 20_000) && b.under(50, 20_000));
        assert!(b.under(800, 10_000));
    }
}
