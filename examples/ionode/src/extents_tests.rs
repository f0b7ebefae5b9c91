//! Extents against a byte-array model, and the cost of merges.

use super::*;
use proptest::prelude::*;

/// The largest backend write.
const MAX: usize = 8 << 20;

/// Each write's offset and bytes, its parts joined.
fn flat(w: Vec<Write>) -> Vec<(u64, Vec<u8>)> {
    w.into_iter().map(|w| (w.off, w.parts.concat())).collect()
}

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
    let w = flat(x.drain(16384));
    assert_eq!(w.len(), 4);
    assert_eq!(w[3].0, 49152);
    assert_eq!(w[3].1[..4096], [12u8; 4096]);
    assert!(x.is_empty() && x.bytes() == 0);
}

#[test]
fn a_new_extent_starts_in_the_buffer_given_and_appends_stay_in_it() {
    let mut x = Extents::default();
    x.insert_with(4096, &[1; 4096], 1 << 20);
    let at = x.pieces[&4096].as_ptr();
    for i in 2..64u64 {
        assert_eq!(x.insert_with(i * 4096, &[i as u8; 4096], 1 << 20), 1);
    }
    assert_eq!(x.pieces[&4096].as_ptr(), at, "grown in place");
    assert_eq!((x.len(), x.bytes()), (1, 63 * 4096));
    assert_eq!(x.pieces[&4096][62 * 4096..], [63u8; 4096]);
    let w = x.drain(MAX);
    assert_eq!((w.len(), w[0].parts.len()), (1, 1));
    assert_eq!(w[0].parts[0].as_ptr(), at, "taken whole, not copied");
}

