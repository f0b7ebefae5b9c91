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
/// The server's requests received, answers sent and bad requests.
pub const STATS: Rpc<(), (u64, u64, u64)> = Rpc::new("stats");
/// Same name hash as nothing on the server: for unknown-RPC tests.
pub const MISSING: Rpc<(), ()> = Rpc::new("not-registered-anywhere");
/// Registered on the server as `sum`, but with a different input type.
pub const SUM_WRONG_TYPE: Rpc<String, u64> = Rpc::new("sum");
