//! Buffered writes of one file: a set of disjoint byte extents, merged as they arrive.
//!
//! Pure data structure (no I/O, no locks): a write overlapping or touching buffered extents
//! is merged with them into one (the newest bytes win), so sequential 4 KiB writes of one
//! client, or strided blocks of many clients that tile a region, become one extent that is
//! flushed as few large backend writes.

use std::collections::{BTreeMap, VecDeque};

/// Disjoint, non-adjacent extents: offset -> bytes (ring buffers: bytes can be put in
/// front of an extent at the cost of their own length).
#[derive(Default, Debug)]
pub struct Extents {
    map: BTreeMap<u64, VecDeque<u8>>,
    bytes: u64,
}

impl Extents {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Extents held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// One past the last buffered byte (0 if none).
    pub fn end(&self) -> u64 {
        self.map
            .last_key_value()
            .map_or(0, |(o, d)| o + d.len() as u64)
    }

    /// Buffers `data` at `off`, merged with every extent it overlaps or touches. Returns
    /// how many extents it was merged with (0: a new extent).
    pub fn insert(&mut self, off: u64, data: &[u8]) -> usize {
        self.insert_with(off, data, Vec::new)
    }

    /// As [`Extents::insert`]; a new extent starts in the buffer `fresh` gives (emptied,
    /// with room to grow).
    ///
    /// The union is contiguous: the bytes of the extent that reaches `off` from before it
    /// (the prefix), the write, then the bytes past its end of the last extent it reaches
    /// (the tail); extents between are covered by the write and dropped. The larger of
    /// prefix and tail keeps its buffer and the rest is copied onto it (appended, or put
    /// in front by a rotation of the ring buffer): a write costs its own length plus the
    /// smaller side, so that writes in any order (a file written backwards, strided
    /// blocks of many clients) cost each byte at most a logarithmic number of copies.
    /// (Always growing the earlier extent made a backward writer copy the whole extent
    /// at every write: 8 MiB in 4 KiB writes took 5.4 s, forward 7 ms.)
    pub fn insert_with(&mut self, off: u64, data: &[u8], fresh: impl FnOnce() -> Vec<u8>) -> usize {
        if data.is_empty() {
            return 0;
        }
        let end = off.saturating_add(data.len() as u64);
        let first = self
            .map
            .range(..=off)
            .next_back()
            .filter(|(o, d)| *o + d.len() as u64 >= off)
            .map(|(o, _)| *o);
        let others: Vec<u64> = self
            .map
            .range(off..=end)
            .map(|(&o, _)| o)
            .filter(|o| Some(*o) != first)
            .collect();
        let merged_with = usize::from(first.is_some()) + others.len();
        // Inside the first extent: written over in place.
        if let Some(o) = first
            && others.is_empty()
            && let Some(d) = self.map.get_mut(&o)
            && o + d.len() as u64 >= end
        {
            copy_in(d, (off - o) as usize, data);
            return merged_with;
        }
        let mut tail = None;
        for k in others {
            let mut d = self.map.remove(&k).expect("listed above");
            self.bytes -= d.len() as u64;
            // Only the last may reach past `end` (the others start in (off, end]).
            if k + d.len() as u64 > end {
                d.drain(..(end - k) as usize);
                tail = Some(d);
            }
        }
        let (start, prefix) = match first {
            Some(o) => {
                let mut d = self.map.remove(&o).expect("found above");
                self.bytes -= d.len() as u64;
                d.truncate((off - o) as usize);
                (o, Some(d))
            }
            None => (off, None),
        };
        let merged = match (prefix, tail) {
            (Some(mut p), t) if t.as_ref().is_none_or(|t| p.len() >= t.len()) => {
                p.extend(data);
                if let Some(t) = t {
                    let (a, b) = t.as_slices();
                    p.extend(a);
                    p.extend(b);
                }
                p
            }
            (p, Some(mut t)) => {
                let k = p.as_ref().map_or(0, VecDeque::len) + data.len();
                t.reserve(k);
                if let Some(p) = p {
                    let (a, b) = p.as_slices();
                    t.extend(a);
                    t.extend(b);
                }
                t.extend(data);
                t.rotate_right(k);
                t
            }
            (None, None) => {
                let mut v = VecDeque::from(fresh());
                v.clear();
                v.extend(data);
                v
            }
            (Some(_), None) => unreachable!("matched by the first arm"),
        };
        debug_assert!(start + merged.len() as u64 >= end);
        self.bytes += merged.len() as u64;
        self.map.insert(start, merged);
        merged_with
    }

