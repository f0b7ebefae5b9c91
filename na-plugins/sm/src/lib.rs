//! The shared-memory plugin of Quicksilver's network abstraction, for peers on one node.
//!
//! **In progress** (issue 4): this crate holds the first building blocks. [`ring`] is the
//! single-producer single-consumer byte ring that carries frames between two processes
//! through shared memory, with the sleep/wake handshake that lets a receiver sleep without
//! making a sender pay a system call per message while the receiver is awake (loom-checked).
//! [`shm`] is a connection's segment: a `memfd` holding one ring per direction, checked
//! when mapped from a peer. It is not yet an NA plugin: the connection set-up (the memfd
//! and eventfds passed over an abstract UNIX socket named after the address), single-copy
//! RMA (`process_vm_readv`/`process_vm_writev` with owner-checked grants) and the plugin
//! itself build on them.
//!
//! ```
//! use na_sm::ring::{HeapRing, Ring};
//! let mem = HeapRing::new(64);
//! let ring = mem.ring();
//! assert_eq!(ring.write(&[b"hello ", b"ring"]).unwrap(), 10);
//! let mut out = [0u8; 16];
//! assert_eq!(ring.read(&mut out).unwrap(), 10);
//! assert_eq!(&out[..10], b"hello ring");
//! ```
#![deny(missing_docs)]

pub mod cma;
pub mod link;
mod plugin;
pub mod ring;
pub mod shm;
mod sync;

pub use plugin::{SmConfig, SmPlugin};
