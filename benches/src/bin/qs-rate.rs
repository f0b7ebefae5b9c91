//! `qs-rate`: RPC round-trip time and rate, mirroring Mercury's `hg_rate`, with a raw TCP
//! ping-pong baseline measured in the same run so that the ratio is the result.
//!
//! ```text
//! qs-rate [-t TRANSPORT] [-x IN_FLIGHT] [-y MIN_SIZE] [-z MAX_SIZE] [-l LOOPS] [-r REPS] [-b] [-s SPIN_US] [-c]
//! ```
//! `-s` sets the progress thread's spin window after an event (default: the engine's,
//! 200 µs, or 0 over a transport that moves data on threads of its own; 0 always sleeps).
//! Input payloads of S bytes (powers of two from -y to -z, 0 allowed), empty output, as
//! `hg_rate` does. `-b` busy-polls on both sides (Mercury's `-b`). Client and server are
//! separate processes; the server is this binary re-run with `--serve`.
//!
//! `-c` measures instead the CPU cost of one RPC, client and server together, with no
//! cross-core latency in it (see `cost.rs`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use qs_benches::{full, raw_server, spawn_self, stats, tune};
use rpc_core::{Engine, ProgressMode, Rpc};
use serde_bytes::ByteBuf;

#[path = "qs-rate/cost.rs"]
mod cost;

const RATE: Rpc<ByteBuf, ()> = Rpc::new("qs_rate");

struct Opts {
    transport: String,
    in_flight: usize,
    min: usize,
    max: usize,
    loops: usize,
    reps: usize,
    busy: bool,
    spin_us: Option<u64>,
    cost: bool,
}

