//! `qs-fwd`: IOR- and mdtest-like shapes run directly against a posix-ship server and
//! through an I/O node, in the same run; prints client-visible throughput, client
//! requests, backend requests (the server's own count) and the ratios.
//!
//! `qs-fwd [-t sm] [-n 64 clients] [-x 4096 transfer] [-b 1M per client] [-d 200 µs
//! op delay] [-r 3 repeats] [-f 16 files per client] [--shapes fpp,shared,md,dirs]`.
//! `fpp-random` and `shared-random` are the data shapes with each client's transfers in
//! a random order (IOR's `-z`): the same offsets and bytes, shuffled per client, the
//! reads in another order than the writes.
//! The server runs in this process (its `--op-delay-us` knob emulates a parallel file
//! system's latency); the I/O node runs as a separate process (this program re-run as
//! `qs-fwd node ADDR`), so its CPU time and peak memory are its own. Clients are threads
//! of this process, each with its own engine and connection, as separate processes
//! would have.

use std::io::Write;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ionode::stats::STATS;
use ionode::{IoNode, NodeConfig};
use posix_ship::client::RemoteFs;
use posix_ship::server::{Server, ServerConfig};
use qs_benches::{spawn_self, stats};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
struct Opts {
    /// Transport (`sm`, `tcp`).
    #[arg(short, default_value = "sm")]
    t: String,
    /// Clients.
    #[arg(short, default_value_t = 64)]
    n: usize,
    /// Transfer size, bytes.
    #[arg(short, default_value_t = 4096)]
    x: usize,
    /// Bytes per client (`-b 1048576`).
    #[arg(short, default_value_t = 1 << 20)]
    b: usize,
    /// The server's emulated latency per operation, µs.
    #[arg(short, default_value_t = 0)]
    d: u64,
    /// Repeats (median, min, max reported).
    #[arg(short, default_value_t = 3)]
    r: usize,
    /// Files per client in the metadata shape.
    #[arg(short, default_value_t = 16)]
    f: usize,
    /// Where the server's export is made (default: /dev/shm if present, else the temp
    /// directory): memory, so that the runs measure forwarding, not this machine's disk
    /// (its write-back throttling made a 64 MiB put 0.08 s once and 0.7 s after).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Run the I/O node with a write-behind journal in this directory (its cost).
    #[arg(short, long)]
    journal: Option<std::path::PathBuf>,
    /// Shapes: fpp (file per process, write then read), shared (one file, strided
    /// blocks, write then read), md (create, stat, unlink), dirs (mkdir, rename, rmdir;
    /// not in the default set); `fpp-random`, `shared-random`: the data shapes with
    /// each client's transfers in a random order (not in the default set).
    #[arg(long, value_delimiter = ',', default_value = "fpp,shared,md")]
    shapes: Vec<String>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) Run an I/O node in front of ADDR, print its address, stop at EOF on stdin.
    Node {
        backend: String,
        listen: String,
        journal: Option<std::path::PathBuf>,
    },
}

