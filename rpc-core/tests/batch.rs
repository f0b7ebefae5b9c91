//! Transfers started together with a caller ([`rpc_core::Caller::batch`]) move the right
//! bytes both ways, over a transport that holds their requests (tcp) and one that writes
//! them at once (sm); a failed one in a batch fails alone.

use rpc_core::{Access, Bulk, Descriptor, Engine, Rpc, Seg};

/// (client region, pieces, piece size) -> the pulled pieces' sum of bytes, after pushing
/// each piece back doubled.
const ROUND: Rpc<(Descriptor, u64, u64), u64> = Rpc::new("batch.round");

fn serve(server: &Engine) {
    server
        .register_with_caller(ROUND, |(d, n, size): (Descriptor, u64, u64), caller| {
            let e = caller.engine();
            let mut bufs: Vec<Bulk<'static>> = (0..n)
                .map(|_| e.expose(vec![Seg::from(vec![0u8; size as usize])], Access::ReadWrite))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let mut batch = caller.batch();
            for (i, b) in bufs.iter_mut().enumerate() {
                batch.pull(b, 0, &d, i as u64 * size, size);
            }
            for t in batch.start() {
                t.wait().map_err(|e| e.to_string())?;
            }
            let mut sum = 0u64;
            for b in &mut bufs {
                let v = b.to_vec();
                sum += v.iter().map(|x| *x as u64).sum::<u64>();
                let doubled: Vec<u8> = v.iter().map(|x| x.wrapping_mul(2)).collect();
                b.write_at(0, &doubled).map_err(|e| e.to_string())?;
            }
            let mut batch = caller.batch();
            for (i, b) in bufs.iter().enumerate() {
                batch.push(b, 0, &d, i as u64 * size, size);
            }
            // One past the region's end: fails, alone.
            batch.push(&bufs[0], 0, &d, n * size, 1);
            let ts = batch.start();
            let last = ts.len() - 1;
            for (i, t) in ts.into_iter().enumerate() {
                let r = t.wait();
                if (i == last) != r.is_err() {
                    return Err(format!("transfer {i} of the batch: {r:?}"));
                }
            }
            Ok::<_, String>(sum)
        })
        .unwrap();
}

fn round(transport: &str) {
    let server = Engine::new(transport).unwrap();
    serve(&server);
    let client = Engine::new(transport).unwrap();
    let to = client.lookup(&server.self_addr().to_string()).unwrap();
    let (n, size) = (64u64, 4096u64);
    let data: Vec<u8> = (0..n * size).map(|i| (i % 251) as u8).collect();
    let region = client
        .expose(vec![Seg::from(data.clone())], Access::ReadWrite)
        .unwrap();
    let sum = client
        .call(&to, ROUND, &(region.descriptor(), n, size))
        .wait()
        .unwrap();
    assert_eq!(sum, data.iter().map(|x| *x as u64).sum::<u64>());
    let back = region.to_vec();
    assert!(
        back.iter().zip(&data).all(|(b, d)| *b == d.wrapping_mul(2)),
        "pushed back doubled"
    );
}

#[test]
fn batched_transfers_move_the_right_bytes_over_tcp() {
    round("tcp://127.0.0.1:0");
}

#[test]
fn batched_transfers_move_the_right_bytes_over_sm() {
    round("sm://auto");
}

/// Over libfabric, small transfers are carried in control messages, which a batch sends
/// bundled (and the owner answers bundled).
#[cfg(feature = "ofi")]
#[test]
fn batched_transfers_move_the_right_bytes_over_ofi() {
    for t in ["ofi+tcp://127.0.0.1:0", "ofi+shm://auto"] {
        round(t);
    }
}
