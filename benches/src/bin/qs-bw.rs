//! `qs-bw`: bulk bandwidth, mirroring Mercury's `hg_bw_write` (the server pulls from the
//! client) and `hg_bw_read` (the server pushes to the client), with a raw TCP stream of the
//! same bytes measured in the same run as the baseline.
//!
//! ```text
//! qs-bw [-t TRANSPORT] [-d pull|push] [-y MIN_SIZE] [-z MAX_SIZE] [-l LOOPS] [-r REPS]
//!       [-c CHUNK] [-w DEPTH] [-b]
//! ```
//! `-b` makes the raw baseline's receiver busy-poll (our engine polls for a while after
//! each event, so this is the closer baseline; PERF.md lists both).
//! Each RPC makes the server do 64 transfers of S bytes, all posted at once (into or from
//! 64 buffers of its own, registered once per size), against one client buffer of S bytes;
//! MB/s counts 64·S per RPC.
//! `-c`/`-w` set the engine's chunk size and chunks in flight per transfer. Client and
//! server are separate processes; the server is this binary re-run with `--serve`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Instant;

use qs_benches::{full, pow2_sizes, spawn_self, stats, tune};
use rpc_core::{Access, Bulk, ChunkConfig, Descriptor, Engine, Rpc, Seg};

/// (client buffer, size, pull?) → done.
const BW: Rpc<(Descriptor, u64, bool), ()> = Rpc::new("qs_bw");
const PER_RPC: u64 = 64;

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
}

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
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(o)
}

fn engine(listen: &str, chunk: u64, depth: usize) -> Engine {
    Engine::builder()
        .listen(listen)
        .chunks(ChunkConfig { size: chunk, depth })
        .inline_bulk(0)
        .build()
        .unwrap_or_else(|e| panic!("engine on {listen}: {e}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => {
            return serve(
                &args[2],
                args[3].parse().unwrap_or(1 << 20),
                args[4].parse().unwrap_or(4),
            );
        }
        Some("--raw-serve") => return raw_serve(args.get(2).is_some_and(|a| a == "busy")),
        _ => {}
    }
    let o = parse().unwrap_or_else(|e| {
        eprintln!("qs-bw: {e}\nusage: qs-bw [-t TRANSPORT] [-d pull|push] [-y MIN] [-z MAX] [-l LOOPS] [-r REPS] [-c CHUNK] [-w DEPTH] [-b]");
        std::process::exit(2)
    });
    if let Err(e) = run(&o) {
        eprintln!("qs-bw: {e}");
        std::process::exit(1);
    }
}

/// RPCs per measurement: about 256 MiB moved per size, at least 2.
fn loops(o: &Opts, s: usize) -> usize {
    if o.loops > 0 {
        o.loops
    } else {
        ((256 << 20) / (PER_RPC as usize * s)).max(2)
    }
}

fn run(o: &Opts) -> Result<(), String> {
    let sizes = pow2_sizes(o.min.max(1), o.max);
    let e = engine(&o.transport, o.chunk, o.depth);
    let mut bw = vec![Vec::new(); sizes.len()];
    let mut raw = vec![Vec::new(); sizes.len()];
    for _ in 0..o.reps {
        let (mut child, addr) =
            spawn_self(&["--raw-serve", if o.busy_raw { "busy" } else { "block" }])?;
        let mut conn = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
        tune(&conn);
        for (i, &s) in sizes.iter().enumerate() {
            raw[i].push(raw_stream(&mut conn, s, PER_RPC as usize * loops(o, s))?);
        }
        drop(conn);
        let _ = child.kill();
        let _ = child.wait();
        let (chunk, depth) = (o.chunk.to_string(), o.depth.to_string());
        let (mut server, addr) = spawn_self(&["--serve", &o.transport, &chunk, &depth])?;
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
            let d = buf.descriptor();
            let n = loops(o, s);
            e.call(&peer, BW, &(d.clone(), s as u64, o.pull))
                .wait()
                .map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            for _ in 0..n {
                e.call(&peer, BW, &(d.clone(), s as u64, o.pull))
                    .wait()
                    .map_err(|e| e.to_string())?;
            }
            bw[i].push((PER_RPC as usize * s * n) as f64 / t0.elapsed().as_secs_f64() / 1e6);
        }
        let _ = server.kill();
        let _ = server.wait();
    }
    let dir = if o.pull {
        "server pulls (hg_bw_write)"
    } else {
        "server pushes (hg_bw_read)"
    };
    println!(
        "# qs-bw: {}, {dir}, 64 transfers of S per RPC, chunk {} x {} in flight, median of {} reps [min-max]",
        o.transport, o.chunk, o.depth, o.reps
    );
    let rx = if o.busy_raw {
        "busy-polling"
    } else {
        "blocking"
    };
    println!(
        "# baseline: raw TCP stream of the same bytes in S-byte writes, {rx} receiver, same socket options, same run"
    );
    println!(
        "{:>10} {:>26} {:>26} {:>8}",
        "size", "MB/s", "raw stream MB/s", "ratio"
    );
    for (i, s) in sizes.iter().enumerate() {
        let (b, r) = (stats(&mut bw[i]), stats(&mut raw[i]));
        println!(
            "{:>10} {:>8.0} [{:>6.0}-{:>6.0}] {:>8.0} [{:>6.0}-{:>6.0}] {:>7.2}x",
            s,
            b.0,
            b.1,
            b.2,
            r.0,
            r.1,
            r.2,
            b.0 / r.0
        );
    }
    Ok(())
}

fn serve(transport: &str, chunk: u64, depth: usize) {
    let e = engine(transport, chunk, depth);
    let h = e.handle();
    // 64 handles of S bytes, allocated and registered once per size, as hg_bw does.
    let cache: Mutex<(u64, Vec<Bulk<'static>>)> = Mutex::new((0, Vec::new()));
    e.register(BW, move |(d, s, pull): (Descriptor, u64, bool)| {
        let mut c = cache.lock().map_err(|_| "poisoned")?;
        if c.0 != s {
            let fresh: Result<Vec<_>, _> = (0..PER_RPC)
                .map(|_| h.expose(vec![Seg::from(vec![1u8; s as usize])], Access::ReadWrite))
                .collect();
            *c = (s, fresh.map_err(|e| e.to_string())?);
        }
        let ts: Vec<_> = if pull {
            c.1.iter_mut().map(|b| h.pull(b, 0, &d, 0, s)).collect()
        } else {
            c.1.iter().map(|b| h.push(b, 0, &d, 0, s)).collect()
        };
        for t in ts {
            t.wait().map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    })
    .expect("register");
    println!("{}", e.self_addr());
    std::io::stdout().flush().ok();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
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
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", l.local_addr().expect("addr"));
    std::io::stdout().flush().ok();
    let Ok((mut s, _)) = l.accept() else { return };
    tune(&s);
    let _ = s.set_nonblocking(busy);
    let mut hdr = [0u8; 16];
    while full(&mut s, &mut hdr, false).is_ok() {
        let size = u64::from_le_bytes(hdr[..8].try_into().unwrap_or_default()) as usize;
        let count = u64::from_le_bytes(hdr[8..].try_into().unwrap_or_default());
        let mut buf = vec![0u8; size.min(256 << 20)];
        for _ in 0..count {
            if full(&mut s, &mut buf, false).is_err() {
                return;
            }
        }
        if full(&mut s, &mut [1u8], true).is_err() {
            return;
        }
    }
}
