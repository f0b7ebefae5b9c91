//! `qs-bw -C`: the CPU cost of one bulk transfer, both sides together, with no cross-core
//! latency in it. Both engines live in one thread in manual progress mode; the client
//! engine calls the benchmark's own RPC (`qs_bw`, served by the same handler as `qs-bw`'s
//! server: TRANSFERS pulls or pushes of S bytes with one client region, as a transfer set
//! under a hold of the peer, answered from their last completion), and the thread drives
//! both engines until the answer is in. So the count is of the path the benchmark takes
//! (batched requests, bundles), one RPC per TRANSFERS included. Prints, per size, the
//! median, min and max over the reps (after a warm-up of a tenth of the loops) of the
//! microseconds of CPU per transfer.

use std::time::Instant;

use qs_benches::{drive_both, stats};
use rpc_core::{Access, Seg};

/// What to measure: transport, sizes, direction, transfers per batch, batches, reps.
pub struct Cost<'a> {
    pub transport: &'a str,
    pub sizes: &'a [usize],
    pub pull: bool,
    pub per: u64,
    pub loops: usize,
    pub reps: usize,
}

pub fn run(c: &Cost<'_>) -> Result<(), String> {
    let (server, client) = qs_benches::manual_pair(c.transport)?;
    let e = |e: rpc_core::RpcError| e.to_string();
    println!(
        "# qs-bw -C: {}, {}, CPU per transfer of both engines in one thread (manual progress), {} transfers per batch, {} batches, median of {} reps [min-max]",
        c.transport,
        if c.pull { "pull" } else { "push" },
        c.per,
        c.loops,
        c.reps
    );
    println!("{:>10} {:>28}", "size", "us of CPU per transfer");
    super::serve(&server);
    let peer = client
        .lookup(&server.self_addr().to_string())
        .map_err(|e| e.to_string())?;
    for &size in c.sizes {
        let access = if c.pull {
            Access::ReadOnly
        } else {
            Access::WriteOnly
        };
        let theirs = client
            .expose(vec![Seg::from(vec![3u8; size])], access)
            .map_err(e)?;
        let args = (theirs.descriptor(), size as u64, c.pull, c.per);
        let batches = |n: usize| -> Result<f64, String> {
            let t0 = Instant::now();
            for _ in 0..n {
                let call = client.call(&peer, super::BW, &args);
                drive_both([&client, &server], || call.is_done())?;
                call.wait().map_err(e)?;
            }
            Ok(t0.elapsed().as_secs_f64() * 1e6 / (n as f64 * c.per as f64))
        };
        batches((c.loops / 10).max(1))?;
        let mut us: Vec<f64> = (0..c.reps)
            .map(|_| batches(c.loops))
            .collect::<Result<_, _>>()?;
        let u = stats(&mut us);
        println!("{size:>10} {:>10.3} [{:>6.3}-{:>6.3}]", u.0, u.1, u.2);
    }
    Ok(())
}
