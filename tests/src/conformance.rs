//! The NA plugin conformance suite: the same cases for every plugin. A plugin's test file
//! instantiates them all with [`crate::conformance_suite!`] and a factory of fresh
//! endpoints.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use na::{Access, Address, Event, MemHandle, NaError, NaResult, OpId, Plugin, Segment};

/// Makes a fresh endpoint of the plugin under test.
pub type Factory = fn() -> Arc<dyn Plugin>;

const WAIT: Duration = Duration::from_secs(10);

/// An endpoint with a thread that drives its progress and forwards its events.
pub struct Driven {
    /// The endpoint.
    pub p: Arc<dyn Plugin>,
    events: Receiver<Event>,
    stash: HashMap<OpId, NaResult<Vec<u8>>>,
    /// Expected messages that matched no receive (`Caps::unposted_expected`).
    strays: Vec<(na::PeerId, u64, Vec<u8>)>,
    /// Peers reported lost ([`Event::PeerLost`]), in order.
    pub lost: Vec<na::PeerId>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Driven {
    /// Starts driving `p`.
    pub fn new(p: Arc<dyn Plugin>) -> Driven {
        let (tx, events) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (p2, s2) = (p.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Acquire) {
                if p2.progress(Some(Duration::from_millis(50))).is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                while let Some(ev) = p2.poll_event() {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        });
        Driven {
            p,
            events,
            stash: HashMap::new(),
            strays: Vec::new(),
            lost: Vec::new(),
            stop,
            thread: Some(thread),
        }
    }

    /// The next event other than a Done (those are kept for [`Driven::done`]).
    pub fn next_unexpected(&mut self) -> Option<(na::PeerId, u64, Vec<u8>)> {
        self.next_unexpected_within(WAIT)
    }

    /// As [`Driven::next_unexpected`], waiting at most `d`.
    pub fn next_unexpected_within(&mut self, d: Duration) -> Option<(na::PeerId, u64, Vec<u8>)> {
        let end = Instant::now() + d;
        loop {
            match self
                .events
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Unexpected { peer, tag, data }) => return Some((peer, tag, data)),
                Ok(Event::Done { op, result }) => {
                    self.stash.insert(op, result);
                }
                Ok(Event::Expected { peer, tag, data }) => self.strays.push((peer, tag, data)),
                Ok(Event::PeerLost { peer, .. }) => self.lost.push(peer),
                Err(_) => return None,
            }
        }
    }

    /// Completions received that nobody has waited for yet.
    pub fn unclaimed(&self) -> usize {
        self.stash.len()
    }

    /// Waits for `op` to complete.
    pub fn done(&mut self, op: OpId) -> NaResult<Vec<u8>> {
        self.done_within(op, WAIT)
            .unwrap_or_else(|| panic!("op {op:?} did not complete within {WAIT:?}"))
    }

    /// Waits at most `d` for `op` to complete.
    pub fn done_within(&mut self, op: OpId, d: Duration) -> Option<NaResult<Vec<u8>>> {
        let end = Instant::now() + d;
        loop {
            if let Some(r) = self.stash.remove(&op) {
                return Some(r);
            }
            match self
                .events
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Done { op, result }) => {
                    self.stash.insert(op, result);
                }
                Ok(Event::Expected { peer, tag, data }) => self.strays.push((peer, tag, data)),
                Ok(Event::PeerLost { peer, .. }) => self.lost.push(peer),
                Ok(Event::Unexpected { .. }) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.p.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Two driven endpoints, `a` having looked `b` up.
pub fn pair(make: Factory) -> (Driven, Driven, na::PeerId) {
    let a = Driven::new(make());
    let b = Driven::new(make());
    let pb = a.p.lookup(b.p.self_addr()).expect("lookup");
    (a, b, pb)
}

/// Unexpected messages of every size up to the eager limit arrive intact with their tags,
/// and the receiver answers the sender with expected messages matched by tag.
pub fn messages_round_trip_at_every_size(make: Factory) {
    let (mut a, mut b, pb) = pair(make);
    let max = a.p.max_eager_size();
    let mut sizes = vec![0, 1, 2, 3, 7, 8, 63, 64, 65, 4095, 4096, 4097, max - 1, max];
    sizes.retain(|s| *s <= max);
    for (i, &n) in sizes.iter().enumerate() {
        let msg: Vec<u8> = (0..n).map(|j| (j * 31 + i) as u8).collect();
        let tag = 1000 + i as u64;
        let recv = a.p.recv_expected(pb, tag).unwrap();
        let send = a.p.send_unexpected(pb, tag, msg.clone()).unwrap();
        let (from, got_tag, data) = b.next_unexpected().expect("unexpected message");
        assert_eq!((got_tag, &data), (tag, &msg), "size {n}");
        let mut answer = data;
        answer.reverse();
        let s2 = b.p.send_expected(from, tag, answer.clone()).unwrap();
        assert_eq!(a.done(recv).unwrap(), answer, "answer of size {n}");
        assert!(a.done(send).is_ok());
        assert!(b.done(s2).is_ok());
    }
}

/// A message over the eager limit is refused locally with `InvalidArgument`.
pub fn oversized_message_is_refused(make: Factory) {
    let (a, _b, pb) = pair(make);
    let too_big = vec![0u8; a.p.max_eager_size() + 1];
    assert!(matches!(
        a.p.send_unexpected(pb, 1, too_big),
        Err(NaError::InvalidArgument(_))
    ));
}

/// An expected message nobody waits for is dropped, or handed over as
/// [`Event::Expected`] by a plugin that says so ([`na::Caps::unposted_expected`]); either
/// way it completes no receive, and the connection keeps working.
pub fn unmatched_expected_message_is_dropped(make: Factory) {
    let (mut a, mut b, pb) = pair(make);
    let s = a.p.send_unexpected(pb, 1, b"hi".to_vec()).unwrap();
    a.done(s).unwrap();
    let (from, _, _) = b.next_unexpected().unwrap();
    let stray =
        b.p.send_expected(from, 999, b"nobody asked".to_vec())
            .unwrap();
    b.done(stray).unwrap();
    let recv = a.p.recv_expected(pb, 5).unwrap();
    let ok = b.p.send_expected(from, 5, b"wanted".to_vec()).unwrap();
    b.done(ok).unwrap();
    assert_eq!(a.done(recv).unwrap(), b"wanted");
    // Delivered in order on one connection: the stray came before the answer.
    let want = match a.p.caps().unposted_expected {
        true => vec![(pb, 999, b"nobody asked".to_vec())],
        false => vec![],
    };
    assert_eq!(a.strays, want);
}

/// A plugin that hands answers over unposted fails a quiet send to a peer whose
/// connection is gone, and hands the message back (a consumer that posts no receive
/// learns of the loss there, and sends it again on a new connection).
pub fn quiet_send_to_a_lost_peer_hands_the_message_back(make: Factory) {
    let (mut a, b, pb) = pair(make);
    if !a.p.caps().unposted_expected {
        return;
    }
    a.p.send_quiet(pb, false, 3, b"first".to_vec()).unwrap();
    drop(b);
    let end = Instant::now() + WAIT;
    let unsent = loop {
        match a.p.send_quiet(pb, false, 4, b"again".to_vec()) {
            Err(u) => break u,
            Ok(()) if Instant::now() < end => {
                a.next_unexpected_within(Duration::from_millis(10));
            }
            Ok(()) => panic!("sends to a closed endpoint kept succeeding"),
        }
    };
    assert_eq!(unsent.data, b"again");
    assert!(
        unsent.error.fault() == na::Fault::Network,
        "{:?}",
        unsent.error
    );
}

/// A canceled receive completes once, with `Canceled`; a second cancel finds nothing.
pub fn cancel_completes_once_with_canceled(make: Factory) {
    let (mut a, _b, pb) = pair(make);
    let recv = a.p.recv_expected(pb, 77).unwrap();
    assert!(a.p.cancel(recv));
    assert_eq!(a.done(recv), Err(NaError::Canceled));
    assert!(!a.p.cancel(recv));
}

/// Memory registered by one endpoint, with a guard region around it.
pub struct Guarded {
    buf: Vec<u8>,
    /// The registration (of the middle part only).
    pub h: MemHandle,
    guard: usize,
}

impl Guarded {
    /// Registers `len` bytes filled with `fill`, between guard bytes.
    pub fn new(p: &dyn Plugin, len: usize, fill: impl Fn(usize) -> u8, access: Access) -> Guarded {
        let guard = 64;
        let mut buf = vec![0xEEu8; len + 2 * guard];
        for i in 0..len {
            buf[guard + i] = fill(i);
        }
        let seg = Segment::new(buf[guard..].as_mut_ptr(), len);
        // SAFETY: `buf` lives in this struct, is not resized, and is only read through
        // `bytes` after the transfers complete; it is deregistered by the test.
        let h = unsafe { p.register(&[seg], access) }.unwrap();
        Guarded { buf, h, guard }
    }

    /// The registered bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.guard..self.buf.len() - self.guard]
    }

    /// Whether the guard bytes are untouched.
    pub fn guards_intact(&self) -> bool {
        let n = self.buf.len();
        self.buf[..self.guard]
            .iter()
            .chain(&self.buf[n - self.guard..])
            .all(|b| *b == 0xEE)
    }
}

