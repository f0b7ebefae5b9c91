//! The test server: registers the RPCs of `qs_tests::rpcs`, prints `ADDR <address>`, and
//! serves until its standard input closes.
//!
//! `qs-test-server [ADDRESS]`: without an address, `RPC_TRANSPORT` chooses the transport.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qs_tests::rpcs::*;
use rpc_core::{Engine, RpcError};

fn main() -> Result<(), RpcError> {
    qs_tests::init_logging();
    let mut b = Engine::builder().workers(8);
    if let Some(addr) = std::env::args().nth(1) {
        b = b.listen(&addr);
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
        Ok::<_, String>((c.rpcs_received, c.responses_sent, c.bad_requests))
    })?;
    println!("ADDR {}", e.self_addr());
    std::io::stdout().flush().ok();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    eprintln!(
        "qs-test-server: stdin closed, shutting down\n{}",
        e.counters()
    );
    Ok(())
}
