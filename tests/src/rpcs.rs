//! The RPCs the test server registers, shared by server and clients.

use rpc_core::Rpc;
use serde_bytes::ByteBuf;

/// Adds two numbers.
pub const SUM: Rpc<(u64, u64), u64> = Rpc::new("sum");
/// Returns its input.
pub const ECHO: Rpc<ByteBuf, ByteBuf> = Rpc::new("echo");
/// Sleeps this many milliseconds, then answers.
pub const SLEEP: Rpc<u64, ()> = Rpc::new("sleep");
/// Always fails with an error message.
pub const FAIL: Rpc<(), ()> = Rpc::new("fail");
/// Always panics.
pub const PANIC: Rpc<(), ()> = Rpc::new("panic");
/// Drops its responder without answering.
pub const DROP_RESPONDER: Rpc<(), ()> = Rpc::new("drop_responder");
/// Answers later, from another thread.
pub const LATER: Rpc<u64, u64> = Rpc::new("later");
/// One-way: adds to a counter.
pub const BUMP: Rpc<u64, ()> = Rpc::new("bump");
/// Reads the counter `BUMP` adds to.
pub const COUNT: Rpc<(), u64> = Rpc::new("count");
/// The server's requests received, answers sent, bad requests, and overflow answers
/// still exposed.
pub const STATS: Rpc<(), (u64, u64, u64, u64)> = Rpc::new("stats");
/// How many peers the server lost (closed, killed, misbehaving).
pub const PEERS_LOST: Rpc<(), u64> = Rpc::new("peers_lost");
/// Same name hash as nothing on the server: for unknown-RPC tests.
pub const MISSING: Rpc<(), ()> = Rpc::new("not-registered-anywhere");
/// Registered on the server as `sum`, but with a different input type.
pub const SUM_WRONG_TYPE: Rpc<String, u64> = Rpc::new("sum");

/// A bulk transfer the server performs against the caller's memory.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
pub struct BulkOp {
    /// The caller's memory.
    pub desc: rpc_core::Descriptor,
    /// Offset in the caller's memory.
    pub remote_off: u64,
    /// Offset in the server's memory.
    pub local_off: u64,
    /// Bytes to move.
    pub len: u64,
    /// Segment sizes of the server's memory (its total must cover `local_off + len`).
    pub segs: Vec<u64>,
    /// Pattern seed of the server's memory (for pushes).
    pub seed: u64,
}

/// The server pulls from the caller's memory and answers the checksum of what it got.
pub const BULK_PULL: Rpc<BulkOp, u64> = Rpc::new("bulk_pull");
/// The server pushes its pattern into the caller's memory and answers its checksum.
pub const BULK_PUSH: Rpc<BulkOp, u64> = Rpc::new("bulk_push");
/// The server exposes `len` bytes of pattern `seed` with the given access ("ro", "wo",
/// "rw") and answers the descriptor; the memory lives until the process ends.
pub const SERVE_REGION: Rpc<(u64, u64, String), rpc_core::Descriptor> = Rpc::new("serve_region");
/// The server deregisters the region it exposed under this descriptor key.
pub const DROP_REGION: Rpc<u64, bool> = Rpc::new("drop_region");

/// Deterministic bytes: word `i` of pattern `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A fast checksum of bytes (position-sensitive).
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ data.len() as u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a))
            .rotate_left(29)
            .wrapping_mul(0x0000_0100_0000_01b3);
    }
    for b in words.remainder() {
        h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Splits `total` bytes into segments of the given sizes, the last taking the rest.
pub fn split_sizes(total: u64, first: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut left = total;
    for &s in first {
        if left == 0 {
            break;
        }
        let s = s.min(left);
        out.push(s);
        left -= s;
    }
    if left > 0 || out.is_empty() {
        out.push(left);
    }
    out
}
