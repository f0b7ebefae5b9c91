//! A region its owner deregisters while a put it granted is under way is handed back
//! only once the put has ended (`na_ofi` leases, on providers whose RMA the owner checks):
//! over `shm` the put would otherwise land in memory the program may have reused (the
//! provider checks no key), over `tcp;ofi_rxm` it would close the connection.

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

/// Up to five runs; one must have started the deregistration before the put's last byte
/// landed (on a loaded machine the put may end first, which proves nothing).
fn deregistration_waits_for_the_granted_put(addr: &str) {
    assert!(
        (0..5).any(|_| once(addr)),
        "the put always ended before the deregistration started: nothing was proven"
    );
}

/// One run: whether the deregistration started before the last byte landed.
fn once(addr: &str) -> bool {
    const BIG: usize = 64 << 20;
    let (owner, req) = (plugin(addr), plugin(addr));
    let mut dst = vec![0u8; BIG];
    let exposed = register(&owner, &mut dst, Access::ReadWrite);
    let mut src = vec![0xa5u8; BIG];
    let local = register(&req, &mut src, Access::ReadOnly);
    let peer = req.lookup(owner.self_addr()).unwrap();
    let (half, last) = (
        dst[BIG / 2..].as_ptr() as usize,
        dst[BIG - 1..].as_ptr() as usize,
    );
    // SAFETY: a volatile read of a byte of ours that the peer writes (a race by design:
    // the test watches the put land).
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
        let put = s.spawn(|| {
            let op = req
                .put(peer, &local, 0, &exposed.remote, 0, BIG as u64)
                .unwrap();
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < end, "the put never ended");
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
            assert!(Instant::now() < end, "the put's second half never started");
            std::hint::spin_loop();
        }
        let pending = byte(last) == 0;
        owner.deregister(&exposed).unwrap();
        assert_eq!(
            byte(last),
            0xa5,
            "the deregistration returned before the granted put ended"
        );
        let r = put.join().unwrap();
        assert!(r.is_ok(), "{r:?}");
        pending
    });
    req.deregister(&local).unwrap();
    pending
}

#[test]
fn shm() {
    deregistration_waits_for_the_granted_put("ofi+shm://auto");
}

#[test]
fn tcp() {
    deregistration_waits_for_the_granted_put("ofi+tcp://127.0.0.1:0");
}
