//! Helpers shared by the benchmark tools (`qs-rate`, `qs-bw`).

pub mod shm;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

/// Re-runs this binary with `args` as a server and reads the address it prints first.
pub fn spawn_self(args: &[&str]) -> Result<(Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok((child, line.trim().to_owned()))
}

/// Waits up to `grace` for `child` to end by itself, then kills it.
pub fn reap(mut child: Child, grace: std::time::Duration) {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < grace {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Median, min and max of the samples.
pub fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Writes or reads all of `buf`, spinning on `WouldBlock` (for non-blocking sockets).
pub fn full(s: &mut TcpStream, buf: &mut [u8], write: bool) -> Result<(), String> {
    let mut off = 0;
    while off < buf.len() {
        let r = if write {
            s.write(&buf[off..])
        } else {
            s.read(&mut buf[off..])
        };
        match r {
            Ok(0) => return Err("raw peer closed".into()),
            Ok(k) => off += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Sizes from `min` to `max` in powers of two (`min` of 0 included as is).
/// The tools' `-s`: the engines' spin window in µs, or (`None`, passed to a server
/// process as `-`) the engine's own default (200 µs; zero over a transport that moves
/// data on threads of its own).
pub fn spin(b: rpc_core::EngineBuilder, us: Option<u64>) -> rpc_core::EngineBuilder {
    match us {
        Some(us) => b.spin_window(std::time::Duration::from_micros(us)),
        None => b,
    }
}

/// `-s` as passed to a server process (see [`spin`]).
pub fn spin_arg(us: Option<u64>) -> String {
    us.map_or("-".into(), |us| us.to_string())
}

pub fn pow2_sizes(min: usize, max: usize) -> Vec<usize> {
    let mut v = Vec::new();
    if min == 0 {
        v.push(0);
    }
    let mut s = min.max(1).next_power_of_two();
    while s <= max {
        v.push(s);
        s *= 2;
    }
    v
}

/// Gives a raw baseline socket the options the TCP plugin uses (`TCP_NODELAY`, its send
/// and receive buffer sizes), so that a ratio compares protocols, not socket settings.
pub fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let sock = socket2::SockRef::from(s);
    let n = na_tcp::TcpConfig::default().socket_buffer;
    let _ = sock.set_send_buffer_size(n);
    let _ = sock.set_recv_buffer_size(n);
}

/// The raw baseline's server: listens on loopback, prints its address, accepts one
/// connection with the plugin's socket options (non-blocking when `busy`), then for each
/// 16-byte request (size, count) that the client sends, calls `run(stream, size, count)`.
pub fn raw_server(
    busy: bool,
    mut run: impl FnMut(&mut TcpStream, usize, u64) -> Result<(), String>,
) {
    let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
        return;
    };
    let Ok(addr) = l.local_addr() else { return };
    println!("{addr}");
    std::io::stdout().flush().ok();
    let Ok((mut s, _)) = l.accept() else { return };
    tune(&s);
    let _ = s.set_nonblocking(busy);
    let mut hdr = [0u8; 16];
    while full(&mut s, &mut hdr, false).is_ok() {
        let size = u64::from_le_bytes(hdr[..8].try_into().unwrap_or_default()) as usize;
        let count = u64::from_le_bytes(hdr[8..].try_into().unwrap_or_default());
        if run(&mut s, size.min(256 << 20), count).is_err() {
            return;
        }
    }
}

/// A tool's main: parses its options (exit 2 with `usage` on an error), runs, and exits 1
/// with the error if the run fails.
pub fn run_tool<O>(
    tool: &str,
    usage: &str,
    parse: impl FnOnce() -> Result<O, String>,
    run: impl FnOnce(&O) -> Result<(), String>,
) {
    let o = parse().unwrap_or_else(|e| {
        eprintln!("{tool}: {e}\n{usage}");
        std::process::exit(2)
    });
    if let Err(e) = run(&o) {
        eprintln!("{tool}: {e}");
        std::process::exit(1);
    }
}

/// Two engines (a server and a client) for measuring the CPU cost of an operation with
/// no cross-core latency in it: manual progress, handlers inline, no eager bulk, both to
/// be driven by one thread with [`drive_both`].
pub fn manual_pair(transport: &str) -> Result<(rpc_core::Engine, rpc_core::Engine), String> {
    let engine = || {
        rpc_core::Engine::builder()
            .listen(transport)
            .progress_mode(rpc_core::ProgressMode::Manual)
            .workers(0)
            .inline_bulk(0)
            .build()
            .map_err(|e| e.to_string())
    };
    Ok((engine()?, engine()?))
}

/// One pass of each engine (`Engine::poll`), until `done`; returns the passes made.
pub fn drive_both(engines: [&rpc_core::Engine; 2], done: impl Fn() -> bool) -> Result<u64, String> {
    let mut passes = 0;
    while !done() {
        for e in engines {
            e.poll().map_err(|e| e.to_string())?;
        }
        passes += 1;
    }
    Ok(passes)
}
