//! The table of provider descriptions: every provider quirk the plugin knows lives here,
//! not in `if`s scattered through the data path.

use libfabric_sys as fi;

/// How the plugin can tell for sure that a silent peer's process is gone.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DeathCheck {
    /// Its address is a listening socket address: a refused TCP connection proves it gone.
    Connect,
    /// Its address names its process id (`fi_shm://PID:…`): `kill(pid, 0)` tells.
    Pid,
    /// No check: only unanswered probes.
    None,
}

/// How a provider behaves, as far as this plugin cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// The name addresses use (`ofi+tcp://…` → `tcp`).
    pub name: &'static str,
    /// The libfabric provider string to ask for (`tcp;ofi_rxm`).
    pub prov: &'static str,
    /// The locator to listen on when the program names none.
    pub default_locator: &'static str,
    /// Whether locators carry `host:port` (passed to `fi_getinfo` as node and service).
    pub host_port: bool,
    /// Whether the plugin asks the owner before each RMA (a [`crate::wire::Check`] round
    /// trip): for providers whose own key checks are missing or destructive. Measured with
    /// libfabric 1.17: `shm` performs a transfer with a wrong key or into a deregistered
    /// region without error; `tcp;ofi_rxm` refuses it but closes the connection, failing
    /// every other operation to that peer. `sockets` refuses cleanly; hardware providers
    /// check keys in the NIC.
    pub checked_rma: bool,
    /// The completion flag of writes that makes a put complete only once its data is in
    /// the owner's memory (`FI_DELIVERY_COMPLETE` where the default completes earlier).
    pub write_completion: u64,
    /// libfabric releases (`(major, minor)`) in which this provider's default completion
    /// of a put is as good for us as `write_completion`: the data is in the owner's memory,
    /// or (inline and inject puts) queued to be copied before any later message of ours
    /// to that peer is seen; so puts go without it (see [`Provider::write_flag`]). Such a
    /// put is not checked by the owner's provider at all: the owner's grant and lease
    /// (`crate::leases`) keep it out of a region deregistered meanwhile, within the
    /// lease's bound (`OfiPlugin::await_leases`, `crate::granted`).
    pub delivered_by_default: &'static [(u32, u32)],
    /// Bytes of RMA pieces in flight by default (`OfiConfig::rma_window`): what keeps the
    /// transport busy against how long a small message may wait behind transfers. `shm`
    /// makes the owner copy each delivery-complete put in its own progress, so a put waits
    /// for the owner's next poll (measured before puts there went without the flag, see
    /// `delivered_by_default`): 8 MiB there (pushes of 1–16 MiB 20–30 % faster than
    /// with 2 MiB, `qs-bw -t ofi+shm -d push`; a small RPC's p99 behind 32 × 8 MiB pulls
    /// 8–10 ms instead of 3–5); 8 MiB over tcp too (see its entry); 2 MiB elsewhere.
    pub rma_window: usize,
    /// How a silent peer is proven dead (then declared lost at once, without waiting for
    /// the probe timeout; a peer proven alive is given the whole timeout).
    pub death_check: DeathCheck,
    /// Whether the unexpected pool may be made of multi-receive buffers (`crate::pool`),
    /// if the provider offers `FI_MULTI_RECV`. Not over `shm`: libfabric 1.17's crashes in
    /// `fi_setopt(FI_OPT_MIN_MULTI_RECV)` on an endpoint not yet enabled (SIGSEGV, seen
    /// with gdb), and Mercury's `na_ofi` does not ask for it there either.
    pub multi_recv: bool,
    /// The longest request (header included) sent gathered (`fi_sendv`: the payload not
    /// copied behind its header, see `OfiPlugin::message`).
    pub gather_max: usize,
    /// The provider moves data on threads of its own (`na::Caps::progress_threads`):
    /// `sockets`, whose round trip took about 4 ms (a scheduler tick) while the engines'
    /// threads spun on this 2-core machine, and 62 µs while they slept (`qs-rate -t
    /// ofi+sockets -x 1`, against `-s 0`).
    pub progress_threads: bool,
}

