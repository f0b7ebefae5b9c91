//! Writing frames: the queue's order, direct writes from the sender's thread, backlog
//! bounds, over wires we control.

use super::*;
use crate::frame::{Decoder, Kind};
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// A wire over one end of a real socket pair.
struct Sock(UnixStream);

impl Wire for Sock {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }
    unsafe fn read_raw(&self, _: &[crate::wire::RawPiece]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.0).write_vectored(bufs)
    }
    fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
    fn fds(&self) -> Vec<std::os::fd::RawFd> {
        vec![self.0.as_raw_fd()]
    }
}

/// Tags of the frames that came out of `r`.
fn tags(r: &mut UnixStream) -> Vec<u64> {
    let mut d = Decoder::new(1 << 20);
    let n = r.read(d.spare(1 << 16)).unwrap();
    d.commit(n);
    std::iter::from_fn(|| d.next_frame().unwrap().map(|(h, _)| h.tag)).collect()
}

#[test]
fn a_frame_left_in_the_inbox_goes_out_before_a_send_made_after_it() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let c = Conn::new(
        PeerId(2),
        Box::new(Sock(ours)),
        false,
        true,
        1 << 20,
        Arc::default(),
    );
    let mem = MemTable::default();
    let frame = |tag| OutFrame::new(Kind::Unexpected, tag, vec![tag as u8; 8], None);
    // Another thread writes (here: holds the lock and lets go without writing, as a
    // writer the socket blocked does): the first send waits in the inbox.
    let held = lock(&c.write);
    std::thread::scope(|t| {
        t.spawn(|| assert!(c.send(frame(1), &mem).is_ok()));
    });
    drop(held);
    // A send made after the first returned finds the lock free: it must not overtake.
    assert!(c.send(frame(2), &mem).is_ok());
    assert_eq!(tags(&mut theirs), [1, 2]);
}

/// A wire that takes at most `cap` bytes a write, and only while its budget lasts (then
/// `WouldBlock`, as a full socket), keeping what it took; with `nudge`, its first
/// write has another thread send on that connection meanwhile (which finds the write
/// lock taken and leaves its frame in the inbox).
struct Trickle {
    took: Arc<Mutex<Vec<u8>>>,
    budget: Arc<AtomicUsize>,
    cap: usize,
    nudge: Option<Arc<OnceLock<Arc<Conn>>>>,
}

impl Trickle {
    fn new(budget: usize, cap: usize) -> (Trickle, Arc<Mutex<Vec<u8>>>, Arc<AtomicUsize>) {
        let (took, budget) = (Arc::default(), Arc::new(AtomicUsize::new(budget)));
        let w = Trickle {
            took: Arc::clone(&took),
            budget: Arc::clone(&budget),
            cap,
            nudge: None,
        };
        (w, took, budget)
    }
}

impl Wire for Trickle {
    fn read(&self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    unsafe fn read_raw(&self, _: &[crate::wire::RawPiece]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if let Some(c) = self.nudge.as_ref().and_then(|n| n.get())
            && self.took.lock().unwrap().is_empty()
        {
            let (c, f) = (c.clone(), frame(2));
            std::thread::spawn(move || c.send(f, &MemTable::default()).is_ok())
                .join()
                .unwrap();
        }
        let n = self.budget.load(Ordering::SeqCst).min(self.cap);
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let n = n.min(all.len());
        self.took.lock().unwrap().extend_from_slice(&all[..n]);
        self.budget.fetch_sub(n, Ordering::SeqCst);
        Ok(n)
    }
    fn shutdown(&self) {}
    fn fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
}

fn frame(tag: u64) -> OutFrame {
    OutFrame::new(Kind::Unexpected, tag, vec![tag as u8; 8], None)
}

/// The frames in `bytes`: tags and bodies.
fn frames(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut d = Decoder::new(1 << 20);
    d.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
    d.commit(bytes.len());
    std::iter::from_fn(|| d.next_frame().unwrap().map(|(h, b)| (h.tag, b.to_vec()))).collect()
}

fn conn(w: Trickle) -> Conn {
    Conn::new(PeerId(2), Box::new(w), false, true, 1 << 20, Arc::default())
}

/// A send written from the sender's thread that the wire takes in part: the rest
/// goes out from the queue, and a send made meanwhile comes after it whole.
#[test]
fn a_frame_written_in_part_is_finished_before_the_next() {
    let (wire, took, budget) = Trickle::new(12, 5);
    let c = conn(wire);
    let mem = MemTable::default();
    assert!(c.send(frame(1), &mem).is_ok());
    assert_eq!(
        took.lock().unwrap().len(),
        12,
        "in part, then the wire is full"
    );
    assert!(c.send(frame(2), &mem).is_ok());
    budget.store(usize::MAX, Ordering::SeqCst);
    assert!(c.flush(&mem).done.is_empty());
    assert!(c.send(frame(3), &mem).is_ok());
    let want: Vec<(u64, Vec<u8>)> = (1..=3).map(|t| (t, vec![t as u8; 8])).collect();
    assert_eq!(frames(&took.lock().unwrap()), want);
}

/// A send written straight from the sender's thread flushes what others posted
/// while it held the write lock (else it waits for an unrelated event, for ever).
#[test]
fn a_frame_posted_during_a_direct_write_goes_out_with_it() {
    // (Taken whole: the frame is written from the sender's thread, not queued.)
    let (mut wire, took, _) = Trickle::new(usize::MAX, usize::MAX);
    let slot = Arc::new(OnceLock::new());
    wire.nudge = Some(slot.clone());
    let c = Arc::new(conn(wire));
    let _ = slot.set(c.clone());
    assert!(c.send(frame(1), &MemTable::default()).is_ok());
    let tags: Vec<u64> = frames(&took.lock().unwrap()).iter().map(|f| f.0).collect();
    assert_eq!(tags, [1, 2]);
}

#[test]
fn a_connection_pauses_on_its_own_share_or_on_a_fair_share_under_pressure() {
    let b = Backlog {
        per_conn: 1600,
        total: 10_000,
    };
    // Alone: paused past its own bound, resumed at half of it.
    assert!(!b.over(1600, 1600) && b.over(1601, 1601));
    assert!(!b.under(801, 801) && b.under(800, 800));
    // Under total pressure: paused past the fair share (per_conn / 16), resumed at
    // half of that while the pressure lasts, at half its own bound once it is over.
    assert!(!b.over(100, 20_000) && b.over(101, 20_000));
    assert!(!b.under(51, 20_000) && b.under(50, 20_000));
    assert!(b.under(800, 10_000));
}
