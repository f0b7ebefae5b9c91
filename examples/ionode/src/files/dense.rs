//! Whether a file's reads are dense enough that a miss near the last read fetches the
//! aligned block around it (many clients reading next to each other: N-to-1 strided
//! readers, 256 reads of 4 KiB served per block), judged by what the blocks fetched so
//! far were worth. Random readers near each other only by chance (64 of them over one
//! 64 MiB file) got a 1 MiB block for each 4 KiB read, 11 629 backend reads for 16 512
//! and 0.13x direct (`qs-fwd --shapes shared-random`). Pure.

/// Blocks fetched before they are judged.
const TRIAL: u32 = 2;
/// Bytes a fetched block must serve from memory, on average, for blocks to go on, besides
/// the read that fetched it: an eighth of a 1 MiB block (strided readers of 4 KiB serve
/// 254 more reads of one, of 64 KiB 14; 8 reads of 4 KiB let random readers over a
/// 32 MiB file fetch a block per 17 reads: test
/// `random_small_reads_do_not_fetch_a_block_each`). Counted in reads, 32 of them, a block
/// served by 15 strided reads of 64 KiB was judged worthless: 32 readers of 64 KiB
/// strided over one file went to the backend one read each (`qs-fwd -n 32 -x 65536 -b
/// 8388608 --shapes shared`: 3 893 backend reads for 4 160). Counted in bytes with the
/// fetching read's, a block serving only the 128 KiB read that fetched it was worth it:
/// random readers of 128 KiB fetched 1 MiB each.
const WORTH: u64 = 128 << 10;
/// Near misses declined after which a file judged sparse is tried with one block again
/// (its readers may have changed their ways).
const RETRY_AFTER: u32 = 1024;

/// What a file's dense blocks were worth.
#[derive(Default, Debug)]
pub(super) struct Dense {
    fetched: u32,
    /// Bytes served from kept data.
    hits: u64,
    /// Bytes of the reads that fetched the blocks (served from them too, not counted).
    owed: u64,
    declined: u32,
}

impl Dense {
    /// Whether a near miss fetches a block now.
    pub(super) fn fetches(&self) -> bool {
        self.fetched < TRIAL
            || self.hits.saturating_sub(self.owed) >= u64::from(self.fetched) * WORTH
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

    /// A block is being fetched for a read of `len` bytes.
    pub(super) fn owe(&mut self, len: usize) {
        self.owed = self.owed.saturating_add(len as u64);
    }

    /// A block was fetched.
    pub(super) fn fetched(&mut self) {
        self.fetched += 1;
        // (Recent blocks weigh most.)
        if self.fetched >= 1024 {
            self.fetched /= 2;
            self.hits /= 2;
            self.owed /= 2;
        }
    }

    /// A read of `len` bytes was served from kept data.
    pub(super) fn hit(&mut self, len: usize) {
        self.hits = self.hits.saturating_add(len as u64);
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
            d.owe(4096);
            d.fetched();
            (0..256).for_each(|_| d.hit(4096));
        }
        // Random readers: blocks serve one read or none.
        let mut d = Dense::default();
        for _ in 0..TRIAL {
            assert!(d.fetches());
            d.fetched();
        }
        d.hit(4096);
        assert!(!d.fetches(), "two blocks, one read served: no more");
        for _ in 0..RETRY_AFTER - 1 {
            d.declined();
            assert!(!d.fetches());
        }
        d.declined();
        assert!(d.fetches(), "tried once more");
        d.fetched();
        assert!(!d.fetches(), "and judged again");
        // Strided readers of 64 KiB: 16 reads served per block go on.
        let mut d = Dense::default();
        for _ in 0..100 {
            assert!(d.fetches());
            d.owe(64 << 10);
            d.fetched();
            (0..16).for_each(|_| d.hit(64 << 10));
        }
        // Random readers of 128 KiB: a block serves the read that fetched it alone.
        let mut d = Dense::default();
        for _ in 0..TRIAL {
            d.owe(128 << 10);
            d.fetched();
            d.hit(128 << 10);
        }
        assert!(!d.fetches(), "a block per read: no more");
    }
}
