//! Pending operations of the stream core: sends, expected receives, and RMA transfers split
//! into windowed chunks. Pure bookkeeping: no sockets here.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use na::{Chunker, Event, NaError, NaResult, OpId, PeerId};

/// An RMA transfer in progress.
pub struct Rma {
    /// Read (`get`) or write (`put`).
    pub is_get: bool,
    /// The local registration.
    pub local_id: u64,
    /// Start in the local registration.
    pub local_off: u64,
    /// The remote region's key.
    pub remote_key: u64,
    /// Start in the remote region.
    pub remote_off: u64,
    /// The plan of its chunks (a part this side copies itself is held in it).
    pub plan: Chunker,
    /// Chunks move by single copy: the owner writes or reads our memory itself.
    pub copy: bool,
}

enum Kind {
    Send,
    Recv { tag: u64 },
    Rma(Rma),
}

struct Pending {
    peer: PeerId,
    kind: Kind,
}

/// One requested chunk of an RMA transfer.
#[derive(Copy, Clone, Debug)]
pub struct Chunk {
    /// The transfer.
    pub op: OpId,
    /// Offset of the chunk within the transfer.
    pub rel_off: u64,
    /// Length of the chunk.
    pub len: u64,
}

/// The table of pending operations.
#[derive(Default)]
pub struct Ops {
    next: u64,
    pending: HashMap<OpId, Pending>,
    recvs: HashMap<(PeerId, u64), OpId>,
    /// How many receives are posted, for a reader to look at without the lock
    /// ([`Ops::posted`]).
    posted: Arc<AtomicUsize>,
    chunks: HashMap<u64, Chunk>,
}

impl Ops {
    /// How many receives are posted, readable without the table's lock: an arriving
    /// answer need not look for one when none is (a consumer that matches answers itself,
    /// `na::Caps::unposted_expected`, posts none). A receive is counted before the
    /// request it awaits leaves (`Release`), so its answer always finds the count.
    pub fn posted(&self) -> Arc<AtomicUsize> {
        self.posted.clone()
    }

    fn count_receives(&self) {
        self.posted.store(self.recvs.len(), Ordering::Release);
    }

    fn id(&mut self) -> OpId {
        self.next += 1;
        OpId(self.next)
    }

    /// Records a send.
    pub fn add_send(&mut self, peer: PeerId) -> OpId {
        let op = self.id();
        self.pending.insert(
            op,
            Pending {
                peer,
                kind: Kind::Send,
            },
        );
        op
    }

    /// Records an expected receive; one per (peer, tag).
    pub fn add_recv(&mut self, peer: PeerId, tag: u64) -> NaResult<OpId> {
        if self.recvs.contains_key(&(peer, tag)) {
            return Err(NaError::InvalidArgument(format!(
                "a receive for tag {tag} is already posted"
            )));
        }
        let op = self.id();
        self.pending.insert(
            op,
            Pending {
                peer,
                kind: Kind::Recv { tag },
            },
        );
        self.recvs.insert((peer, tag), op);
        self.count_receives();
        Ok(op)
    }

    /// Records an RMA transfer.
    pub fn add_rma(&mut self, peer: PeerId, rma: Rma) -> OpId {
        let op = self.id();
        self.pending.insert(
            op,
            Pending {
                peer,
                kind: Kind::Rma(rma),
            },
        );
        op
    }

    /// Takes the receive posted for (peer, tag), if any.
    pub fn match_recv(&mut self, peer: PeerId, tag: u64) -> Option<OpId> {
        let op = self.recvs.remove(&(peer, tag))?;
        self.count_receives();
        self.pending.remove(&op);
        Some(op)
    }

    /// Completes an op (if still pending) and returns its event.
    pub fn complete(&mut self, op: OpId, result: NaResult<Vec<u8>>) -> Option<Event> {
        let p = self.pending.remove(&op)?;
        if let Kind::Recv { tag } = p.kind {
            self.recvs.remove(&(p.peer, tag));
            self.count_receives();
        }
        Some(Event::Done { op, result })
    }

    /// Takes the next chunks to request for `op`, as its plan allows; each gets a fresh
    /// chunk id.
    pub fn next_chunks(&mut self, op: OpId) -> smallvec::SmallVec<[(u64, Chunk); 2]> {
        let mut out = smallvec::SmallVec::new();
        let Some(Pending {
            kind: Kind::Rma(r), ..
        }) = self.pending.get_mut(&op)
        else {
            return out;
        };
        while let Some((rel_off, len)) = r.plan.next_chunk() {
            out.push((0, Chunk { op, rel_off, len }));
        }
        for slot in &mut out {
            self.next += 1;
            slot.0 = self.next;
            self.chunks.insert(slot.0, slot.1);
        }
        out
    }

    /// The plan of `op`'s chunks, while it is pending: to hold a part this side moves
    /// itself ([`Chunker::hold`]) or give one back to the chunks ([`Chunker::extend`]).
    pub fn plan(&mut self, op: OpId) -> Option<&mut Chunker> {
        match self.pending.get_mut(&op) {
            Some(Pending {
                kind: Kind::Rma(r), ..
            }) => Some(&mut r.plan),
            _ => None,
        }
    }

    /// The transfer behind `op`, while pending.
    pub fn rma(&self, op: OpId) -> Option<&Rma> {
        match self.pending.get(&op) {
            Some(Pending {
                kind: Kind::Rma(r), ..
            }) => Some(r),
            _ => None,
        }
    }

