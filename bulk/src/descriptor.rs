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

#[cfg(test)]
mod tests {
    use super::*;
    use na::Access;
    use proptest::prelude::*;

    #[test]
    fn descriptors_round_trip_through_rmp() {
        let d = Descriptor {
            owner: Address::parse("tcp://127.0.0.1:7000").unwrap(),
            mem: RemoteMem {
                key: 42,
                len: 4096,
                access: Access::ReadOnly,
                extra: vec![1, 2, 3].into(),
            },
            inline: Some(vec![9; 16]),
        };
        let enc = rmp_serde::to_vec(&d).unwrap();
        assert_eq!(rmp_serde::from_slice::<Descriptor>(&enc).unwrap(), d);
    }

    proptest! {
        /// Random bytes never panic the descriptor decoder (it is peer input), and whatever
        /// decodes re-encodes to a descriptor that decodes the same.
        #[test]
        fn descriptor_decoding_fuzz(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(d) = rmp_serde::from_slice::<Descriptor>(&bytes) {
                let again = rmp_serde::to_vec(&d).unwrap();
                prop_assert_eq!(rmp_serde::from_slice::<Descriptor>(&again).unwrap(), d);
            }
        }

        /// Mutating a valid encoding anywhere never panics the decoder.
        #[test]
        fn mutated_descriptors_never_panic(pos in 0usize..64, byte in any::<u8>()) {
            let d = Descriptor {
                owner: Address::parse("tcp://10.0.0.1:1").unwrap(),
                mem: RemoteMem { key: 7, len: 9, access: Access::ReadWrite, extra: Default::default() },
                inline: None,
            };
            let mut enc = rmp_serde::to_vec(&d).unwrap();
            let i = pos % enc.len();
            enc[i] = byte;
            let _ = rmp_serde::from_slice::<Descriptor>(&enc);
        }
    }
}