    /// Copies buffered bytes over `buf`, which holds what the backend had at `off` (`n`
    /// bytes valid, the rest past its end of file). Returns the valid length after:
    /// buffered bytes past the backend's end extend it (zeros fill any hole between).
    pub fn overlay(&self, off: u64, buf: &mut [u8], n: usize) -> usize {
        let end = off + buf.len() as u64;
        let mut valid = n;
        let from = self.map.range(..=off).next_back().map_or(off, |(&o, _)| o);
        for (&o, d) in self.map.range(from..end) {
            let (s, e) = (o.max(off), (o + d.len() as u64).min(end));
            if s >= e {
                continue;
            }
            let (bs, be) = ((s - off) as usize, (e - off) as usize);
            if bs > valid {
                buf[valid..bs].fill(0);
            }
            copy_out(d, (s - o) as usize, &mut buf[bs..be]);
            valid = valid.max(be);
        }
        valid
    }

    /// Drops bytes at and past `len` (a truncate).
    pub fn truncate(&mut self, len: u64) {
        let cut: Vec<u64> = self.map.range(len..).map(|(&o, _)| o).collect();
        for o in cut {
            self.bytes -= self.map.remove(&o).map_or(0, |d| d.len() as u64);
        }
        if let Some((&o, d)) = self.map.range_mut(..len).next_back()
            && o + d.len() as u64 > len
        {
            let keep = (len - o) as usize;
            self.bytes -= (d.len() - keep) as u64;
            d.truncate(keep);
        }
    }

    /// Takes everything, as writes of at most `max` bytes each, in offset order.
    pub fn drain(&mut self, max: usize) -> Vec<(u64, Vec<u8>)> {
        self.drain_some(0, 0, max)
    }

    /// Takes the extents of at least `min` bytes (those worth a backend write of their
    /// own; small ones may still be joined by the writes that fill the holes between
    /// them), and then the lowest ones (those every writer has passed) until at most
    /// `keep` bytes remain; as writes of at most `max` bytes each, in offset order.
    /// (The extents are looked at in place and only those taken leave the map: a look that
    /// takes nothing costs no allocation.)
    pub fn drain_some(&mut self, min: usize, keep: u64, max: usize) -> Vec<(u64, Vec<u8>)> {
        let mut left = self.bytes;
        let mut taken = Vec::new();
        for (o, d) in &self.map {
            if d.len() >= min || left > keep {
                left -= d.len() as u64;
                taken.push(*o);
            }
        }
        self.bytes = left;
        let mut out = Vec::new();
        for o in taken {
            let Some(d) = self.map.remove(&o) else {
                continue;
            };
            // (A ring buffer whose bytes wrap is made contiguous here, once.)
            let d = Vec::from(d);
            if d.len() <= max {
                out.push((o, d));
                continue;
            }
            // Pieces copied once each (splitting off the rest again and again copied it
            // at every piece).
            let pieces = d.chunks(max.max(1)).map(<[u8]>::to_vec);
            out.extend((o..).step_by(max.max(1)).zip(pieces));
        }
        out
    }
}

/// Copies `data` over `d` from index `at` (the range lies inside `d`).
fn copy_in(d: &mut VecDeque<u8>, at: usize, data: &[u8]) {
    let (a, b) = d.as_mut_slices();
    let split = a.len().saturating_sub(at).min(data.len());
    if split > 0 {
        a[at..at + split].copy_from_slice(&data[..split]);
    }
    let from = (at + split) - a.len().min(at + split);
    b[from..from + data.len() - split].copy_from_slice(&data[split..]);
}

