//! The Quicksilver network abstraction (NA): the contract between the RPC engine and the
//! transport plugins (`na-tcp`, and later `na-sm` and `na-ofi`).
//!
//! Modelled on Mercury's NA layer, which was designed for RMA-capable fabrics: a plugin
//! moves *messages* (unexpected ones to a listener, expected ones matched by tag), exposes
//! *registered memory* to its peers through serializable [`RemoteMem`] descriptors, performs
//! one-sided [`Plugin::put`]/[`Plugin::get`] transfers, and reports every outcome as an
//! [`Event`] collected by [`Plugin::progress`] and [`Plugin::poll_event`]. Transports that
//! lack a capability in hardware (TCP has no RMA) emulate it behind the same shape.
//!
//! ```
//! use na::Address;
//! let a: Address = "ofi+tcp://127.0.0.1:7001".parse().unwrap();
//! assert_eq!(a.plugin(), "ofi");
//! assert_eq!(a.provider(), Some("tcp"));
//! assert_eq!(a.locator(), "127.0.0.1:7001");
//! assert_eq!(a.to_string(), "ofi+tcp://127.0.0.1:7001");
//! ```
#![deny(missing_docs)]

mod addr;
pub mod buf;
mod chunk;
mod error;
mod events;
mod identity;
mod mem;
mod plugin;

pub use addr::Address;
pub use chunk::{ChunkConfig, Chunker};
pub use error::{Fault, NaError, NaResult};
pub use events::EventQueue;
pub use identity::{Auth, Identity, MAX_GROUPS, Proof};
pub use mem::{Access, MemHandle, RemoteMem, Segment, random_key};
pub use plugin::{Caps, Event, OpId, PeerId, Plugin, Unsent};
