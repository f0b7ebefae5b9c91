//! `qs-ship`: POSIX shipping throughput and metadata rate, against baselines measured in
//! the same run: `dd` on the local file system, and the raw bulk bandwidth of the same
//! transport.
//!
//! `qs-ship [-t TRANSPORT] [-s MiB per size] [-i inline threshold] [-b block,block,...]`. The server runs in this process on its own
//! engine (the data crosses the transport all the same); `dd` runs as a separate process
//! through `libposix_ship_preload.so`, found next to this program
//! (`cargo build --release -p posix-ship-preload`).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use posix_ship::client::{ClientOptions, RemoteFs};
use posix_ship::server::{Auth, Server, ServerConfig};
use rpc_core::{Access, Descriptor, Engine, Rpc, Seg};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const PULL: Rpc<Descriptor, u64> = Rpc::new("bench.pull");

/// POSIX shipping throughput and metadata rate against same-run baselines.
#[derive(clap::Parser)]
struct Opts {
    /// Transport (`tcp`, `sm`, `ofi+tcp` with the `ofi` feature).
    #[arg(short, default_value = "tcp")]
    t: String,
    /// MiB moved per block size.
    #[arg(short, default_value_t = 256)]
    s: u64,
    /// Inline threshold of the client, bytes.
    #[arg(short, default_value_t = posix_ship::client::DEFAULT_INLINE_MAX)]
    i: usize,
    /// Block sizes, bytes.
    #[arg(
        short,
        value_delimiter = ',',
        default_value = "4096,65536,1048576,16777216"
    )]
    b: Vec<usize>,
}

