//! `ionode`: the I/O forwarding daemon (`serve`) and its counters (`stats`).

use std::io::{self, Write};
use std::time::Duration;

use clap::{Parser, Subcommand};
use ionode::stats::{NodeStats, STATS, table};
use ionode::{IoNode, NodeConfig};
use posix_ship::server::{Limits, UserLimits};
use rpc_core::{Auth, Engine};

/// An I/O forwarding node: clients speak posix-ship to it, it forwards to the servers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve: prints the address to connect to, stops on SIGINT/SIGTERM after flushing.
    Serve {
        /// Where clients connect: an address or a transport name (`tcp`, `sm`).
        #[arg(long, default_value = "tcp")]
        listen: String,
        /// A server to forward to: `ADDR` (the whole namespace) or `/PREFIX=ADDR`
        /// (paths beneath PREFIX, which the server sees removed). Repeatable.
        #[arg(long, required = true)]
        backend: Vec<String>,
        /// Memory for acknowledged, not yet written data, all files (`256M`, `1G`; `0`:
        /// every write goes straight through).
        #[arg(long, default_value = "256M", value_parser = size)]
        write_behind: u64,
        /// Buffered writes older than this many milliseconds are written out.
        #[arg(long, default_value_t = 500)]
        flush_after_ms: u64,
        /// The largest sequential read-ahead window (`8M`; `0`: none).
        #[arg(long, default_value = "8M", value_parser = size)]
        readahead: u64,
        /// Read-ahead memory of all files together.
        #[arg(long, default_value = "256M", value_parser = size)]
        readahead_total: u64,
        /// Handler threads.
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// Open files per client (past it: EMFILE).
        #[arg(long, default_value_t = Limits::default().open_files)]
        max_open: usize,
        /// Requests served at once per client (past it: EAGAIN).
        #[arg(long, default_value_t = Limits::default().in_flight)]
        max_in_flight: usize,
        /// Requests served at once for all the clients of one user (past it: EAGAIN).
        #[arg(long, default_value_t = NodeConfig::limits().per_user.in_flight)]
        user_in_flight: usize,
        /// Open files of all the clients of one user (past it: EMFILE).
        #[arg(long, default_value_t = NodeConfig::limits().per_user.open_files)]
        user_open: usize,
        /// Bulk data held for all the clients of one user at once, MiB.
        #[arg(long, default_value_t = NodeConfig::limits().per_user.staging >> 20)]
        user_staging_mib: u64,
        /// Bulk data held for one client's reads and writes at once, MiB (past it, reads
        /// and writes are served short, as POSIX allows).
        #[arg(long, default_value_t = Limits::default().staging_per_client >> 20)]
        staging_mib: u64,
        /// Seconds a `stat` answer is kept (per user; the node's own changes drop it).
        #[arg(long, default_value_t = 1.0)]
        attr_timeout: f64,
        /// Seconds an `ENOENT` answer is kept.
        #[arg(long, default_value_t = 1.0)]
        negative_timeout: f64,
        /// The proof demanded of tcp clients: `none`, `munge`, `key:FILE`.
        #[arg(long, default_value = "none")]
        auth: String,
        /// Journal buffered writes in this directory (fdatasync'd in groups) before
        /// acknowledging them; replayed to the backends at start, so acknowledged writes
        /// survive a crash of the node.
        #[arg(long)]
        journal: Option<std::path::PathBuf>,
    },
    /// Print a node's counters: client requests in, backend requests out, per operation.
    Stats {
        /// The node's address.
        addr: String,
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// Refresh every this many seconds until interrupted.
        #[arg(long)]
        watch: Option<f64>,
    },
}

/// `123`, `64K`, `256M`, `1G` (powers of 1024).
fn size(s: &str) -> Result<u64, String> {
    let (num, shift) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Large buffers (bulk staging, read-ahead windows, merged writes: 64 KiB to 16 MiB,
/// short-lived, from many threads) are mapped and unmapped by malloc rather than kept in
/// its per-thread arenas: glibc's default raises the mapping threshold after the first
/// free, and then every arena keeps its own freed 16 MiB buffers (measured: 221 MiB
/// resident after one client's 512 MiB of writes, under 64 MiB of live data).
fn return_large_buffers() {
    // SAFETY: mallopt only changes malloc's tunables; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

fn main() {
    return_large_buffers();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(io::stderr)
        .try_init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("ionode: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> io::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            listen,
            backend,
            write_behind,
            flush_after_ms,
            readahead,
            readahead_total,
            workers,
            max_open,
            max_in_flight,
            user_in_flight,
            user_open,
            user_staging_mib,
            staging_mib,
            attr_timeout,
            negative_timeout,
            auth,
            journal,
        } => {
            let secs = |s: f64, what: &str| {
                Duration::try_from_secs_f64(s).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
                })
            };
            let cfg = NodeConfig {
                backends: backend,
                write_behind,
                flush_after: Duration::from_millis(flush_after_ms),
                readahead_max: readahead.min(64 << 20) as usize,
                readahead_total,
                workers: workers.max(1),
                limits: Limits {
                    open_files: max_open,
                    in_flight: max_in_flight,
                    staging_per_client: staging_mib << 20,
                    per_user: UserLimits {
                        in_flight: user_in_flight,
                        open_files: user_open,
                        staging: user_staging_mib << 20,
                    },
                    ..NodeConfig::limits()
                },
                attr_timeout: secs(attr_timeout, "--attr-timeout")?,
                negative_timeout: secs(negative_timeout, "--negative-timeout")?,
                auth: Auth::parse(&auth).map_err(io::Error::other)?,
                journal,
                ..NodeConfig::new(&listen, "")
            };
            let node = IoNode::start(cfg)?;
            println!("{}", node.addr());
            io::stdout().flush()?;
            node.serve_until_signal()?;
            eprintln!("ionode: stopped after flushing");
            Ok(())
        }
        Cmd::Stats { addr, json, watch } => {
            let engine = Engine::builder()
                .listen(&transport_of(&addr)?)
                .build()
                .map_err(io::Error::other)?;
            let peer = engine.lookup(&addr).map_err(io::Error::other)?;
            let fetch = || -> io::Result<NodeStats> {
                engine
                    .call(&peer, STATS, &())
                    .wait()
                    .map_err(io::Error::other)
            };
            loop {
                let s = fetch()?;
                if json {
                    println!("{}", serde_json::to_string(&s).map_err(io::Error::other)?);
                } else {
                    if watch.is_some() {
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{}", table(&s));
                }
                io::stdout().flush()?;
                let Some(every) = watch else { return Ok(()) };
                std::thread::sleep(Duration::from_secs_f64(every.max(0.1)));
            }
        }
    }
}

fn transport_of(addr: &str) -> io::Result<String> {
    let a = rpc_core::Address::parse(addr).map_err(io::Error::other)?;
    let l = rpc_core::transport::listen_address(Some(&a.transport())).map_err(io::Error::other)?;
    Ok(l.to_string())
}
