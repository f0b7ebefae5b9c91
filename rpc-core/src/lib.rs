//! Quicksilver's RPC engine: registered, typed RPCs over pluggable transports.
//!
//! ```
//! use rpc_core::{Engine, Rpc};
//!
//! const SUM: Rpc<(u64, u64), u64> = Rpc::new("sum");
//!
//! let server = Engine::new("tcp://127.0.0.1:0")?;
//! server.register(SUM, |(a, b)| Ok::<_, String>(a + b))?;
//!
//! let client = Engine::new("tcp://127.0.0.1:0")?;
//! let peer = client.lookup(&server.self_addr().to_string())?;
//! assert_eq!(client.call(&peer, SUM, &(2, 3)).wait()?, 5);
//! # Ok::<(), rpc_core::RpcError>(())
//! ```
//!
//! The wire protocol lives in [`proto`], free of I/O; [`Engine`] drives it over a
//! [`na::Plugin`] chosen by the address (`tcp://…`) or by `RPC_TRANSPORT`.
//!
//! # Layout
//! [`proto`] holds what can be decided without I/O: the header codec, the table of calls
//! and transfers in flight with their chunk windows and deadlines (`proto::Flight`), the
//! overflow answers exposed for callers, per-peer budgets. The driver (`driver`,
//! `transfer`, and `handler`'s reply path) turns transport events into completions and
//! dispatched requests around it; these three import one another, the one cycle among the
//! modules, inside that one concern. `progress`, `oneway`, `expose` and `transfers` add to
//! it without being imported back, as does `post` (entering a call and sending its request);
//! `engine`, `call`, `caller` and `builder` are the API.
//!
//! # What a call costs
//! Counted, not timed (`scripts/rpc-cost TRANSPORT`: callgrind's instructions per RPC,
//! 64-byte input, 2026-12-02). Both engines in one thread with manual progress (`qs-rate
//! -c`, the busy path without its polling; steady between runs): about 7 390
//! instructions per RPC over sm and 8 930 over tcp, client and server together. As
//! separate processes in thread mode without spinning (`qs-rate -s 0`; the progress
//! threads' passes vary with scheduling, up to ±6 %): client about 7 040 (tcp) and
//! 8 530 (sm), server 4 510 and 5 760.
//!
//! On the client's busy path a call takes the table's lock twice (entered; its answer
//! found) and the transport's connection table; over a plugin that hands answers over
//! unposted (`na::Caps::unposted_expected`: tcp and sm) it posts no receive (`post`,
//! `Shared::on_answer`), and the arriving answer does not look for one (the transport
//! counts its posted receives where it can be read without a lock). A polling pass with
//! nothing due takes neither the table's nor the exposed answers' lock (their earliest
//! deadlines are published in atomics, `timed`). A progress thread that sleeps takes the
//! table's lock twice more per sleep (arming its deadline, then waking), and a caller that
//! starts driving once (to see whether it sleeps). Where the rest goes, largest first: the
//! transport's framing, queues and syscalls (about half), the progress passes, the table,
//! encoding and decoding, and one allocation per RPC where buffers stay on one thread (the
//! caller's completion slot, plus whatever the input and output types allocate to decode;
//! messages and arrivals reuse the thread's buffers, [`na::buf`]; counted by the
//! `allocations` test), up to five where they cross threads.

#![deny(missing_docs)]

mod builder;
mod call;
mod caller;
mod counters;
mod driver;
mod endpoint;
mod engine;
mod error;
mod expose;
mod handler;
mod handoff;
mod mode;
mod oneway;
mod pool;
mod post;
mod progress;
pub mod proto;
mod rpc;
mod serve;
mod slot;
mod spin;
mod sync;
mod then;
mod timed;
mod transfer;
mod transfers;
pub mod transport;

pub use builder::EngineBuilder;
pub use bulk::{Bulk, ChunkConfig, Descriptor, Seg};
pub use call::{Call, Transfer};
pub use caller::{Batch, Caller};
pub use counters::CounterSnapshot;
pub use endpoint::Endpoint;
pub use engine::Engine;
pub use error::RpcError;
pub use handler::Responder;
pub use mode::ProgressMode;
pub use na::{Access, Address, Auth, Fault, Identity, NaError, PeerId, Proof};
pub use rpc::{Rpc, rpc_id};
/// Byte payloads: put [`ByteBuf`] (or `#[serde(with = "serde_bytes")]` on a `Vec<u8>`
/// field) in RPC types; a plain `Vec<u8>` is encoded as an array of integers, one element
/// at a time, instead of one binary string.
pub use serde_bytes::{self, ByteBuf};
pub use transfers::Transfers;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
