//! Manual progress: a call past its timeout fails at a `trigger`, whether the program
//! spins on zero-timeout `progress` (the clock is read once in 64 triggers) or waits in
//! `progress`.

use std::time::{Duration, Instant};

use rpc_core::{Engine, ProgressMode, Rpc, RpcError};

const NAP: Rpc<u64, ()> = Rpc::new("manual.nap");

fn timed_out_while(wait: Option<Duration>) {
    let server = Engine::new("tcp://127.0.0.1:0").unwrap();
    server
        .register_infallible(NAP, |ms| std::thread::sleep(Duration::from_millis(ms)))
        .unwrap();
    let client = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .progress_mode(ProgressMode::Manual)
        .build()
        .unwrap();
    let peer = client.lookup(&server.self_addr().to_string()).unwrap();
    let t0 = Instant::now();
    let call = client.call_timeout(&peer, NAP, &1_500, Some(Duration::from_millis(50)));
    while !call.is_done() && t0.elapsed() < Duration::from_secs(3) {
        client.progress(wait).unwrap();
        client.trigger();
    }
    let took = t0.elapsed();
    assert!(
        matches!(call.wait(), Err(RpcError::Timeout { .. })),
        "{wait:?}: timed out"
    );
    assert!(
        took < Duration::from_secs(1),
        "{wait:?}: noticed after {took:?}"
    );
}

#[test]
fn a_timeout_fails_the_call_while_the_program_spins() {
    timed_out_while(Some(Duration::ZERO));
}

#[test]
fn a_timeout_fails_the_call_while_the_program_waits_in_progress() {
    timed_out_while(Some(Duration::from_millis(20)));
}