/// `get` and `put` move exact bytes at offsets, across several segments and across the
/// transport's chunking of large transfers.
pub fn put_and_get_move_exact_bytes(make: Factory) {
    let (mut a, b, pb) = pair(make);
    for len in [1usize, 4095, 4097, 3 << 20] {
        let remote = Guarded::new(&*b.p, len + 100, |i| (i * 7) as u8, Access::ReadWrite);
        let local = Guarded::new(&*a.p, len + 50, |_| 0, Access::ReadWrite);
        let op =
            a.p.get(pb, &local.h, 50, &remote.h.remote, 100, len as u64)
                .unwrap();
        a.done(op).unwrap();
        assert_eq!(&local.bytes()[50..], &remote.bytes()[100..], "get of {len}");
        assert!(local.guards_intact() && remote.guards_intact());

        let src = Guarded::new(&*a.p, len, |i| (i * 13 + 1) as u8, Access::ReadOnly);
        let op =
            a.p.put(pb, &src.h, 0, &remote.h.remote, 0, len as u64)
                .unwrap();
        a.done(op).unwrap();
        assert_eq!(&remote.bytes()[..len], src.bytes(), "put of {len}");
        assert!(remote.guards_intact());
        for g in [&remote, &local, &src] {
            let owner = if std::ptr::eq(g, &remote) { &b.p } else { &a.p };
            owner.deregister(&g.h).unwrap();
        }
    }
}

