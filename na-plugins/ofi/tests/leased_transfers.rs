//! A region its owner deregisters while a transfer it granted is under way is handed back
//! only once the transfer has ended (`na_ofi` leases, on providers whose RMA the owner
//! checks): over `shm` a put would otherwise land in memory the program may have reused
//! (the provider checks no key), over `tcp;ofi_rxm` the transfer would close the
//! connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use na::{Access, Event, MemHandle, Plugin, Segment};
use na_ofi::OfiPlugin;

fn plugin(addr: &str) -> OfiPlugin {
    OfiPlugin::new(&addr.parse().unwrap()).unwrap()
}

fn register(p: &OfiPlugin, buf: &mut [u8], access: Access) -> MemHandle {
    // SAFETY: each buffer outlives its registration here (deregistered before it goes).
    unsafe { p.register(&[Segment::from_slice(buf)], access) }.unwrap()
}

struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Up to five runs; one must have started the deregistration before the transfer's last
/// byte landed (on a loaded machine the transfer may end first, which proves nothing).
fn deregistration_waits_for_the_granted(get: bool, addr: &str) {
    assert!(
        (0..5).any(|_| once(get, addr)),
        "the transfer always ended before the deregistration started: nothing was proven"
    );
}

/// One run: whether the deregistration started before the last byte landed (in the
/// owner's region for a put, in the requester's buffer for a get).
fn once(get: bool, addr: &str) -> bool {
    const BIG: usize = 64 << 20;
    let (owner, req) = (plugin(addr), plugin(addr));
    let (mut theirs, mut ours) = (vec![0u8; BIG], vec![0u8; BIG]);
    let (src, dst) = if get {
        (&mut theirs, &mut ours)
    } else {
        (&mut ours, &mut theirs)
    };
    src.fill(0xa5);
    let half = dst[BIG / 2..].as_ptr() as usize;
    let last = dst[BIG - 1..].as_ptr() as usize;
    let exposed = register(&owner, &mut theirs, Access::ReadWrite);
    let local = register(&req, &mut ours, Access::ReadWrite);
    let peer = req.lookup(owner.self_addr()).unwrap();
    // SAFETY: a volatile read of a byte that the transfer writes (a race by design: the
    // test watches it land).
    let byte = |p: usize| unsafe { std::ptr::read_volatile(p as *const u8) };
    let stop = AtomicBool::new(false);
    let pending = std::thread::scope(|s| {
        // The owner's thread stops even if an assertion below fails.
        let _stop = Stop(&stop);
        // The owner answers the check (and later the release) on its own thread.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                owner.progress(Some(Duration::ZERO)).unwrap();
            }
        });
        let transfer = s.spawn(|| {
            let remote = &exposed.remote;
            let op = if get {
                req.get(peer, &local, 0, remote, 0, BIG as u64)
            } else {
                req.put(peer, &local, 0, remote, 0, BIG as u64)
            }
            .unwrap();
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < end, "the transfer never ended");
                req.progress(Some(Duration::ZERO)).unwrap();
                while let Some(e) = req.poll_event() {
                    if let Event::Done { op: o, result } = e
                        && o == op
                    {
                        return result;
                    }
                }
            }
        });
        let end = Instant::now() + Duration::from_secs(30);
        while byte(half) == 0 {
            assert!(
                Instant::now() < end,
                "the transfer's second half never started"
            );
            std::hint::spin_loop();
        }
        let pending = byte(last) == 0;
        owner.deregister(&exposed).unwrap();
        assert_eq!(
            byte(last),
            0xa5,
            "the deregistration returned before the granted transfer ended"
        );
        let r = transfer.join().unwrap();
        assert!(r.is_ok(), "{r:?}");
        pending
    });
    req.deregister(&local).unwrap();
    pending
}

#[test]
fn put_over_shm() {
    deregistration_waits_for_the_granted(false, "ofi+shm://auto");
}

#[test]
fn get_over_shm() {
    deregistration_waits_for_the_granted(true, "ofi+shm://auto");
}

#[test]
fn put_over_tcp() {
    deregistration_waits_for_the_granted(false, "ofi+tcp://127.0.0.1:0");
}

#[test]
fn get_over_tcp() {
    deregistration_waits_for_the_granted(true, "ofi+tcp://127.0.0.1:0");
}
