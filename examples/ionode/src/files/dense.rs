//! Whether a file's reads are dense enough that a miss near the last read fetches the
//! aligned block around it (many clients reading next to each other: N-to-1 strided
//! readers, 256 reads of 4 KiB served per block), judged by what the blocks fetched so
//! far were worth. Random readers near each other only by chance (64 of them over one
//! 64 MiB file) got a 1 MiB block for each 4 KiB read, 11 629 backend reads for 16 512
//! and 0.13x direct (`qs-fwd --shapes shared-random`). Pure.

/// Blocks fetched before they are judged.
const TRIAL: u32 = 2;
/// Reads a fetched block must serve from memory, on average, for blocks to go on (a
/// strided reader's serves 255; 8 let random readers over a 32 MiB file fetch a block
/// per 17 reads: test `random_small_reads_do_not_fetch_a_block_each`).
const WORTH: u32 = 32;
/// Near misses declined after which a file judged sparse is tried with one block again
/// (its readers may have changed their ways).
const RETRY_AFTER: u32 = 1024;

/// What a file's dense blocks were worth.
#[derive(Default, Debug)]
pub(super) struct Dense {
    fetched: u32,
    hits: u32,
    declined: u32,
}

impl Dense {
    /// Whether a near miss fetches a block now.
    pub(super) fn fetches(&self) -> bool {
        self.fetched < TRIAL || self.hits >= self.fetched * WORTH
    }

    /// A near miss read only what it asked for.
    pub(super) fn declined(&mut self) {
        self.declined += 1;
        if self.declined >= RETRY_AFTER {
            *self = Dense {
                fetched: TRIAL - 1,
                ..Dense::default()
            };
        }
    }

    /// A block was fetched.
    pub(super) fn fetched(&mut self) {
        self.fetched += 1;
        // (Recent blocks weigh most.)
        if self.fetched >= 1024 {
            self.fetched /= 2;
            self.hits /= 2;
        }
    }

    /// A read was served from kept data.
    pub(super) fn hit(&mut self) {
        self.hits = self.hits.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_go_on_while_they_serve_reads_and_are_tried_again_after_a_while() {
        let mut d = Dense::default();
        // Strided readers: each block serves many reads.
        for _ in 0..100 {
            assert!(d.fetches());
            d.fetched();
            (0..255).for_each(|_| d.hit());
        }
        // Random readers: blocks serve one read or none.
        let mut d = Dense::default();
        for _ in 0..TRIAL {
            assert!(d.fetches());
            d.fetched();
        }
        d.hit();
        assert!(!d.fetches(), "two blocks, one read served: no more");
        for _ in 0..RETRY_AFTER - 1 {
            d.declined();
            assert!(!d.fetches());
        }
        d.declined();
        assert!(d.fetches(), "tried once more");
        d.fetched();
        assert!(!d.fetches(), "and judged again");
    }
}