/// A region built from segments of different sizes reads and writes as one range.
pub fn multi_segment_regions_are_linear(make: Factory) {
    let (mut a, b, pb) = pair(make);
    let mut parts: Vec<Vec<u8>> = [3usize, 1, 4096, 10]
        .iter()
        .enumerate()
        .map(|(k, n)| vec![k as u8 + 1; *n])
        .collect();
    let segs: Vec<Segment> = parts.iter_mut().map(|p| Segment::from_slice(p)).collect();
    // SAFETY: `parts` outlives the registration and is not touched until deregistered.
    let h = unsafe { b.p.register(&segs, Access::ReadWrite) }.unwrap();
    let total = 3 + 1 + 4096 + 10;
    let local = Guarded::new(&*a.p, total, |_| 0, Access::ReadWrite);
    let op =
        a.p.get(pb, &local.h, 0, &h.remote, 0, total as u64)
            .unwrap();
    a.done(op).unwrap();
    let expect: Vec<u8> = parts.concat();
    assert_eq!(local.bytes(), expect.as_slice());
    let src = Guarded::new(&*a.p, 6, |i| 100 + i as u8, Access::ReadOnly);
    let op = a.p.put(pb, &src.h, 0, &h.remote, 1, 6).unwrap();
    a.done(op).unwrap();
    b.p.deregister(&h).unwrap();
    assert_eq!(
        (&parts[0][..], &parts[1][..], &parts[2][..3]),
        (&[1, 100, 101][..], &[102][..], &[103, 104, 105][..])
    );
}

/// Wrong keys, forged bounds, forbidden modes and revoked regions are refused by the
/// owner, and the owner's memory (guards included) is untouched.
pub fn owner_refuses_bad_remote_access(make: Factory) {
    // Small and large: plugins move them differently (carried in messages, by the ring,
    // by single copy, by the provider's RMA), and each way must refuse.
    const REGION: usize = 128 << 10;
    let (mut a, b, pb) = pair(make);
    let ro = Guarded::new(&*b.p, REGION, |i| i as u8, Access::ReadOnly);
    let wo = Guarded::new(&*b.p, REGION, |_| 9, Access::WriteOnly);
    let local = Guarded::new(&*a.p, 2 * REGION, |_| 1, Access::ReadWrite);
    let refused = |a: &mut Driven, op: NaResult<OpId>| match op {
        Ok(op) => matches!(a.done(op), Err(NaError::AccessDenied(_))),
        Err(e) => matches!(e, NaError::InvalidArgument(_)),
    };
    for n in [16u64, 64 << 10] {
        let mut wrong_key = ro.h.remote.clone();
        wrong_key.key ^= 0x5555;
        let op = a.p.get(pb, &local.h, 0, &wrong_key, 0, n);
        assert!(refused(&mut a, op), "wrong key, {n} B");
        let mut forged_len = ro.h.remote.clone();
        forged_len.len = 2 * REGION as u64;
        let op = a.p.get(pb, &local.h, 0, &forged_len, REGION as u64 - 8, n);
        assert!(refused(&mut a, op), "past the end, {n} B");
        let op = a.p.get(pb, &local.h, 0, &ro.h.remote, u64::MAX - 1, n);
        assert!(refused(&mut a, op), "offset overflow, {n} B");
        let op = a.p.put(pb, &local.h, 0, &ro.h.remote, 0, n);
        assert!(refused(&mut a, op), "put to read-only, {n} B");
        let op = a.p.get(pb, &local.h, 0, &wo.h.remote, 0, n);
        assert!(refused(&mut a, op), "get from write-only, {n} B");
    }
    b.p.deregister(&wo.h).unwrap();
    for n in [16u64, 64 << 10] {
        let op = a.p.put(pb, &local.h, 0, &wo.h.remote, 0, n);
        assert!(refused(&mut a, op), "put to deregistered, {n} B");
    }
    assert!(ro.bytes().iter().enumerate().all(|(i, b)| *b == i as u8) && ro.guards_intact());
    assert!(wo.bytes().iter().all(|b| *b == 9) && wo.guards_intact());
    // The connection still serves good requests.
    for n in [4096usize, REGION] {
        let op = a.p.get(pb, &local.h, 0, &ro.h.remote, 0, n as u64).unwrap();
        a.done(op).unwrap();
        assert_eq!(&local.bytes()[..n], &ro.bytes()[..n]);
    }
}

