//! Large transfers by single copy, shared between the two processes: the owner copies
//! the head of the range, as for any single-copy transfer, while our next progress call
//! copies the tail itself, out of or into the owner's memory ([`crate::direct`]: only
//! what the owner exposed, checked against its entry). Two cores copy instead of one: the
//! owner's progress thread alone copied at one core's speed while the other core idled
//! (`perf record -a` of `qs-bw -t sm -y 1048576`, reads and writes alike). Medium
//! transfers ([`direct::WHOLE_MIN`] up to [`direct::SHARE_MIN`]) are not split: every
//! other one is a tail of its whole length, so a batch of them is copied by both sides
//! at once (`qs-bw -t sm -N 64`, 64 transfers of 64 KiB per RPC, three rounds alternated:
//! pulls 2 238–2 797 -> 4 584–5 514 MB/s, pushes 2 800–3 260 -> 4 426–5 433; 32 KiB
//! ones gained too, 16 KiB and 8 KiB ones lost, so they stay the owner's).
//!
//! A tail that cannot be copied here (another pid, an entry that does not confirm, a
//! short copy) is requested from the owner after all. A read takes nothing before the
//! entry confirms (a region let go during the copy leaves the tail's bytes unspecified,
//! as a failed read's are, and the owner's answer fails the read); a write writes nothing
//! unless the entry confirmed under this side's write lease, which the owner's
//! deregistration waits out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use na::{MemHandle, OpId, RemoteMem};

use crate::conn::Conn;
use crate::direct::{self, Direct};
use crate::wire::{CopyDir, RawPiece};
use crate::{StreamPlugin, lock};

/// Bytes of tails copied per progress call before the rest waits for the next (as the
/// owner's copies are served: completions and messages get their turn).
const TAIL_BUDGET: u64 = 2 << 20;

/// A tail to copy: the transfer, the owner's region, and where the bytes go.
pub(crate) struct Tail {
    conn: Arc<Conn>,
    op: OpId,
    is_get: bool,
    d: Direct,
    key: u64,
    local: MemHandle,
    at: (u64, u64, u64),
}

impl Tail {
    /// The tail of read (`is_get`) or write `op` over `conn` of region `d` (key `key`)
    /// and `local`, at `(local offset, remote offset, length)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        conn: Arc<Conn>,
        op: OpId,
        is_get: bool,
        d: Direct,
        key: u64,
        local: &MemHandle,
        at: (u64, u64, u64),
    ) -> Tail {
        Tail {
            conn,
            op,
            is_get,
            d,
            key,
            local: local.clone(),
            at,
        }
    }

    /// Whether `o` may be copied in one run with this tail: the same link, direction and
    /// owner's region (one entry to look at, one lease to declare).
    fn runs_with(&self, o: &Tail) -> bool {
        Arc::ptr_eq(&self.conn, &o.conn)
            && self.is_get == o.is_get
            && self.key == o.key
            && self.d == o.d
    }
}

/// Tails waiting for a progress call: copied there, not where the read is posted (which
/// may hold a caller's lock, rpc-core's call table: every completion of the engine would
/// wait on the copy).
#[derive(Default)]
pub(crate) struct Tails {
    queue: Mutex<VecDeque<Tail>>,
    /// The queue's length, read without its lock by every progress call.
    len: AtomicUsize,
    /// Held through each direct write: a link has one lease word per side, so two
    /// threads' tails must not declare on it at once (one's end would clear the other's).
    writing: Mutex<()>,
    /// Transfers shared whole so far ([`direct::WHOLE_MIN`]): the odd ones are ours.
    turn: AtomicUsize,
    /// Held through each tail's copy, from the look at whether its transfer is still
    /// pending; a connection's loss passes it before reporting its transfers failed.
    gate: Mutex<()>,
}

/// The process's connections whose peers may write its memory directly, of every plugin
/// (the arena of entries is the process's, so a descriptor of one plugin's region can
/// reach the process over another's link): deregistrations wait on all of them.
static WATCHED: Mutex<Vec<Weak<Conn>>> = Mutex::new(Vec::new());

