//! Opening an endpoint: the provider's description and `fi_getinfo` (with multi-receive
//! buffers where wanted and offered), the fabric stack, and the plugin's state around it.

use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use libfabric_sys as fi;
use na::{Address, NaError, NaResult};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::addr;
use crate::config::OfiConfig;
use crate::fabric::{self, Hints, Info, Stack};
use crate::mr::MemTable;
use crate::plugin::{OfiPlugin, OfiStats, State};
use crate::provider::{self, CAPS, MR_MODES};
use crate::wire;

pub(crate) fn bad_addr(addr: &Address, reason: String) -> NaError {
    NaError::InvalidAddress {
        addr: addr.to_string(),
        reason,
    }
}

impl OfiPlugin {
    /// Opens an endpoint listening at `addr` (`ofi+tcp://127.0.0.1:0`, `ofi+shm://auto`)
    /// with the default configuration.
    pub fn new(addr: &Address) -> NaResult<OfiPlugin> {
        OfiPlugin::with_config(addr, OfiConfig::default())
    }

    /// Opens an endpoint listening at `addr` with `cfg`.
    pub fn with_config(addr: &Address, cfg: OfiConfig) -> NaResult<OfiPlugin> {
        if addr.plugin() != "ofi" {
            return Err(bad_addr(addr, "not an ofi address".into()));
        }
        let known = || {
            provider::PROVIDERS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let name = addr.provider().ok_or_else(|| {
            bad_addr(
                addr,
                format!("name a provider: ofi+PROVIDER:// ({})", known()),
            )
        })?;
        let prov = provider::lookup(name).ok_or_else(|| {
            bad_addr(
                addr,
                format!("unknown provider {name:?} (known: {})", known()),
            )
        })?;
        let (domain, loc) = addr::split_domain(addr.locator());
        let (node, service) = if prov.host_port {
            let (n, s) = addr::node_service(loc).map_err(|e| bad_addr(addr, e.to_string()))?;
            (Some(n), Some(s))
        } else if loc == "auto" {
            (None, None)
        } else {
            (Some(loc), None)
        };
        let mut hints = Hints {
            prov: prov.prov,
            domain,
            node,
            service,
            caps: CAPS | fi::FI_MULTI_RECV as u64,
            mr_mode: MR_MODES,
        };
        // Multi-receive buffers where the provider has them (and they are wanted).
        let multi = (cfg.multi_recv && prov.multi_recv)
            .then(|| Info::get(&hints).ok())
            .flatten();
        hints.caps = CAPS;
        // (Not the answer's caps: a provider may list the capability unasked.)
        let multi_recv = multi.is_some();
        let info = multi.map_or_else(|| Info::get(&hints), Ok).map_err(|e| {
            let present = fabric::providers();
            NaError::Unsupported(format!(
                "libfabric provider {:?} cannot open {addr} here ({e}); providers present: {}",
                prov.prov,
                if present.is_empty() {
                    "none".into()
                } else {
                    present.join(", ")
                }
            ))
        })?;
        if prov.death_check == provider::DeathCheck::Pid {
            let n = provider::sweep_stale_shm_regions();
            if n > 0 {
                tracing::info!("ofi: removed {n} shm regions left by dead processes");
            }
        }
        let max_eager = cfg.max_eager.min(info.max_msg_size().saturating_sub(300));
        // A multi-receive buffer is released once it has no room left for the largest
        // message (`pool.rs`).
        let min_multi = multi_recv.then_some(max_eager + wire::HEADER_MAX);
        let stack = Stack::open(&info, cfg.cq_size, cfg.wait_object, min_multi)?;
        let self_raw = stack.name()?;
        let format = info.raw().addr_format;
        let mut loc = addr::to_locator(format, &self_raw);
        if let Some(d) = domain {
            loc = format!("{d}/{loc}");
        }
        let self_addr = Address::new("ofi", Some(prov.name), &loc)?;
        // SAFETY: eventfd returns a new descriptor (or -1, checked) that we own.
        let wake_fd = unsafe {
            let fd = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let inject = info.inject_size();
        let sendv = info.iov_limit() >= 2;
        let carry_max = cfg.carry_max.min(max_eager);
        // (At least a byte: with 0, no piece would ever be posted.)
        let rma_window = cfg.rma_window.unwrap_or(prov.rma_window).max(1);
        let mr_local = info.mr_mode() & fi::FI_MR_LOCAL != 0;
        let Stack {
            ep,
            av,
            cq,
            wait_fd,
            domain: dom,
            fabric: fab,
        } = stack;
        let mem = MemTable::new(info.mr_mode(), info.mr_key_size(), cfg.mr_cache);
        tracing::info!(
            "ofi: {} on domain {} at {self_addr} (mr_mode {:#x}, inject {inject}, wait fd {}, multi-receive pool {multi_recv})",
            info.prov_name(),
            info.domain_name(),
            info.mr_mode(),
            wait_fd.is_some()
        );
        // SAFETY: `fi_version` only returns the library's version.
        let write_flag = prov.write_flag(unsafe { fi::fi_version() });
        let local = (prov.name == "shm").then(|| crate::local::opened(&self_raw));
        let p = OfiPlugin {
            ep: ManuallyDrop::new(ep),
            local,
            state: Mutex::new(State {
                ops: FxHashMap::default(),
                peers: FxHashMap::default(),
                by_addr: FxHashMap::default(),
                last_peer: None,
                last_lookup: None,
                mem,
                awaiting: FxHashMap::default(),
                checks: Default::default(),
                rma_queue: VecDeque::new(),
                rma_inflight: 0,
                leases: Default::default(),
                releases: Vec::new(),
                live: FxHashSet::default(),
                stats: OfiStats::default(),
                recv_bufs: Vec::new(),
                backlog: VecDeque::new(),
                backlog_seq: 0,
            }),
            av: ManuallyDrop::new(av),
            cq: ManuallyDrop::new(cq),
            domain: ManuallyDrop::new(dom),
            fabric: ManuallyDrop::new(fab),
            wait_fd,
            wake_fd,
            events: Default::default(),
            cq_lock: Mutex::new(()),
            answers: Mutex::new(Vec::new()),
            held: Mutex::default(),
            liveness: Mutex::new((None, None)),
            liveness_dirty: std::sync::atomic::AtomicBool::new(false),
            releases_pending: std::sync::atomic::AtomicBool::new(false),
            pumping: std::sync::atomic::AtomicBool::new(false),
            queued: std::sync::atomic::AtomicBool::new(false),
            backlogged: std::sync::atomic::AtomicBool::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            poll: AtomicU64::new(0),
            queue_polls: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            pool_posts: AtomicU64::new(0),
            drop_warned: Mutex::new(None),
            deep_asleep: std::sync::atomic::AtomicBool::new(false),
            spins: AtomicU64::new(0),
            bundles_sent: AtomicU64::new(0),
            next_op: AtomicU64::new(1),
            cfg,
            provider: prov,
            info,
            self_addr,
            self_raw,
            max_eager,
            inject,
            multi_recv,
            sendv,
            carry_max,
            rma_window,
            mr_local,
            write_flags: fi::FI_COMPLETION as u64 | write_flag,
            leased_rma: prov.checked_rma,
        };
        p.open_pool()?;
        Ok(p)
    }
}
