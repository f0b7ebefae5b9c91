//! Buffered writes of one file: a set of disjoint byte extents, merged as they arrive.
//!
//! Pure data structure (no I/O, no locks): a write overlapping or touching buffered extents
//! is merged with them into one (the newest bytes win), so sequential 4 KiB writes of one
//! client, or strided blocks of many clients that tile a region, become one extent that is
//! flushed as few large backend writes.
//!
//! An extent is a run of pieces, each a write's own buffer: a merge joins runs without
//! moving bytes, and the bytes are copied into backend writes once, when they are taken.
//! (Extents held as one buffer each, merged by copying the smaller side onto the larger,
//! spent a third of the I/O node's CPU in the merges under 64 clients' strided 4 KiB
//! writes: `perf record --call-graph dwarf` of the node during `qs-fwd --shapes shared`.)
//! A stream's appends grow its last piece in place, and that piece leaves whole. Pieces
//! smaller than [`SMALL`] are joined to a touching neighbour (a copy of at most that
//! much), so tiny writes do not make a piece each: no two touching pieces are both small.

use std::collections::BTreeMap;

/// Pieces smaller than this are joined to the pieces they touch.
pub const SMALL: usize = 4096;

/// Pieces this large leave as parts of their own of a backend write (smaller ones are
/// copied together into parts), and owned writes this large are kept as they came.
pub const BIG: usize = 64 << 10;

/// A backend write taken from the extents: the bytes at `off`, in parts that follow each
/// other (sent gathered, so that large pieces are not copied again).
#[derive(Debug, Default)]
pub struct Write {
    /// Where the first part goes.
    pub off: u64,
    /// The bytes, in order.
    pub parts: Vec<Vec<u8>>,
}

impl Write {
    /// Bytes in all parts.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts with the offset each goes to.
    pub fn into_pieces(self) -> impl Iterator<Item = (u64, Vec<u8>)> {
        let mut at = self.off;
        self.parts.into_iter().map(move |p| {
            let o = at;
            at += p.len() as u64;
            (o, p)
        })
    }
}

/// Disjoint, non-adjacent extents over disjoint pieces that tile them.
#[derive(Debug)]
pub struct Extents {
    /// [`SMALL`] and [`BIG`] (smaller in the tests, to reach every path in a small
    /// model).
    small: usize,
    big: usize,
    /// Offset -> bytes (never empty).
    pieces: BTreeMap<u64, Vec<u8>>,
    /// The extents: start -> end of each run of touching pieces.
    runs: BTreeMap<u64, u64>,
    bytes: u64,
    /// Bytes copied by inserts (the write's own included), for the tests' bound.
    #[cfg(test)]
    copied: u64,
}

impl Default for Extents {
    fn default() -> Self {
        Extents::with_sizes(SMALL, BIG)
    }
}