const USAGE: &str = "usage: qs-rate [-t TRANSPORT] [-x IN_FLIGHT] [-y MIN] [-z MAX] [-l LOOPS] [-r REPS] [-b] [-s SPIN_US] [-c]";

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        transport: "tcp".into(),
        in_flight: 1,
        min: 0,
        max: 4096,
        loops: 10_000,
        reps: 3,
        busy: false,
        spin_us: None,
        cost: false,
    };
    let mut a = std::env::args().skip(1);
    while let Some(k) = a.next() {
        let mut val = || a.next().ok_or(format!("{k} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
        match k.as_str() {
            "-t" => o.transport = val()?,
            "-x" => o.in_flight = num(val()?)?.max(1),
            "-y" => o.min = num(val()?)?,
            "-z" => o.max = num(val()?)?,
            "-l" => o.loops = num(val()?)?.max(1),
            "-r" => o.reps = num(val()?)?.max(1),
            "-b" => o.busy = true,
            "-s" => o.spin_us = Some(num(val()?)? as u64),
            "-c" => o.cost = true,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(o)
}

fn sizes(o: &Opts) -> Vec<usize> {
    qs_benches::pow2_sizes(o.min, o.max)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => {
            let spin = args.get(4).and_then(|s| s.parse().ok());
            return serve(&args[2], args.get(3).is_some_and(|s| s == "busy"), spin);
        }
        Some("--raw-serve") => return raw_serve(args.get(2).is_some_and(|s| s == "busy")),
        Some("--shm-pp-serve") => return qs_benches::shm::pp_serve(&args[2]),
        _ => {}
    }
    qs_benches::run_tool("qs-rate", USAGE, parse, run);
}

fn run(o: &Opts) -> Result<(), String> {
    if o.cost {
        return cost::run(&o.transport, &sizes(o), o.loops, o.reps);
    }
    let mode = if o.busy { "busy" } else { "poll" };
    let pm = if o.busy {
        ProgressMode::BusyPoll
    } else {
        ProgressMode::Thread
    };
    let b = Engine::builder()
        .listen(&o.transport)
        .progress_mode(pm)
        .workers(0);
    let e = qs_benches::spin(b, o.spin_us)
        .build()
        .map_err(|e| e.to_string())?;
    let sizes = sizes(o);
    let mut rpc = vec![Vec::new(); sizes.len()];
    let mut pp = vec![Vec::new(); sizes.len()];
    // Each phase has only its own server alive, so that a busy-polling server of one
    // phase does not steal the core of the other.
    let sm = o.transport.starts_with("sm") || o.transport.starts_with("ofi+shm");
    // QS_RATE_BASELINE=0: no baseline (its columns print NaN), for `scripts/rpc-cost`.
    let baseline = std::env::var("QS_RATE_BASELINE").map_or(true, |v| v != "0");
    for _ in 0..o.reps {
        if !baseline {
            pp.iter_mut().for_each(|v| v.push(f64::NAN));
        } else if sm {
            for (i, &s) in sizes.iter().enumerate() {
                pp[i].push(qs_benches::shm::pp_run(s, o.loops)?);
            }
        } else {
            raw_tcp(&mut pp, &sizes, o, mode)?;
        }
        let spin = qs_benches::spin_arg(o.spin_us);
        let (mut server, addr) = spawn_self(&["--serve", &o.transport, mode, &spin])?;
        let peer = e.lookup(&addr).map_err(|e| e.to_string())?;
        for (i, &s) in sizes.iter().enumerate() {
            rpc[i].push(rpc_run(&e, &peer, s, o)?);
        }
        // Its input closed, the server ends by itself (so that a profiler sees it exit).
        drop(server.stdin.take());
        qs_benches::reap(server, std::time::Duration::from_secs(3));
    }
    println!(
        "# qs-rate: {} ({mode}), {} in flight, {} loops, median of {} reps [min-max]",
        o.transport, o.in_flight, o.loops, o.reps
    );
    if sm {
        println!(
            "# baseline: ping-pong of the same payload through shared memory, both sides busy-polling, 1 in flight, same run"
        );
    } else {
        println!(
            "# baseline: raw TCP ping-pong of the same payload ({mode}), 1 in flight, same run"
        );
    }
    println!(
        "{:>8} {:>22} {:>12} {:>22} {:>8}",
        "size", "RPC us/op", "RPC/s", "raw pp us", "ratio"
    );
    for (i, s) in sizes.iter().enumerate() {
        let (r, p) = (stats(&mut rpc[i]), stats(&mut pp[i]));
        println!(
            "{:>8} {:>8.2} [{:>5.2}-{:>5.2}] {:>12.0} {:>8.2} [{:>5.2}-{:>5.2}] {:>7.2}x",
            s,
            r.0,
            r.1,
            r.2,
            1e6 / r.0,
            p.0,
            p.1,
            p.2,
            r.0 / p.0
        );
    }
    Ok(())
}

/// The raw TCP ping-pong baseline for every size, against a fresh raw server.
fn raw_tcp(pp: &mut [Vec<f64>], sizes: &[usize], o: &Opts, mode: &str) -> Result<(), String> {
    let (mut raw, raw_addr) = spawn_self(&["--raw-serve", mode])?;
    let mut conn = TcpStream::connect(&raw_addr).map_err(|e| e.to_string())?;
    tune(&conn);
    conn.set_nonblocking(o.busy).map_err(|e| e.to_string())?;
    for (i, &s) in sizes.iter().enumerate() {
        pp[i].push(raw_pp(&mut conn, s, o.loops)?);
    }
    drop(conn);
    let _ = raw.kill();
    let _ = raw.wait();
    Ok(())
}

/// Microseconds per RPC with `in_flight` outstanding.
fn rpc_run(e: &Engine, peer: &rpc_core::Endpoint, size: usize, o: &Opts) -> Result<f64, String> {
    let input = ByteBuf::from(vec![7u8; size]);
    let warm = (o.loops / 10).max(10);
    let mut q = std::collections::VecDeque::with_capacity(o.in_flight);
    let mut t0 = Instant::now();
    for i in 0..warm + o.loops {
        if i == warm {
            for c in q.drain(..) {
                rpc_core::Call::<()>::wait(c).map_err(|e| e.to_string())?;
            }
            t0 = Instant::now();
        }
        if q.len() == o.in_flight {
            q.pop_front()
                .map(rpc_core::Call::<()>::wait)
                .transpose()
                .map_err(|e| e.to_string())?;
        }
        q.push_back(e.call(peer, RATE, &input));
    }
    for c in q {
        c.wait().map_err(|e| e.to_string())?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / o.loops as f64)
}

fn serve(transport: &str, busy: bool, spin_us: Option<u64>) {
    let pm = if busy {
        ProgressMode::BusyPoll
    } else {
        ProgressMode::Thread
    };
    let b = Engine::builder()
        .listen(transport)
        .progress_mode(pm)
        .workers(0);
    let e = qs_benches::spin(b, spin_us).build().expect("server engine");
    e.register(RATE, |_| Ok::<_, String>(())).expect("register");
    println!("{}", e.self_addr());
    std::io::stdout().flush().ok();
    if busy {
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = closed.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            c.store(true, std::sync::atomic::Ordering::Release);
        });
        e.drive_until(|| closed.load(std::sync::atomic::Ordering::Acquire));
    } else {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
}

/// Raw baseline: the client sends (size, count), then `count` ping-pongs of `size` bytes.
fn raw_pp(s: &mut TcpStream, size: usize, loops: usize) -> Result<f64, String> {
    let warm = (loops / 10).max(10);
    let mut buf = vec![7u8; size.max(1)];
    let n = size.max(1);
    let mut hdr = [0u8; 16];
    hdr[..8].copy_from_slice(&(n as u64).to_le_bytes());
    hdr[8..].copy_from_slice(&((warm + loops) as u64).to_le_bytes());
    full(s, &mut hdr, true)?;
    let mut t0 = Instant::now();
    for i in 0..warm + loops {
        if i == warm {
            t0 = Instant::now();
        }
        full(s, &mut buf[..n], true)?;
        full(s, &mut buf[..n], false)?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / loops as f64)
}

fn raw_serve(busy: bool) {
    raw_server(busy, |s, size, count| {
        let mut buf = vec![0u8; size];
        for _ in 0..count {
            full(s, &mut buf, false)?;
            full(s, &mut buf, true)?;
        }
        Ok(())
    });
}
