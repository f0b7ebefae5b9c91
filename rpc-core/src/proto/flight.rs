//! What an engine waits on: calls awaiting their answers and bulk transfers with their
//! chunk windows, which transport operation belongs to which, and their deadlines.
//!
//! Pure: the plugin is reached only through the `post` closure the driver passes in (it
//! posts one chunk and names its operation), time comes in as arguments, and every
//! outcome goes back to the driver as a return value. An operation belongs to one entry
//! at a time; an entry that leaves the table (answered, failed, expired, finished)
//! takes its operations with it, so a late completion of one finds nobody.

use rustc_hash::FxHashMap as HashMap;
use std::time::Instant;

use bulk::{ChunkConfig, Chunker};
use na::{MemHandle, NaError, NaResult, OpId, PeerId, RemoteMem};

use super::CallTable;

/// Where a transfer's bytes go: with `peer`, from `local` to `remote` (`is_get`: the
/// other way), each from its offset.
#[derive(Clone, Debug)]
pub struct Route {
    /// The peer whose memory `remote` is.
    pub peer: PeerId,
    /// A get (pull) rather than a put (push).
    pub is_get: bool,
    /// The local memory.
    pub local: MemHandle,
    /// Where the transfer starts in `local`.
    pub local_off: u64,
    /// The peer's memory.
    pub remote: RemoteMem,
    /// Where the transfer starts in `remote`.
    pub remote_off: u64,
}

/// Posts one chunk of a transfer: its route, its offset within the transfer and its
/// length; returns the transport's operation.
pub trait Post: FnMut(&Route, u64, u64) -> NaResult<OpId> {}
impl<F: FnMut(&Route, u64, u64) -> NaResult<OpId>> Post for F {}

/// What an entry waits for.
#[derive(Debug)]
enum Wait {
    /// An answer (or a send's completion) from `peer` (none: a call to this engine).
    Answer {
        peer: Option<PeerId>,
        op: Option<OpId>,
    },
    /// A transfer's chunks.
    Chunks(Box<Chunks>),
}

#[derive(Debug)]
struct Chunks {
    route: Route,
    plan: Chunker,
    /// (A small transfer is one chunk: no allocation.)
    ops: smallvec::SmallVec<[OpId; 2]>,
}

/// An entry of the table: the driver's `value` and what it waits for.
#[derive(Debug)]
pub struct Entry<V> {
    /// What the driver keeps with it (the caller's slot, what to do when it is over).
    pub value: V,
    wait: Wait,
}

impl<V> Entry<V> {
    /// The transport operations it had in flight (to cancel when it ended early).
    pub fn ops(&self) -> impl Iterator<Item = OpId> + '_ {
        let (one, many) = match &self.wait {
            Wait::Answer { op, .. } => (*op, &[][..]),
            Wait::Chunks(c) => (None, &c.ops[..]),
        };
        one.into_iter().chain(many.iter().copied())
    }
}

/// Who a completed operation belongs to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The receive (or tracked send) of the call `tag`.
    Call(u64),
    /// A chunk of the transfer `tag`.
    Transfer(u64),
    /// Nobody: its entry ended already (or it was never tracked).
    Nobody,
}

/// A transfer that is over, with its outcome.
pub type Over<V> = Option<(Entry<V>, NaResult<()>)>;

/// The calls and transfers in flight.
pub struct Flight<V> {
    table: CallTable<Entry<V>>,
    ops: HashMap<OpId, u64>,
    /// Why the peer of calls in flight was lost ([`Flight::lose`]).
    lost: HashMap<u64, NaError>,
    /// The boxes of transfers that ended, for the next ones: transfers start in batches
    /// (64 at once), past what the allocator keeps at hand per size, and a box each was
    /// a tenth of a small transfer's instructions. Plain data, at most [`SPARE`].
    #[allow(
        clippy::vec_box,
        reason = "the boxes are what is kept, for `Wait::Chunks`"
    )]
    spare: Vec<Box<Chunks>>,
}

/// Transfer boxes kept for reuse.
const SPARE: usize = 256;

impl<V> Default for Flight<V> {
    fn default() -> Self {
        Flight {
            table: CallTable::default(),
            ops: HashMap::default(),
            lost: HashMap::default(),
            spare: Vec::new(),
        }
    }
}

impl<V> Flight<V> {
    /// Enters a call to `peer` (none: to this engine) due at `due`; returns its tag.
    pub fn call(&mut self, due: Option<Instant>, peer: Option<PeerId>, value: V) -> u64 {
        let wait = Wait::Answer { peer, op: None };
        self.table.insert_due(due, Entry { value, wait })
    }

