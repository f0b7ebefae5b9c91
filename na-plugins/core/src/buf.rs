//! Message buffers a thread lets go, kept for that thread's next message: the engine takes
//! one to encode into and gives back what it decoded from; a plugin gives back what it
//! wrote and takes one for what arrives. On a thread that both lets buffers go and takes
//! them (a caller that writes its own requests, a progress thread that answers inline) a
//! small message costs no allocation; elsewhere [`take`] allocates as `Vec` would.
//!
//! Bounded: at most [`KEPT`] buffers of each size class per thread, each of at most
//! [`MAX_ROOM`] bytes and [`KEPT_BYTES`] in all (held until the thread exits), so that a
//! burst of 64 messages in flight (a handler's 64 transfers, their answers) is served
//! again from the list, whatever small ones the thread keeps beside them; a
//! buffer is reused only for a message it fits without being more than four times its
//! size, so a small message queued for a slow peer does not hold a large buffer.
//!
//! ```
//! let mut v = na::buf::take(100);
//! v.extend_from_slice(b"hello");
//! let at = v.as_ptr();
//! na::buf::give(v);
//! let again = na::buf::take(50);
//! assert!(again.is_empty() && again.capacity() >= 100);
//! assert_eq!(again.as_ptr(), at, "the same buffer, kept");
//! ```

use std::cell::RefCell;

/// Buffers of one size class kept per thread.
pub const KEPT: usize = 64;

/// The room of all buffers kept by a thread, at most.
pub const KEPT_BYTES: usize = 256 << 10;

/// The largest buffer kept (bigger ones go back to the allocator).
pub const MAX_ROOM: usize = 16 << 10;

/// The least room of a buffer [`take`] hands out, and of one kept: a small message fits in
/// any kept buffer without regrowth.
pub const MIN_ROOM: usize = 256;

/// Size classes of kept buffers: class `k` holds rooms in `[MIN_ROOM << k, MIN_ROOM << (k + 1))`
/// (the last one up to `MAX_ROOM` included).
const CLASSES: usize = (MAX_ROOM / MIN_ROOM).trailing_zeros() as usize + 1;

/// A thread's kept buffers by size class, and the sum of their room.
struct Free {
    classes: [Vec<Vec<u8>>; CLASSES],
    bytes: usize,
}

thread_local! {
    static FREE: RefCell<Free> = const {
        RefCell::new(Free {
            classes: [const { Vec::new() }; CLASSES],
            bytes: 0,
        })
    };
}

/// The class of a room in `MIN_ROOM..=MAX_ROOM`.
fn class(room: usize) -> usize {
    ((room / MIN_ROOM).ilog2() as usize).min(CLASSES - 1)
}

/// An empty buffer with room for at least `room` bytes: one this thread gave back if it
/// has one, else a new one. Looks at two size classes, not at every kept buffer: the
/// room's own (a buffer there may be too small) and the next (any there fits, at most
/// four times the room).
pub fn take(room: usize) -> Vec<u8> {
    let room = room.max(MIN_ROOM);
    if room <= MAX_ROOM
        && let Ok(Some(v)) = FREE.try_with(|f| {
            let f = &mut *f.borrow_mut();
            let c = class(room);
            let v = match f.classes[c].last() {
                Some(v) if v.capacity() >= room => f.classes[c].pop(),
                _ => f.classes.get_mut(c + 1)?.pop(),
            }?;
            f.bytes -= v.capacity();
            Some(v)
        })
    {
        return v;
    }
    Vec::with_capacity(room)
}

/// `p`'s bytes in a buffer of their own, from [`take`] (a message that arrived).
pub fn copy_of(p: &[u8]) -> Vec<u8> {
    let mut v = take(p.len());
    v.extend_from_slice(p);
    v
}

/// Gives `v` back for this thread's next [`take`] (dropped if the thread keeps enough).
pub fn give(mut v: Vec<u8>) {
    let room = v.capacity();
    if !(MIN_ROOM..=MAX_ROOM).contains(&room) {
        return;
    }
    v.clear();
    // A thread being torn down has no list any more: the buffer is simply dropped.
    let _ = FREE.try_with(|f| {
        let f = &mut *f.borrow_mut();
        let c = &mut f.classes[class(room)];
        if c.len() < KEPT && f.bytes + room <= KEPT_BYTES {
            f.bytes += room;
            c.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_buffers_are_bounded_in_number_and_size() {
        let kept = || FREE.with(|f| f.borrow().classes.iter().map(Vec::len).sum::<usize>());
        let clear = || {
            FREE.with(|f| {
                let f = &mut *f.borrow_mut();
                f.classes.iter_mut().for_each(Vec::clear);
                f.bytes = 0;
            })
        };
        give(Vec::with_capacity(MAX_ROOM + 1));
        give(Vec::with_capacity(MIN_ROOM - 1));
        assert_eq!(kept(), 0, "too big or too small to keep");
        for _ in 0..KEPT + 5 {
            give(Vec::with_capacity(512));
        }
        assert_eq!(kept(), KEPT);
        give(Vec::with_capacity(4096));
        assert_eq!(
            kept(),
            KEPT + 1,
            "small buffers do not crowd out a larger one"
        );
        clear();
        for _ in 0..KEPT {
            give(Vec::with_capacity(MAX_ROOM));
        }
        assert_eq!(kept(), KEPT_BYTES / MAX_ROOM, "bounded in bytes too");
        let v = take(MAX_ROOM);
        assert_eq!(v.capacity(), MAX_ROOM, "one taken");
        give(v);
        assert_eq!(
            kept(),
            KEPT_BYTES / MAX_ROOM,
            "its room counted out and in again"
        );
        clear();
        let mut big = take(4000);
        assert!(big.capacity() >= 4000, "none kept fits: a new one");
        big.extend_from_slice(&[1; 4000]);
        let at = big.as_ptr();
        give(big);
        let small = take(10);
        assert_ne!(
            small.as_ptr(),
            at,
            "a small message does not get the 4000-byte one"
        );
        let again = take(3000);
        assert!(again.is_empty(), "given back cleared");
        assert_eq!(again.as_ptr(), at, "reused where it fits");
    }

    #[test]
    fn another_thread_does_not_see_this_threads_buffers() {
        let v = Vec::<u8>::with_capacity(256);
        let at = v.as_ptr() as usize;
        give(v);
        let there = std::thread::spawn(|| {
            let v = take(100);
            v.as_ptr() as usize
        })
        .join()
        .unwrap();
        assert_ne!(there, at);
    }
}
