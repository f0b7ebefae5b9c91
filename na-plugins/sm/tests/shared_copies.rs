//! Large transfers by single copy are shared: the owner copies the head, the requester
//! the tail out of or into the owner's memory (medium ones: every other one whole), and
//! only what the owner exposed, while it is exposed (a write in flight holds the owner's
//! deregistration until it ends).

use std::time::{Duration, Instant};

use na::{Access, Event, MemHandle, NaError, Plugin, RemoteMem, Segment};
use na_sm::SmPlugin;
use na_stream::StreamPlugin;
use na_stream::direct::Direct;

const LEN: usize = 1 << 20;

/// Whether single copy is on (test-all also runs everything with `QS_SM_CMA=0`).
fn single_copy() -> bool {
    std::env::var("QS_SM_CMA").map_or(true, |v| v.trim() != "0")
}

fn plugin() -> StreamPlugin {
    SmPlugin::new(&"sm://auto".parse().unwrap()).unwrap()
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..LEN).map(|i| (i * 7 + seed as usize) as u8).collect()
}

/// Connects `req` to `owner` and waits until the owner has accepted (and announced its
/// arena of direct reads on the link).
fn connect(req: &StreamPlugin, owner: &StreamPlugin) {
    let peer = req.lookup(owner.self_addr()).unwrap();
    req.send_unexpected(peer, 1, b"hello".to_vec()).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < end, "never accepted");
        req.progress(Some(Duration::ZERO)).unwrap();
        while req.poll_event().is_some() {}
        owner.progress(Some(Duration::from_millis(1))).unwrap();
        if std::iter::from_fn(|| owner.poll_event()).any(|e| matches!(e, Event::Unexpected { .. }))
        {
            return;
        }
    }
}

fn register(p: &StreamPlugin, buf: &mut [u8], access: Access) -> MemHandle {
    // SAFETY: every buffer outlives its registration in these tests (deregistered or
    // leaked before the buffer goes).
    unsafe { p.register(&[Segment::from_slice(buf)], access) }.unwrap()
}

/// `len` bytes between the start of `local` and the start of `remote`: read into
/// `local` (`get`) or written from it; both plugins driven.
fn transfer(
    get: bool,
    (req, owner): (&StreamPlugin, &StreamPlugin),
    local: &MemHandle,
    remote: &RemoteMem,
    len: u64,
) -> Result<(), NaError> {
    let peer = req.lookup(owner.self_addr())?;
    let op = match get {
        true => req.get(peer, local, 0, remote, 0, len)?,
        false => req.put(peer, local, 0, remote, 0, len)?,
    };
    finish(req, &[owner], op)
}

/// Drives `req` and the `others` until `op` of `req` is done.
fn finish(req: &StreamPlugin, others: &[&StreamPlugin], op: na::OpId) -> Result<(), NaError> {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        for o in others {
            o.progress(Some(Duration::ZERO))?;
            while o.poll_event().is_some() {}
        }
        req.progress(Some(Duration::ZERO))?;
        while let Some(ev) = req.poll_event() {
            if let Event::Done { op: o, result } = ev
                && o == op
            {
                return result.map(drop);
            }
        }
    }
    panic!("the transfer never completed")
}

/// `LEN` bytes whose 64 KiB parts all differ (`pattern`'s repeat every 256 bytes).
fn parts(seed: u8) -> Vec<u8> {
    (0..LEN)
        .map(|i| (i * 7 + (i >> 16) * 31 + seed as usize) as u8)
        .collect()
}

/// Drives `req` and `owner` until every op of `ops` is done, each successfully.
fn finish_all(req: &StreamPlugin, owner: &StreamPlugin, mut ops: Vec<na::OpId>) {
    let end = Instant::now() + Duration::from_secs(20);
    while !ops.is_empty() {
        assert!(
            Instant::now() < end,
            "{} transfers never completed",
            ops.len()
        );
        owner.progress(Some(Duration::ZERO)).unwrap();
        while owner.poll_event().is_some() {}
        req.progress(Some(Duration::ZERO)).unwrap();
        while let Some(ev) = req.poll_event() {
            if let Event::Done { op, result } = ev {
                result.unwrap();
                ops.retain(|o| *o != op);
            }
        }
    }
}