    /// Records the operation a call waits on; false (and nothing recorded) if the call
    /// ended or is not a call, or already waits on one.
    pub fn awaits(&mut self, tag: u64, op: OpId) -> bool {
        let Some(Entry {
            wait: Wait::Answer {
                op: slot @ None, ..
            },
            ..
        }) = self.table.get_mut(tag)
        else {
            return false;
        };
        *slot = Some(op);
        self.ops.insert(op, tag);
        true
    }

    /// Who `op` belongs to.
    pub fn owner(&self, op: OpId) -> Owner {
        let Some(&tag) = self.ops.get(&op) else {
            return Owner::Nobody;
        };
        match self.table.get(tag).map(|e| &e.wait) {
            Some(Wait::Answer { .. }) => Owner::Call(tag),
            Some(Wait::Chunks(_)) => Owner::Transfer(tag),
            None => Owner::Nobody,
        }
    }

    /// The operation a call waited on completed with its answer: the call is over.
    pub fn answered(&mut self, op: OpId) -> Option<(u64, Entry<V>)> {
        let Owner::Call(tag) = self.owner(op) else {
            return None;
        };
        self.finish(tag).map(|e| (tag, e))
    }

    /// Whether `tag` is a call waiting for its answer from `peer` on no posted receive
    /// (a plugin with `na::Caps::unposted_expected` hands answers over unposted): an
    /// answer from anyone else, to a transfer, or to a call that ended is not its answer.
    pub fn awaits_from(&self, tag: u64, peer: PeerId) -> bool {
        matches!(
            self.table.get(tag).map(|e| &e.wait),
            Some(Wait::Answer { peer: Some(p), op: None }) if *p == peer
        )
    }

    /// The calls waiting for an answer from `peer` on no posted receive: the loss of
    /// `peer` is theirs to fail (no receive of theirs fails with it).
    pub fn awaiting_from(&self, peer: PeerId) -> Vec<u64> {
        let from = |w: &Wait| matches!(w, Wait::Answer { peer: Some(p), op: None } if *p == peer);
        let it = self.table.iter().filter(|(_, e)| from(&e.wait));
        it.map(|(t, _)| t).collect()
    }

    /// `peer` was lost: the calls waiting for its answer on no posted receive fail with
    /// `why` at `due` (or their own deadline, if sooner) unless their answer comes first.
    /// An answer read before the loss may still be on its way to the driver (handed over
    /// by another thread's pass): it wins if it comes within the grace. Returns how many.
    pub fn lose(&mut self, peer: PeerId, due: Instant, why: &NaError) -> usize {
        let tags = self.awaiting_from(peer);
        for &tag in &tags {
            let due = self.table.deadline(tag).map_or(due, |d| d.min(due));
            self.table.set_deadline(tag, Some(due));
            self.lost.insert(tag, why.clone());
        }
        tags.len()
    }

    /// A call's answer is a stub whose real answer is to be pulled: the call stays, no
    /// longer waiting on `op`; returns its tag and the peer that answered.
    pub fn stub(&mut self, op: OpId) -> Option<(u64, Option<PeerId>)> {
        let Owner::Call(tag) = self.owner(op) else {
            return None;
        };
        self.ops.remove(&op);
        match self.table.get_mut(tag).map(|e| &mut e.wait) {
            Some(Wait::Answer { peer, op }) => {
                *op = None;
                Some((tag, *peer))
            }
            _ => None,
        }
    }

    /// Enters a transfer of `len` bytes due at `due` and posts what its window allows;
    /// returns its tag and, if it is over already, the entry and its outcome.
    pub fn transfer(
        &mut self,
        due: Option<Instant>,
        route: Route,
        len: u64,
        cfg: ChunkConfig,
        value: V,
        post: impl Post,
    ) -> (u64, Over<V>) {
        let wait = Wait::Chunks(self.boxed(Chunks {
            route,
            plan: Chunker::new(len, cfg),
            ops: Default::default(),
        }));
        let tag = self.table.insert_due(due, Entry { value, wait });
        (tag, self.pump(tag, post))
    }

    /// Turns the call `tag`, which waits on nothing (see [`Flight::stub`]), into a
    /// transfer (its real answer's pull) keeping its deadline; `update` changes its value
    /// for what the pull ends in. `None` (and nothing changed) if the call is gone or
    /// waits on something.
    pub fn pull_into(
        &mut self,
        tag: u64,
        (route, len, cfg): (Route, u64, ChunkConfig),
        update: impl FnOnce(&mut V),
        post: impl Post,
    ) -> Option<Over<V>> {
        let e = self.table.get_mut(tag)?;
        if !matches!(e.wait, Wait::Answer { op: None, .. }) {
            return None;
        }
        update(&mut e.value);
        // (A rare path, an overflowing answer: a new box, not a kept one.)
        e.wait = Wait::Chunks(Box::new(Chunks {
            route,
            plan: Chunker::new(len, cfg),
            ops: Default::default(),
        }));
        Some(self.pump(tag, post))
    }