    /// Takes the chunk answered by `id`, if its transfer is still pending.
    pub fn take_chunk(&mut self, id: u64) -> Option<Chunk> {
        let c = self.chunks.remove(&id)?;
        self.pending.contains_key(&c.op).then_some(c)
    }

    /// Records a chunk's outcome; returns the completion event once the transfer is over.
    pub fn chunk_done(&mut self, op: OpId, result: NaResult<()>) -> Option<Event> {
        let Some(Pending {
            kind: Kind::Rma(r), ..
        }) = self.pending.get_mut(&op)
        else {
            return None;
        };
        r.plan.chunk_done(result);
        let outcome = r.plan.outcome()?;
        self.complete(op, outcome.map(|()| Vec::new()))
    }

    /// Fails every pending op on `peer`.
    pub fn fail_peer(&mut self, peer: PeerId, err: &NaError) -> Vec<Event> {
        let ops: Vec<OpId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.peer == peer)
            .map(|(o, _)| *o)
            .collect();
        self.chunks.retain(|_, c| !ops.contains(&c.op));
        ops.into_iter()
            .filter_map(|op| self.complete(op, Err(err.clone())))
            .collect()
    }

    /// Stops a single-copy transfer whose chunks are in flight (the owner may still be
    /// copying into our memory): records the cancellation, which becomes its outcome
    /// once the last answer is in, and returns the peer to wait on. `None` for any other op.
    pub fn stop_copying(&mut self, op: OpId) -> Option<PeerId> {
        match self.pending.get_mut(&op) {
            Some(Pending {
                peer,
                kind: Kind::Rma(r),
            }) if r.copy && r.plan.in_flight() > 0 => {
                r.plan.stop(NaError::Canceled);
                Some(*peer)
            }
            _ => None,
        }
    }

    /// Whether `op` is still pending.
    pub fn is_pending(&self, op: OpId) -> bool {
        self.pending.contains_key(&op)
    }

    /// How many ops are pending (for leak checks).
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rma(len: u64, size: u64, depth: usize) -> Rma {
        Rma {
            is_get: true,
            local_id: 1,
            local_off: 0,
            remote_key: 2,
            remote_off: 0,
            plan: Chunker::new(len, na::ChunkConfig { size, depth }),
            copy: false,
        }
    }

    #[test]
    fn transfers_are_windowed_and_complete_once() {
        let mut o = Ops::default();
        let op = o.add_rma(PeerId(3), rma(10, 4, 2));
        let first = o.next_chunks(op);
        assert_eq!(
            first
                .iter()
                .map(|c| (c.1.rel_off, c.1.len))
                .collect::<Vec<_>>(),
            [(0, 4), (4, 4)]
        );
        assert!(o.chunk_done(op, Ok(())).is_none());
        let more = o.next_chunks(op);
        assert_eq!(
            more.iter()
                .map(|c| (c.1.rel_off, c.1.len))
                .collect::<Vec<_>>(),
            [(8, 2)]
        );
        assert!(o.chunk_done(op, Ok(())).is_none());
        assert!(matches!(
            o.chunk_done(op, Ok(())),
            Some(Event::Done { result: Ok(_), .. })
        ));
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn a_held_part_keeps_the_transfer_open_and_may_be_given_back_to_the_chunks() {
        let mut o = Ops::default();
        let op = o.add_rma(PeerId(3), rma(8, 8, 4));
        o.plan(op).unwrap().hold();
        assert_eq!(o.next_chunks(op).len(), 1);
        assert!(
            o.chunk_done(op, Ok(())).is_none(),
            "the held part is in flight"
        );
        // It could not be moved here: its bytes go to the chunks after all.
        o.plan(op).unwrap().extend(4);
        assert!(
            o.chunk_done(op, Ok(())).is_none(),
            "4 bytes left to request"
        );
        let rest = o.next_chunks(op);
        assert_eq!((rest[0].1.rel_off, rest[0].1.len), (8, 4));
        assert!(matches!(
            o.chunk_done(op, Ok(())),
            Some(Event::Done { result: Ok(_), .. })
        ));
    }

    #[test]
    fn a_failed_chunk_stops_issuing_and_fails_the_transfer() {
        let mut o = Ops::default();
        let op = o.add_rma(PeerId(3), rma(100, 10, 2));
        o.next_chunks(op);
        assert!(
            o.chunk_done(op, Err(NaError::AccessDenied("x".into())))
                .is_none()
        );
        assert!(o.next_chunks(op).is_empty());
        assert!(matches!(
            o.chunk_done(op, Ok(())),
            Some(Event::Done {
                result: Err(NaError::AccessDenied(_)),
                ..
            })
        ));
    }

    #[test]
    fn peer_loss_fails_only_that_peers_ops() {
        let mut o = Ops::default();
        o.add_send(PeerId(1));
        o.add_recv(PeerId(1), 7).unwrap();
        let keep = o.add_recv(PeerId(2), 7).unwrap();
        assert_eq!(
            o.fail_peer(PeerId(1), &NaError::Disconnected("x".into()))
                .len(),
            2
        );
        assert_eq!(o.match_recv(PeerId(2), 7), Some(keep));
        assert_eq!(o.match_recv(PeerId(1), 7), None);
    }
}