const fn p(name: &'static str, prov: &'static str, host_port: bool, checked_rma: bool) -> Provider {
    Provider {
        name,
        prov,
        default_locator: if host_port { "127.0.0.1:0" } else { "auto" },
        host_port,
        checked_rma,
        write_completion: fi::FI_DELIVERY_COMPLETE as u64,
        delivered_by_default: &[],
        rma_window: 2 << 20,
        death_check: if host_port {
            DeathCheck::Connect
        } else {
            DeathCheck::None
        },
        multi_recv: true,
        gather_max: usize::MAX,
        progress_threads: false,
    }
}

/// Every provider the plugin knows. Connection-oriented providers run under the `ofi_rxm`
/// utility provider, which gives them reliable datagram (RDM) endpoints.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        // Pulls of 64 KiB-1 MiB (64 per RPC) waited for the window at 2 MiB: each piece
        // posted as another completed is a read request the client's provider serves from
        // its own (often sleeping) progress. 8 MiB: 64 KiB pulls 1136-1238 -> 1836-1914
        // MB/s, 256 KiB 2737-3009 -> 3511-3986 (`qs-bw -t ofi+tcp -d pull`, two rounds
        // alternated, `QS_OFI_RMA_WINDOW`); the fairness test's p99 stays within its bound.
        rma_window: 8 << 20,
        // rxm's eager messages (16 KiB, `FI_OFI_RXM_BUFFER_SIZE`): past them it cuts a
        // message into segments, and a gathered one was slower (`qs-rate -t ofi+tcp -x 1`,
        // 32 KiB requests, three rounds alternated: 58-61 µs per round trip against 48-53
        // copied; 8 KiB 20.7 / 21.1 against 22.4 / 21.8).
        gather_max: 16 << 10,
        ..p("tcp", "tcp;ofi_rxm", true, true)
    },
    Provider {
        progress_threads: true,
        ..p("sockets", "sockets", true, false)
    },
    Provider {
        death_check: DeathCheck::Pid,
        rma_window: 8 << 20,
        // Read in libfabric 1.17's `prov/shm/src/smr_rma.c` and `smr_progress.c`: a put
        // asked for `FI_DELIVERY_COMPLETE` always goes through the owner's progress (it
        // copies the data itself, when it next polls), while without it a put to a peer
        // reachable by CMA is one `process_vm_writev` by the caller (the "fast RMA" the
        // provider enables when no RMA ordering is asked, as here), complete when that
        // call returns. Every other way shm 1.17 moves a put also lands the data before
        // the caller's next message to that peer can be seen: inline and inject puts
        // are commands in the owner's queue, taken in order before that message; iov,
        // SAR and mmap puts complete only on the owner's response, after its copy.
        // Pushes of 1 MiB / 16 MiB 3.5-4.5 / 4.9-5.5 -> 6.8-8.1 / 6.5-8.2 GB/s
        // (`qs-bw -t ofi+shm -d push`, two rounds alternated). Other releases keep the flag.
        delivered_by_default: &[(1, 17)],
        multi_recv: false,
        ..p("shm", "shm", false, true)
    },
    Provider {
        death_check: DeathCheck::None,
        ..p("verbs", "verbs;ofi_rxm", true, false)
    },
    p("cxi", "cxi", false, false),
    p("psm2", "psm2", false, false),
    p("psm3", "psm3", false, false),
    p("efa", "efa", false, false),
    p("opx", "opx", false, false),
];

impl Provider {
    /// The completion flag a put is posted with under libfabric `version` (as
    /// `fi_version()` gives it): `write_completion`, unless that release's default
    /// completion is known to mean as much.
    pub fn write_flag(&self, version: u32) -> u64 {
        let release = (version >> 16, version & 0xffff);
        if self.delivered_by_default.contains(&release) {
            0
        } else {
            self.write_completion
        }
    }
}

/// The description of `name` (the provider part of an `ofi+NAME://` address).
pub fn lookup(name: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.name == name)
}