fn gbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// `QS_AUTH` of the benchmark's clients: a key made for the run.
static AUTH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn dd(lib: Option<&Path>, srv: &str, i: &str, o: &str, bs: usize, count: u64) -> Res<f64> {
    let mut c = Command::new("dd");
    c.args([
        format!("if={i}"),
        format!("of={o}"),
        format!("bs={bs}"),
        format!("count={count}"),
        "status=none".into(),
    ]);
    if let Some(l) = lib {
        c.env("LD_PRELOAD", l)
            .env("POSIX_SHIP_SERVER", srv)
            .env("QS_AUTH", AUTH.get().map_or("none", |s| s.as_str()))
            .env("POSIX_SHIP_MOUNT", "/fwd");
    }
    let t0 = Instant::now();
    let st = c.status()?;
    if !st.success() {
        return Err(format!("dd {i} -> {o} failed").into());
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Raw bulk: the server pulls `bs` bytes from the client per call, as a write would.
fn raw_bulk(transport: &str, bs: usize, total: u64) -> Res<f64> {
    let listen = rpc_core::transport::listen_address(Some(transport))?.to_string();
    let server = Engine::new(&listen)?;
    server.register_with_caller(PULL, move |d: Descriptor, caller| {
        let mut buf = vec![0u8; d.len() as usize];
        let mut b = caller
            .engine()
            .expose(vec![Seg::from(&mut buf[..])], Access::WriteOnly)
            .map_err(|e| e.to_string())?;
        caller
            .pull(&mut b, 0, &d, 0, d.len())
            .wait()
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(d.len())
    })?;
    let client = Engine::new(&listen)?;
    let peer = client.lookup(&server.self_addr().to_string())?;
    let data = vec![7u8; bs];
    let t0 = Instant::now();
    for _ in 0..total / bs as u64 {
        let b = client.expose(vec![Seg::from(&data[..])], Access::ReadOnly)?;
        client.call(&peer, PULL, &b.descriptor()).wait()?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

fn main() -> Res<()> {
    let o: Opts = clap::Parser::parse();
    let (transport, mib, inline) = (o.t, o.s, o.i);
    let base = std::env::temp_dir().join(format!("qs-ship-{}", std::process::id()));
    let export = base.join("export");
    std::fs::create_dir_all(&export)?;
    let listen = rpc_core::transport::listen_address(Some(&transport))?.to_string();
    // The benchmark's user acts as itself (root included), proven by a key made for the run.
    let key = base.join("bench.key");
    let auth = Auth::create_key_file(&key).and_then(|k| Auth::key_file(&k))?;
    let _ = AUTH.set(format!("key:{}", key.display()));
    let mut cfg = ServerConfig::new(&export, &listen);
    cfg.auth = auth.clone();
    cfg.policy.root_squash = false;
    let server = Server::start(cfg)?;
    let timeout = Some(std::time::Duration::from_secs(60));
    let fs = RemoteFs::connect_with(
        &server.addr(),
        ClientOptions {
            inline_max: inline,
            timeout,
            auth: Some(auth),
            ..ClientOptions::default()
        },
    )?;
    let lib = std::env::current_exe()?.with_file_name("libposix_ship_preload.so");
    let lib = lib.exists().then_some(lib);
    println!(
        "# qs-ship -t {transport} -s {mib} -i {inline}: {mib} MiB per block size; GB/s (ratio to local dd)"
    );
    println!(
        "{:>8} | {:>7} {:>7} | {:>7} {:>7} | {:>13} {:>13} | {:>13} {:>13}",
        "block", "dd wr", "dd rd", "raw", "", "lib write", "lib read", "dd-ship wr", "dd-ship rd"
    );
    for bs in o.b {
        let total = mib << 20;
        let count = total / bs as u64;
        let local = base.join("local.bin");
        let l = local.to_str().ok_or("path")?;
        let lw = dd(None, "", "/dev/zero", l, bs, count)?;
        let lr = dd(None, "", l, "/dev/null", bs, count)?;
        let raw = raw_bulk(&transport, bs, total)?;
        let buf = vec![1u8; bs];
        let t0 = Instant::now();
        let mut f = fs.create("/lib.bin")?;
        for _ in 0..count {
            f.write_all(&buf)?;
        }
        f.close()?;
        let w = t0.elapsed().as_secs_f64();
        let mut rb = vec![0u8; bs];
        let t0 = Instant::now();
        let mut f = fs.open("/lib.bin")?;
        for _ in 0..count {
            f.read_exact(&mut rb)?;
        }
        let r = t0.elapsed().as_secs_f64();
        let (sw, sr) = match &lib {
            Some(lib) => (
                dd(
                    Some(lib),
                    &server.addr(),
                    "/dev/zero",
                    "/fwd/dd.bin",
                    bs,
                    count,
                )?,
                dd(
                    Some(lib),
                    &server.addr(),
                    "/fwd/dd.bin",
                    "/dev/null",
                    bs,
                    count,
                )?,
            ),
            None => (f64::NAN, f64::NAN),
        };
        let cell = |t: f64, base: f64| format!("{:.2} ({:.2}x)", gbs(total, t), base / t);
        println!(
            "{:>8} | {:>7.2} {:>7.2} | {:>7.2} {:>7} | {:>13} {:>13} | {:>13} {:>13}",
            bs,
            gbs(total, lw),
            gbs(total, lr),
            gbs(total, raw),
            "",
            cell(w, lw),
            cell(r, lr),
            cell(sw, lw),
            cell(sr, lr)
        );
    }
    let n = 2000;
    let t0 = Instant::now();
    for i in 0..n {
        fs.create(&format!("/m{i}"))?.close()?;
    }
    let create = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for i in 0..n {
        fs.metadata(&format!("/m{i}"))?;
    }
    let stat = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for i in 0..n {
        fs.remove_file(&format!("/m{i}"))?;
    }
    let unlink = n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..n {
        std::fs::metadata(export.join("lib.bin"))?;
    }
    let local_stat = n as f64 / t0.elapsed().as_secs_f64();
    println!(
        "metadata ({n} files, one client, one call at a time): create+close {create:.0}/s, stat {stat:.0}/s, unlink {unlink:.0}/s; local stat {local_stat:.0}/s"
    );
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
