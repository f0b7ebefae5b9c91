//! The shared-memory plugin of Quicksilver's network abstraction, for peers on one node.
//!
//! [`SmPlugin`] is the [`na_stream`] core over shared-memory links: [`ring`] is the
//! single-producer single-consumer byte ring that carries frames between two processes
//! through shared memory, with the sleep/wake handshake that lets a receiver sleep without
//! making a sender pay a system call per message while the receiver is awake
//! (loom-checked). [`shm`] is a connection's segment, a sealed `memfd` holding one
//! ring per direction, checked when mapped from a peer; [`link`] sets connections up over
//! abstract UNIX sockets (the memfd and eventfds passed with `SCM_RIGHTS`, the peer's
//! identity from the kernel); [`cma`] is single-copy RMA (`process_vm_readv`/`writev`)
//! between processes of one uid, checked by the owner of the memory; [`lease`] keeps a
//! requester's direct write out of memory its owner has let go (loom-checked).
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
pub mod lease;
pub mod link;
mod plugin;
pub mod ring;
pub mod shm;
mod sync;

pub use plugin::{SmConfig, SmPlugin};
