//! A single-producer single-consumer byte ring in shared memory.
//!
//! The header holds the two indices (`head`, advanced by the consumer; `tail`, by the
//! producer), each on its own cache line with a flag: the consumer's "I am going to sleep"
//! and the producer's "I am waiting for space". Data is a power-of-two byte area; indices
//! count bytes for ever and wrap modulo the capacity. The ring moves bytes, not records:
//! frames are delimited by the layer above (the same frame codec as the TCP plugin).
//!
//! **Waking**: before it sleeps, the consumer sets its flag and re-reads `tail`
//! ([`Ring::prepare_sleep`]); after it publishes `tail`, the producer takes the flag
//! ([`Ring::consumer_needs_wake`]). All four are read-modify-write operations, which read
//! the latest value of their location: either the consumer's re-read follows the
//! producer's publish in `tail`'s order (it sees the data and does not sleep), or it
//! precedes it, synchronizes with it, and so the producer's swap of the flag sees the
//! consumer's declaration and wakes it. No `SeqCst` fence is needed, which is what lets loom
//! check it. The flags have cache lines of their own, so the producer's per-write swap stays
//! in its own cache unless the consumer actually declared sleep. Back-pressure uses the same
//! handshake the other way ([`Ring::wait_for_space`] / [`Ring::producer_needs_wake`]).
//!
//! **Distrust**: the header lives in memory the peer can write. Every index read is checked
//! (`tail - head` within the capacity) and every copy is masked to the data area, so a
//! corrupted header yields [`RingError::Corrupt`], never an out-of-bounds access.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// A ring's corruption.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The indices in shared memory are impossible: the peer wrote garbage.
    #[error("ring indices corrupted: head {head}, tail {tail}, capacity {cap}")]
    Corrupt {
        /// The consumer index read.
        head: u64,
        /// The producer index read.
        tail: u64,
        /// The ring's capacity.
        cap: u64,
    },
}

/// The shared header of a ring: four cache lines, one per field.
#[repr(C)]
pub struct RingHeader {
    head: AtomicU64,
    _head_line: [u8; 56],
    tail: AtomicU64,
    _tail_line: [u8; 56],
    consumer_sleeping: AtomicU32,
    _sleep_line: [u8; 60],
    producer_waiting: AtomicU32,
    _wait_line: [u8; 60],
}

impl Default for RingHeader {
    fn default() -> Self {
        RingHeader {
            head: AtomicU64::new(0),
            _head_line: [0; 56],
            tail: AtomicU64::new(0),
            _tail_line: [0; 56],
            consumer_sleeping: AtomicU32::new(0),
            _sleep_line: [0; 60],
            producer_waiting: AtomicU32::new(0),
            _wait_line: [0; 60],
        }
    }
}

/// A view of one ring: its header and its data area.
pub struct Ring<'a> {
    hdr: &'a RingHeader,
    data: *mut u8,
    cap: u64,
}

// SAFETY: a Ring only touches its memory through atomics and masked raw copies; the
// single-producer/single-consumer discipline is the caller's (documented on from_raw).
unsafe impl Send for Ring<'_> {}
// SAFETY: as for Send.
unsafe impl Sync for Ring<'_> {}

impl<'a> Ring<'a> {
    /// A ring over `hdr` and `cap` bytes at `data`.
    ///
    /// # Safety
    /// `data` must be valid for reads and writes of `cap` bytes for `'a`, `cap` a power of
    /// two, and the ring used by at most one producer and one consumer (here or in the
    /// peer process). The peer may write anything into the header and data: that is
    /// detected or harmless, never undefined behaviour on this side.
    pub unsafe fn from_raw(hdr: &'a RingHeader, data: *mut u8, cap: usize) -> Self {
        debug_assert!(cap.is_power_of_two());
        Ring {
            hdr,
            data,
            cap: cap as u64,
        }
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap as usize
    }

    fn indices(&self) -> Result<(u64, u64), RingError> {
        self.check(
            self.hdr.head.load(Ordering::Acquire),
            self.hdr.tail.load(Ordering::Acquire),
        )
    }