/// Closed links kept for their peers' writes, at most.
const MAX_LINGERING: usize = 256;

/// Connections closed while their peer declared a write into our memory: kept (their
/// shared header mapped) until the write ends, for deregistrations to wait on.
static LINGERING: Mutex<Vec<Arc<Conn>>> = Mutex::new(Vec::new());

/// Watches `conn` for its peer's writes into this process's memory, if it copies
/// directly (before its handshake: a requester writes only over a link whose handshake
/// is done).
pub(crate) fn watch(conn: &Arc<Conn>) {
    if conn.wire.single_copy() {
        let mut w = lock(&WATCHED);
        w.retain(|c| c.strong_count() > 0);
        w.push(Arc::downgrade(conn));
    }
}

impl StreamPlugin {
    /// Waits for a tail copy under way to end: transfers failed before this call copy
    /// nothing after it.
    pub(crate) fn pass_tail_gate(&self) {
        drop(lock(&self.tails.gate));
    }

    /// Queues a tail for the next progress call, and wakes one that sleeps.
    pub(crate) fn queue_tail(&self, t: Tail) {
        let mut q = lock(&self.tails.queue);
        q.push_back(t);
        self.tails.len.store(q.len(), Ordering::Release);
        drop(q);
        self.bell.ring();
    }

    /// Keeps closed connection `conn` for deregistrations to wait on if its peer declares
    /// a write into our memory (shut down first: a requester declares before it looks
    /// whether we hung up, so a write it starts after this look is refused there).
    pub(crate) fn linger_if_written(&self, conn: &Arc<Conn>) {
        if conn.wire.peer_lease() != 0 {
            let mut lingering = lock(&LINGERING);
            lingering.retain(|c| c.wire.peer_lease() != 0);
            // Bounded: only a peer that keeps a lease for no write (of our uid: it could
            // write any of our memory anyway) leaves closed links here.
            if lingering.len() >= MAX_LINGERING {
                tracing::warn!(
                    peer = conn.peer.0,
                    "closed links with writes declared: too many, this one not kept"
                );
                return;
            }
            lingering.push(conn.clone());
        }
    }