/// Transfers posted together, refused ones among good ones (an owner may serve them as
/// one run): each gets its own outcome, good ones move exact bytes, and the owner's
/// memory outside what was allowed is untouched.
pub fn refused_transfers_among_good_ones_fail_alone(make: Factory) {
    const N: usize = 16 << 10;
    let (mut a, b, pb) = pair(make);
    let ro = Guarded::new(&*b.p, 8 * N, |i| (i % 251) as u8, Access::ReadOnly);
    let rw = Guarded::new(&*b.p, 8 * N, |_| 0, Access::ReadWrite);
    let local = Guarded::new(&*a.p, 8 * N, |i| (i % 13) as u8 + 1, Access::ReadWrite);
    let mut wrong_key = ro.h.remote.clone();
    wrong_key.key ^= 0x5555;
    let n = N as u64;
    let mut ops = Vec::new();
    for i in 0..8u64 {
        let (good, op) = match i % 4 {
            0 => (true, a.p.get(pb, &local.h, i * n, &ro.h.remote, i * n, n)),
            1 => (false, a.p.get(pb, &local.h, i * n, &wrong_key, i * n, n)),
            2 => (true, a.p.put(pb, &local.h, i * n, &rw.h.remote, i * n, n)),
            _ => (false, a.p.put(pb, &local.h, i * n, &ro.h.remote, i * n, n)),
        };
        ops.push((i, good, op.unwrap()));
    }
    for (i, good, op) in ops {
        let r = a.done(op);
        assert_eq!(r.is_ok(), good, "transfer {i}: {r:?}");
        let at = (i * n) as usize..((i + 1) * n) as usize;
        match i % 4 {
            0 => assert_eq!(&local.bytes()[at.clone()], &ro.bytes()[at.clone()]),
            2 => assert_eq!(&rw.bytes()[at.clone()], &local.bytes()[at.clone()]),
            _ => {}
        }
        if i % 4 != 2 {
            assert!(rw.bytes()[at].iter().all(|b| *b == 0), "transfer {i} wrote");
        }
    }
    assert!(
        ro.bytes()
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );
    assert!(ro.guards_intact() && rw.guards_intact() && local.guards_intact());
}

