//! `qs-bw`: bulk bandwidth, mirroring Mercury's `hg_bw_write` (the server pulls from the
//! client) and `hg_bw_read` (the server pushes to the client), with a raw TCP stream of the
//! same bytes measured in the same run as the baseline.
//!
//! ```text
//! qs-bw [-t TRANSPORT] [-d pull|push] [-y MIN_SIZE] [-z MAX_SIZE] [-l LOOPS] [-r REPS]
//!       [-c CHUNK] [-w DEPTH] [-b] [-n TRANSFERS] [-i INLINE] [-s SPIN_US] [-C] [-W]
//!       [-N RAW_BUFS]
//! ```
//! Each RPC makes the server do N transfers (`-n`, default 64, as hg_bw does) of S bytes,
//! all posted at once (into or from N buffers of its own, registered once per size), against
//! one client buffer of S bytes; MB/s counts N·S per RPC. `-c`/`-w` set the chunk size and
//! chunks in flight per transfer. `-i` lets the client's descriptor carry buffers up to that
//! size inline (eager bulk; default 0): with `-n 1` this shows where eager bulk beats an RMA
//! round trip. `-b` makes the raw baseline's receiver busy-poll (our engine polls for a
//! while after each event, so this is the closer baseline; PERF.md lists both). Client and
//! server are separate processes; the server is this binary re-run with `--serve`.
//! `-s` sets both engines' spin window after an event (default: the engine's, as `qs-rate -s`).
//! `-C` measures instead the CPU cost of one transfer, both sides together (see `cost.rs`).
//! The server's handler runs on its progress thread and answers from its transfers' last
//! completion (`Caller::transfers`), as Mercury's handlers answer from bulk callbacks;
//! `-W` makes a worker post the transfers and wait for each instead (the earlier form).
//! `-N` makes the sm baseline copy into that many buffers in turn instead of one (`-N 64`:
//! the same bytes to as many places as the server's 64 handles; one buffer stays in the
//! core's cache, 64 of 1 MiB do not).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use qs_benches::{full, pow2_sizes, raw_server, spawn_self, stats, tune};
use rpc_core::{Access, Bulk, ChunkConfig, Descriptor, Engine, Responder, Rpc, Seg};

#[path = "qs-bw/cost.rs"]
mod cost;

/// (client buffer, size, pull?, transfers) → done.
const BW: Rpc<(Descriptor, u64, bool, u64), ()> = Rpc::new("qs_bw");

struct Opts {
    transport: String,
    pull: bool,
    min: usize,
    max: usize,
    loops: usize,
    reps: usize,
    chunk: u64,
    depth: usize,
    busy_raw: bool,
    per_rpc: u64,
    inline: usize,
    spin_us: Option<u64>,
    cost: bool,
    worker: bool,
    /// The sm baseline copies into this many buffers in turn (`-N`).
    raw_bufs: usize,
}

const USAGE: &str = "usage: qs-bw [-t TRANSPORT] [-d pull|push] [-y MIN] [-z MAX] [-l LOOPS] [-r REPS] [-c CHUNK] [-w DEPTH] [-b] [-n TRANSFERS] [-i INLINE] [-s SPIN_US] [-C] [-W] [-N RAW_BUFS]";

