//! The NA conformance suite over the shared-memory plugin, in both RMA modes.

use std::sync::Arc;

use na::Plugin;

/// RMA by single copy (`process_vm_readv`/`writev`), as detected on this machine.
fn sm() -> Arc<dyn Plugin> {
    Arc::new(na_sm::SmPlugin::new(&"sm://auto".parse().unwrap()).unwrap())
}

qs_tests::conformance_suite!(sm);

/// RMA data through the rings: the fallback when the kernel refuses cross-memory attach.
mod through_rings {
    use super::*;

    pub fn sm_rings() -> Arc<dyn Plugin> {
        let cfg = na_sm::SmConfig {
            single_copy: false,
            ..Default::default()
        };
        Arc::new(na_sm::SmPlugin::with_config(&"sm://auto".parse().unwrap(), cfg).unwrap())
    }

    qs_tests::conformance_suite!(sm_rings);
}

/// An owner that does not copy for a peer (another uid; here, one configured so) refuses
/// the peer's single-copy requests with its memory untouched: the exec'd-setuid deputy of
/// the trust-boundaries issue cannot be made to write anywhere.
#[test]
fn an_owner_refuses_copy_requests_it_does_not_serve() {
    use na::{Access, NaError};
    use qs_tests::conformance::{Driven, Guarded};
    if na_sm::cma::probe().is_err() {
        eprintln!("skipped: the kernel refuses cross-memory attach here, nobody copies");
        return;
    }
    let mut requester = Driven::new(sm());
    let owner = Driven::new(through_rings::sm_rings());
    let peer = requester.p.lookup(owner.p.self_addr()).unwrap();
    // Large enough to go by single copy (small transfers go through the rings).
    const N: usize = 64 << 10;
    let theirs = Guarded::new(&*owner.p, N, |i| i as u8, Access::ReadWrite);
    let mine = Guarded::new(&*requester.p, N, |_| 0x11, Access::ReadWrite);
    for get in [true, false] {
        let op = if get {
            requester
                .p
                .get(peer, &mine.h, 0, &theirs.h.remote, 0, N as u64)
        } else {
            requester
                .p
                .put(peer, &mine.h, 0, &theirs.h.remote, 0, N as u64)
        }
        .unwrap();
        let r = requester.done(op);
        assert!(
            matches!(&r, Err(NaError::AccessDenied(_))),
            "get {get}: {r:?}"
        );
    }
    assert!(
        mine.bytes().iter().all(|&b| b == 0x11),
        "our memory untouched"
    );
    assert!(
        theirs
            .bytes()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == i as u8),
        "the owner's memory untouched"
    );
    assert!(mine.guards_intact() && theirs.guards_intact());
}

/// An owner serves a run of single-copy requests with one call; when that call comes up
/// short (here the requester's memory of one of them cannot be written, and the kernel
/// faults on it), each request is copied alone and gets its own outcome: the good one's bytes land,
/// the other fails.
#[test]
fn a_run_of_copies_that_faults_is_served_one_by_one() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use na::{Access, Segment};
    use qs_tests::conformance::{Driven, Guarded};
    if na_sm::cma::probe().is_err() {
        eprintln!("skipped: the kernel refuses cross-memory attach here, nobody copies");
        return;
    }
    // Below `na_stream::direct::WHOLE_MIN`: the owner copies every one (from it, every
    // other transfer is the requester's own copy, made as soon as it is posted).
    const N: usize = 16 << 10;
    let mut requester = Driven::new(sm());
    let owner = sm();
    let theirs = Guarded::new(&*owner, N, |i| (i % 251) as u8, Access::ReadOnly);
    let mine = Guarded::new(&*requester.p, N, |_| 0, Access::ReadWrite);
    // The owner is driven by a thread while the pair connects and one get goes through,
    // then not at all while the run is posted.
    let drive = |stop: Arc<AtomicBool>| {
        let o = owner.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let _ = o.progress(Some(Duration::from_millis(5)));
                while o.poll_event().is_some() {}
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let t = drive(stop.clone());
    let peer = requester.p.lookup(owner.self_addr()).unwrap();
    let op = requester
        .p
        .get(peer, &mine.h, 0, &theirs.h.remote, 0, N as u64)
        .unwrap();
    requester.done(op).unwrap();
    stop.store(true, Ordering::Release);
    t.join().unwrap();

    let mut again = vec![0u8; N];
    // SAFETY: anonymous memory of our own, made inaccessible below while registered (not
    // unmapped: another thread could map something there meanwhile): for a single-copy
    // get nothing in this process touches it before the answer (only the owner's kernel
    // call does, and faults); it is deregistered, then unmapped.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            N,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let segs = [Segment::new(again.as_mut_ptr(), N)];
    // SAFETY: `again` outlives the registration and is read only after the get is done.
    let good_h = unsafe { requester.p.register(&segs, Access::ReadWrite) }.unwrap();
    // SAFETY: see the mapping's comment above.
    let gone = unsafe {
        requester
            .p
            .register(&[Segment::new(map.cast(), N)], Access::ReadWrite)
    }
    .unwrap();
    let good = requester
        .p
        .get(peer, &good_h, 0, &theirs.h.remote, 0, N as u64)
        .unwrap();
    let bad = requester
        .p
        .get(peer, &gone, 0, &theirs.h.remote, 0, N as u64)
        .unwrap();
    // SAFETY: the mapping is ours; see above.
    assert_eq!(unsafe { libc::mprotect(map, N, libc::PROT_NONE) }, 0);
    // Both requests are in the owner's ring before it reads again.
    std::thread::sleep(Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let t = drive(stop.clone());
    let (g, b) = (requester.done(good), requester.done(bad));
    stop.store(true, Ordering::Release);
    t.join().unwrap();
    assert!(g.is_ok() && b.is_err(), "good {g:?}, bad {b:?}");
    assert_eq!(again, theirs.bytes());
    requester.p.deregister(&gone).unwrap();
    requester.p.deregister(&good_h).unwrap();
    // SAFETY: deregistered; nothing refers to the mapping any more.
    assert_eq!(unsafe { libc::munmap(map, N) }, 0);
}
