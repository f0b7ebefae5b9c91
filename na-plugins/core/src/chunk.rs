//! The one chunker: splitting a transfer into chunks with a bounded number in flight.
//! Pure bookkeeping. The engine plans its transfers with it (`rpc-core`, with the
//! plugin's [`crate::Caps::chunks`] unless told otherwise), the stream plugins plan the
//! requests of each operation with it (`na-stream`), and the ofi plugin cuts its RMA
//! pieces with it (`na-ofi`, which then maps each cut onto the segments).

use crate::NaError;

/// Chunking of large transfers: how large a chunk, how many in flight.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChunkConfig {
    /// Largest chunk in bytes.
    pub size: u64,
    /// Chunks in flight per transfer.
    pub depth: usize,
}

impl Default for ChunkConfig {
    /// 1 MiB chunks, 4 in flight (measured with `qs-bw`; see the README).
    fn default() -> Self {
        ChunkConfig {
            size: 1 << 20,
            depth: 4,
        }
    }
}

/// The plan of one transfer: which chunk to post next, and when it is over.
#[derive(Debug)]
pub struct Chunker {
    len: u64,
    cfg: ChunkConfig,
    issued: u64,
    inflight: usize,
    error: Option<NaError>,
}

impl Chunker {
    /// A plan for `len` bytes.
    pub fn new(len: u64, cfg: ChunkConfig) -> Self {
        let cfg = ChunkConfig {
            size: cfg.size.max(1),
            depth: cfg.depth.max(1),
        };
        Chunker {
            len,
            cfg,
            issued: 0,
            inflight: 0,
            error: None,
        }
    }

    /// The next chunk to post, as (offset within the transfer, length), while the window
    /// allows and no chunk has failed.
    pub fn next_chunk(&mut self) -> Option<(u64, u64)> {
        if self.error.is_some() || self.inflight >= self.cfg.depth || self.issued >= self.len {
            return None;
        }
        let off = self.issued;
        let n = (self.len - off).min(self.cfg.size);
        self.issued += n;
        self.inflight += 1;
        Some((off, n))
    }

    /// Records the outcome of a posted chunk (the first error is kept).
    pub fn chunk_done(&mut self, result: Result<(), NaError>) {
        self.inflight = self.inflight.saturating_sub(1);
        if let Err(e) = result {
            self.error.get_or_insert(e);
        }
    }

    /// Counts a part moved some other way (not by the chunks: a plugin copying a tail
    /// itself) as one chunk in flight, so that the transfer is not over before
    /// [`Chunker::chunk_done`] says that part is.
    pub fn hold(&mut self) {
        self.inflight += 1;
    }

    /// Gives the chunks `n` more bytes to issue (a part that could not be moved the other
    /// way after all).
    pub fn extend(&mut self, n: u64) {
        self.len += n;
    }

    /// Stops issuing: `e` becomes the outcome (whatever failed before) once the chunks in
    /// flight are over.
    pub fn stop(&mut self, e: NaError) {
        self.error = Some(e);
    }

    /// Chunks (and held parts) in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight
    }

    /// The transfer's outcome once nothing is in flight and nothing is left (or it failed).
    pub fn outcome(&self) -> Option<Result<(), NaError>> {
        if self.inflight > 0 {
            return None;
        }
        match &self.error {
            Some(e) => Some(Err(e.clone())),
            None if self.issued >= self.len => Some(Ok(())),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_transfers_are_over_at_once() {
        assert_eq!(
            Chunker::new(0, ChunkConfig::default()).outcome(),
            Some(Ok(()))
        );
    }

    #[test]
    fn a_failure_stops_new_chunks_and_waits_for_those_in_flight() {
        let mut c = Chunker::new(10, ChunkConfig { size: 3, depth: 2 });
        assert_eq!(
            (c.next_chunk(), c.next_chunk(), c.next_chunk()),
            (Some((0, 3)), Some((3, 3)), None)
        );
        c.chunk_done(Err(NaError::Canceled));
        assert_eq!((c.next_chunk(), c.outcome()), (None, None));
        c.chunk_done(Ok(()));
        assert_eq!(c.outcome(), Some(Err(NaError::Canceled)));
    }

    #[test]
    fn a_held_part_keeps_the_plan_open_and_may_come_back_as_chunks() {
        let mut c = Chunker::new(4, ChunkConfig { size: 4, depth: 2 });
        c.hold();
        assert_eq!(c.next_chunk(), Some((0, 4)));
        c.chunk_done(Ok(()));
        assert_eq!(c.outcome(), None, "the held part is still out");
        c.extend(3);
        c.chunk_done(Ok(()));
        assert_eq!((c.next_chunk(), c.outcome()), (Some((4, 3)), None));
        c.chunk_done(Ok(()));
        assert_eq!(c.outcome(), Some(Ok(())));
    }

    #[test]
    fn a_stop_overrides_an_earlier_error_and_waits_for_the_chunks_out() {
        let mut c = Chunker::new(10, ChunkConfig { size: 5, depth: 2 });
        c.next_chunk();
        c.next_chunk();
        c.chunk_done(Err(NaError::TimedOut));
        c.stop(NaError::Canceled);
        assert_eq!((c.in_flight(), c.outcome()), (1, None));
        c.chunk_done(Ok(()));
        assert_eq!(c.outcome(), Some(Err(NaError::Canceled)));
    }

    proptest! {
        /// Chunks tile the transfer exactly, never exceed the size or the window.
        #[test]
        fn chunks_tile_the_transfer(len in 0u64..100_000, size in 1u64..5000, depth in 1usize..8) {
            let mut c = Chunker::new(len, ChunkConfig { size, depth });
            let mut next = 0;
            let mut inflight = Vec::new();
            loop {
                while let Some((off, n)) = c.next_chunk() {
                    prop_assert_eq!(off, next);
                    prop_assert!(n > 0 && n <= size);
                    next += n;
                    inflight.push(n);
                    prop_assert!(inflight.len() <= depth);
                }
                if inflight.pop().is_none() { break; }
                c.chunk_done(Ok(()));
            }
            prop_assert_eq!(next, len);
            prop_assert_eq!(c.outcome(), Some(Ok(())));
        }
    }
}