fn main() -> Res<()> {
    let o = Opts::parse();
    if let Some(Cmd::Node {
        backend,
        listen,
        journal,
    }) = &o.cmd
    {
        let node = IoNode::start(NodeConfig {
            journal: journal.clone(),
            auth: rpc_core::Auth::from_env()?,
            ..NodeConfig::new(listen, backend)
        })?;
        println!("{}", node.addr());
        std::io::stdout().flush()?;
        let _ = std::io::stdin().read_line(&mut String::new());
        node.shutdown();
        return Ok(());
    }
    let shm = std::path::Path::new("/dev/shm");
    let root = o.dir.clone().unwrap_or_else(|| {
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    });
    let base = root.join(format!("qs-fwd-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    // Removed however the run ends (a failed check left gigabytes in /dev/shm, which
    // then squeezed the memory of every later run).
    let _export = Removed(base.clone());
    let listen = rpc_core::transport::listen_address(Some(&o.t))?.to_string();
    // Over a network transport every party proves who it is with a shared key made for
    // this run (without one, clients are anonymous and may not write the export); the
    // clients and the node (a child) take it from the environment.
    let auth = if o.t.starts_with("sm") {
        rpc_core::Auth::None
    } else if std::env::var_os(rpc_core::Auth::ENV).is_some() {
        // The user's own (e.g. `munge`).
        rpc_core::Auth::from_env()?
    } else {
        // Beside the export, not in it.
        let key = root.join(format!("qs-fwd-{}.key", std::process::id()));
        let key = rpc_core::Auth::create_key_file(&key)?;
        // SAFETY: no other thread runs yet to read the environment meanwhile.
        unsafe { std::env::set_var(rpc_core::Auth::ENV, format!("key:{}", key.display())) };
        rpc_core::Auth::from_env()?
    };
    let mut cfg = ServerConfig::new(&base, &listen);
    cfg.auth = auth;
    cfg.policy.root_squash = false;
    // SAFETY: geteuid cannot fail.
    cfg.policy.trusted_forwarders = vec![unsafe { libc::geteuid() }];
    cfg.op_delay = Duration::from_micros(o.d);
    cfg.limits.open_files = 1 << 16;
    cfg.limits.in_flight = 1 << 10;
    cfg.limits.per_user.in_flight = 1 << 12;
    cfg.limits.per_user.open_files = 1 << 16;
    let server = Server::start(cfg)?;
    let journal = o.journal.as_ref().map(|j| j.display().to_string());
    let server_addr = server.addr();
    let mut node_args = vec!["node", &server_addr, &listen];
    if let Some(j) = &journal {
        node_args.push(j);
    }
    let (mut node, node_addr) = spawn_self(&node_args)?;
    println!(
        "qs-fwd: {} clients over {}, transfer {} B, {} KiB per client, server op delay {} µs, {} repeats, journal {}, export in {}",
        o.n,
        o.t,
        o.x,
        o.b >> 10,
        o.d,
        o.r,
        journal.as_deref().unwrap_or("none"),
        root.display()
    );
    println!(
        "{:<14} {:<7} {:>10} {:>10} {:>10} {:>11} {:>11} {:>8} {:>9}",
        "shape", "path", "median", "min", "max", "client-req", "backend-req", "saved", "speedup"
    );
    let probe = RemoteFs::connect(&node_addr)?;
    let node_pid = node.id();
    let cpu0 = cpu_secs(node_pid);
    for shape in &o.shapes {
        let phases: &[&str] = match shape.as_str() {
            "fpp" | "shared" | "fpp-random" | "shared-random" => &["write", "read"],
            "md" => &["md"],
            "dirs" => &["dirs"],
            s => return Err(format!("unknown shape {s}").into()),
        };
        for phase in phases {
            let mut direct_med = 0.0;
            for (path, addr) in [("direct", server.addr()), ("node", node_addr.clone())] {
                let mut rates = Vec::new();
                let (mut creq, mut breq) = (0, 0);
                for rep in 0..o.r {
                    let dir = format!("/{shape}-{path}-{rep}");
                    if *phase != "read" {
                        let _ = std::fs::remove_dir_all(base.join(&dir[1..]));
                        std::fs::create_dir_all(base.join(&dir[1..]))?;
                    }
                    let b0 = server.stats().requests;
                    let rate = run(&o, shape, phase, &addr, &dir)?;
                    // The clients' requests: the node's count, or the server's directly.
                    breq = server.stats().requests - b0;
                    creq = if path == "node" {
                        node_requests(&probe, &node_addr)?
                    } else {
                        breq
                    };
                    rates.push(rate);
                }
                let (med, min, max) = stats(&mut rates);
                let unit = if is_md(phase) { "op/s" } else { "MiB/s" };
                let saved = if breq > 0 {
                    creq as f64 / breq as f64
                } else {
                    0.0
                };
                if path == "direct" {
                    direct_med = med;
                }
                println!(
                    "{:<14} {:<7} {:>10.1} {:>10.1} {:>10.1} {:>11} {:>11} {:>7.1}x {:>8.2}x  {unit}",
                    format!("{shape}-{phase}"),
                    path,
                    med,
                    min,
                    max,
                    creq,
                    breq,
                    saved,
                    med / direct_med
                );
            }
        }
    }
    let cpu = cpu_secs(node_pid) - cpu0;
    println!(
        "I/O node process: {cpu:.2} s CPU over the node runs, peak RSS {} MiB",
        peak_rss_kib(node_pid) >> 10
    );
    drop(node.stdin.take());
    node.wait()?;
    let _ = std::fs::remove_file(root.join(format!("qs-fwd-{}.key", std::process::id())));
    Ok(())
}

/// A directory removed when dropped.
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The node's client requests since the last call (its counter, less stats calls).
fn node_requests(probe: &RemoteFs, addr: &str) -> Res<u64> {
    static LAST: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let e = probe.engine();
    let s = e.call(&e.lookup(addr)?, STATS, &()).wait()?;
    let total = s.totals().0 - s.op("posix.server_stats").0;
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let d = total - *last;
    *last = total;
    Ok(d)
}

/// One phase of one shape with `o.n` clients at `addr`: MiB/s (or op/s for md).
fn run(o: &Opts, shape: &str, phase: &str, addr: &str, dir: &str) -> Res<f64> {
    let clients: Vec<RemoteFs> = (0..o.n)
        .map(|_| RemoteFs::connect(addr))
        .collect::<Result<_, _>>()?;
    if shape.starts_with("shared") && phase == "write" {
        clients[0].create(&format!("{dir}/shared"))?.close()?;
    }
    let start = Barrier::new(o.n + 1);
    let t0 = std::thread::scope(|s| -> Res<Instant> {
        let handles: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(c, fs)| {
                let start = &start;
                s.spawn(move || -> Result<(), String> {
                    start.wait();
                    client(o, shape, phase, fs, dir, c).map_err(|e| e.to_string())
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for h in handles {
            h.join().map_err(|_| "client panicked")??;
        }
        Ok(t0)
    })?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(if is_md(phase) {
        (o.n * o.f * 3) as f64 / secs
    } else {
        (o.n * o.b) as f64 / secs / (1 << 20) as f64
    })
}

/// Whether `phase` counts metadata operations (three per file), not bytes.
fn is_md(phase: &str) -> bool {
    matches!(phase, "md" | "dirs")
}

fn byte(c: usize, off: usize) -> u8 {
    (off.wrapping_mul(7) ^ c.wrapping_mul(13)) as u8
}

/// What client `c` does.
fn client(o: &Opts, shape: &str, phase: &str, fs: &RemoteFs, dir: &str, c: usize) -> Res<()> {
    if phase == "md" {
        for i in 0..o.f {
            fs.create(&format!("{dir}/c{c}-{i}"))?.close()?;
        }
        for i in 0..o.f {
            fs.metadata(&format!("{dir}/c{c}-{i}"))?;
        }
        for i in 0..o.f {
            fs.remove_file(&format!("{dir}/c{c}-{i}"))?;
        }
        return Ok(());
    }
    if phase == "dirs" {
        for i in 0..o.f {
            fs.create_dir(&format!("{dir}/c{c}-{i}"))?;
        }
        for i in 0..o.f {
            fs.rename(&format!("{dir}/c{c}-{i}"), &format!("{dir}/r{c}-{i}"))?;
        }
        for i in 0..o.f {
            fs.remove_dir(&format!("{dir}/r{c}-{i}"))?;
        }
        return Ok(());
    }
    let (path, stride) = match shape.trim_end_matches("-random") {
        "fpp" => (format!("{dir}/c{c}"), None),
        _ => (format!("{dir}/shared"), Some(o.n)),
    };
    // Transfer k of client c: at k*x in its own file, or block k*n+c of the shared one.
    let at = |k: usize| stride.map_or(k * o.x, |n| (k * n + c) * o.x);
    let owner = if stride.is_some() { 0 } else { c };
    let per = o.b / o.x;
    // The order of the client's transfers: sequential, or shuffled (a seed per client
    // and phase: the same each run, the reads in another order than the writes).
    let mut order: Vec<usize> = (0..per).collect();
    if shape.ends_with("-random") {
        let seed = (c as u64) << 1 | u64::from(phase == "read");
        fastrand::Rng::with_seed(seed).shuffle(&mut order);
    }
    if phase == "write" {
        let f = if stride.is_some() {
            fs.open_with(&path, libc::O_WRONLY, 0)?
        } else {
            fs.create(&path)?
        };
        let mut buf = vec![0u8; o.x];
        for &k in &order {
            let off = at(k);
            buf.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = byte(owner, off + i));
            f.write_at(&buf, off as u64)?;
        }
        f.close()?;
    } else {
        let f = fs.open(&path)?;
        let mut buf = vec![0u8; o.x];
        for &k in &order {
            let off = at(k);
            let n = f.read_at(&mut buf, off as u64)?;
            let bad = buf
                .iter()
                .enumerate()
                .position(|(i, b)| *b != byte(owner, off + i));
            if n != o.x || bad.is_some() {
                return Err(format!(
                    "client {c}: {n} bytes at {off} of {path}, first wrong at {bad:?}"
                )
                .into());
            }
        }
    }
    Ok(())
}

/// User plus system CPU seconds of process `pid`.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Peak resident memory of process `pid`, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