/// The capabilities the plugin asks every provider for.
pub const CAPS: u64 = fi::FI_MSG as u64
    | fi::FI_TAGGED as u64
    | fi::FI_RMA as u64
    | fi::FI_READ as u64
    | fi::FI_WRITE as u64
    | fi::FI_SEND as u64
    | fi::FI_RECV as u64
    | fi::FI_REMOTE_READ as u64
    | fi::FI_REMOTE_WRITE as u64;

/// The memory registration modes the plugin can honour (`fi_getinfo` answers with the
/// subset the provider requires).
pub const MR_MODES: u32 = fi::FI_MR_LOCAL
    | fi::FI_MR_VIRT_ADDR
    | fi::FI_MR_ALLOCATED
    | fi::FI_MR_PROV_KEY
    | fi::FI_MR_ENDPOINT;

/// The shm provider's region name (`PID:N:N`) in its raw address (`fi_shm://PID:N:N\0`).
pub(crate) fn region_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let name = s.trim_end_matches('\0');
    name.split_once("://").map_or(name, |(_, r)| r).to_string()
}

/// Whether the process behind `raw` (an address of `check`'s kind) is certainly gone.
pub fn certainly_dead(check: DeathCheck, raw: &[u8]) -> bool {
    match check {
        DeathCheck::None => false,
        DeathCheck::Pid => {
            let name = region_name(raw);
            let name = name.as_str();
            // The provider's region is `/dev/shm/NAME` while the endpoint is open.
            if !shm_region_exists(name) {
                return true;
            }
            let pid = name
                .split(':')
                .next()
                .and_then(|p| p.parse::<libc::pid_t>().ok());
            // A name that names no process cannot be a live endpoint's. A region last
            // written before its pid's process started was left by an earlier process
            // with that pid (pids wrap): its endpoint is gone too.
            match pid {
                Some(pid) if pid > 0 => region_stale(name, pid),
                _ => true,
            }
        }
        DeathCheck::Connect => {
            let format = if raw.len() >= 24 {
                fi::FI_SOCKADDR_IN6
            } else {
                fi::FI_SOCKADDR_IN
            };
            let loc = crate::addr::to_locator(format, raw);
            match loc.parse::<std::net::SocketAddr>() {
                Ok(sa) => matches!(
                    std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_millis(200)),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
                ),
                Err(_) => false,
            }
        }
    }
}

/// Whether the shm provider's region for endpoint `name` (`PID:N:N`) exists.
pub fn shm_region_exists(name: &str) -> bool {
    !name.contains('/') && std::path::Path::new("/dev/shm").join(name).exists()
}

fn pid_gone(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Whether shm region `name`, named for process `pid`, was left by a process that is
/// gone: no process has that pid, or the one that has it started after the region was
/// last written (an earlier process with that pid left it: pids wrap at 32768 by default,
/// and threads take them too). Unknown times count as not stale, and so does a region
/// written within [`CLOCK_SLACK`] before the process started (a wall clock stepped back
/// would otherwise make a live region look older than its process).
fn region_stale(name: &str, pid: libc::pid_t) -> bool {
    if pid_gone(pid) {
        return true;
    }
    let written = std::fs::metadata(std::path::Path::new("/dev/shm").join(name))
        .and_then(|m| m.modified())
        .ok();
    matches!((written, process_start(pid)), (Some(w), Some(s)) if w + CLOCK_SLACK < s)
}

/// How much earlier than a process's start its pid's region must have been written to
/// be an earlier process's.
const CLOCK_SLACK: std::time::Duration = std::time::Duration::from_secs(10);

/// When process `pid` started: boot time plus its start tick (`/proc`). Boot time is
/// whole seconds rounded down, so this may read up to a second early, never late.
fn process_start(pid: libc::pid_t) -> Option<std::time::SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): the 22nd, `starttime`, is
    // the 20th of them.
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    let since_boot = std::time::Duration::from_nanos(ticks.checked_mul(1_000_000_000)? / hz);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(btime) + since_boot)
}

