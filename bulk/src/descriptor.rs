//! The serializable descriptor of a bulk handle.

use na::{Address, RemoteMem};
use serde::{Deserialize, Serialize};

/// What a peer needs to reach registered memory: the owner's address, the remote key,
/// bounds and access mode, and, for small readable regions, a copy of the bytes themselves
/// ("eager bulk"), so that a pull costs no round trip. Put it inside any RPC argument.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Descriptor {
    /// The address of the process that owns the memory.
    pub owner: Address,
    /// The owner's registration.
    pub mem: RemoteMem,
    /// The region's bytes, when they were small enough to travel with the descriptor.
    #[serde(with = "serde_bytes", default)]
    pub inline: Option<Vec<u8>>,
}

impl Descriptor {
    /// The region's length in bytes.
    pub fn len(&self) -> u64 {
        self.mem.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.mem.len == 0
    }
}