    /// Waits until no peer declares a write into our region `key` (revoked: no new write
    /// starts), over every watched connection of the process and those closed under a
    /// write. Bounded by a write's length for live peers; a peer that ended counts as
    /// done.
    pub(crate) fn await_leases(key: u64) {
        let start = Instant::now();
        let mut warned = 0;
        loop {
            let writing: Vec<u64> = {
                let live: Vec<Arc<Conn>> =
                    lock(&WATCHED).iter().filter_map(Weak::upgrade).collect();
                let mut lingering = lock(&LINGERING);
                lingering.retain(|c| c.wire.peer_lease() != 0);
                live.iter()
                    .chain(lingering.iter())
                    .filter(|c| c.wire.peer_lease() == key)
                    .map(|c| c.peer.0)
                    .collect()
            };
            if writing.is_empty() {
                return;
            }
            let waited = start.elapsed().as_secs();
            if waited > warned {
                warned = waited;
                tracing::warn!(
                    ?writing,
                    waited_s = waited,
                    "deregistration waits for peers writing the region (stopped processes?)"
                );
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Whether tails wait to be copied.
    pub(crate) fn tails_pending(&self) -> bool {
        self.tails.len.load(Ordering::Acquire) > 0
    }

    /// Copies queued tails, up to [`TAIL_BUDGET`] bytes; true if some are left. Tails
    /// queued one after another over one link into or out of one region are copied as a
    /// run ([`StreamPlugin::copy_run`]).
    pub(crate) fn run_tails(&self) -> bool {
        let mut done = 0;
        while self.tails.len.load(Ordering::Acquire) > 0 {
            if done >= TAIL_BUDGET {
                return true;
            }
            let run = {
                let mut q = lock(&self.tails.queue);
                let mut run: Vec<Tail> = Vec::new();
                while let Some(t) = q.front() {
                    if run.first().is_some_and(|f| !f.runs_with(t)) || done >= TAIL_BUDGET {
                        break;
                    }
                    done += t.at.2;
                    run.extend(q.pop_front());
                }
                self.tails.len.store(q.len(), Ordering::Release);
                run
            };
            if run.is_empty() {
                break;
            }
            self.copy_run(&run);
        }
        false
    }

    /// The owner's region and the length of the tail to copy here, if a transfer of
    /// `len` bytes of `remote` over `conn` is shared.
    pub(crate) fn shared_tail(
        &self,
        conn: &Conn,
        remote: &RemoteMem,
        len: u64,
    ) -> Option<(Direct, u64)> {
        // Not before the handshake is done: the owner watches the link for writes from
        // then on (`watch`).
        if !direct::SUPPORTED || len < direct::WHOLE_MIN || !conn.is_shaken() {
            return None;
        }
        // Smaller transfers are shared whole, in turn: a batch of them is copied by both
        // sides at once, each with one copy call per transfer. (The owner's turns are
        // told apart first: they need no decoding, a MAC; a region without the extras
        // takes no turn.)
        let whole = len < direct::SHARE_MIN;
        if whole
            && !remote.extra.is_empty()
            && self
                .tails
                .turn
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(2)
        {
            return None;
        }
        let (pid, a) = conn.wire.direct_peer()?;
        let d = Direct::decode(&remote.extra, remote.key, remote.len, a.salt)?;
        if d.pid != pid || !d.entry_in(a.arena) {
            return None;
        }
        Some((d, if whole { len } else { (len / 2) & !4095 }))
    }

    /// Copies a run of tails (one link, direction and region: [`Tail::runs_with`]), then
    /// counts each done, or gives each back to the owner's chunks if the run could not be
    /// copied. A run costs the calls of one tail: the entry's look, one copy call for all
    /// their bytes, and for writes one lease (`strace -c` of `qs-bw -t sm -d push -y 65536`
    /// counted a `poll`, a `process_vm_readv` and a `process_vm_writev` per tail before).
    fn copy_run(&self, run: &[Tail]) {
        let Some(first) = run.first() else { return };
        let (live, copied) = {
            // A transfer already over (failed with its peer's loss) copies nothing more:
            // its memory is its caller's again. Looked at under the gate a loss waits on
            // before it reports the failure (`close_conn`), so no copy outlasts it.
            let _gate = lock(&self.tails.gate);
            let live: Vec<&Tail> = {
                let ops = lock(&self.ops);
                run.iter().filter(|t| ops.is_pending(t.op)).collect()
            };
            if live.is_empty() {
                return;
            }
            let copied = match first.is_get {
                true => self.direct_read(&live),
                false => self.direct_write(&live),
            };
            (live, copied)
        };
        let (frames, evs) = {
            let mut ops = lock(&self.ops);
            let mut frames = crate::rma::Frames::new();
            let mut evs = Vec::new();
            for t in &live {
                if copied {
                    self.direct.fetch_add(t.at.2, Ordering::Relaxed);
                    evs.extend(ops.chunk_done(t.op, Ok(())));
                    continue;
                }
                tracing::trace!(
                    peer = t.conn.peer.0,
                    "tail not copied here; the owner copies it"
                );
                if let Some(plan) = ops.plan(t.op) {
                    plan.extend(t.at.2);
                }
                evs.extend(ops.chunk_done(t.op, Ok(())));
                let (f, e) = self.issue_chunks(&mut ops, t.op);
                frames.extend(f);
                evs.extend(e);
            }
            (frames, evs)
        };
        self.push_events(evs, true);
        self.send_frames(&first.conn, frames);
    }

    /// Whether the owner's entry for `t`'s region holds it, live, letting peers do
    /// `want`.
    fn entry_confirms(t: &Tail, want: u64) -> bool {
        let mut entry = [0u64; 4];
        let e = entry.as_mut_ptr().cast::<u8>();
        // SAFETY: `entry` is ours, 32 bytes, not otherwise borrowed during the call.
        let got = unsafe {
            t.conn
                .wire
                .peer_copy(CopyDir::FromPeer, &[(e, 32)], &[(t.d.entry, 32)])
        };
        matches!(got, Ok(32)) && t.d.confirms(t.key, &entry, want)
    }

    /// The pieces of a run's tails; `None` if a local region is gone.
    fn run_pieces(&self, run: &[&Tail]) -> Option<RunPieces<'_>> {
        let held = self.mem.read();
        let (mut local, mut remote, mut total) = (Vec::new(), Vec::with_capacity(run.len() + 1), 0);
        for t in run {
            let (local_off, remote_off, len) = t.at;
            if !held.pieces(t.local.id, local_off, len as usize, &mut local) {
                return None;
            }
            remote.push((t.d.addr + remote_off, len));
            total += len;
        }
        Some(RunPieces {
            _held: held,
            local,
            remote,
            total,
        })
    }

    /// Copies a run's tails of a read out of the owner's region into our registrations:
    /// true if the bytes are in place and were the region's throughout.
    fn direct_read(&self, run: &[&Tail]) -> bool {
        let Some(&t) = run.first() else { return true };
        // The entry first, or nothing is read.
        if !Self::entry_confirms(t, direct::READ) {
            return false;
        }
        let Some(mut p) = self.run_pieces(run) else {
            return false;
        };
        // Then the data, and after it (same call, in order) the key again.
        let mut again = 0u64;
        p.local.push(((&raw mut again).cast::<u8>(), 8));
        p.remote.push((t.d.entry, 8));
        // SAFETY: the local pieces are live registrations', kept registered by `_held`
        // (deregistration takes the write lock), and `again`, which nothing else borrows.
        let copied = unsafe {
            t.conn
                .wire
                .peer_copy(CopyDir::FromPeer, &p.local, &p.remote)
        };
        matches!(copied, Ok(n) if n as u64 == p.total + 8) && again == t.key
    }

    /// Copies a run's tails of a write from our registrations into the owner's region:
    /// true if the bytes are in place. Under this side's write lease: the owner does not
    /// let the region go while it is declared (`crate::direct`).
    fn direct_write(&self, run: &[&Tail]) -> bool {
        let Some(&t) = run.first() else { return true };
        let Some(p) = self.run_pieces(run) else {
            return false;
        };
        // The lease, then the entry: if the entry still holds the key, its owner will see
        // the lease before the memory goes.
        // One lease word per link side: a write of another thread's tail is under way
        // (on this or another link), this one goes to the owner rather than wait.
        let Ok(_one) = self.tails.writing.try_lock() else {
            return false;
        };
        if !t.conn.wire.lease(t.key) {
            return false;
        }
        // Ended however this returns (an unwind included: a lease left declared would
        // hold the owner's deregistration for ever).
        let _lease = EndLease(&*t.conn.wire);
        Self::entry_confirms(t, direct::WRITE) && {
            // SAFETY: the local pieces are live registrations', kept registered by
            // `_held`, and only read.
            let n = unsafe { t.conn.wire.peer_copy(CopyDir::ToPeer, &p.local, &p.remote) };
            matches!(n, Ok(n) if n as u64 == p.total)
        }
    }
}

/// A run's local pieces and the owner's ranges, in order, and their bytes in all.
struct RunPieces<'m> {
    /// The read lock that keeps the local pieces registered.
    _held: crate::mr::MemRead<'m>,
    local: Vec<RawPiece>,
    remote: Vec<(u64, u64)>,
    total: u64,
}

/// Ends a wire's write lease when dropped.
struct EndLease<'a>(&'a dyn crate::Wire);

impl Drop for EndLease<'_> {
    fn drop(&mut self) {
        self.0.end_lease();
    }
}