/// Removes the shm provider's regions left in `/dev/shm` by processes that died without
/// closing their endpoints (killed processes leak 16 MiB each): those `region_stale`
/// says are (no process has their pid, or the one that has it, ours included, started
/// after they were last written; the provider refuses to create a region whose name a
/// live pid holds). Regions of live endpoints were made after their process started.
/// Returns how many.
pub fn sweep_stale_shm_regions() -> usize {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let mut parts = name.split(':');
        let pid = parts.next().and_then(|p| p.parse::<libc::pid_t>().ok());
        let shape = parts.clone().count() >= 2 && parts.all(|p| p.parse::<u32>().is_ok());
        if let (Some(pid), true) = (pid, shape)
            && pid > 0
            && region_stale(&name, pid)
            && std::fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn puts_skip_delivery_completion_only_where_it_was_read_to_be_implied() {
        let v = |major: u32, minor: u32| (major << 16) | minor;
        let shm = lookup("shm").unwrap();
        assert_eq!(shm.write_flag(v(1, 17)), 0);
        for other in [v(1, 16), v(1, 18), v(2, 0)] {
            assert_eq!(shm.write_flag(other), fi::FI_DELIVERY_COMPLETE as u64);
        }
        let tcp = lookup("tcp").unwrap();
        assert_eq!(tcp.write_flag(v(1, 17)), fi::FI_DELIVERY_COMPLETE as u64);
    }

    #[test]
    fn the_sweep_removes_regions_left_before_their_pids_process_started_and_keeps_newer_ones() {
        let me = std::process::id();
        let (old, new) = (format!("/dev/shm/{me}:9:1"), format!("/dev/shm/{me}:9:2"));
        std::fs::write(&old, b"").unwrap();
        std::fs::write(&new, b"").unwrap();
        let f = std::fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(86_400))
            .unwrap();
        sweep_stale_shm_regions();
        let (old_left, new_left) = (Path::new(&old).exists(), Path::new(&new).exists());
        let _ = std::fs::remove_file(&new);
        assert!(
            !old_left,
            "a region older than our process was ours by an earlier pid"
        );
        assert!(new_left, "a region made since we started is kept");
    }

    #[test]
    fn death_checks_tell_gone_processes() {
        let me = std::process::id();
        let region = format!("{me}:7:7");
        std::fs::write(format!("/dev/shm/{region}"), b"").unwrap();
        let alive = format!("fi_shm://{region}\0");
        assert!(!certainly_dead(DeathCheck::Pid, alive.as_bytes()));
        // Left by an earlier process of our pid: last written before we started.
        let f = std::fs::File::options()
            .write(true)
            .open(format!("/dev/shm/{region}"));
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400 * 365);
        f.unwrap().set_modified(old).unwrap();
        assert!(
            certainly_dead(DeathCheck::Pid, alive.as_bytes()),
            "a region older than its pid's process"
        );
        std::fs::remove_file(format!("/dev/shm/{region}")).unwrap();
        let odd = format!("qs-odd-{me}");
        std::fs::write(format!("/dev/shm/{odd}"), b"").unwrap();
        let named = format!("fi_shm://{odd}\0");
        let no_pid = certainly_dead(DeathCheck::Pid, named.as_bytes());
        std::fs::remove_file(format!("/dev/shm/{odd}")).unwrap();
        assert!(no_pid, "a region whose name names no process");
        assert!(
            certainly_dead(DeathCheck::Pid, alive.as_bytes()),
            "region gone"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = format!("fi_shm://{pid}:0:0\0");
        assert!(certainly_dead(DeathCheck::Pid, gone.as_bytes()));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = crate::addr::from_locator(fi::FI_SOCKADDR_IN, &l.local_addr().unwrap().to_string())
            .unwrap();
        assert!(!certainly_dead(DeathCheck::Connect, &a));
        drop(l);
        assert!(certainly_dead(DeathCheck::Connect, &a));
    }
}