    /// A chunk completed; posts what the window now allows. Returns the transfer's
    /// entry and outcome once it is over.
    pub fn chunk_done(&mut self, op: OpId, result: NaResult<()>, post: impl Post) -> Over<V> {
        let Owner::Transfer(tag) = self.owner(op) else {
            return None;
        };
        self.ops.remove(&op);
        if let Some(Entry {
            wait: Wait::Chunks(c),
            ..
        }) = self.table.get_mut(tag)
        {
            c.ops.retain(|o| *o != op);
            c.plan.chunk_done(result);
        }
        self.pump(tag, post)
    }

    /// Posts the chunks a transfer's window allows (a chunk that cannot be posted counts
    /// as failed); once it is over, takes it out with its outcome.
    fn pump(&mut self, tag: u64, mut post: impl Post) -> Over<V> {
        let Some(Entry {
            wait: Wait::Chunks(c),
            ..
        }) = self.table.get_mut(tag)
        else {
            return None;
        };
        while let Some((off, n)) = c.plan.next_chunk() {
            match post(&c.route, off, n) {
                Ok(op) => {
                    c.ops.push(op);
                    self.ops.insert(op, tag);
                }
                Err(e) => c.plan.chunk_done(Err(e)),
            }
        }
        let outcome = c.plan.outcome()?;
        let mut e = self.finish(tag)?;
        // Over: nothing of it is in flight, and its box serves the next transfer.
        let done = Wait::Answer {
            peer: None,
            op: None,
        };
        if let Wait::Chunks(b) = std::mem::replace(&mut e.wait, done)
            && self.spare.len() < SPARE
        {
            self.spare.push(b);
        }
        Some((e, outcome))
    }

    /// `c` in a box, one that a finished transfer left if there is one.
    fn boxed(&mut self, c: Chunks) -> Box<Chunks> {
        match self.spare.pop() {
            Some(mut b) => {
                *b = c;
                b
            }
            None => Box::new(c),
        }
    }

    /// The peer a call waits on (none: a local call, or not a call in flight).
    pub fn peer(&self, tag: u64) -> Option<PeerId> {
        match self.table.get(tag).map(|e| &e.wait) {
            Some(Wait::Answer { peer, .. }) => *peer,
            _ => None,
        }
    }

    /// The driver's value of an entry in flight.
    pub fn value_mut(&mut self, tag: u64) -> Option<&mut V> {
        self.table.get_mut(tag).map(|e| &mut e.value)
    }

    /// Ends an entry (answered, failed or canceled) with the operations it had in
    /// flight; `None` if it had ended already, so that of two racing outcomes only the
    /// first counts.
    pub fn finish(&mut self, tag: u64) -> Option<Entry<V>> {
        let e = self.table.finish(tag)?;
        for op in e.ops() {
            self.ops.remove(&op);
        }
        if !self.lost.is_empty() {
            self.lost.remove(&tag);
        }
        Some(e)
    }

    /// Ends and returns every entry whose deadline is at or before `now`, each with why
    /// its peer was lost if it was (else it timed out).
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, Entry<V>, Option<NaError>)> {
        let v = self.table.expire(now);
        let mut out = Vec::with_capacity(v.len());
        for (tag, e) in v {
            for op in e.ops() {
                self.ops.remove(&op);
            }
            out.push((tag, e, self.lost.remove(&tag)));
        }
        out
    }

    /// Replaces an entry's deadline; false if it is not in flight.
    /// A call whose peer was lost keeps its grace's end if that is sooner ([`Flight::lose`]:
    /// a new timeout does not keep it waiting for a peer that is gone).
    pub fn set_deadline(&mut self, tag: u64, due: Option<Instant>) -> bool {
        let due = match self.lost.contains_key(&tag) {
            true => match (self.table.deadline(tag), due) {
                (Some(old), Some(new)) => Some(old.min(new)),
                (old, new) => old.or(new),
            },
            false => due,
        };
        self.table.set_deadline(tag, due)
    }

    /// A lower bound of the earliest deadline in flight (cheaper than the exact one).
    pub fn earliest(&self) -> Option<Instant> {
        self.table.earliest()
    }

    /// The earliest deadline in flight.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// The tags of every entry in flight.
    pub fn tags(&self) -> Vec<u64> {
        self.table.tags()
    }

    /// Entries in flight.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Operations tracked (every one belongs to an entry in flight).
    pub fn ops_tracked(&self) -> usize {
        self.ops.len()
    }
}

#[cfg(test)]
#[path = "flight_tests.rs"]
mod tests;