/// Large transfers that are refused or canceled (their data is still on the wire) leave
/// the connection in step: the next transfer moves exact bytes.
pub fn large_refused_or_canceled_transfers_keep_the_stream_in_step(make: Factory) {
    let (mut a, b, pb) = pair(make);
    let n = 1usize << 20;
    let ro = Guarded::new(&*b.p, n, |i| (i % 251) as u8, Access::ReadOnly);
    let src = Guarded::new(&*a.p, n, |i| (i % 13) as u8, Access::ReadOnly);
    let op = a.p.put(pb, &src.h, 0, &ro.h.remote, 0, n as u64).unwrap();
    assert!(
        matches!(a.done(op), Err(NaError::AccessDenied(_))),
        "large put into read-only"
    );
    assert!(
        ro.bytes()
            .iter()
            .enumerate()
            .all(|(i, v)| *v == (i % 251) as u8)
            && ro.guards_intact()
    );
    // Cancel large gets right after posting. Usually the cancel wins; when the transfer
    // won the race, cancel says so and the event is the real outcome (the contract).
    let big = 16 << 20;
    let big_remote = Guarded::new(&*b.p, big, |i| (i % 7) as u8, Access::ReadOnly);
    let big_local = Guarded::new(&*a.p, big, |_| 0, Access::ReadWrite);
    for _ in 0..3 {
        let op =
            a.p.get(pb, &big_local.h, 0, &big_remote.h.remote, 0, big as u64)
                .unwrap();
        let canceled = a.p.cancel(op);
        let r = a.done(op);
        if canceled {
            assert_eq!(r, Err(NaError::Canceled));
        } else {
            assert!(r.is_ok(), "{r:?}");
        }
    }
    let local = Guarded::new(&*a.p, n, |_| 0, Access::ReadWrite);
    let op = a.p.get(pb, &local.h, 0, &ro.h.remote, 0, n as u64).unwrap();
    a.done(op).unwrap();
    assert_eq!(local.bytes(), ro.bytes());
    assert!(local.guards_intact());
}

/// Local misuse is refused at post time: local range out of bounds, unregistered handle.
pub fn local_misuse_is_refused_at_post(make: Factory) {
    let (a, b, pb) = pair(make);
    let remote = Guarded::new(&*b.p, 100, |_| 0, Access::ReadWrite);
    let local = Guarded::new(&*a.p, 100, |_| 0, Access::ReadWrite);
    assert!(matches!(
        a.p.get(pb, &local.h, 90, &remote.h.remote, 0, 20),
        Err(NaError::InvalidArgument(_))
    ));
    a.p.deregister(&local.h).unwrap();
    assert!(matches!(
        a.p.get(pb, &local.h, 0, &remote.h.remote, 0, 20),
        Err(NaError::InvalidArgument(_))
    ));
}

/// When the peer goes away, pending operations on it fail (not hang), with a transport error.
pub fn peer_loss_fails_pending_ops(make: Factory) {
    let (mut a, b, pb) = pair(make);
    let s = a.p.send_unexpected(pb, 1, b"x".to_vec()).unwrap();
    a.done(s).unwrap();
    let recv = a.p.recv_expected(pb, 42).unwrap();
    drop(b);
    let r = a.done(recv);
    assert!(
        matches!(
            r,
            Err(NaError::Disconnected(_) | NaError::PeerMisbehaved(_))
        ),
        "{r:?}"
    );
}

/// Looking up an address where nobody listens yields ops that fail with `Unreachable`.
pub fn unreachable_peer_fails_ops(make: Factory) {
    let a = Driven::new(make());
    // Take an address from a live endpoint, then close it.
    let gone: Address = {
        let tmp = make();
        tmp.self_addr().clone()
    };
    let mut a = a;
    match a.p.lookup(&gone) {
        Err(e) => assert!(matches!(e, NaError::Unreachable(_)), "{e}"),
        Ok(peer) => {
            // The refusal may come before the post (then the post fails at once) or after
            // it (then the op does).
            let r = a.p.recv_expected(peer, 1).map(|op| a.done(op));
            assert!(
                matches!(
                    r,
                    Ok(Err(NaError::Unreachable(_)))
                        | Err(NaError::Unreachable(_) | NaError::Disconnected(_))
                ),
                "{r:?}"
            );
        }
    }
}

/// `wake` makes a `progress` that waits for ever in another thread return.
pub fn wake_interrupts_progress(make: Factory) {
    let p = make();
    let p2 = p.clone();
    let t = std::thread::spawn(move || {
        let t0 = Instant::now();
        p2.progress(None).unwrap();
        t0.elapsed()
    });
    std::thread::sleep(Duration::from_millis(50));
    p.wake();
    assert!(t.join().unwrap() < Duration::from_secs(5));
}

/// Instantiates every conformance case as a `#[test]` for one plugin:
/// `conformance_suite!(|| Arc::new(MyPlugin::new(...)) as Arc<dyn Plugin>);`
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            messages_round_trip_at_every_size, oversized_message_is_refused,
            unmatched_expected_message_is_dropped, cancel_completes_once_with_canceled,
            quiet_send_to_a_lost_peer_hands_the_message_back,
            put_and_get_move_exact_bytes, multi_segment_regions_are_linear,
            owner_refuses_bad_remote_access, refused_transfers_among_good_ones_fail_alone,
            large_refused_or_canceled_transfers_keep_the_stream_in_step,
            local_misuse_is_refused_at_post,
            peer_loss_fails_pending_ops, unreachable_peer_fails_ops, wake_interrupts_progress);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::$case($make);
            }
        )*
    };
}
