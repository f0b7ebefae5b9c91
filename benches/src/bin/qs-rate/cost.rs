//! `qs-rate -c`: the CPU cost of one small RPC, client and server together, with no
//! cross-core latency in it. Both engines live in one thread in manual progress mode, and
//! the thread alternates a call with one progress-and-trigger pass of each side: what the
//! engine and the transport spend per RPC, which a round trip adds to the wire's own time.
//! Prints, per size, the median, min and max of the reps (after a warm-up of a tenth of
//! the loops), and the passes each call needed (1.00: the answer was there after one pass
//! of each side).

use std::time::Instant;

use qs_benches::{drive_both, stats};
use rpc_core::Rpc;
use serde_bytes::ByteBuf;

const COST: Rpc<ByteBuf, ()> = Rpc::new("qs_cost");

pub fn run(transport: &str, sizes: &[usize], loops: usize, reps: usize) -> Result<(), String> {
    let (server, client) = qs_benches::manual_pair(transport)?;
    server
        .register_infallible(COST, |_| ())
        .map_err(|e| e.to_string())?;
    let peer = client
        .lookup(&server.self_addr().to_string())
        .map_err(|e| e.to_string())?;
    let run = |input: &ByteBuf, n: usize| -> Result<(f64, f64), String> {
        let (t0, mut passes) = (Instant::now(), 0u64);
        for _ in 0..n {
            let call = client.call(&peer, COST, input);
            passes += drive_both([&server, &client], || call.is_done())?;
            call.wait().map_err(|e| e.to_string())?;
        }
        let us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
        Ok((us, passes as f64 / n as f64))
    };
    println!(
        "# qs-rate -c: {transport}, CPU per RPC of client and server engines in one thread (manual progress), {loops} loops, median of {reps} reps [min-max]"
    );
    println!(
        "{:>8} {:>26} {:>12}",
        "size", "us of CPU per RPC", "passes/RPC"
    );
    for &size in sizes {
        let input = ByteBuf::from(vec![7u8; size]);
        run(&input, (loops / 10).max(10))?;
        let (mut us, mut passes) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let (u, p) = run(&input, loops)?;
            us.push(u);
            passes.push(p);
        }
        let (u, p) = (stats(&mut us), stats(&mut passes));
        println!(
            "{size:>8} {:>8.3} [{:>6.3}-{:>6.3}] {:>12.2}",
            u.0, u.1, u.2, p.0
        );
    }
    Ok(())
}
