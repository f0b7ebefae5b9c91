//! Extents against a byte-array model, and the cost of merges.

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
    // Each write copied once: the extent behind it kept its bytes where they were.
    assert_eq!(x.copied, n * 4096);
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
    assert!(!x.map[&0].as_slices().1.is_empty(), "the ring wraps");
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

#[test]
fn a_small_extent_joining_a_large_one_is_the_one_copied() {
    // Writers walking backwards two blocks at a time: each pair's lower block starts a
    // small extent, its upper one joins it to the large one above. Copying the large one
    // every time (the earlier extent's buffer always kept) is quadratic.
    let mut x = Extents::default();
    x.insert(63 * 16, &[63; 16]);
    for k in 1..=31u64 {
        let low = 63 - 2 * k;
        x.insert(low * 16, &[low as u8; 16]);
        x.insert((low + 1) * 16, &[(low + 1) as u8; 16]);
    }
    x.insert(0, &[0; 16]);
    assert_eq!((x.len(), x.bytes()), (1, 64 * 16));
    assert!(x.copied <= 3 * 64 * 16, "{} bytes copied", x.copied);
    let w = x.drain(1 << 10);
    for (i, c) in w[0].1.chunks(16).enumerate() {
        assert_eq!(c, [i as u8; 16]);
    }
}

proptest! {
    /// Blocks written in any order: each byte is copied by its write and then at most
    /// once per doubling of the extent it is in (the smaller side moves).
    #[test]
    fn merges_in_any_order_copy_each_byte_a_logarithmic_number_of_times(
        order in Just((0u64..64).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let mut x = Extents::default();
        for b in &order {
            x.insert(b * 16, &[*b as u8; 16]);
        }
        prop_assert_eq!((x.len(), x.bytes()), (1, 64 * 16));
        prop_assert!(x.copied <= 64 * 16 * (1 + 6), "{} bytes copied", x.copied);
    }

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
