//! Bulk descriptors as a peer writes them into an RPC argument: any bytes decode to a
//! descriptor or an error; a decoded one re-encodes and decodes to itself, and planning a
//! transfer of it (chunking) stays within its length.
#![no_main]

use bulk::{ChunkConfig, Chunker, Descriptor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = rmp_serde::from_slice::<Descriptor>(data) else {
        return;
    };
    let bytes = rmp_serde::to_vec(&d).expect("re-encode");
    assert_eq!(rmp_serde::from_slice::<Descriptor>(&bytes).ok(), Some(d.clone()));
    let mut plan = Chunker::new(d.len(), ChunkConfig::default());
    let mut total = 0u64;
    for _ in 0..64 {
        let Some((off, len)) = plan.next_chunk() else {
            break;
        };
        assert!(off + len <= d.len());
        total += len;
    }
    assert!(total <= d.len());
});
