//! POSIX function shipping over Quicksilver: compute-node processes ship their file calls
//! to a server that performs them on the storage it can see, as Intel IOF and IOFSL do
//! over Mercury.
//!
//! - [`proto`]: one typed RPC per POSIX operation; `errno` values come back unchanged.
//! - [`server`]: exports a directory tree, confined (`openat2(RESOLVE_BENEATH)`), with
//!   per-client handles and bounds.
//! - [`client`]: [`client::RemoteFs`] mirrors `std::fs`; [`client::RemoteFile`] is
//!   `Read + Write + Seek`. Small I/O travels inline, large I/O by bulk transfer straight
//!   between the client's and the server's buffers.
//!
//! - [`mount`]: the export as a FUSE file system (`posix-ship mount`); [`ride`]: how the
//!   interposer rides on it.
//!
//! The binary (`posix-ship`) is a thin CLI over these; the LD_PRELOAD interposer
//! (`libposix_ship_preload.so`) uses the same client.
#![deny(missing_docs)]

pub mod bulk_io;
pub mod client;
pub mod mount;
pub mod proto;
pub mod ride;
pub mod server;
