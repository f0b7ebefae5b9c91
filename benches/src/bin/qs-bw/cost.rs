//! `qs-bw -C`: the CPU cost of one bulk transfer, both sides together, with no cross-core
//! latency in it. Both engines live in one thread in manual progress mode; the "server"
//! engine starts TRANSFERS pulls (or pushes) of S bytes between its own regions and one
//! region the "client" engine exposed (not carried in its descriptor), as `qs-bw` does per
//! RPC, and the thread drives both
//! engines until all are done. Prints, per size, the median, min and max over the reps
//! (after a warm-up of a tenth of the loops) of the microseconds of CPU per transfer.

use std::time::Instant;

use qs_benches::{drive_both, stats};
use rpc_core::{Access, Bulk, Seg};

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
    for &size in c.sizes {
        let theirs = client
            .expose(vec![Seg::from(vec![3u8; size])], Access::ReadWrite)
            .map_err(e)?;
        let d = theirs.descriptor();
        let mut mine: Vec<Bulk<'static>> = (0..c.per)
            .map(|_| server.expose(vec![Seg::from(vec![1u8; size])], Access::ReadWrite))
            .collect::<Result<_, _>>()
            .map_err(e)?;
        let mut batches = |n: usize| -> Result<f64, String> {
            let t0 = Instant::now();
            for _ in 0..n {
                let ts: Vec<_> = if c.pull {
                    mine.iter_mut()
                        .map(|b| server.pull(b, 0, &d, 0, size as u64))
                        .collect()
                } else {
                    mine.iter()
                        .map(|b| server.push(b, 0, &d, 0, size as u64))
                        .collect()
                };
                drive_both([&client, &server], || ts.iter().all(|t| t.is_done()))?;
                for t in ts {
                    t.wait().map_err(e)?;
                }
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