impl Extents {
    /// Empty, pieces under `small` bytes joined, writes of `big` or more kept as they
    /// came.
    fn with_sizes(small: usize, big: usize) -> Self {
        Extents {
            small,
            big,
            pieces: BTreeMap::new(),
            runs: BTreeMap::new(),
            bytes: 0,
            #[cfg(test)]
            copied: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Extents held.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// One past the last buffered byte (0 if none).
    pub fn end(&self) -> u64 {
        self.runs.last_key_value().map_or(0, |(_, e)| *e)
    }

    /// Buffers `data` at `off`, merged with every extent it overlaps or touches. Returns
    /// how many extents it was merged with (0: a new extent).
    pub fn insert(&mut self, off: u64, data: &[u8]) -> usize {
        self.insert_with(off, data, 0)
    }

    /// As [`Extents::insert`] for a write that continues a stream (`room` > 0: the file's
    /// last write ended where it starts): a piece of its own that it starts where no
    /// piece ends (a new extent, or one that grows to the left) has `room` bytes of room
    /// to grow, where later appends go; one that follows a full piece at its run's end
    /// has room for as many bytes as the run holds before it, up to `room`.
    ///
    /// Bytes it covers are dropped from the pieces that held them (a piece reaching past
    /// its end keeps that part as a piece of its own); the write then goes over a piece
    /// that holds its whole range, or at the end of the piece that ends where it starts
    /// if that one has room or is small, else into a piece of its own. A write costs its
    /// own length and at most a few times [`SMALL`] more, whatever the order of writes.
    pub fn insert_with(&mut self, off: u64, data: &[u8], room: usize) -> usize {
        if data.is_empty() {
            return 0;
        }
        let end = off.saturating_add(data.len() as u64);
        let merged_with = self.join_runs(off, end);
        // Inside one piece: written over in place.
        if let Some((&o, d)) = self.pieces.range_mut(..=off).next_back()
            && o + d.len() as u64 >= end
        {
            let at = (off - o) as usize;
            d[at..at + data.len()].copy_from_slice(data);
            self.count_copy(data.len());
            return merged_with;
        }
        self.cut(off, end);
        self.count_copy(data.len());
        self.bytes += data.len() as u64;
        let left = self
            .pieces
            .range_mut(..off)
            .next_back()
            .filter(|(o, d)| **o + d.len() as u64 == off);
        let (at, len) = match left {
            Some((&o, d)) if d.len() < self.small || d.capacity() - d.len() >= data.len() => {
                d.extend_from_slice(data);
                (o, d.len())
            }
            // A full piece before: a piece of its own. A stream's at the end of its run
            // has room for as much as the run holds before it (up to `room`), so that
            // appends double a run's room in few pieces that leave whole (large ones) or
            // are copied once more (the first few small ones), where a piece per write
            // was copied again when taken (a fifth of the node's CPU under 64 sequential
            // writers of files smaller than `file_max`: `perf record --call-graph
            // dwarf` of the node during `qs-fwd -d 200 --shapes fpp`). Room only where
            // the next append goes, and at most the bytes before it; none for writes
            // in any order (each would take an allocation of up to `room` for 4 KiB:
            // random-order writes through the node 0.46x direct). (Not `room` whole:
            // strided blocks would each take a stream's.)
            Some(_) => {
                let room = match self.runs.range(..=off).next_back() {
                    Some((&s, &e)) if e == end => ((off - s) as usize).min(room),
                    _ => 0,
                };
                let mut v = Vec::with_capacity(room.max(data.len()));
                v.extend_from_slice(data);
                self.pieces.insert(off, v);
                (off, data.len())
            }
            None => {
                let mut v = Vec::with_capacity(room.max(data.len()));
                v.extend_from_slice(data);
                self.pieces.insert(off, v);
                (off, data.len())
            }
        };
        // (A piece of SMALL or more joins nothing.)
        if len < self.small {
            self.settle(at);
        }
        merged_with
    }

    /// As [`Extents::insert`] for a write whose buffer can be kept: one of [`BIG`] bytes
    /// or more becomes a piece as it came (not copied), unless one piece holds its whole
    /// range (then written over in place).
    pub fn insert_owned(&mut self, off: u64, data: Vec<u8>) -> usize {
        let end = off.saturating_add(data.len() as u64);
        let inside = self
            .pieces
            .range(..=off)
            .next_back()
            .is_some_and(|(o, d)| o + d.len() as u64 >= end);
        if data.len() < self.big || inside {
            return self.insert(off, &data);
        }
        let merged_with = self.join_runs(off, end);
        self.cut(off, end);
        self.bytes += data.len() as u64;
        self.pieces.insert(off, data);
        merged_with
    }

    /// Makes `[off, end)` part of one run with every run it overlaps or touches;
    /// returns how many there were.
    fn join_runs(&mut self, off: u64, end: u64) -> usize {
        let first = self
            .runs
            .range(..=off)
            .next_back()
            .filter(|(_, e)| **e >= off)
            .map(|(s, _)| *s);
        let others: Vec<u64> = self
            .runs
            .range(off..=end)
            .map(|(&s, _)| s)
            .filter(|s| Some(*s) != first)
            .collect();
        if let (Some(s), true) = (first, others.is_empty()) {
            // Within or at the end of one run: it grows in place.
            let e = self.runs.get_mut(&s).expect("found above");
            *e = (*e).max(end);
            return 1;
        }
        let (mut start, mut stop) = (off, end);
        for s in first.iter().chain(&others) {
            let e = self.runs.remove(s).expect("listed above");
            (start, stop) = (start.min(*s), stop.max(e));
        }
        self.runs.insert(start, stop);
        usize::from(first.is_some()) + others.len()
    }

    /// Drops the bytes of `[off, end)` from the pieces (not from the runs): a piece that
    /// starts before keeps its part before `off`, one that reaches past keeps its part
    /// past `end` as a piece at `end`.
    fn cut(&mut self, off: u64, end: u64) {
        let (mut tail, mut shortened) = (None, None);
        if let Some((&o, d)) = self.pieces.range_mut(..off).next_back()
            && o + d.len() as u64 > off
        {
            shortened = Some(o);
            let past = o + d.len() as u64;
            if past > end {
                tail = Some(d[(end - o) as usize..].to_vec());
            }
            d.truncate((off - o) as usize);
            fit(d, self.small);
            self.bytes -= past.min(end) - off;
            self.count_copy(past.saturating_sub(end) as usize);
        }
        let inside: Vec<u64> = self.pieces.range(off..end).map(|(&o, _)| o).collect();
        for o in inside {
            let mut d = self.pieces.remove(&o).expect("listed above");
            let past = o + d.len() as u64;
            self.bytes -= past.min(end) - o;
            if past > end {
                d.drain(..(end - o) as usize);
                fit(&mut d, self.small);
                self.count_copy(d.len());
                tail = Some(d);
            }
        }
        if let Some(t) = tail {
            self.pieces.insert(end, t);
            self.settle(end);
        }
        // (Cut short, it may be small beside a small one.)
        if let Some(o) = shortened {
            self.settle(o);
        }
    }

    /// Joins the piece at `at` with the pieces it touches where both are small, so that
    /// no two touching pieces are (each join copies less than [`SMALL`]).
    fn settle(&mut self, at: u64) {
        self.join_small(at);
        let left = self
            .pieces
            .range(..at)
            .next_back()
            .filter(|(o, d)| **o + d.len() as u64 == at)
            .map(|(o, _)| *o);
        if let Some(l) = left
            && self.join_small(l)
        {
            self.join_small(l);
        }
    }

    /// Appends the piece after the one at `at` to it if it touches it and both are
    /// small; whether it did.
    fn join_small(&mut self, at: u64) -> bool {
        let Some(d) = self.pieces.get(&at) else {
            return false;
        };
        let next = at + d.len() as u64;
        let small = self.small;
        if d.len() >= small || self.pieces.get(&next).is_none_or(|n| n.len() >= small) {
            return false;
        }
        let n = self.pieces.remove(&next).expect("looked at above");
        self.count_copy(n.len());
        let d = self.pieces.get_mut(&at).expect("looked at above");
        d.extend_from_slice(&n);
        true
    }

    /// Counts bytes an insert copies (the tests bound them).
    fn count_copy(&mut self, _n: usize) {
        #[cfg(test)]
        {
            self.copied += _n as u64;
        }
    }

    /// Copies buffered bytes over `buf`, which holds what the backend had at `off` (`n`
    /// bytes valid, the rest past its end of file). Returns the valid length after:
    /// buffered bytes past the backend's end extend it (zeros fill any hole between).
    pub fn overlay(&self, off: u64, buf: &mut [u8], n: usize) -> usize {
        let end = off + buf.len() as u64;
        let mut valid = n;
        let from = self
            .pieces
            .range(..=off)
            .next_back()
            .map_or(off, |(&o, _)| o);
        for (&o, d) in self.pieces.range(from..end) {
            let (s, e) = (o.max(off), (o + d.len() as u64).min(end));
            if s >= e {
                continue;
            }
            let (bs, be) = ((s - off) as usize, (e - off) as usize);
            if bs > valid {
                buf[valid..bs].fill(0);
            }
            let from = (s - o) as usize;
            buf[bs..be].copy_from_slice(&d[from..from + (be - bs)]);
            valid = valid.max(be);
        }
        valid
    }

    /// Drops bytes at and past `len` (a truncate).
    pub fn truncate(&mut self, len: u64) {
        let cut: Vec<u64> = self.pieces.range(len..).map(|(&o, _)| o).collect();
        for o in cut {
            self.bytes -= self.pieces.remove(&o).map_or(0, |d| d.len() as u64);
        }
        let mut last = None;
        if let Some((&o, d)) = self.pieces.range_mut(..len).next_back()
            && o + d.len() as u64 > len
        {
            let keep = (len - o) as usize;
            self.bytes -= (d.len() - keep) as u64;
            d.truncate(keep);
            fit(d, self.small);
            last = Some(o);
        }
        let runs: Vec<u64> = self.runs.range(len..).map(|(&s, _)| s).collect();
        for s in runs {
            self.runs.remove(&s);
        }
        if let Some((_, e)) = self.runs.range_mut(..len).next_back() {
            *e = (*e).min(len);
        }
        if let Some(o) = last {
            self.settle(o);
        }
    }

    /// Takes everything, as writes of at most `max` bytes each, in offset order.
    pub fn drain(&mut self, max: usize) -> Vec<Write> {
        self.drain_some(0, 0, max)
    }

    /// Takes the extents of at least `min` bytes (those worth a backend write of their
    /// own; small ones may still be joined by the writes that fill the holes between
    /// them), and then the lowest ones (those every writer has passed) until at most
    /// `keep` bytes remain; as writes of at most `max` bytes each, in offset order.
    /// (The extents are looked at in place and only those taken leave the map: a look that
    /// takes nothing costs no allocation.) Pieces of [`BIG`] bytes or more, up to `max`,
    /// leave as parts of their own, not copied; the bytes of smaller ones are copied
    /// together into parts, once.
    pub fn drain_some(&mut self, min: usize, keep: u64, max: usize) -> Vec<Write> {
        let max = max.max(1);
        let mut left = self.bytes;
        let mut taken = Vec::new();
        for (&s, &e) in &self.runs {
            if e - s >= min as u64 || left > keep {
                left -= e - s;
                taken.push((s, e));
            }
        }
        self.bytes = left;
        let mut out = Vec::new();
        for (s, e) in taken {
            self.runs.remove(&s);
            let keys: Vec<u64> = self.pieces.range(s..e).map(|(&o, _)| o).collect();
            let mut w = Writes::new(max, e, self.big);
            for k in keys {
                let d = self.pieces.remove(&k).expect("listed above");
                w.add(k, d);
            }
            out.extend(w.done());
        }
        out
    }
}

/// Gives back the room of a piece cut to a small part of what it held (a 4 MiB write
/// cut to 4 KiB by the writes over it would hold its 4 MiB, which the budget, counting
/// bytes buffered, does not see).
fn fit(d: &mut Vec<u8>, small: usize) {
    if d.capacity() > 2 * d.len().max(small) {
        d.shrink_to_fit();
    }
}

/// Backend writes of at most `max` bytes made from the pieces of one run, in order.
struct Writes {
    max: usize,
    /// Pieces this large (up to `max`) are parts of their own.
    big: usize,
    /// Where the run ends.
    end: u64,
    out: Vec<Write>,
    cur: Write,
    /// Bytes of small pieces being copied together into `cur`'s last part.
    joined: Option<Vec<u8>>,
}

impl Writes {
    fn new(max: usize, end: u64, big: usize) -> Self {
        Writes {
            max,
            big,
            end,
            out: Vec::new(),
            cur: Write::default(),
            joined: None,
        }
    }

    /// The bytes in `cur` (its parts and what is being joined).
    fn held(&self) -> usize {
        self.cur.len() as usize + self.joined.as_ref().map_or(0, Vec::len)
    }

    /// Ends `cur` (if it holds anything) and starts the next one at `at`.
    fn next(&mut self, at: u64) {
        self.cur.parts.extend(self.joined.take());
        let w = std::mem::replace(
            &mut self.cur,
            Write {
                off: at,
                parts: Vec::new(),
            },
        );
        if !w.parts.is_empty() {
            self.out.push(w);
        }
    }

    /// Adds the piece `d` at `k` (right after the bytes added before).
    fn add(&mut self, k: u64, d: Vec<u8>) {
        if self.held() == 0 {
            self.cur.off = k;
        }
        if (self.big..=self.max).contains(&d.len()) {
            if self.held() + d.len() > self.max {
                self.next(k);
            }
            self.cur.parts.extend(self.joined.take());
            self.cur.parts.push(d);
            return;
        }
        // Copied, in writes cut at `max`.
        let (mut rest, mut at) = (&d[..], k);
        while !rest.is_empty() {
            if self.held() == self.max {
                self.next(at);
            }
            let n = (self.max - self.held()).min(rest.len());
            let room = (self.max - self.held()).min((self.end - at) as usize);
            self.joined
                .get_or_insert_with(|| Vec::with_capacity(room))
                .extend_from_slice(&rest[..n]);
            (rest, at) = (&rest[n..], at + n as u64);
        }
    }

    fn done(mut self) -> Vec<Write> {
        self.next(0);
        self.out
    }
}

#[cfg(test)]
#[path = "extents_tests.rs"]
mod tests;
