//! Transfers that own their buffers and end in a closure ([`rpc_core::Caller::transfers`]):
//! an inline handler pulls, answers from the last completion, and no worker is involved;
//! the bytes are right both ways over tcp and sm, a failed transfer is the set's error,
//! an eager descriptor's bytes need no transfer, and a set dropped without a closure still
//! moves its data.

use rpc_core::{Access, Bulk, Descriptor, Engine, Responder, Rpc, RpcError, Seg};

/// (client region, pieces, piece size) -> (the pulled bytes' sum, the answering thread);
/// each piece is pushed back doubled first, with one push past the region's end.
const ROUND: Rpc<(Descriptor, u64, u64), (u64, String)> = Rpc::new("transfers.round");
/// (client region, length) -> the region's bytes, pulled by a set.
const PULL: Rpc<(Descriptor, u64), rpc_core::ByteBuf> = Rpc::new("transfers.pull");
/// (client region, byte) -> (), after a dropped set's push of `byte`s into the region.
const DROPPED: Rpc<(Descriptor, u8), ()> = Rpc::new("transfers.dropped");
/// A set whose closure panics; the engine answers nothing for it.
const PANICS: Rpc<Descriptor, ()> = Rpc::new("transfers.panics");
/// (client region) -> the outcome of a set pushing into all of it within 200 ms.
const HURRIED: Rpc<Descriptor, String> = Rpc::new("transfers.hurried");

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

fn buffers(e: &Engine, n: u64, size: u64) -> Vec<Bulk<'static>> {
    (0..n)
        .map(|_| {
            e.expose(vec![Seg::from(vec![0u8; size as usize])], Access::ReadWrite)
                .unwrap()
        })
        .collect()
}

fn round(d: Descriptor, n: u64, size: u64, r: Responder<(u64, String)>) {
    let caller = r.caller();
    let mut set = caller.transfers();
    for (i, b) in buffers(caller.engine(), n, size).into_iter().enumerate() {
        set.pull(b, 0, &d, i as u64 * size, size);
    }
    set.then(move |mut bufs, pulled| {
        if let Err(e) = pulled {
            return r.fail(e);
        }
        let mut sum = 0u64;
        for b in &mut bufs {
            let v = b.to_vec();
            sum += v.iter().map(|x| *x as u64).sum::<u64>();
            let doubled: Vec<u8> = v.iter().map(|x| x.wrapping_mul(2)).collect();
            b.write_at(0, &doubled).unwrap();
        }
        let spare = r
            .caller()
            .engine()
            .expose(vec![Seg::from(vec![0u8; 1])], Access::ReadOnly);
        let mut set = r.caller().transfers();
        for (i, b) in bufs.into_iter().enumerate() {
            set.push(b, 0, &d, i as u64 * size, size);
        }
        set.push(spare.unwrap(), 0, &d, n * size, 1);
        let pulled_on = thread_name();
        set.then(move |bufs, pushed| match pushed {
            Err(RpcError::InvalidArgument(_)) if bufs.len() == n as usize + 1 => {
                r.respond(&(sum, pulled_on))
            }
            other => r.fail(format!("the push past the end gave {other:?}")),
        });
    });
}

fn serve(server: &Engine) {
    server
        .register_responder_inline(ROUND, |(d, n, size), r| round(d, n, size, r))
        .unwrap();
    server
        .register_responder_inline(PULL, |(d, len): (Descriptor, u64), r| {
            let caller = r.caller();
            let mut set = caller.transfers();
            set.pull(buffers(caller.engine(), 1, len).remove(0), 0, &d, 0, len);
            set.then(move |bufs, outcome| match outcome {
                Ok(()) => r.respond(&rpc_core::ByteBuf::from(bufs[0].to_vec())),
                Err(e) => r.fail(e),
            });
        })
        .unwrap();
    server
        .register_responder_inline(DROPPED, |(d, byte): (Descriptor, u8), r| {
            let caller = r.caller();
            let b = caller.engine().expose(
                vec![Seg::from(vec![byte; d.len() as usize])],
                Access::ReadOnly,
            );
            let mut set = caller.transfers();
            set.push(b.unwrap(), 0, &d, 0, d.len());
            drop(set);
            r.respond(&());
        })
        .unwrap();
    server
        .register_responder_inline(PANICS, |d: Descriptor, r| {
            let caller = r.caller();
            let mut set = caller.transfers();
            set.pull(buffers(caller.engine(), 1, 1).remove(0), 0, &d, 0, 1);
            set.then(move |_, _| {
                let _answered_by_its_drop = r;
                panic!("a continuation fell over")
            });
        })
        .unwrap();
}

fn serve_hurried(server: &Engine) {
    server
        .register_responder_inline(HURRIED, |d: Descriptor, r| {
            let caller = r.caller();
            let b = caller.engine().expose(
                vec![Seg::from(vec![7u8; d.len() as usize])],
                Access::ReadOnly,
            );
            let mut set = caller
                .transfers()
                .timeout(std::time::Duration::from_millis(200));
            set.push(b.unwrap(), 0, &d, 0, d.len());
            set.then(move |_, outcome| r.respond(&format!("{outcome:?}")));
        })
        .unwrap();
}

fn pair(transport: &str) -> (Engine, Engine, rpc_core::Endpoint) {
    let server = Engine::builder()
        .listen(transport)
        .workers(1)
        .build()
        .unwrap();
    serve(&server);
    serve_hurried(&server);
    let client = Engine::new(transport).unwrap();
    let to = client.lookup(&server.self_addr().to_string()).unwrap();
    (server, client, to)
}

