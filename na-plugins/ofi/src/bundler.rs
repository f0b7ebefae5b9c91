//! Bundles written in place: control messages are built straight into the bundles that
//! carry them (a carried transfer's bytes copied once, from the region into the bundle),
//! not built one by one and copied into a bundle after. An owner's answers to a bundle
//! go back so, and a requester's carried transfers and checks made while it holds the
//! peer (`Plugin::hold`). Pure: no I/O, no locks.

use crate::wire::{self, BUNDLED, Kind};

/// Messages written into bundles of at most `max` payload bytes each.
pub(crate) struct Bundler {
    max: usize,
    full: Vec<Vec<u8>>,
    cur: Option<Vec<u8>>,
    /// Where the current bundle's payload starts (after its header).
    payload: usize,
}

impl Bundler {
    /// Bundles of at most `max` payload bytes.
    pub(crate) fn new(max: usize) -> Self {
        Bundler {
            max,
            full: Vec::new(),
            cur: None,
            payload: 0,
        }
    }

    /// Whether a message of `len` bytes fits in a bundle at all.
    pub(crate) fn fits(&self, len: usize) -> bool {
        BUNDLED + len <= self.max
    }

    /// Appends one message of at most `len` bytes, which `write` appends to the buffer it
    /// is given (header included), to the current bundle, or to a new one (whose header
    /// names `self_raw` as its sender) when it would not fit. A message that writes
    /// nothing is dropped.
    pub(crate) fn push_with(
        &mut self,
        self_raw: &[u8],
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let fits = |b: &Vec<u8>, payload: usize| b.len() - payload + BUNDLED + len <= self.max;
        if let Some(b) = self.cur.take_if(|b| !fits(b, self.payload)) {
            self.full.push(b);
        }
        let b = self.cur.get_or_insert_with(|| {
            let h = wire::header(Kind::Bundle, 0, self_raw, self.max);
            self.payload = h.len();
            h
        });
        let at = b.len();
        b.extend_from_slice(&[0; BUNDLED]);
        write(b);
        let n = b.len() - at - BUNDLED;
        debug_assert!(n <= len, "a message of {n} bytes promised at most {len}");
        if n == 0 {
            b.truncate(at);
            return;
        }
        b[at..at + BUNDLED].copy_from_slice(&(n as u32).to_le_bytes());
    }

    /// The bundles filled so far (the current one stays open).
    pub(crate) fn take_full(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.full)
    }

    /// The bundles made, in order (none if every message was dropped).
    pub(crate) fn finish(mut self) -> Vec<Vec<u8>> {
        if let Some(b) = self.cur.take().filter(|b| b.len() > self.payload) {
            self.full.push(b);
        }
        self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_fill_bundles_in_order_and_each_reads_back_whole() {
        let me = [7u8; 16];
        let mut b = Bundler::new(102);
        let mut out = Vec::new();
        for i in 0..10u8 {
            b.push_with(&me, 30, |v| v.extend_from_slice(&[i; 30]));
            out.extend(b.take_full());
        }
        b.push_with(&me, 30, |_| {});
        out.extend(b.finish());
        // 3 messages of 30 (+4 each) fill 102 payload bytes: 3, 3, 3, 1.
        assert_eq!(out.len(), 4);
        let mut seen = Vec::new();
        for m in &out {
            let p = wire::parse(m).unwrap();
            assert_eq!((p.kind, p.from), (Kind::Bundle, &me[..]));
            assert!(p.data.len() <= 102);
            for msg in wire::unbundle(p.data).unwrap() {
                assert_eq!(msg.len(), 30);
                seen.push(msg[0]);
            }
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn nothing_written_makes_no_bundle() {
        let mut b = Bundler::new(64);
        b.push_with(&[1], 10, |_| {});
        assert!(b.finish().is_empty());
    }
}
