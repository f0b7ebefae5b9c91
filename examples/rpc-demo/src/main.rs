//! The client/server demo: `cargo run --release -p rpc-demo`.
//!
//! Starts a server in a separate process on the default transport (or `RPC_TRANSPORT`),
//! then calls it from this process: typed calls, 10 000 pipelined calls, a handler error,
//! a timeout, and the counters of both sides.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rpc_core::{Engine, Rpc, RpcError};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A POSIX-flavoured request, as the forwarding service will ship.
#[derive(Serialize, Deserialize, Debug)]
struct StatReq {
    path: String,
}

/// Its answer.
#[derive(Serialize, Deserialize, Debug)]
struct StatResp {
    size: u64,
    is_dir: bool,
}

const SUM: Rpc<(u64, u64), u64> = Rpc::new("sum");
const ECHO: Rpc<ByteBuf, ByteBuf> = Rpc::new("echo");
const STAT: Rpc<StatReq, StatResp> = Rpc::new("stat");
const SLOW: Rpc<u64, ()> = Rpc::new("slow");
const COUNTERS: Rpc<(), String> = Rpc::new("counters");

fn serve() -> Result<(), RpcError> {
    let e = Engine::from_env()?;
    e.register(SUM, |(a, b): (u64, u64)| a.checked_add(b).ok_or("overflow"))?;
    e.register(ECHO, Ok::<_, String>)?;
    e.register(STAT, |r: StatReq| {
        let m = std::fs::metadata(&r.path).map_err(|err| format!("{}: {err}", r.path))?;
        Ok::<_, String>(StatResp {
            size: m.len(),
            is_dir: m.is_dir(),
        })
    })?;
    e.register(SLOW, |ms| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(())
    })?;
    let e2 = e.clone();
    e.register(COUNTERS, move |()| {
        Ok::<_, String>(e2.counters().to_string())
    })?;
    println!("{}", e.self_addr());
    std::io::stdout().flush().ok();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        return Ok(serve()?);
    }
    let mut server = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut addr = String::new();
    BufReader::new(server.stdout.take().ok_or("no server stdout")?).read_line(&mut addr)?;
    let addr = addr.trim();
    println!("server process {} listening on {addr}", server.id());

    let e = Engine::from_env()?;
    let peer = e.lookup(addr)?;
    println!("client on {}", e.self_addr());
    println!(
        "sum(40, 2)            = {}",
        e.call(&peer, SUM, &(40, 2)).wait()?
    );
    let echoed = e
        .call(&peer, ECHO, &ByteBuf::from(b"hello, I/O node".to_vec()))
        .wait()?;
    println!(
        "echo                  = {:?}",
        String::from_utf8_lossy(&echoed)
    );
    let st = e
        .call(
            &peer,
            STAT,
            &StatReq {
                path: "/etc/hostname".into(),
            },
        )
        .wait();
    println!("stat(/etc/hostname)   = {st:?}");
    println!(
        "stat(/nonexistent)    = {:?}",
        e.call(
            &peer,
            STAT,
            &StatReq {
                path: "/nonexistent".into()
            }
        )
        .wait()
    );
    println!(
        "sum(u64::MAX, 1)      = {:?}",
        e.call(&peer, SUM, &(u64::MAX, 1)).wait()
    );
    println!(
        "slow(500) in 100 ms   = {:?}",
        e.call_timeout(&peer, SLOW, &500, Some(Duration::from_millis(100)))
            .wait()
    );

    let n = 10_000u64;
    let t0 = Instant::now();
    let mut window = std::collections::VecDeque::new();
    for i in 0..n {
        window.push_back((i, e.call(&peer, SUM, &(i, i))));
        if window.len() == 64 {
            let (i, c) = window.pop_front().ok_or("empty window")?;
            assert_eq!(c.wait()?, 2 * i);
        }
    }
    for (i, c) in window {
        assert_eq!(c.wait()?, 2 * i);
    }
    let dt = t0.elapsed();
    println!(
        "{n} pipelined calls (64 in flight): {:.0} ms, {:.0} RPC/s, all answers checked",
        dt.as_secs_f64() * 1e3,
        n as f64 / dt.as_secs_f64()
    );
    println!("\nclient counters:\n{}", e.counters());
    println!(
        "\nserver counters:\n{}",
        e.call(&peer, COUNTERS, &()).wait()?
    );
    drop(server.stdin.take());
    server.wait()?;
    Ok(())
}
