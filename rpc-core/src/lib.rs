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
