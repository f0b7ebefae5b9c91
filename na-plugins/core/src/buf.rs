//! Message buffers a thread lets go, kept for that thread's next message: the engine takes
//! one to encode into and gives back what it decoded from; a plugin gives back what it
//! wrote and takes one for what arrives. On a thread that both lets buffers go and takes
//! them (a caller that writes its own requests, a progress thread that answers inline) a
//! small message costs no allocation; elsewhere [`take`] allocates as `Vec` would.
//!
//! Bounded: at most [`KEPT`] buffers per thread, each of at most [`MAX_ROOM`] bytes (256 KiB
//! a thread at most, held until it exits); a buffer is reused only for a message it fits
//! without being more than four times its size, so a small message queued for a slow peer
//! does not hold a large buffer.
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

/// Buffers kept per thread.
pub const KEPT: usize = 16;

/// The largest buffer kept (bigger ones go back to the allocator).
pub const MAX_ROOM: usize = 16 << 10;

/// The least room of a buffer [`take`] hands out, and of one kept: a small message fits in
/// any kept buffer without regrowth.
pub const MIN_ROOM: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `room` bytes: one this thread gave back if it
/// has one, else a new one.
pub fn take(room: usize) -> Vec<u8> {
    let room = room.max(MIN_ROOM);
    let fits = |v: &Vec<u8>| (room..=4 * room).contains(&v.capacity());
    if room <= MAX_ROOM
        && let Ok(Some(v)) = FREE.try_with(|f| {
            let mut f = f.borrow_mut();
            let i = f.iter().rposition(fits)?;
            Some(f.swap_remove(i))
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
    if !(MIN_ROOM..=MAX_ROOM).contains(&v.capacity()) {
        return;
    }
    v.clear();
    // A thread being torn down has no list any more: the buffer is simply dropped.
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEPT {
            f.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_buffers_are_bounded_in_number_and_size() {
        let kept = || FREE.with(|f| f.borrow().len());
        give(Vec::with_capacity(MAX_ROOM + 1));
        give(Vec::with_capacity(MIN_ROOM - 1));
        assert_eq!(kept(), 0, "too big or too small to keep");
        for _ in 0..KEPT + 5 {
            give(Vec::with_capacity(512));
        }
        assert_eq!(kept(), KEPT);
        FREE.with(|f| f.borrow_mut().clear());
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
