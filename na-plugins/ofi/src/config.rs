//! The plugin's tunables.

use std::time::Duration;

/// Tunables of the ofi plugin.
#[derive(Clone, Debug)]
pub struct OfiConfig {
    /// Largest message (`send_*`) in bytes (capped by the provider's `max_msg_size`).
    pub max_eager: usize,
    /// Room of the pool of receives for unexpected messages, in messages of the largest
    /// size (one receive each, or the same memory in multi-receive buffers: `multi_recv`).
    pub recv_pool: usize,
    /// Whether the unexpected pool is made of multi-receive buffers where the provider
    /// has them (`FI_MULTI_RECV`): about the memory of `recv_pool` receives, in buffers
    /// of 16 of the largest messages each, into which messages are packed (hundreds of
    /// small ones per buffer), each posted again once full rather than after every
    /// message (see `pool.rs`). The default takes `QS_OFI_MULTI_RECV=0` to turn it off.
    pub multi_recv: bool,
    /// Completion queue entries.
    pub cq_size: usize,
    /// Providers whose RMA needs the owner's check (`Provider::checked_rma`): transfers up
    /// to this many bytes are carried in messages and performed by the owner itself, one
    /// round trip instead of a check, a grant and the RMA (capped by `max_eager`).
    pub carry_max: usize,
    /// Largest single `fi_read`/`fi_write`; longer transfers are split.
    pub rma_chunk: usize,
    /// Bytes of RMA pieces in flight at once, over all transfers (the rest wait in a queue);
    /// `None`: the provider's ([`crate::provider::Provider::rma_window`]). The default
    /// takes `QS_OFI_RMA_WINDOW=BYTES` if set.
    pub rma_window: Option<usize>,
    /// How long a peer that operations wait on may stay silent before it is probed.
    pub probe_after: Duration,
    /// How long a probe may stay unanswered before the peer is declared lost (six times
    /// that when no probe can go out at all, the provider having no room for one).
    pub probe_timeout: Duration,
    /// How long a peer stays closely watched (probed every `probe_after` when silent)
    /// after its last traffic other than probes and their answers, with no operation
    /// waiting on it: a client that dies between requests is noticed at once.
    pub watch_idle: Duration,
    /// How often a peer once contacted but idle since (`watch_idle` past, nothing but
    /// probes' answers) is probed: its loss is still found (a client that dies holding a
    /// server's resources, or while a long handler runs), but thousands of idle peers do
    /// not each cost a probe every `probe_after`.
    pub idle_probe_after: Duration,
    /// Released registrations kept for reuse by an identical `register` (0: off). While a
    /// registration sits in the cache a peer holding its old descriptor can still reach
    /// the memory, so the cache trades the contract's "deregistered memory is refused"
    /// for speed on fabrics where registration is expensive; off by default.
    pub mr_cache: usize,
    /// Whether the completion queue has a wait fd for progress to sleep on. libfabric
    /// signals it on every completion (a `write` when one is queued, a `read` when it is
    /// taken: two system calls per message over tcp), which an engine that only
    /// busy-polls never uses; without one, a progress call that may wait polls with short
    /// sleeps (as over shm, which has none).
    pub wait_object: bool,
    /// Without a wait object (shm, or `wait_object` off), the longest a progress call that
    /// may wait sleeps between polls of an idle queue, once it has been idle for a while
    /// (`poll::DEEP_AFTER` polls at 200 µs, about 0.1 s): the first message after a long
    /// silence waits up to this long, and an idle engine wakes this often (at the 200 µs
    /// kept before, an idle ofi+shm server took 9 % of a core). Polls come every 2–200 µs
    /// again from the next completion, every 10 µs at most while operations are in flight.
    pub idle_poll_max: Duration,
}

impl Default for OfiConfig {
    /// 64 KiB messages, a pool of 64 of them (4 multi-receive buffers where the provider
    /// has them), 512 KiB RMA pieces with the provider's window in flight; a
    /// silent peer is probed every 0.5 s; it is declared lost as soon as its process is
    /// proven gone (see `provider::DeathCheck`), after 10 s of unanswered probes, or after
    /// 60 s in which the provider had no room for any probe to it; peers active in the
    /// last 10 s are watched so, the others once contacted probed every 10 s; no
    /// registration cache; the completion
    /// queue with a wait fd where the provider has one; without one, an idle queue polled
    /// every 5 ms at most once idle. The cache size can be set with `QS_OFI_MR_CACHE=N`,
    /// the idle poll with `QS_OFI_IDLE_POLL_MAX_US=N`, the RMA window with
    /// `QS_OFI_RMA_WINDOW=BYTES`.
    fn default() -> Self {
        OfiConfig {
            max_eager: 64 << 10,
            recv_pool: 64,
            multi_recv: std::env::var("QS_OFI_MULTI_RECV").map_or(true, |v| v.trim() != "0"),
            cq_size: 4096,
            carry_max: std::env::var("QS_OFI_CARRY")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(4096),
            rma_chunk: 512 << 10,
            rma_window: std::env::var("QS_OFI_RMA_WINDOW")
                .ok()
                .and_then(|s| s.parse().ok()),
            probe_after: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(10),
            watch_idle: Duration::from_secs(10),
            idle_probe_after: Duration::from_secs(10),
            mr_cache: std::env::var("QS_OFI_MR_CACHE")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            wait_object: true,
            idle_poll_max: Duration::from_micros(
                std::env::var("QS_OFI_IDLE_POLL_MAX_US")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(5000),
            ),
        }
    }
}
