//! Rings in a real shared segment between two processes: data crosses intact, and a peer
//! process that corrupts the ring causes an error here, not undefined behaviour.

mod common;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use na_sm::ring::RingError;
use na_sm::shm::{Dir, META, RING_HDR, Segment};

const CHILD: &str = "QS_SM_TEST_CHILD";

/// Runs this test binary again as the child, handing it the segment.
fn spawn_child(seg: &Segment, role: &str) -> std::process::Child {
    // SAFETY: dup of a descriptor we own; the copy has no close-on-exec flag, so the child
    // inherits it, and the parent closes its copy right after spawning.
    let fd = unsafe { libc::dup(seg.fd()) };
    assert!(fd >= 0);
    let child = common::child(CHILD, format!("{role}:{fd}"))
        .spawn()
        .unwrap();
    // SAFETY: closing our copy of the inherited descriptor.
    unsafe { libc::close(fd) };
    child
}

/// The child's side; a no-op when run as an ordinary test.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (role, fd) = spec.split_once(':').unwrap();
    // SAFETY: the parent passed us this inherited descriptor, which nothing else owns here.
    let seg = Segment::open(unsafe { OwnedFd::from_raw_fd(fd.parse().unwrap()) }).unwrap();
    let (inbox, outbox) = (seg.ring(Dir::ToAcceptor), seg.ring(Dir::ToCreator));
    match role {
        "echo" => {
            // Echo 1 MiB back, byte-complemented, through a small ring each way.
            let mut buf = [0u8; 1000];
            let mut moved = 0;
            let end = Instant::now() + Duration::from_secs(20);
            while moved < (1 << 20) && Instant::now() < end {
                let n = inbox.read(&mut buf).unwrap();
                let out: Vec<u8> = buf[..n].iter().map(|b| !b).collect();
                let mut at = 0;
                while at < n {
                    at += outbox.write(&[&out[at..]]).unwrap();
                }
                moved += n;
                if n == 0 {
                    std::thread::yield_now();
                }
            }
        }
        "corrupt" => {
            // Write impossible indices into the ring the parent reads: as a hostile peer.
            outbox.write(&[b"some bytes"]).unwrap();
            scribble_indices(&seg);
        }
        _ => panic!("unknown role {role}"),
    }
}

/// Overwrites the ToCreator ring's indices with garbage through a second mapping.
fn scribble_indices(seg: &Segment) {
    // SAFETY: a second shared mapping of the same memfd; we write 16 bytes at the ring's
    // head and tail offsets (the second ring header's first two cache lines), inside the
    // segment.
    unsafe {
        let len = 4096;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            seg.fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let p = p.cast::<u8>();
        std::ptr::write_volatile(p.add(META + RING_HDR).cast::<u64>(), 7);
        std::ptr::write_volatile(p.add(META + RING_HDR + 64).cast::<u64>(), u64::MAX - 3);
        libc::munmap(p.cast(), len);
    }
}

#[test]
fn data_crosses_between_processes_intact() {
    let seg = Segment::create("qs-test", 4096).unwrap();
    let mut child = spawn_child(&seg, "echo");
    let (outbox, inbox) = (seg.ring(Dir::ToAcceptor), seg.ring(Dir::ToCreator));
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 253) as u8).collect();
    let (mut sent, mut got) = (0, Vec::with_capacity(data.len()));
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(20);
    while got.len() < data.len() && Instant::now() < end {
        if sent < data.len() {
            sent += outbox
                .write(&[&data[sent..(sent + 3000).min(data.len())]])
                .unwrap();
        }
        let n = inbox.read(&mut buf).unwrap();
        got.extend(buf[..n].iter().map(|b| !b));
    }
    assert!(child.wait().unwrap().success());
    assert!(
        got == data,
        "1 MiB crossed two processes and came back intact"
    );
}

#[test]
fn a_peer_that_corrupts_the_ring_gets_an_error_here() {
    let seg = Segment::create("qs-test", 4096).unwrap();
    let mut child = spawn_child(&seg, "corrupt");
    assert!(child.wait().unwrap().success());
    let r = seg.ring(Dir::ToCreator);
    let mut buf = [0u8; 64];
    assert!(matches!(r.read(&mut buf), Err(RingError::Corrupt { .. })));
    assert!(matches!(r.prepare_sleep(), Err(RingError::Corrupt { .. })));
}

#[test]
fn segments_with_a_bad_layout_are_refused() {
    // A memfd that is not a ring segment at all.
    // SAFETY: a fresh memfd, owned below.
    let raw = unsafe { libc::memfd_create(c"garbage".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: resizing our own memfd.
    assert_eq!(unsafe { libc::ftruncate(raw, 1 << 16) }, 0);
    // SAFETY: `raw` is ours alone.
    let e = Segment::open(unsafe { OwnedFd::from_raw_fd(raw) })
        .err()
        .unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn segments_cannot_be_resized_under_the_peer_and_unsealed_ones_are_refused() {
    // The SIGBUS attack: a peer shrinks the segment after the handshake. Sealed: EPERM.
    let seg = Segment::create("qs-test", 4096).unwrap();
    // SAFETY: ftruncate on the segment's memfd, which the kernel refuses (sealed).
    assert_eq!(unsafe { libc::ftruncate(seg.fd(), 0) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    // A well-formed segment without the seals: refused before it is mapped for use.
    // SAFETY: a fresh memfd, owned below.
    let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: dup of the segment's descriptor, then copying its bytes into our memfd.
    let len = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(seg.fd(), &mut st);
        st.st_size
    };
    let mut bytes = vec![0u8; len as usize];
    // SAFETY: reading the segment's memfd into our buffer; writing it to our memfd.
    unsafe {
        assert_eq!(
            libc::pread(seg.fd(), bytes.as_mut_ptr().cast(), bytes.len(), 0),
            len as isize
        );
        assert_eq!(
            libc::pwrite(raw, bytes.as_ptr().cast(), bytes.len(), 0),
            len as isize
        );
    }
    // SAFETY: `raw` is ours alone.
    let e = Segment::open(unsafe { OwnedFd::from_raw_fd(raw) })
        .err()
        .unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("sealed"), "{e}");
}
