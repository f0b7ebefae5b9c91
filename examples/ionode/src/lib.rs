//! An I/O forwarding node over Quicksilver, as IOFSL and Intel IOF are over Mercury.
//!
//! Clients (the posix-ship CLI, library, interposer or FUSE mount) point at the node as
//! they would at a posix-ship server; the node forwards to one or more servers (a prefix
//! table), turning many small client requests into few large backend ones:
//!
//! - [`extents`]: writes of all clients to one file merged into disjoint extents (pure);
//! - [`routes`]: the namespace's prefix table (pure);
//! - write-behind (acknowledged once buffered, bounded, flushed on fsync, close, memory
//!   pressure and age, errors reported at the next fsync or close as NFS does), sequential
//!   read-ahead up to 8 MiB, reads that see buffered writes;
//! - every backend call made for the client's verified identity (the backend must trust
//!   the node: `posix-ship server --trust-forwarder UID`);
//! - [`stats`]: client requests in and backend requests out per operation.
#![deny(missing_docs)]

mod attrs;
mod backing;
mod behind;
pub mod extents;
mod files;
pub mod journal;
mod kept;
mod listed;
mod meta;
mod node;
mod open;
mod opens;
mod ops;
mod query;
mod reads;
pub mod routes;
mod serve;
pub mod stats;
mod targets;
mod then;
mod virt;
mod writes;

pub use node::{IoNode, NodeConfig};