    fn check(&self, head: u64, tail: u64) -> Result<(u64, u64), RingError> {
        if tail.wrapping_sub(head) > self.cap {
            return Err(RingError::Corrupt {
                head,
                tail,
                cap: self.cap,
            });
        }
        Ok((head, tail))
    }

    /// Bytes waiting to be read.
    pub fn len(&self) -> Result<usize, RingError> {
        let (head, tail) = self.indices()?;
        Ok(tail.wrapping_sub(head) as usize)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> Result<bool, RingError> {
        Ok(self.len()? == 0)
    }

    /// Producer: appends as many bytes of `bufs` (in order) as fit; 0 when full.
    pub fn write(&self, bufs: &[&[u8]]) -> Result<usize, RingError> {
        self.write_from(bufs.iter().copied())
    }

    /// Producer: as [`Ring::write`], from any sequence of byte slices (`IoSlice`s).
    pub fn write_from<'b>(
        &self,
        bufs: impl IntoIterator<Item = &'b [u8]>,
    ) -> Result<usize, RingError> {
        let head = self.hdr.head.load(Ordering::Acquire);
        self.write_after(head, self.hdr.tail.load(Ordering::Acquire), bufs)
    }

    /// Producer: as [`Ring::write_from`], with `seen`, the consumer's index as this
    /// producer last read it (kept in its own memory), taken for the consumer's when the
    /// space it leaves holds `want` bytes. The consumer's index is read (and `seen`
    /// updated) only when that space is short: a write then does not pull the
    /// consumer's cache line over (nor does the consumer's next advance have to take it
    /// back), one cache miss less on each side of every message. An index read earlier
    /// is at most the current one, so the space it leaves is never more than there is;
    /// a consumer that moved its index backwards (a hostile peer) only loses its own
    /// unread bytes, and is caught at the next read of it.
    pub fn write_seen<'b>(
        &self,
        seen: &AtomicU64,
        want: u64,
        bufs: impl IntoIterator<Item = &'b [u8]>,
    ) -> Result<usize, RingError> {
        let tail = self.hdr.tail.load(Ordering::Acquire);
        let held = tail.wrapping_sub(seen.load(Ordering::Relaxed));
        let head = match held <= self.cap && self.cap - held >= want {
            true => tail.wrapping_sub(held),
            false => {
                let head = self.hdr.head.load(Ordering::Acquire);
                seen.store(head, Ordering::Relaxed);
                head
            }
        };
        self.write_after(head, tail, bufs)
    }

    /// Appends what fits of `bufs` after `tail`, the consumer's index taken as `head`.
    fn write_after<'b>(
        &self,
        head: u64,
        tail: u64,
        bufs: impl IntoIterator<Item = &'b [u8]>,
    ) -> Result<usize, RingError> {
        let (head, tail) = self.check(head, tail)?;
        let mut free = self.cap - tail.wrapping_sub(head);
        let mut pos = tail;
        for b in bufs {
            let n = (b.len() as u64).min(free);
            self.copy_in(pos, &b[..n as usize]);
            pos = pos.wrapping_add(n);
            free -= n;
            if free == 0 {
                break;
            }
        }
        self.hdr.tail.swap(pos, Ordering::AcqRel);
        Ok(pos.wrapping_sub(tail) as usize)
    }

    /// Producer, after a write: whether the consumer declared it sleeps and must be
    /// woken (the flag is cleared, so one write wakes it once).
    pub fn consumer_needs_wake(&self) -> bool {
        self.hdr.consumer_sleeping.swap(0, Ordering::AcqRel) != 0
    }

    /// Producer, when the ring is full: declares that it waits for space. Returns false
    /// if space appeared meanwhile (write again instead of sleeping).
    pub fn wait_for_space(&self) -> Result<bool, RingError> {
        self.hdr.producer_waiting.swap(1, Ordering::AcqRel);
        let head = self.hdr.head.fetch_add(0, Ordering::AcqRel);
        let (head, tail) = self.check(head, self.hdr.tail.load(Ordering::Acquire))?;
        if tail.wrapping_sub(head) < self.cap {
            self.hdr.producer_waiting.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    /// Consumer: takes up to `out.len()` bytes.
    pub fn read(&self, out: &mut [u8]) -> Result<usize, RingError> {
        let (head, tail) = self.indices()?;
        let n = tail.wrapping_sub(head).min(out.len() as u64);
        self.copy_out(head, &mut out[..n as usize]);
        self.hdr.head.swap(head.wrapping_add(n), Ordering::AcqRel);
        Ok(n as usize)
    }

    /// Consumer, after a read: whether the producer waits for space and must be woken
    /// (the flag is cleared).
    pub fn producer_needs_wake(&self) -> bool {
        self.hdr.producer_waiting.swap(0, Ordering::AcqRel) != 0
    }

    /// Consumer, before sleeping: declares it. Returns false if data arrived meanwhile
    /// (read again instead of sleeping); after a true, a producer's write wakes it.
    pub fn prepare_sleep(&self) -> Result<bool, RingError> {
        self.hdr.consumer_sleeping.swap(1, Ordering::AcqRel);
        let tail = self.hdr.tail.fetch_add(0, Ordering::AcqRel);
        let (head, tail) = self.check(self.hdr.head.load(Ordering::Acquire), tail)?;
        if tail != head {
            self.hdr.consumer_sleeping.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    fn copy_in(&self, pos: u64, src: &[u8]) {
        let at = (pos & (self.cap - 1)) as usize;
        let first = src.len().min(self.cap as usize - at);
        // SAFETY: `at + first <= cap` and `src.len() - first <= at` (src.len() <= cap), so
        // both copies stay in the data area, valid by the from_raw contract; the consumer
        // does not read these bytes until `tail` is published (Release) after them.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(at), first);
            std::ptr::copy_nonoverlapping(src[first..].as_ptr(), self.data, src.len() - first);
        }
    }

    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let at = (pos & (self.cap - 1)) as usize;
        let first = dst.len().min(self.cap as usize - at);
        // SAFETY: as in copy_in; the producer wrote these bytes before publishing the
        // `tail` we read with Acquire, and does not overwrite them until `head` moves.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.add(at), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data, dst[first..].as_mut_ptr(), dst.len() - first);
        }
    }

    /// Fault injection for tests: overwrites both indices, as a hostile peer could.
    #[doc(hidden)]
    #[cfg(not(loom))]
    pub fn corrupt(&self, head: u64, tail: u64) {
        self.hdr.head.store(head, Ordering::Relaxed);
        self.hdr.tail.store(tail, Ordering::Relaxed);
    }
}

