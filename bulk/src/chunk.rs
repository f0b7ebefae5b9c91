//! Splitting a transfer into chunks with a bounded number in flight. Pure bookkeeping.

use na::NaError;

/// Chunking of large transfers.
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
