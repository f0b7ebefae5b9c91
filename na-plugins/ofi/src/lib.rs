//! Quicksilver's NA plugin over libfabric (OFI): the path to real HPC fabrics (Slingshot
//! `cxi`, InfiniBand `verbs`, Omni-Path `psm2`, EFA), tested here with the providers that
//! run on one machine: `tcp` (under `ofi_rxm`), `sockets` and `shm`.
//!
//! One reliable-datagram (`FI_EP_RDM`) endpoint per plugin, bound to one completion queue
//! and one address vector:
//!
//! - **Messages**: unexpected ones (requests, probes, RMA checks) are untagged and land in
//!   a pool of untagged receives the plugin keeps posted (multi-receive buffers where the
//!   provider has them, `pool`); their header names the sender and carries the caller's
//!   tag (see [`wire`]). Expected messages carry the caller's tag
//!   (all 64 bits) and land in a receive posted by [`na::Plugin::recv_expected`], matched
//!   exactly; one that nobody waits for stays in the provider's unexpected queue and is
//!   never delivered. (No wildcard tagged receive is ever posted: see
//!   [`wire`] for the `shm` bug that made this a must.)
//! - **RMA** is the provider's own `fi_read`/`fi_write` against registrations made per
//!   segment with the provider's `mr_mode` honoured (`FI_MR_LOCAL` descriptors,
//!   `FI_MR_VIRT_ADDR` addressing, `FI_MR_PROV_KEY` keys, `FI_MR_ENDPOINT` binding). The
//!   owner's provider checks keys, bounds and access: a wrong key is the provider's error.
//!   Where the provider's checks are missing or destructive (`Provider::checked_rma`), the
//!   owner checks transfers first (`Check`/`Grant` messages; one check of the whole
//!   region the descriptor describes serves every transfer of it in one direction that
//!   the initiator has in flight, up to 256 asked within 50 ms, `checks`), and small
//!   transfers (up to
//!   `OfiConfig::carry_max`) are carried in those messages and performed by the owner.
//!   A check it grants is leased until the initiator releases it (`Release` messages,
//!   once the last transfer riding on it has ended): a deregistration waits for the
//!   region's leases, so no granted transfer reaches it after.
//! - **Progress** reads the completion queue; when idle it sleeps on the queue's wait fd
//!   after `fi_trywait`, so the engine costs nothing at rest. Without one (shm, or
//!   `OfiConfig::wait_object` off, as a busy-polling engine opens it) progress that may
//!   wait polls with short sleeps, backing off to every 200 µs when nothing comes.
//! - **Liveness**: an RDM endpoint has no connections to lose, so a silent peer is probed
//!   (a ping the peer's plugin answers): every `OfiConfig::probe_after` while operations
//!   wait on it or it was active lately (`OfiConfig::watch_idle`; probes and their answers
//!   are not activity), every `OfiConfig::idle_probe_after` once idle (a client that dies
//!   between requests is still found, its resources freed); a probe that fails or stays
//!   unanswered, or probes the provider has no room for over a longer time (a full queue
//!   is a busy peer, not a silent one), fail that peer's operations and report
//!   [`na::Event::PeerLost`]. So does a quiet message (`Plugin::send_quiet`: no operation,
//!   no event) that cannot be delivered: its failed completion, or its post given up in
//!   the backlog.
//!
//! Addresses are `ofi+PROVIDER://[DOMAIN/]LOCATOR`: `ofi+tcp://127.0.0.1:7000`,
//! `ofi+tcp://lo/127.0.0.1:0`, `ofi+shm://auto`. Provider quirks live in [`provider`].
#![deny(missing_docs)]

mod addr;
mod answered;
#[cfg(test)]
mod answers_tests;
mod bundler;
mod checks;
#[cfg(test)]
mod checks_tests;
mod config;
mod ctx;
#[cfg(test)]
mod events_tests;
mod fabric;
mod granted;
mod leases;
mod liveness;
#[cfg(test)]
mod liveness_tests;
mod local;
#[cfg(test)]
mod message_tests;
mod mr;
mod open;
#[cfg(test)]
mod oversized_tests;
mod peers;
mod plugin;
mod poll;
#[cfg(test)]
mod poll_tests;
mod pool;
mod post;
mod progress;
pub mod provider;
mod rma;
mod slack;
pub mod wire;

pub use config::OfiConfig;
pub use plugin::{OfiPlugin, OfiStats};