/// Copies `out.len()` bytes of `d` from index `at` into `out` (the range lies inside `d`).
fn copy_out(d: &VecDeque<u8>, at: usize, out: &mut [u8]) {
    let (a, b) = d.as_slices();
    let split = a.len().saturating_sub(at).min(out.len());
    if split > 0 {
        out[..split].copy_from_slice(&a[at..at + split]);
    }
    let from = (at + split) - a.len().min(at + split);
    let rest = out.len() - split;
    out[split..].copy_from_slice(&b[from..from + rest]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: a plain byte array with a "written" mask.
    fn model(ops: &[(u64, Vec<u8>)], size: usize) -> (Vec<u8>, Vec<bool>) {
        let (mut bytes, mut set) = (vec![0u8; size], vec![false; size]);
        for (o, d) in ops {
            for (i, b) in d.iter().enumerate() {
                bytes[*o as usize + i] = *b;
                set[*o as usize + i] = true;
            }
        }
        (bytes, set)
    }

    #[test]
    fn sequential_writes_become_one_extent() {
        let mut x = Extents::default();
        assert_eq!(x.insert(0, &[1; 4096]), 0);
        for i in 1..16u64 {
            assert_eq!(x.insert(i * 4096, &[i as u8; 4096]), 1, "touching: merged");
        }
        assert_eq!((x.len(), x.bytes(), x.end()), (1, 65536, 65536));
        let w = x.drain(16384);
        assert_eq!(w.len(), 4);
        assert_eq!(w[3].0, 49152);
        assert_eq!(w[3].1[..4096], [12u8; 4096]);
        assert!(x.is_empty() && x.bytes() == 0);
    }

    #[test]
    fn a_new_extent_starts_in_the_buffer_given_and_appends_stay_in_it() {
        let mut x = Extents::default();
        x.insert_with(4096, &[1; 4096], || Vec::with_capacity(1 << 20));
        let at = x.map[&4096].as_slices().0.as_ptr();
        for i in 2..64u64 {
            let unused = || -> Vec<u8> { panic!("an append needs no new buffer") };
            assert_eq!(x.insert_with(i * 4096, &[i as u8; 4096], unused), 1);
        }
        assert_eq!(x.map[&4096].as_slices().0.as_ptr(), at, "grown in place");
        assert_eq!((x.len(), x.bytes()), (1, 63 * 4096));
        let d = x.map[&4096]
            .iter()
            .skip(62 * 4096)
            .copied()
            .collect::<Vec<u8>>();
        assert_eq!(d, [63u8; 4096]);
    }

    #[test]
    fn only_large_extents_are_taken_early() {
        let mut x = Extents::default();
        x.insert(0, &[1; 100]);
        x.insert(200, &[2; 10]);
        x.insert(300, &[3; 50]);
        x.insert(400, &[4; 10]);
        let w = x.drain_some(50, u64::MAX, 64);
        assert_eq!(
            w.iter().map(|(o, d)| (*o, d.len())).collect::<Vec<_>>(),
            [(0, 64), (64, 36), (300, 50)]
        );
        assert_eq!(
            (x.len(), x.bytes()),
            (2, 20),
            "small ones wait for their neighbours"
        );
        let w = x.drain_some(50, 10, 64);
        assert_eq!(w.len(), 1, "the lowest goes first under pressure");
        assert_eq!((w[0].0, x.bytes()), (200, 10));
    }

    #[test]
    fn strided_blocks_of_many_clients_tile_one_extent() {
        let mut x = Extents::default();
        // Client c writes blocks c, c+4, c+8 ... of a shared file, clients interleaved.
        for round in 0..4u64 {
            for c in [3u64, 0, 2, 1] {
                x.insert((round * 4 + c) * 100, &[c as u8; 100]);
            }
        }
        assert_eq!((x.len(), x.bytes()), (1, 1600));
    }

    #[test]
    fn a_file_written_backwards_keeps_one_buffer_and_copies_each_write_once() {
        // Each write goes in front of the extent after it: the extent keeps its buffer
        // (a ring), so the bytes already there are not copied again.
        let mut x = Extents::default();
        let n = 256u64;
        x.insert((n - 1) * 4096, &[(n - 1) as u8; 4096]);
        x.map
            .get_mut(&((n - 1) * 4096))
            .unwrap()
            .reserve((n * 4096) as usize);
        let buf = x.map.values().next().unwrap().as_slices().0.as_ptr();
        for i in (0..n - 1).rev() {
            assert_eq!(x.insert(i * 4096, &[i as u8; 4096]), 1);
        }
        assert_eq!((x.len(), x.bytes()), (1, n * 4096));
        let d = &x.map[&0];
        let (a, b) = d.as_slices();
        assert!(
            [a.as_ptr(), b.as_ptr()]
                .iter()
                .any(|p| { (buf as usize..buf as usize + d.capacity()).contains(&(*p as usize)) }),
            "the extent kept its buffer"
        );
        let w = x.drain(1 << 20);
        assert_eq!(w.len(), 1);
        for (i, c) in w[0].1.chunks(4096).enumerate() {
            assert_eq!(c, [i as u8; 4096]);
        }
    }

    #[test]
    fn a_write_inside_an_extent_that_wraps_is_written_over_in_place() {
        let mut x = Extents::default();
        x.insert(100, &[1; 100]);
        // Put in front: the ring now wraps (its front bytes at the end of the buffer).
        x.insert(0, &[2; 100]);
        x.insert(50, &[3; 100]);
        let mut buf = [0u8; 200];
        assert_eq!(x.overlay(0, &mut buf, 0), 200);
        assert_eq!(buf[..50], [2; 50]);
        assert_eq!(buf[50..150], [3; 100]);
        assert_eq!(buf[150..], [1; 50]);
        assert_eq!((x.len(), x.bytes()), (1, 200));
    }

    #[test]
    fn overlay_extends_past_the_backend_end() {
        let mut x = Extents::default();
        x.insert(10, b"abc");
        x.insert(20, b"xy");
        let mut buf = *b"0123456789012345678901234";
        // The backend had 12 bytes.
        let n = x.overlay(0, &mut buf, 12);
        assert_eq!(n, 22);
        assert_eq!(&buf[..22], b"0123456789abc\0\0\0\0\0\0\0xy");
    }

    proptest! {
        #[test]
        fn insert_overlay_truncate_agree_with_a_byte_array(
            ops in prop::collection::vec((0u64..200, prop::collection::vec(any::<u8>(), 0..40)), 0..30),
            cut in prop::option::of(0u64..240),
        ) {
            let mut x = Extents::default();
            for (o, d) in &ops {
                x.insert(*o, d);
            }
            let (mut bytes, mut set) = model(&ops, 240);
            if let Some(c) = cut {
                x.truncate(c);
                for i in c as usize..240 {
                    bytes[i] = 0;
                    set[i] = false;
                }
            }
            prop_assert_eq!(x.bytes(), set.iter().filter(|s| **s).count() as u64);
            // Extents are disjoint and not adjacent.
            let mut last_end = None;
            for (o, d) in &x.map {
                prop_assert!(!d.is_empty());
                if let Some(e) = last_end { prop_assert!(*o > e); }
                last_end = Some(o + d.len() as u64);
            }
            // Overlay on an empty backend gives the model's bytes where written.
            let mut buf = vec![0u8; 240];
            let n = x.overlay(0, &mut buf, 0);
            let model_end = set.iter().rposition(|s| *s).map_or(0, |i| i + 1);
            prop_assert_eq!(n, model_end);
            prop_assert_eq!(&buf[..n], &bytes[..n]);
            // Draining in small pieces gives back exactly the written bytes.
            let mut again = vec![0u8; 240];
            let mut seen = vec![false; 240];
            for (o, d) in x.drain(7) {
                prop_assert!(d.len() <= 7);
                for (i, b) in d.iter().enumerate() {
                    again[o as usize + i] = *b;
                    seen[o as usize + i] = true;
                }
            }
            prop_assert_eq!(seen, set);
            prop_assert_eq!(again, bytes);
        }
    }
}
