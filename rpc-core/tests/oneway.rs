//! `notify` returns once the transport took the request, and says so when it could not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rpc_core::{Engine, Rpc, RpcError};

const NOTE: Rpc<u64, ()> = Rpc::new("oneway.note");

#[test]
fn a_one_way_request_reaches_a_live_server() {
    let server = Engine::new("tcp://127.0.0.1:0").unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    server
        .register_infallible(NOTE, move |n: u64| {
            s.fetch_add(n, Ordering::SeqCst);
        })
        .unwrap();
    let client = Engine::new("tcp://127.0.0.1:0").unwrap();
    let p = client.lookup(&server.self_addr().to_string()).unwrap();
    for _ in 0..100 {
        client.notify(&p, NOTE, &1).unwrap();
    }
    let until = Instant::now() + Duration::from_secs(5);
    while seen.load(Ordering::SeqCst) < 100 {
        assert!(
            Instant::now() < until,
            "only {} arrived",
            seen.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_one_way_request_to_nobody_is_an_error() {
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .timeout(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let p = client.lookup(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let t = Instant::now();
    let r = client.notify(&p, NOTE, &1);
    assert!(
        matches!(&r, Err(RpcError::Transport(_))),
        "{r:?} after {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}