/// A ring in ordinary memory, for tests and for same-process use.
pub struct HeapRing {
    hdr: Box<RingHeader>,
    data: Box<[u8]>,
}

impl HeapRing {
    /// A ring of `cap` bytes (rounded up to a power of two).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1).next_power_of_two();
        HeapRing {
            hdr: Box::default(),
            data: vec![0u8; cap].into_boxed_slice(),
        }
    }

    /// The ring.
    pub fn ring(&self) -> Ring<'_> {
        // SAFETY: the data area is `data.len()` (a power of two) bytes owned by self and
        // outliving the view; its pointer is used only through the ring's masked copies,
        // which may write through it (the ring's interior mutability, like an UnsafeCell).
        unsafe { Ring::from_raw(&self.hdr, self.data.as_ptr().cast_mut(), self.data.len()) }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn the_header_is_four_cache_lines() {
        assert_eq!(std::mem::size_of::<RingHeader>(), 256);
    }

    #[test]
    fn bytes_wrap_around_in_order() {
        let m = HeapRing::new(8);
        let r = m.ring();
        let mut out = [0u8; 8];
        assert_eq!(r.write(&[b"abcdef"]).unwrap(), 6);
        assert_eq!(r.read(&mut out[..4]).unwrap(), 4);
        assert_eq!(r.write(&[b"gh", b"ijkl"]).unwrap(), 6);
        assert_eq!(r.write(&[b"z"]).unwrap(), 0, "full");
        assert_eq!(r.read(&mut out).unwrap(), 8);
        assert_eq!(&out, b"efghijkl");
        assert!(r.is_empty().unwrap());
    }

    #[test]
    fn corrupted_indices_are_detected_not_followed() {
        let m = HeapRing::new(16);
        let r = m.ring();
        let mut out = [0u8; 64];
        for (head, tail) in [(0, 17), (5, 4), (u64::MAX, 100), (1 << 40, 0)] {
            r.corrupt(head, tail);
            assert!(
                matches!(r.read(&mut out), Err(RingError::Corrupt { .. })),
                "{head} {tail}"
            );
            assert!(matches!(r.write(&[b"x"]), Err(RingError::Corrupt { .. })));
            assert!(r.prepare_sleep().is_err() && r.wait_for_space().is_err());
        }
        // Indices that are merely large but consistent still work (they wrap for ever).
        r.corrupt(u64::MAX - 2, u64::MAX - 2);
        assert_eq!(r.write(&[b"wrapping"]).unwrap(), 8);
        assert_eq!(r.read(&mut out).unwrap(), 8);
        assert_eq!(&out[..8], b"wrapping");
    }

    #[test]
    fn sleep_and_space_handshakes() {
        let m = HeapRing::new(4);
        let r = m.ring();
        assert!(r.prepare_sleep().unwrap(), "empty: may sleep");
        r.write(&[b"ab"]).unwrap();
        assert!(r.consumer_needs_wake(), "the write must wake the sleeper");
        assert!(!r.consumer_needs_wake(), "once");
        assert!(!r.prepare_sleep().unwrap(), "data is there: do not sleep");
        r.write(&[b"cd"]).unwrap();
        assert!(r.wait_for_space().unwrap(), "full: may sleep");
        r.read(&mut [0u8; 1]).unwrap();
        assert!(
            r.producer_needs_wake(),
            "the read must wake the waiting producer"
        );
        assert!(!r.wait_for_space().unwrap(), "space is there");
    }

    #[test]
    fn a_producer_and_a_consumer_thread_move_megabytes_intact() {
        let m = HeapRing::new(4096);
        let total = 8 << 20;
        let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
        std::thread::scope(|s| {
            let r = m.ring();
            let src = &data;
            s.spawn(move || {
                // (As the plugin writes: the consumer's index read only when short.)
                let (mut at, seen) = (0, AtomicU64::new(0));
                while at < src.len() {
                    let end = (at + 1000).min(src.len());
                    let want = (end - at) as u64;
                    at += r.write_seen(&seen, want, [&src[at..end]]).unwrap();
                }
            });
            let r = m.ring();
            let mut got = Vec::with_capacity(total);
            let mut buf = [0u8; 777];
            while got.len() < total {
                let n = r.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == data);
        });
    }

    #[test]
    fn a_producer_reads_the_consumers_index_only_when_the_space_it_saw_is_short() {
        let m = HeapRing::new(16);
        let r = m.ring();
        let seen = AtomicU64::new(0);
        assert_eq!(r.write_seen(&seen, 4, [&b"abcd"[..]]).unwrap(), 4);
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 4);
        // 12 bytes free as last seen: enough for 4, so the index (now 4) is not read.
        assert_eq!(r.write_seen(&seen, 4, [&b"efgh"[..]]).unwrap(), 4);
        assert_eq!(seen.load(Ordering::Relaxed), 0, "not read");
        // 8 free as last seen, 12 wanted: read (4), and 12 fit.
        assert_eq!(r.write_seen(&seen, 12, [&[7u8; 12][..]]).unwrap(), 12);
        assert_eq!(seen.load(Ordering::Relaxed), 4);
        assert_eq!(r.write_seen(&seen, 1, [&b"z"[..]]).unwrap(), 0, "full");
        // A consumer index beyond the producer's (a hostile peer) is caught when read.
        r.corrupt(100, 16 + 4);
        assert!(matches!(
            r.write_seen(&seen, 1, [&b"z"[..]]),
            Err(RingError::Corrupt { .. })
        ));
    }

    proptest! {
        /// Any sequence of writes and reads behaves like a bounded FIFO of bytes.
        #[test]
        fn behaves_like_a_bounded_fifo(ops in proptest::collection::vec((any::<bool>(), 0usize..40), 0..200)) {
            let m = HeapRing::new(32);
            let r = m.ring();
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut next = 0u8;
            let seen = AtomicU64::new(0);
            for (write, n) in ops {
                if write {
                    let bytes: Vec<u8> = (0..n).map(|_| { next = next.wrapping_add(1); next }).collect();
                    // Every other write as the plugin writes (the consumer's index as last
                    // seen): the same bytes go in either way.
                    let k = match n % 2 {
                        0 => r.write_seen(&seen, n as u64, [&bytes[..]]).unwrap(),
                        _ => r.write(&[&bytes]).unwrap(),
                    };
                    prop_assert_eq!(k, n.min(32 - model.len()));
                    model.extend(&bytes[..k]);
                    next = next.wrapping_sub((n - k) as u8);
                } else {
                    let mut out = vec![0u8; n];
                    let k = r.read(&mut out).unwrap();
                    prop_assert_eq!(k, n.min(model.len()));
                    let want: Vec<u8> = model.drain(..k).collect();
                    prop_assert_eq!(&out[..k], &want[..]);
                }
                prop_assert_eq!(r.len().unwrap(), model.len());
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg loom" cargo test -p na-sm --release --lib ring::loom`
    use super::*;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// An eventfd: a counter a sleeper waits on.
    #[derive(Default)]
    struct EventFd {
        count: Mutex<u32>,
        cv: Condvar,
    }

    impl EventFd {
        fn signal(&self) {
            *self.count.lock().unwrap() += 1;
            self.cv.notify_one();
        }
        fn wait(&self) {
            let mut c = self.count.lock().unwrap();
            while *c == 0 {
                c = self.cv.wait(c).unwrap();
            }
            *c -= 1;
        }
    }

    struct Shared {
        mem: HeapRing,
        wake_consumer: EventFd,
        wake_producer: EventFd,
    }

    fn shared(cap: usize) -> Arc<Shared> {
        Arc::new(Shared {
            mem: HeapRing::new(cap),
            wake_consumer: EventFd::default(),
            wake_producer: EventFd::default(),
        })
    }

    /// A consumer that sleeps when the ring is empty is always woken by the producer's
    /// write (a lost wake-up would deadlock, which loom reports).
    #[test]
    fn no_lost_wakeup_for_a_sleeping_consumer() {
        loom::model(|| {
            let s = shared(4);
            let p = s.clone();
            let producer = thread::spawn(move || {
                let r = p.mem.ring();
                assert_eq!(r.write(&[b"x"]).unwrap(), 1);
                if r.consumer_needs_wake() {
                    p.wake_consumer.signal();
                }
            });
            let r = s.mem.ring();
            let mut out = [0u8; 1];
            loop {
                if r.read(&mut out).unwrap() == 1 {
                    break;
                }
                if r.prepare_sleep().unwrap() {
                    s.wake_consumer.wait();
                }
            }
            assert_eq!(out, *b"x");
            producer.join().unwrap();
        });
    }

    /// A producer that waits for space in a full ring is always woken by the consumer's
    /// read, and every byte arrives in order.
    #[test]
    fn no_lost_wakeup_for_a_producer_waiting_for_space() {
        loom::model(|| {
            let s = shared(2);
            let p = s.clone();
            let producer = thread::spawn(move || {
                let r = p.mem.ring();
                let data = b"abc";
                let mut at = 0;
                while at < data.len() {
                    let n = r.write(&[&data[at..]]).unwrap();
                    at += n;
                    if n > 0 && r.consumer_needs_wake() {
                        p.wake_consumer.signal();
                    }
                    if at < data.len() && n == 0 && r.wait_for_space().unwrap() {
                        p.wake_producer.wait();
                    }
                }
            });
            let r = s.mem.ring();
            let mut got = Vec::new();
            let mut buf = [0u8; 2];
            while got.len() < 3 {
                let n = r.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                if n > 0 && r.producer_needs_wake() {
                    s.wake_producer.signal();
                }
                if n == 0 && r.prepare_sleep().unwrap() {
                    s.wake_consumer.wait();
                }
            }
            assert_eq!(got, b"abc");
            producer.join().unwrap();
        });
    }
}
