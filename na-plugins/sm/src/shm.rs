//! A connection's shared segment: a `memfd` mapped by both peers, holding one ring per
//! direction. The creator (the connecting side) lays it out; the other side checks the
//! layout before trusting it, since it comes from another process.
//!
//! ```text
//! offset 0      magic:u64 version:u32 capacity:u32
//! 16            creator's announcement for direct copies: arena address, length, salt (u64s)
//! 40            acceptor's announcement, as above (each side writes its own, reads the other's)
//! 64            creator's write lease: key of the acceptor's region it is writing, or 0
//! 72            acceptor's write lease, as above (`na_stream::direct`; 80..128 unused)
//! 128           ring 0 header (256 bytes)   creator → acceptor
//! 384           ring 1 header (256 bytes)   acceptor → creator
//! 640           ring 0 data (capacity bytes), then ring 1 data (capacity bytes)
//! ```

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use na_stream::direct::Announced;

use crate::ring::{Ring, RingHeader};

const MAGIC: u64 = 0x5153_534d_5249_4e47; // "QSSMRING"
const VERSION: u32 = 2;
/// Bytes of the segment's own header, before the rings' headers.
pub const META: usize = 128;
/// Bytes of one ring's header.
pub const RING_HDR: usize = 256;
const DATA: usize = META + 2 * RING_HDR;
/// The seals a peer's segment must carry: its size cannot change under our mapping.
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// Which ring of a segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Written by the creator, read by the acceptor.
    ToAcceptor = 0,
    /// Written by the acceptor, read by the creator.
    ToCreator = 1,
}

/// A mapped segment.
pub struct Segment {
    ptr: *mut u8,
    len: usize,
    cap: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is shared memory accessed only through rings (atomics and masked
// raw copies); the pointer itself may move between threads.
unsafe impl Send for Segment {}
// SAFETY: as for Send.
unsafe impl Sync for Segment {}

fn map(fd: &OwnedFd, len: usize) -> io::Result<*mut u8> {
    // SAFETY: mapping a file we hold open, shared, for reading and writing; the result is
    // checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

impl Segment {
    /// Creates a segment with rings of `cap` bytes (rounded up to a power of two).
    pub fn create(name: &str, cap: usize) -> io::Result<Segment> {
        let cap = cap.clamp(4096, 1 << 30).next_power_of_two();
        let cname = std::ffi::CString::new(name)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid C string; the returned descriptor is checked and then owned.
        let raw = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = DATA + 2 * cap;
        // SAFETY: resizing our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // Sealed at its size, so that neither side can shrink it under the other's mapping
        // (a SIGBUS on access) or grow it; the peer checks the seals.
        // SAFETY: adding seals to our own memfd.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS | libc::F_SEAL_SEAL) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        let ptr = map(&fd, len)?;
        let seg = Segment { ptr, len, cap, fd };
        // The memfd is zero-filled, which is also the rings' initial state.
        // SAFETY: the mapping is at least META bytes and page-aligned.
        unsafe {
            std::ptr::write(ptr.cast::<u64>(), MAGIC);
            std::ptr::write(ptr.add(8).cast::<u32>(), VERSION);
            std::ptr::write(ptr.add(12).cast::<u32>(), cap as u32);
        }
        Ok(seg)
    }

    /// Maps a segment received from a peer, checking its layout.
    pub fn open(fd: OwnedFd) -> io::Result<Segment> {
        let bad = |why: &str| {
            io::Error::new(io::ErrorKind::InvalidData, format!("shared segment: {why}"))
        };
        // SAFETY: fstat on a descriptor we own, into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: querying the seals of a descriptor we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & SEALS != SEALS {
            return Err(bad("not sealed against shrinking and growing"));
        }
        let len = st.st_size as usize;
        if len < DATA + 2 * 4096 {
            return Err(bad("too small"));
        }
        let ptr = map(&fd, len)?;
        // SAFETY: the mapping holds at least META bytes.
        let (magic, version, cap) = unsafe {
            (
                std::ptr::read(ptr.cast::<u64>()),
                std::ptr::read(ptr.add(8).cast::<u32>()),
                std::ptr::read(ptr.add(12).cast::<u32>()) as usize,
            )
        };
        let seg = Segment { ptr, len, cap, fd };
        if magic != MAGIC || version != VERSION {
            return Err(bad("wrong magic or version"));
        }
        if !cap.is_power_of_two() || DATA + 2 * cap != len {
            return Err(bad("capacity does not match its size"));
        }
        Ok(seg)
    }

    /// The ring for one direction.
    pub fn ring(&self, dir: Dir) -> Ring<'_> {
        let i = dir as usize;
        // SAFETY: the header lies inside the mapping (checked layout), is suitably aligned
        // (page-aligned base plus multiples of 64), and RingHeader holds only atomics and
        // padding, valid for any bit pattern the peer may write.
        let hdr = unsafe { &*self.ptr.add(META + i * RING_HDR).cast::<RingHeader>() };
        // SAFETY: the data area of ring i is `cap` bytes inside the mapping, a power of two;
        // the peer is the only other party, producer or consumer by direction.
        unsafe { Ring::from_raw(hdr, self.ptr.add(DATA + i * self.cap), self.cap) }
    }

    /// A side's slot in the header for what it announces for direct copies (see
    /// `na_stream::direct`): (arena address, arena length, salt) words at bytes 16
    /// (creator) and 40 (acceptor) of the 128-byte header.
    fn announce_slot(&self, dir: Dir) -> &[AtomicU64; 3] {
        // SAFETY: bytes 16..64 lie in the 128-byte header of a page-aligned mapping
        // (8-byte aligned); they hold only atomics, valid for any bit pattern the peer
        // may write.
        unsafe {
            &*self
                .ptr
                .add(16 + 24 * dir as usize)
                .cast::<[AtomicU64; 3]>()
        }
    }

    /// The write lease of the side writing `dir` (see `na_stream::direct`): the key of
    /// the other side's region it is writing directly, or 0.
    pub fn lease(&self, dir: Dir) -> &AtomicU64 {
        // SAFETY: bytes 64..80 lie in the 128-byte header of a page-aligned mapping
        // (8-byte aligned); an atomic is valid for any bit pattern the peer may write.
        unsafe { &*self.ptr.add(64 + 8 * dir as usize).cast::<AtomicU64>() }
    }

    /// Announces this side's arena and salt (`dir`: the side's outgoing direction).
    pub fn announce(&self, dir: Dir, a: Announced) {
        let slot = self.announce_slot(dir);
        slot[1].store(a.arena.1, Ordering::Relaxed);
        slot[2].store(a.salt, Ordering::Relaxed);
        slot[0].store(a.arena.0, Ordering::Release);
    }

    /// What the side writing `dir` announced, if it did.
    pub fn announced(&self, dir: Dir) -> Option<Announced> {
        let slot = self.announce_slot(dir);
        let addr = slot[0].load(Ordering::Acquire);
        (addr != 0).then(|| Announced {
            arena: (addr, slot[1].load(Ordering::Relaxed)),
            salt: slot[2].load(Ordering::Relaxed),
        })
    }

    /// The ring capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The memfd, to pass to the peer.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in create/open; no Ring can outlive
        // the segment (rings borrow it).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