fn parse() -> Result<Opts, String> {
    let d = ChunkConfig::default();
    let mut o = Opts {
        transport: "tcp".into(),
        pull: true,
        min: 4096,
        max: 16 << 20,
        loops: 0,
        reps: 3,
        chunk: d.size,
        depth: d.depth,
        busy_raw: false,
        per_rpc: 64,
        inline: 0,
        spin_us: None,
        cost: false,
        worker: false,
        raw_bufs: 1,
    };
    let mut a = std::env::args().skip(1);
    while let Some(k) = a.next() {
        let mut val = || a.next().ok_or(format!("{k} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
        match k.as_str() {
            "-t" => o.transport = val()?,
            "-d" => o.pull = val()? != "push",
            "-y" => o.min = num(val()?)?,
            "-z" => o.max = num(val()?)?,
            "-l" => o.loops = num(val()?)?,
            "-r" => o.reps = num(val()?)?.max(1),
            "-c" => o.chunk = num(val()?)? as u64,
            "-w" => o.depth = num(val()?)?,
            "-b" => o.busy_raw = true,
            "-n" => o.per_rpc = num(val()?)?.max(1) as u64,
            "-i" => o.inline = num(val()?)?,
            "-s" => o.spin_us = Some(num(val()?)? as u64),
            "-C" => o.cost = true,
            "-W" => o.worker = true,
            "-N" => o.raw_bufs = num(val()?)?.max(1),
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(o)
}

fn engine(listen: &str, chunk: u64, depth: usize, inline: usize, spin_us: Option<u64>) -> Engine {
    qs_benches::spin(Engine::builder().listen(listen), spin_us)
        .chunks(ChunkConfig { size: chunk, depth })
        .inline_bulk(inline)
        .build()
        .unwrap_or_else(|e| panic!("engine on {listen}: {e}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => {
            let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
            let e = engine(
                &args[2],
                num(3, 1 << 20),
                num(4, 4) as usize,
                0,
                args.get(5).and_then(|a| a.parse().ok()),
            );
            match args.get(6).map(String::as_str) {
                Some("worker") => serve_on_worker(&e),
                _ => serve(&e),
            }
            println!("{}", e.self_addr());
            std::io::stdout().flush().ok();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            return;
        }
        Some("--raw-serve") => return raw_serve(args.get(2).is_some_and(|a| a == "busy")),
        Some("--cma-serve") => {
            return qs_benches::shm::cma_serve(args[2].parse().unwrap_or(1 << 20));
        }
        _ => {}
    }
    qs_benches::run_tool("qs-bw", USAGE, parse, run);
}

/// RPCs per measurement: about 256 MiB moved per size, from 2 to 20 000.
fn loops(o: &Opts, s: usize) -> usize {
    if o.loops > 0 {
        o.loops
    } else {
        ((256 << 20) / (o.per_rpc as usize * s)).clamp(2, 20_000)
    }
}

fn run(o: &Opts) -> Result<(), String> {
    let sizes = pow2_sizes(o.min.max(1), o.max);
    if o.cost {
        return cost::run(&cost::Cost {
            transport: &o.transport,
            sizes: &sizes,
            pull: o.pull,
            per: o.per_rpc,
            loops: if o.loops > 0 { o.loops } else { 1000 },
            reps: o.reps,
        });
    }
    let e = engine(&o.transport, o.chunk, o.depth, o.inline, o.spin_us);
    let (mut bw, mut us, mut raw) = (
        vec![Vec::new(); sizes.len()],
        vec![Vec::new(); sizes.len()],
        vec![Vec::new(); sizes.len()],
    );
    // Each phase has only its own server alive.
    let sm = o.transport.starts_with("sm") || o.transport.starts_with("ofi+shm");
    for _ in 0..o.reps {
        if sm {
            raw_cma(&mut raw, &sizes, o)?;
        } else {
            raw_tcp(&mut raw, &sizes, o)?;
        }
        let (chunk, depth, spin) = (
            o.chunk.to_string(),
            o.depth.to_string(),
            qs_benches::spin_arg(o.spin_us),
        );
        let how = if o.worker { "worker" } else { "inline" };
        let (mut server, addr) =
            spawn_self(&["--serve", &o.transport, &chunk, &depth, &spin, how])?;
        let peer = e.lookup(&addr).map_err(|e| e.to_string())?;
        for (i, &s) in sizes.iter().enumerate() {
            let access = if o.pull {
                Access::ReadOnly
            } else {
                Access::WriteOnly
            };
            let buf = e
                .expose(vec![Seg::from(vec![7u8; s])], access)
                .map_err(|e| e.to_string())?;
            let args = (buf.descriptor(), s as u64, o.pull, o.per_rpc);
            let n = loops(o, s);
            e.call(&peer, BW, &args).wait().map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            for _ in 0..n {
                e.call(&peer, BW, &args).wait().map_err(|e| e.to_string())?;
            }
            let dt = t0.elapsed().as_secs_f64();
            bw[i].push((o.per_rpc as usize * s * n) as f64 / dt / 1e6);
            us[i].push(dt * 1e6 / n as f64);
        }
        let _ = server.kill();
        let _ = server.wait();
    }
    let dir = if o.pull {
        "server pulls (hg_bw_write)"
    } else {
        "server pushes (hg_bw_read)"
    };
    let rx = if o.busy_raw {
        "busy-polling"
    } else {
        "blocking"
    };
    println!(
        "# qs-bw: {}, {dir}, {} transfers of S per RPC, chunk {} x {} in flight, inline bulk up to {} B, median of {} reps [min-max]",
        o.transport, o.per_rpc, o.chunk, o.depth, o.inline, o.reps
    );
    if sm {
        let into = match o.raw_bufs {
            1 => "one buffer".to_string(),
            n => format!("{n} buffers in turn"),
        };
        println!(
            "# baseline: raw process_vm_readv loop of the same bytes, S per call, into {into}, same run"
        );
    } else {
        println!(
            "# baseline: raw TCP stream of the same bytes in S-byte writes, {rx} receiver, same socket options, same run"
        );
    }
    println!(
        "{:>10} {:>26} {:>10} {:>26} {:>8}",
        "size", "MB/s", "us/RPC", "raw stream MB/s", "ratio"
    );
    for (i, s) in sizes.iter().enumerate() {
        let (b, t, r) = (stats(&mut bw[i]), stats(&mut us[i]), stats(&mut raw[i]));
        println!(
            "{:>10} {:>8.0} [{:>6.0}-{:>6.0}] {:>10.1} {:>8.0} [{:>6.0}-{:>6.0}] {:>7.2}x",
            s,
            b.0,
            b.1,
            b.2,
            t.0,
            r.0,
            r.1,
            r.2,
            b.0 / r.0
        );
    }
    Ok(())
}

/// The server's handles and their shape (size, count).
type Handles = ((u64, u64), Vec<Bulk<'static>>);

/// N handles of S bytes, registered once per shape, as hg_bw does.
fn handles(e: &Engine, s: u64, n: u64) -> Result<Vec<Bulk<'static>>, String> {
    (0..n)
        .map(|_| e.expose(vec![Seg::from(vec![1u8; s as usize])], Access::ReadWrite))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// The handler runs on the progress thread; its transfers' last completion answers.
fn serve(e: &Engine) {
    let h = e.handle();
    let cache: Arc<Mutex<Handles>> = Arc::default();
    e.register_responder_inline(BW, move |(d, s, pull, n), r: Responder<()>| {
        let mut bufs = {
            let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
            match c.0 == (s, n) && !c.1.is_empty() {
                true => std::mem::take(&mut c.1),
                false => Vec::new(),
            }
        };
        if bufs.is_empty() {
            match handles(&h, s, n) {
                Ok(b) => bufs = b,
                Err(e) => return r.fail(e),
            }
        }
        let caller = r.caller();
        let mut set = caller.transfers();
        for b in bufs {
            match pull {
                true => set.pull(b, 0, &d, 0, s),
                false => set.push(b, 0, &d, 0, s),
            }
        }
        let cache = cache.clone();
        set.then(move |bufs, outcome| {
            *cache.lock().unwrap_or_else(|e| e.into_inner()) = ((s, n), bufs);
            match outcome {
                Ok(()) => r.respond(&()),
                Err(e) => r.fail(e),
            }
        });
    })
    .expect("register");
}

/// A worker posts the transfers and waits for each (`-W`).
fn serve_on_worker(e: &Engine) {
    let h = e.handle();
    // N handles of S bytes, allocated and registered once per shape, as hg_bw does.
    let cache: Mutex<Handles> = Mutex::default();
    e.register_with_caller(
        BW,
        move |(d, s, pull, n): (Descriptor, u64, bool, u64), caller| {
            let mut c = cache.lock().map_err(|_| "poisoned")?;
            if c.0 != (s, n) {
                *c = ((s, n), handles(&h, s, n)?);
            }
            // Posted together (`Caller::batch`): their requests leave in few writes.
            let mut batch = caller.batch();
            for b in c.1.iter_mut() {
                if pull {
                    batch.pull(b, 0, &d, 0, s);
                } else {
                    batch.push(b, 0, &d, 0, s);
                }
            }
            for t in batch.start() {
                t.wait().map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        },
    )
    .expect("register");
}

/// The raw TCP stream baseline for every size, against a fresh raw server.
fn raw_tcp(raw: &mut [Vec<f64>], sizes: &[usize], o: &Opts) -> Result<(), String> {
    let (mut child, addr) =
        spawn_self(&["--raw-serve", if o.busy_raw { "busy" } else { "block" }])?;
    let mut conn = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
    tune(&conn);
    for (i, &s) in sizes.iter().enumerate() {
        raw[i].push(raw_stream(&mut conn, s, o.per_rpc as usize * loops(o, s))?);
    }
    drop(conn);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// The raw single-copy baseline for every size: `process_vm_readv` from another process.
fn raw_cma(raw: &mut [Vec<f64>], sizes: &[usize], o: &Opts) -> Result<(), String> {
    let max = sizes.iter().copied().max().unwrap_or(1).to_string();
    let (mut child, line) = spawn_self(&["--cma-serve", &max])?;
    let mut it = line.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(addr))) = (it.next(), it.next()) else {
        return Err(format!("cma source printed {line:?}"));
    };
    for (i, &s) in sizes.iter().enumerate() {
        let count = o.per_rpc as usize * loops(o, s);
        raw[i].push(qs_benches::shm::cma_run(
            pid as i32, addr, s, count, o.raw_bufs,
        )?);
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// MB/s of a one-way stream of `count` writes of `size` bytes, acknowledged at the end.
fn raw_stream(s: &mut TcpStream, size: usize, count: usize) -> Result<f64, String> {
    let mut hdr = [0u8; 16];
    hdr[..8].copy_from_slice(&(size as u64).to_le_bytes());
    hdr[8..].copy_from_slice(&(count as u64).to_le_bytes());
    full(s, &mut hdr, true)?;
    let mut buf = vec![7u8; size];
    let t0 = Instant::now();
    for _ in 0..count {
        full(s, &mut buf, true)?;
    }
    full(s, &mut hdr[..1], false)?;
    Ok((size * count) as f64 / t0.elapsed().as_secs_f64() / 1e6)
}

fn raw_serve(busy: bool) {
    raw_server(busy, |s, size, count| {
        let mut buf = vec![0u8; size];
        for _ in 0..count {
            full(s, &mut buf, false)?;
        }
        full(s, &mut [1u8], true)
    });
}