/// An owner exposing `buf` to peers for `access`, and a requester connected to it.
fn exposing(buf: &mut [u8], access: Access) -> (StreamPlugin, StreamPlugin, MemHandle) {
    let (owner, req) = (plugin(), plugin());
    connect(&req, &owner);
    let exposed = register(&owner, buf, access);
    (owner, req, exposed)
}

#[test]
fn a_large_read_is_copied_half_by_each_side_and_is_right() {
    let mut src = pattern(1);
    let (owner, req, exposed) = exposing(&mut src, Access::ReadOnly);
    let mut dst = vec![0u8; LEN];
    let local = register(&req, &mut dst, Access::ReadWrite);
    transfer(true, (&req, &owner), &local, &exposed.remote, LEN as u64).unwrap();
    req.deregister(&local).unwrap();
    assert!(dst == src, "the bytes read");
    let expected = if single_copy() { LEN as u64 / 2 } else { 0 };
    assert_eq!(req.direct_bytes(), expected);
    // Small reads are the owner's alone.
    let mut small = vec![0u8; 16 << 10];
    let local = register(&req, &mut small, Access::ReadWrite);
    for _ in 0..4 {
        transfer(true, (&req, &owner), &local, &exposed.remote, 16 << 10).unwrap();
    }
    assert_eq!(small[..], src[..16 << 10]);
    assert_eq!(req.direct_bytes(), expected, "no more copied here");
    req.deregister(&local).unwrap();
    owner.deregister(&exposed).unwrap();
}

/// Transfers of 32 KiB up to the halves' threshold are shared whole, every other one
/// copied by the requester (`na_stream::direct::WHOLE_MIN`), reads and writes alike.
#[test]
fn medium_transfers_are_copied_whole_by_each_side_in_turn_and_are_right() {
    const MID: usize = 64 << 10;
    let mut src = pattern(5);
    // Each region the requester copies from must carry the owner's extras: 64 KiB ones.
    let mut regions: Vec<Vec<u8>> = src.chunks(MID).take(4).map(<[u8]>::to_vec).collect();
    let (owner, req) = (plugin(), plugin());
    connect(&req, &owner);
    let mut dst = vec![0u8; MID];
    let local = register(&req, &mut dst, Access::ReadWrite);
    for (i, r) in regions.iter_mut().enumerate() {
        let exposed = register(&owner, r, Access::ReadOnly);
        transfer(true, (&req, &owner), &local, &exposed.remote, MID as u64).unwrap();
        assert!(dst[..] == src[i * MID..(i + 1) * MID], "read {i}");
        owner.deregister(&exposed).unwrap();
    }
    let two = if single_copy() { 2 * MID as u64 } else { 0 };
    assert_eq!(req.direct_bytes(), two, "every other read copied here");
    // Writes: four into four regions of the owner's, each right, two copied here.
    src.truncate(MID);
    let from = register(&req, &mut src, Access::ReadOnly);
    for (i, r) in regions.iter_mut().enumerate() {
        r.fill(0);
        let exposed = register(&owner, r, Access::ReadWrite);
        transfer(false, (&req, &owner), &from, &exposed.remote, MID as u64).unwrap();
        owner.deregister(&exposed).unwrap();
        assert!(r[..] == src[..], "write {i}");
    }
    assert_eq!(req.direct_bytes(), 2 * two, "every other write copied here");
    req.deregister(&from).unwrap();
    req.deregister(&local).unwrap();
}

