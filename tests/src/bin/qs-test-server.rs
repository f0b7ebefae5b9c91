//! The test server: registers the RPCs of `qs_tests::rpcs`, prints `ADDR <address>`, and
//! serves until its standard input closes.
//!
//! `qs-test-server [ADDRESS]`: without an address, `RPC_TRANSPORT` chooses the transport.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qs_tests::rpcs::*;
use rpc_core::{Access, Bulk, Engine, RpcError, Seg};

fn main() -> Result<(), RpcError> {
    qs_tests::init_logging();
    let mut b = Engine::builder().workers(8);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--max-overflow" => {
                b = b.max_overflow(args.next().and_then(|n| n.parse().ok()).unwrap_or(1 << 20))
            }
            addr => b = b.listen(addr),
        }
    }
    let e = b.build()?;
    e.register(SUM, |(a, b): (u64, u64)| a.checked_add(b).ok_or("overflow"))?;
    e.register(ECHO, Ok::<_, String>)?;
    e.register(SLEEP, |ms| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(())
    })?;
    e.register(FAIL, |()| Err::<(), _>("this handler always fails"))?;
    e.register(PANIC, |()| -> Result<(), String> {
        panic!("deliberate panic in handler")
    })?;
    e.register_responder(DROP_RESPONDER, |(), r| drop(r))?;
    e.register_responder(LATER, |x, r| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            r.respond(&(x * 2));
        });
    })?;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    e.register(BUMP, move |n| {
        c.fetch_add(n, Ordering::SeqCst);
        Ok::<_, String>(())
    })?;
    e.register(COUNT, move |()| {
        Ok::<_, String>(count.load(Ordering::SeqCst))
    })?;
    let e2 = e.clone();
    e.register(STATS, move |()| {
        let c = e2.counters();
        Ok::<_, String>((
            c.rpcs_received,
            c.responses_sent,
            c.bad_requests,
            c.answers_exposed,
        ))
    })?;
    let e3 = e.clone();
    e.register(PEERS_LOST, move |()| {
        Ok::<_, String>(e3.counters().peers_lost)
    })?;
    register_bulk(&e)?;
    println!("ADDR {}", e.self_addr());
    std::io::stdout().flush().ok();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    eprintln!(
        "qs-test-server: stdin closed, shutting down\n{}",
        e.counters()
    );
    Ok(())
}

/// Memory of the server's, segmented as asked, filled with pattern `seed`.
fn server_memory(e: &Engine, op: &BulkOp, access: Access) -> Result<Bulk<'static>, String> {
    let total: u64 = op.segs.iter().sum();
    if op
        .local_off
        .checked_add(op.len)
        .is_none_or(|end| end > total)
    {
        return Err(format!(
            "segments of {total} bytes do not cover {}+{}",
            op.local_off, op.len
        ));
    }
    let data = pattern(op.seed, total as usize);
    let mut at = 0usize;
    let segs = op
        .segs
        .iter()
        .map(|&n| {
            let s = Seg::from(data[at..at + n as usize].to_vec());
            at += n as usize;
            s
        })
        .collect();
    e.expose(segs, access).map_err(|err| err.to_string())
}

type Regions = Mutex<HashMap<u64, Bulk<'static>>>;

fn register_bulk(e: &Engine) -> Result<(), RpcError> {
    e.register_with_caller(BULK_PULL, move |op: BulkOp, caller| {
        let mut local = server_memory(
            caller.engine(),
            &BulkOp {
                seed: 0,
                ..op.clone()
            },
            Access::WriteOnly,
        )?;
        caller
            .pull(&mut local, op.local_off, &op.desc, op.remote_off, op.len)
            .wait()
            .map_err(|err| err.to_string())?;
        let got = local.to_vec();
        Ok::<_, String>(checksum(
            &got[op.local_off as usize..(op.local_off + op.len) as usize],
        ))
    })?;
    e.register_with_caller(BULK_PUSH, move |op: BulkOp, caller| {
        let local = server_memory(caller.engine(), &op, Access::ReadOnly)?;
        caller
            .push(&local, op.local_off, &op.desc, op.remote_off, op.len)
            .wait()
            .map_err(|err| err.to_string())?;
        let sent = local.to_vec();
        Ok::<_, String>(checksum(
            &sent[op.local_off as usize..(op.local_off + op.len) as usize],
        ))
    })?;
    let regions: &'static Regions = Box::leak(Box::new(Mutex::new(HashMap::new())));
    let h = e.handle();
    e.register(
        SERVE_REGION,
        move |(len, seed, access): (u64, u64, String)| {
            let access = match access.as_str() {
                "ro" => Access::ReadOnly,
                "wo" => Access::WriteOnly,
                _ => Access::ReadWrite,
            };
            let data = if seed == 0 {
                vec![0u8; len as usize]
            } else {
                pattern(seed, len as usize)
            };
            let b = h
                .expose(vec![Seg::from(data)], access)
                .map_err(|err| err.to_string())?;
            let d = b.descriptor();
            regions.lock().map_err(|_| "poisoned")?.insert(d.mem.key, b);
            Ok::<_, String>(d)
        },
    )?;
    e.register(DROP_REGION, move |key: u64| {
        Ok::<_, String>(
            regions
                .lock()
                .map_err(|_| "poisoned")?
                .remove(&key)
                .is_some(),
        )
    })?;
    Ok(())
}