fn bytes_both_ways(transport: &str) {
    let (_server, client, to) = pair(transport);
    let (n, size) = (64u64, 4096u64);
    let data: Vec<u8> = (0..n * size).map(|i| (i % 251) as u8).collect();
    let region = client
        .expose(vec![Seg::from(data.clone())], Access::ReadWrite)
        .unwrap();
    let (sum, on) = client
        .call(&to, ROUND, &(region.descriptor(), n, size))
        .wait()
        .unwrap();
    assert_eq!(sum, data.iter().map(|x| *x as u64).sum::<u64>());
    // Pulled, pushed and answered without a worker.
    assert_eq!(on, "qs-progress");
    let back = region.to_vec();
    assert!(
        back.iter().zip(&data).all(|(b, d)| *b == d.wrapping_mul(2)),
        "pushed back doubled"
    );
}

#[test]
fn a_set_moves_the_right_bytes_and_answers_on_the_progress_thread_over_tcp() {
    bytes_both_ways("tcp://127.0.0.1:0");
}

#[test]
fn a_set_moves_the_right_bytes_and_answers_on_the_progress_thread_over_sm() {
    bytes_both_ways("sm");
}

#[test]
fn an_eager_descriptors_bytes_end_a_pull_at_once_and_a_failure_is_the_sets_error() {
    let (_server, client, to) = pair("tcp://127.0.0.1:0");
    // Small and read-only: the descriptor carries the bytes.
    let small = client
        .expose(vec![Seg::from(b"eager bytes".to_vec())], Access::ReadOnly)
        .unwrap();
    assert!(small.descriptor().inline.is_some());
    let got = client
        .call(&to, PULL, &(small.descriptor(), 11))
        .wait()
        .unwrap();
    assert_eq!(&got[..], b"eager bytes");
    // Past the end of an eager descriptor, and of a large one: the set fails.
    for len in [12u64, 5 << 20] {
        let region = client
            .expose(vec![Seg::from(vec![1u8; 1 << 20])], Access::ReadWrite)
            .unwrap();
        let d = if len == 12 {
            small.descriptor()
        } else {
            region.descriptor()
        };
        let err = client.call(&to, PULL, &(d, len)).wait().unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }
}

#[test]
fn a_set_dropped_without_a_closure_still_moves_its_data() {
    let (_server, client, to) = pair("sm");
    let region = client
        .expose(vec![Seg::from(vec![0u8; 1 << 20])], Access::ReadWrite)
        .unwrap();
    client
        .call(&to, DROPPED, &(region.descriptor(), 9))
        .wait()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while region.to_vec().iter().any(|b| *b != 9) {
        assert!(
            std::time::Instant::now() < deadline,
            "the push never landed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_panicking_closure_leaves_the_engine_serving() {
    let (_server, client, to) = pair("tcp://127.0.0.1:0");
    let region = client
        .expose(vec![Seg::from(vec![3u8; 64 << 10])], Access::ReadWrite)
        .unwrap();
    // Its responder, dropped as the panic unwinds, answers so.
    let err = client
        .call(&to, PANICS, &region.descriptor())
        .wait()
        .unwrap_err();
    assert!(matches!(err, RpcError::HandlerPanicked(_)), "{err}");
    for _ in 0..3 {
        let v = client
            .call(&to, PULL, &(region.descriptor(), 64 << 10))
            .wait()
            .unwrap();
        assert_eq!(v.len(), 64 << 10);
    }
}

#[test]
fn a_transfer_or_call_made_after_the_engine_stopped_fails_at_once() {
    let (_server, client, to) = pair("tcp://127.0.0.1:0");
    let peer = Engine::new("tcp://127.0.0.1:0").unwrap();
    // (Larger than the eager limit: the bytes do not come with the descriptor.)
    const N: usize = 64 << 10;
    let theirs = peer
        .expose(vec![Seg::from(vec![5u8; N])], Access::ReadWrite)
        .unwrap()
        .descriptor();
    assert!(theirs.inline.is_none());
    let h = client.handle();
    let mut mine = h
        .expose(vec![Seg::from(vec![0u8; N])], Access::ReadWrite)
        .unwrap();
    drop(client);
    // Nothing drives a stopped engine: a transfer posted now would never end.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pulled = h.pull(&mut mine, 0, &theirs, 0, N as u64).wait();
        let called = h.call(&to, PULL, &(theirs.clone(), 1)).wait().map(drop);
        let _ = tx.send((pulled, called));
    });
    let (pulled, called) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the pull or the call never ended");
    assert!(matches!(pulled, Err(RpcError::Shutdown)), "{pulled:?}");
    assert!(matches!(called, Err(RpcError::Shutdown)), "{called:?}");
}

#[test]
fn a_set_given_a_timeout_fails_when_the_caller_stops_taking_its_bytes() {
    // A client that does not progress for a while takes no pushed bytes over tcp: the
    // set's 200 ms bound, not the engine's minute, ends its transfer.
    let server = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .workers(1)
        .build()
        .unwrap();
    serve_hurried(&server);
    let client = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .progress_mode(rpc_core::ProgressMode::Manual)
        .build()
        .unwrap();
    let to = client.lookup(&server.self_addr().to_string()).unwrap();
    let region = client
        .expose(vec![Seg::from(vec![0u8; 256 << 20])], Access::ReadWrite)
        .unwrap();
    let call = client.call(&to, HURRIED, &region.descriptor());
    // The request goes; then nothing is read for a second.
    for _ in 0..20 {
        client.poll().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let outcome = call.wait().unwrap();
    assert!(outcome.contains("Timeout"), "{outcome}");
}