/// Medium transfers posted together, into and out of distinct parts of two regions
/// taken in runs (`A A A A B B A B`): the requester copies its turns as runs, one per
/// link, direction and region (`StreamPlugin::copy_run`), and every byte is right.
#[test]
fn medium_transfers_posted_together_are_copied_in_runs_and_are_right() {
    const MID: u64 = 64 << 10;
    const ORDER: [usize; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1];
    let (owner, req) = (plugin(), plugin());
    connect(&req, &owner);
    let peer = req.lookup(owner.self_addr()).unwrap();
    let mut srcs = [parts(11), parts(12)];
    let exposed: Vec<MemHandle> = srcs
        .iter_mut()
        .map(|s| register(&owner, s, Access::ReadWrite))
        .collect();
    // Part i of ours and part i of the region ORDER[i], read (`get`) or written.
    let post = |get: bool, local: &MemHandle| -> Vec<na::OpId> {
        let each = |(i, &r): (usize, &usize)| {
            let (at, remote) = (i as u64 * MID, &exposed[r].remote);
            match get {
                true => req.get(peer, local, at, remote, at, MID),
                false => req.put(peer, local, at, remote, at, MID),
            }
        };
        ORDER
            .iter()
            .enumerate()
            .map(each)
            .map(Result::unwrap)
            .collect()
    };
    let mut dst = vec![0u8; LEN];
    let local = register(&req, &mut dst, Access::ReadWrite);
    finish_all(&req, &owner, post(true, &local));
    req.deregister(&local).unwrap();
    for (i, &r) in ORDER.iter().enumerate() {
        let at = i * MID as usize;
        assert!(
            dst[at..at + MID as usize] == srcs[r][at..at + MID as usize],
            "read {i}"
        );
    }
    let half = if single_copy() { 8 * MID } else { 0 };
    assert_eq!(req.direct_bytes(), half, "every other read copied here");
    let mut from = parts(13);
    let local = register(&req, &mut from, Access::ReadOnly);
    finish_all(&req, &owner, post(false, &local));
    req.deregister(&local).unwrap();
    for e in &exposed {
        owner.deregister(e).unwrap();
    }
    for (i, &r) in ORDER.iter().enumerate() {
        let at = i * MID as usize;
        assert!(
            srcs[r][at..at + MID as usize] == from[at..at + MID as usize],
            "write {i}"
        );
    }
    assert_eq!(
        req.direct_bytes(),
        2 * half,
        "every other write copied here"
    );
}

