//! Registered memory: local handles, access modes and serializable remote descriptors.

use serde::{Deserialize, Serialize};

/// What a remote **peer** may do with a registered region (not what the owner does):
/// `ReadOnly` for data the owner sends (the peer pulls it with `get`), `WriteOnly` for a
/// buffer the peer fills (with `put`), `ReadWrite` for both.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Peers may read (`get` from it) but not write.
    ReadOnly,
    /// Peers may write (`put` into it) but not read.
    WriteOnly,
    /// Peers may read and write.
    ReadWrite,
}

impl Access {
    /// Whether a remote `get` may read this region.
    pub fn remote_read(self) -> bool {
        matches!(self, Access::ReadOnly | Access::ReadWrite)
    }
    /// Whether a remote `put` may write this region.
    pub fn remote_write(self) -> bool {
        matches!(self, Access::WriteOnly | Access::ReadWrite)
    }
}

/// One contiguous piece of local memory handed to [`crate::Plugin::register`].
///
/// A segment is only a pointer and a length; the safety contract is on `register`.
#[derive(Copy, Clone, Debug)]
pub struct Segment {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Segment is an address range, not an access; every access through it happens in
// a plugin under the contract of `Plugin::register`, which makes the caller keep the memory
// valid and free of conflicting use while registered.
unsafe impl Send for Segment {}
// SAFETY: as for Send; sharing the range shares no access.
unsafe impl Sync for Segment {}

impl Segment {
    /// A segment over raw memory.
    pub fn new(ptr: *mut u8, len: usize) -> Self {
        Segment { ptr, len }
    }
    /// A segment over a mutable slice (valid as long as the slice's memory is).
    pub fn from_slice(buf: &mut [u8]) -> Self {
        Segment::new(buf.as_mut_ptr(), buf.len())
    }
    /// The start address.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The serializable descriptor of a registered region, sent to peers so that they can
/// `put` into or `get` from it. The region is addressed as one linear range `0..len`,
/// whatever segments back it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RemoteMem {
    /// The owner's key for the region: random, so that it cannot be guessed.
    pub key: u64,
    /// The length of the region in bytes.
    pub len: u64,
    /// What peers may do with it.
    pub access: Access,
    /// Plugin-specific extras (for RMA fabrics: provider keys, segment addresses). Shared,
    /// not copied, by clones: every transfer of a region carries its descriptor. Encoded
    /// as bytes, as a `Vec<u8>` with `serde_bytes` was.
    pub extra: bytes::Bytes,
}

/// A local registration, returned by [`crate::Plugin::register`]. It names the region to
/// local operations and carries the descriptor to hand to peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemHandle {
    /// The plugin's local identifier of the registration.
    pub id: u64,
    /// The descriptor peers use to reach the region.
    pub remote: RemoteMem,
}

impl MemHandle {
    /// The registered length.
    pub fn len(&self) -> u64 {
        self.remote.len
    }
    /// Whether the registered region is empty.
    pub fn is_empty(&self) -> bool {
        self.remote.len == 0
    }
}

/// A random 64-bit key from the operating system's generator, for remote memory keys that
/// a peer cannot guess.
pub fn random_key() -> Result<u64, crate::NaError> {
    getrandom::u64().map_err(|e| crate::NaError::Os {
        kind: std::io::ErrorKind::Other,
        msg: format!("getrandom: {e}"),
    })
}