#[test]
fn only_large_extents_are_taken_early() {
    let mut x = Extents::default();
    x.insert(0, &[1; 100]);
    x.insert(200, &[2; 10]);
    x.insert(300, &[3; 50]);
    x.insert(400, &[4; 10]);
    let w = flat(x.drain_some(50, u64::MAX, 64));
    assert_eq!(
        w.iter().map(|(o, d)| (*o, d.len())).collect::<Vec<_>>(),
        [(0, 64), (64, 36), (300, 50)]
    );
    assert_eq!(
        (x.len(), x.bytes()),
        (2, 20),
        "small ones wait for their neighbours"
    );
    let w = flat(x.drain_some(50, 10, 64));
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
fn a_file_written_backwards_copies_each_write_once_and_once_more_when_taken() {
    // Each write goes in front of the extent after it: a piece of its own, the bytes
    // already there not moved.
    let mut x = Extents::default();
    let n = 256u64;
    for i in (0..n).rev() {
        assert_eq!(x.insert(i * 4096, &[i as u8; 4096]), usize::from(i < n - 1));
    }
    assert_eq!((x.len(), x.bytes()), (1, n * 4096));
    assert_eq!(x.copied, n * 4096, "each write copied once");
    let w = flat(x.drain(1 << 20));
    assert_eq!(w.len(), 1);
    for (i, c) in w[0].1.chunks(4096).enumerate() {
        assert_eq!(c, [i as u8; 4096]);
    }
}

#[test]
fn a_write_over_several_pieces_replaces_their_bytes() {
    let mut x = Extents::default();
    x.insert(4096, &[1; 8192]);
    x.insert(0, &[2; 4096]);
    x.insert(12288, &[4; 4096]);
    assert_eq!(x.pieces.len(), 3);
    // Over the end of the first piece, the whole second, the start of the third.
    x.insert(2048, &[3; 12288]);
    let mut buf = vec![0u8; 16384];
    assert_eq!(x.overlay(0, &mut buf, 0), 16384);
    assert_eq!(buf[..2048], [2; 2048]);
    assert_eq!(buf[2048..14336], [3; 12288]);
    assert_eq!(buf[14336..], [4; 2048]);
    assert_eq!((x.len(), x.bytes()), (1, 16384));
    // Inside one piece: in place.
    let (before, pieces) = (x.copied, x.pieces.len());
    x.insert(4096, &[5; 100]);
    assert_eq!(x.copied - before, 100);
    assert_eq!(x.pieces.len(), pieces, "no piece made");
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

#[test]
fn tiny_writes_in_any_order_make_few_pieces() {
    // Bytes written backwards one at a time, then every other byte of a second stretch
    // and the rest after: touching small pieces are joined.
    let mut x = Extents::default();
    for i in (0..3 * SMALL as u64).rev() {
        x.insert(i, &[i as u8]);
    }
    let base = 4 * SMALL as u64;
    for i in (0..2 * SMALL as u64)
        .step_by(2)
        .chain((1..2 * SMALL as u64).step_by(2))
    {
        x.insert(base + i, &[7]);
    }
    assert_eq!((x.len(), x.bytes()), (2, 5 * SMALL as u64));
    assert!(x.pieces.len() <= 2 * 5 + 2, "{} pieces", x.pieces.len());
    let mut buf = vec![0u8; 3 * SMALL];
    x.overlay(0, &mut buf, 0);
    assert!(buf.iter().enumerate().all(|(i, b)| *b == i as u8));
}

#[test]
fn large_owned_writes_are_kept_and_leave_as_parts_of_their_own() {
    let mut x = Extents::default();
    let big = |b: u8| vec![b; BIG * 2];
    let (a, b) = (big(1), big(2));
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    x.insert_owned(0, a);
    x.insert(BIG as u64 * 2, &[3; 100]);
    x.insert_owned(BIG as u64 * 2 + 100, b);
    assert_eq!(x.copied, 100, "only the small write copied");
    assert_eq!((x.len(), x.bytes()), (1, BIG as u64 * 4 + 100));
    // A write inside one of them goes over it in place.
    x.insert_owned(10, vec![4; BIG]);
    assert_eq!(x.copied, 100 + BIG as u64);
    let w = x.drain(MAX);
    assert_eq!(w.len(), 1);
    let parts: Vec<_> = w[0].parts.iter().map(|p| (p.as_ptr(), p.len())).collect();
    assert_eq!(parts, [(pa, BIG * 2), (parts[1].0, 100), (pb, BIG * 2)]);
    let all = w[0].parts.concat();
    assert_eq!(all[..10], [1; 10]);
    assert_eq!(all[10..10 + BIG], vec![4; BIG][..]);
    assert_eq!(all[BIG * 4 + 100 - 1], 2);
    // Cut at `max`: each write whole parts where they fit.
    x.insert_owned(0, vec![5; BIG]);
    x.insert_owned(BIG as u64, vec![6; BIG]);
    x.insert(2 * BIG as u64, &[7; 10]);
    let w = x.drain(BIG + 5);
    let shape: Vec<_> = w
        .iter()
        .map(|w| (w.off, w.parts.iter().map(Vec::len).collect::<Vec<_>>()))
        .collect();
    assert_eq!(
        shape,
        [
            (0, vec![BIG]),
            (BIG as u64, vec![BIG, 5]),
            (2 * BIG as u64 + 5, vec![5])
        ]
    );
}

#[test]
fn a_large_piece_cut_small_gives_its_room_back() {
    const M: u64 = 1 << 20;
    let small = |x: &Extents, at: u64| x.pieces[&at].capacity() <= 2 * SMALL;
    let mut x = Extents::default();
    x.insert_owned(M, vec![1; M as usize]);
    // Over all of it but its last 4 KiB: that part stays, not its 1 MiB buffer.
    x.insert_owned(0, vec![2; 2 * M as usize - 4096]);
    assert!(small(&x, 2 * M - 4096));
    // From 4 KiB on, past its end: the 2 MiB piece keeps its first 4 KiB only.
    x.insert_owned(4096, vec![3; 4 * M as usize]);
    assert!(small(&x, 0));
    assert_eq!((x.len(), x.bytes()), (1, 4 * M + 4096));
    // Cut to its first 100 bytes: the 4 MiB piece goes, the first one stays small.
    x.truncate(100);
    assert!(small(&x, 0));
    assert_eq!((x.pieces.len(), x.bytes()), (1, 100));
}

proptest! {
    /// Blocks written in any order: each byte is copied by its write only (merges move
    /// no bytes); small blocks may be copied once more per join, less than `SMALL` each.
    #[test]
    fn merges_in_any_order_copy_each_write_once(
        order in Just((0u64..64).collect::<Vec<_>>()).prop_shuffle(),
        size in prop::sample::select(vec![16u64, 1000, 4096, 10000]),
    ) {
        let mut x = Extents::default();
        for b in &order {
            x.insert(b * size, &vec![*b as u8; size as usize]);
        }
        prop_assert_eq!((x.len(), x.bytes()), (1, 64 * size));
        let bound = if size as usize >= SMALL { 64 * size } else { 64 * (size + 2 * SMALL as u64) };
        prop_assert!(x.copied <= bound, "{} bytes copied", x.copied);
        prop_assert!(x.pieces.len() as u64 <= 2 * x.bytes().div_ceil(SMALL as u64) + 1);
        let w = flat(x.drain(MAX));
        for (o, d) in w {
            for (i, c) in d.chunks(size as usize).enumerate() {
                let b = o / size + i as u64;
                prop_assert_eq!(c, &vec![b as u8; size as usize][..]);
            }
        }
    }

    #[test]
    fn insert_overlay_truncate_agree_with_a_byte_array(
        ops in prop::collection::vec((0u64..200, prop::collection::vec(any::<u8>(), 0..40)), 0..30),
        cut in prop::option::of(0u64..240),
    ) {
        // Pieces under 8 bytes joined, writes of 16 or more kept as they came (as the
        // node keeps pulled writes), so that every path is reached at this scale.
        let mut x = Extents::with_sizes(8, 16);
        for (i, (o, d)) in ops.iter().enumerate() {
            match i % 2 == 0 {
                true => x.insert_owned(*o, d.clone()),
                false => x.insert(*o, d),
            };
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
        // Extents are disjoint and not adjacent; pieces tile them, and no two touching
        // pieces are both small.
        let mut last_end = None;
        for (s, e) in &x.runs {
            prop_assert!(e > s);
            if let Some(l) = last_end { prop_assert!(*s > l); }
            last_end = Some(*e);
            let mut at = *s;
            let mut small = false;
            for (o, d) in x.pieces.range(s..e) {
                prop_assert!(!d.is_empty());
                prop_assert_eq!(*o, at);
                prop_assert!(!(small && d.len() < 8), "two small pieces touch");
                small = d.len() < 8;
                at += d.len() as u64;
            }
            prop_assert_eq!(at, *e);
        }
        prop_assert_eq!(x.pieces.values().map(|d| d.len() as u64).sum::<u64>(), x.bytes());
        // Overlay on an empty backend gives the model's bytes where written.
        let mut buf = vec![0u8; 240];
        let n = x.overlay(0, &mut buf, 0);
        let model_end = set.iter().rposition(|s| *s).map_or(0, |i| i + 1);
        prop_assert_eq!(n, model_end);
        prop_assert_eq!(&buf[..n], &bytes[..n]);
        // Draining in small pieces gives back exactly the written bytes.
        let mut again = vec![0u8; 240];
        let mut seen = vec![false; 240];
        let writes = x.drain(20);
        for w in &writes {
            prop_assert!(w.len() <= 20 && !w.is_empty());
        }
        for (o, d) in flat(writes) {
            for (i, b) in d.iter().enumerate() {
                again[o as usize + i] = *b;
                seen[o as usize + i] = true;
            }
        }
        prop_assert_eq!(seen, set);
        prop_assert_eq!(again, bytes);
    }
}

#[test]
fn appends_after_a_full_piece_double_the_run_in_pieces_that_leave_whole() {
    let mut x = Extents::default();
    let n = 256u64;
    x.insert(0, &[0; 4096]);
    for i in 1..n {
        x.insert_with(i * 4096, &[i as u8; 4096], MAX);
    }
    assert_eq!((x.len(), x.bytes()), (1, n * 4096));
    // 4, 4, 8, 16 … 512 KiB: a piece per doubling, not one per write.
    assert!(x.pieces.len() <= 10, "{} pieces", x.pieces.len());
    assert_eq!(x.copied, n * 4096, "each write copied once");
    let w = x.drain(MAX);
    assert_eq!(w.len(), 1);
    let big = w[0].parts.iter().filter(|p| p.len() >= BIG).count();
    assert!(big >= 4, "large pieces leave as parts of their own");
    let bytes: Vec<u8> = w[0].parts.concat();
    assert_eq!(bytes.len() as u64, n * 4096);
    assert!((0..n).all(|i| bytes[(i * 4096) as usize] == i as u8));
}

#[test]
fn only_a_stream_at_its_runs_end_gets_room_after_a_full_piece() {
    let mut x = Extents::default();
    x.insert(0, &[1; 4096]);
    x.insert(8192, &[3; 4096]);
    x.insert_with(4096, &[2; 4096], MAX);
    assert_eq!(x.pieces[&4096].capacity(), 4096, "not at the run's end");
    x.insert_with(12288, &[4; 4096], MAX);
    assert!(
        x.pieces[&12288].capacity() >= 12288,
        "at the run's end: room"
    );
    x.insert(32768, &[5; 4096]);
    x.insert(28672, &[6; 4096]);
    x.insert(36864, &[7; 4096]);
    assert_eq!(x.pieces[&36864].capacity(), 4096, "no stream: no room");
}