#[test]
fn a_forged_region_or_entry_is_not_read_here() {
    let (owner, req) = (plugin(), plugin());
    connect(&req, &owner);
    let mut src = pattern(2);
    let mut secret = vec![0x5au8; 2 * LEN];
    let exposed = register(&owner, &mut src, Access::ReadOnly);
    let salt = na_stream::direct::Arena::get().announced().salt;
    let key = exposed.remote.key;
    let Some(real) = Direct::decode(&exposed.remote.extra, key, LEN as u64, salt) else {
        assert!(!single_copy(), "a readable region offers direct reads");
        return owner.deregister(&exposed).unwrap();
    };
    // A third party's descriptors: the real key and entry with another address of the
    // owner's; then an entry outside the arena the owner announced, made to confirm
    // (the owner holds bytes a client chose: key, address, length, key).
    let at = secret.as_ptr() as u64;
    let fake = [
        exposed.remote.key,
        at + 4096,
        LEN as u64,
        exposed.remote.key,
    ];
    for (i, w) in fake.iter().enumerate() {
        secret[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
    }
    let forged = [
        Direct {
            addr: at,
            ..real.clone()
        },
        Direct {
            entry: at,
            addr: at + 4096,
            ..real.clone()
        },
    ];
    for f in forged {
        let remote = RemoteMem {
            extra: f.encode(key, salt).into(),
            ..exposed.remote.clone()
        };
        let mut dst = vec![0u8; LEN];
        let local = register(&req, &mut dst, Access::ReadWrite);
        transfer(true, (&req, &owner), &local, &remote, LEN as u64).unwrap();
        req.deregister(&local).unwrap();
        assert!(
            dst == src,
            "the owner's bytes, by its checks, not the secret"
        );
        // With the key refused too, nothing at all lands: not a byte of the secret.
        let refused = RemoteMem {
            key: key ^ 1,
            extra: f.encode(key ^ 1, salt).into(),
            ..remote.clone()
        };
        let mut dst = vec![0xeeu8; LEN];
        let local = register(&req, &mut dst, Access::ReadWrite);
        assert!(transfer(true, (&req, &owner), &local, &refused, LEN as u64).is_err());
        req.deregister(&local).unwrap();
        assert!(dst.iter().all(|b| *b == 0xee), "not a byte read");
    }
    assert_eq!(req.direct_bytes(), 0, "nothing copied here");
    owner.deregister(&exposed).unwrap();
    drop(secret);
}

#[test]
fn a_region_let_go_is_not_read_here() {
    let mut src = pattern(3);
    let (owner, req, exposed) = exposing(&mut src, Access::ReadOnly);
    owner.deregister(&exposed).unwrap();
    // (The memory is still there: only the registration ended.)
    let mut dst = vec![0xeeu8; LEN];
    let local = register(&req, &mut dst, Access::ReadWrite);
    let r = transfer(true, (&req, &owner), &local, &exposed.remote, LEN as u64);
    req.deregister(&local).unwrap();
    assert!(r.is_err(), "{r:?}");
    assert_eq!(req.direct_bytes(), 0);
    assert!(dst.iter().all(|b| *b == 0xee), "not a byte read");
}

/// Connected plugins for writes: the owner's region (`LEN` bytes of `fill`, which peers
/// may `access`) and the requester's source (pattern `seed`), each registered.
struct Writes {
    owner: StreamPlugin,
    req: StreamPlugin,
    dst: Vec<u8>,
    exposed: MemHandle,
    src: Vec<u8>,
    local: MemHandle,
}

fn writes(fill: u8, access: Access, seed: u8) -> Writes {
    let mut dst = vec![fill; LEN];
    let (owner, req, exposed) = exposing(&mut dst, access);
    let mut src = pattern(seed);
    let local = register(&req, &mut src, Access::ReadOnly);
    Writes {
        owner,
        req,
        dst,
        exposed,
        src,
        local,
    }
}

#[test]
fn a_large_write_is_copied_half_by_each_side_and_is_right() {
    let w = writes(0, Access::ReadWrite, 4);
    transfer(
        false,
        (&w.req, &w.owner),
        &w.local,
        &w.exposed.remote,
        LEN as u64,
    )
    .unwrap();
    w.owner.deregister(&w.exposed).unwrap();
    assert!(w.dst == w.src, "the bytes written");
    let expected = if single_copy() { LEN as u64 / 2 } else { 0 };
    assert_eq!(w.req.direct_bytes(), expected);
    w.req.deregister(&w.local).unwrap();
}

#[test]
fn a_region_peers_may_only_read_is_not_written() {
    refused_write(Access::ReadOnly, false);
}

#[test]
fn a_region_let_go_is_not_written() {
    refused_write(Access::ReadWrite, true);
}

/// A write into a region peers may `access`, let go first if `let_go`: refused, and not
/// a byte written.
fn refused_write(access: Access, let_go: bool) {
    let w = writes(0xee, access, 5);
    if let_go {
        // (The memory is still there: only the registration ended.)
        w.owner.deregister(&w.exposed).unwrap();
    }
    let remote = &w.exposed.remote;
    let r = transfer(false, (&w.req, &w.owner), &w.local, remote, LEN as u64);
    assert!(r.is_err(), "{r:?}");
    assert_eq!(w.req.direct_bytes(), 0, "nothing written here");
    if !let_go {
        w.owner.deregister(&w.exposed).unwrap();
    }
    w.req.deregister(&w.local).unwrap();
    assert!(w.dst.iter().all(|b| *b == 0xee), "not a byte written");
}

#[test]
fn a_forged_entry_is_not_written_through() {
    let w = writes(0, Access::ReadWrite, 6);
    let (owner, req, exposed, local) = (&w.owner, &w.req, &w.exposed, &w.local);
    let salt = na_stream::direct::Arena::get().announced().salt;
    let key = exposed.remote.key;
    let Some(real) = Direct::decode(&exposed.remote.extra, key, LEN as u64, salt) else {
        assert!(!single_copy(), "a writable region offers direct writes");
        return owner.deregister(exposed).unwrap();
    };
    // An entry outside the announced arena, made to confirm a write into other memory
    // of the owner's (its bytes chosen by a client: key, address, length, access).
    let mut other = vec![0x5au8; 2 * LEN];
    let at = other.as_ptr() as u64;
    let fake = [key, at + 4096, LEN as u64, 3];
    for (i, w) in fake.iter().enumerate() {
        other[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
    }
    let forged = RemoteMem {
        extra: Direct {
            entry: at,
            addr: at + 4096,
            ..real
        }
        .encode(key, salt)
        .into(),
        ..exposed.remote.clone()
    };
    transfer(false, (req, owner), local, &forged, LEN as u64).unwrap();
    assert_eq!(req.direct_bytes(), 0, "nothing written here");
    owner.deregister(exposed).unwrap();
    req.deregister(local).unwrap();
    assert!(w.dst == w.src, "the owner wrote its region, by its checks");
    assert!(
        other[32..].iter().all(|b| *b == 0x5a),
        "the other memory untouched"
    );
}

#[test]
fn a_write_in_flight_holds_the_deregistration_until_it_ends() {
    write_in_flight(Via::Owner);
}

/// The arena is the process's: a descriptor of one plugin's region reaches the process
/// over another plugin's link too, and that write holds the region's deregistration
/// as well.
#[test]
fn a_write_over_another_plugins_link_holds_the_deregistration_too() {
    write_in_flight(Via::Other);
}

/// A link closed while its peer writes into this process's memory (here: the plugin at
/// its end dropped once the tail's first byte is seen) is kept for that write: a
/// deregistration of the region written returns only after the write's last byte.
#[test]
fn a_link_closed_under_a_write_still_holds_the_deregistration() {
    write_in_flight(Via::OtherClosed);
}

/// Which link of the owner's process a write comes over.
#[derive(PartialEq)]
enum Via {
    /// The owning plugin's.
    Owner,
    /// Another plugin's.
    Other,
    /// Another plugin's, dropped while the write lands. It is connected from a thread
    /// that ends: no thread keeps a copy of its connections (`na_stream`'s snapshots),
    /// so once it is dropped only what keeps a link for a write keeps it.
    OtherClosed,
}

/// A large write's tail lands while the owner lets the region go (its deregistration
/// started once the tail's first byte is seen): the write must be over when that
/// returns. A run proves it only if the write's last byte was still to come when the
/// deregistration started (on a loaded machine the write may end first): up to five
/// runs, one of which must.
fn write_in_flight(via: Via) {
    if !single_copy() {
        return;
    }
    assert!(
        (0..5).any(|_| write_in_flight_once(&via)),
        "the write always ended before the deregistration started: nothing was proven"
    );
}

/// One run of [`write_in_flight`]: whether the deregistration started before the last
/// byte landed.
fn write_in_flight_once(via: &Via) -> bool {
    const BIG: usize = 64 << 20;
    let (owner, req) = (plugin(), plugin());
    let mut other = Some(plugin());
    let target = match via {
        Via::Owner => &owner,
        _ => other.as_ref().unwrap(),
    };
    std::thread::scope(|s| s.spawn(|| connect(&req, target)).join().unwrap());
    let target_addr = target.self_addr().clone();
    let mut dst = vec![0u8; BIG];
    let exposed = register(&owner, &mut dst, Access::ReadWrite);
    let mut src = vec![0xa5u8; BIG];
    let local = register(&req, &mut src, Access::ReadOnly);
    let peer = req.lookup(&target_addr).unwrap();
    let op = req
        .put(peer, &local, 0, &exposed.remote, 0, BIG as u64)
        .unwrap();
    let tail = dst[BIG / 2..].as_ptr() as usize;
    let last = dst[BIG - 1..].as_ptr() as usize;
    let pending = std::thread::scope(|s| {
        let driver = s.spawn(|| req.progress(Some(Duration::ZERO)).unwrap());
        // SAFETY: a volatile read of a byte of ours that the peer writes (a race by
        // design: the test watches the write land).
        let byte = |p: usize| unsafe { std::ptr::read_volatile(p as *const u8) };
        let end = Instant::now() + Duration::from_secs(20);
        while byte(tail) == 0 {
            assert!(Instant::now() < end, "the tail's write never started");
            std::hint::spin_loop();
        }
        if *via == Via::OtherClosed {
            drop(other.take());
        }
        let pending = byte(last) == 0;
        owner.deregister(&exposed).unwrap();
        assert_eq!(byte(last), 0xa5, "the write ended before the region went");
        driver.join().unwrap();
        pending
    });
    // The transfer ends (the owner's head may fail: its region went, another plugin
    // never had it, or that plugin is gone).
    let others: Vec<&StreamPlugin> = std::iter::once(&owner).chain(other.as_ref()).collect();
    let _ = finish(&req, &others, op);
    req.deregister(&local).unwrap();
    pending
}

/// A plugin dropped with a region still registered ends it: the region's entry in the
/// process's arena no longer lets a write through, over another plugin's link.
#[test]
fn a_region_of_a_plugin_gone_is_not_written() {
    let (owner, req, other) = (plugin(), plugin(), plugin());
    connect(&req, &other);
    let mut dst = vec![0xeeu8; LEN];
    let exposed = register(&owner, &mut dst, Access::ReadWrite);
    drop(owner);
    let mut src = pattern(8);
    let local = register(&req, &mut src, Access::ReadOnly);
    let r = transfer(false, (&req, &other), &local, &exposed.remote, LEN as u64);
    assert!(r.is_err(), "{r:?}");
    assert_eq!(req.direct_bytes(), 0, "nothing written here");
    req.deregister(&local).unwrap();
    assert!(dst.iter().all(|b| *b == 0xee), "not a byte written");
}
