//! A call's outcome reaches a closure on the completing thread ([`rpc_core::Call::then`]):
//! answers, handler errors and transport failures alike, with no thread waiting.

use std::sync::mpsc;
use std::time::Duration;

use rpc_core::{Engine, Rpc, RpcError};

const TWICE: Rpc<u32, u32> = Rpc::new("then.twice");
const NOBODY: Rpc<u32, u32> = Rpc::new("then.nobody");

#[test]
fn outcomes_reach_the_closure_without_a_waiting_thread() {
    let server = Engine::new("tcp://127.0.0.1:0").unwrap();
    server.register_infallible(TWICE, |x| 2 * x).unwrap();
    let client = Engine::new("tcp://127.0.0.1:0").unwrap();
    let to = client.lookup(&server.self_addr().to_string()).unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..100u32 {
        let tx = tx.clone();
        client
            .call(&to, TWICE, &i)
            .then(move |r| tx.send((i, r)).unwrap());
    }
    let mut got: Vec<_> = (0..100)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    got.sort_by_key(|(i, _)| *i);
    assert!(got.iter().all(|(i, r)| *r == Ok(2 * i)), "{got:?}");

    let tx2 = tx.clone();
    client
        .call(&to, NOBODY, &1)
        .then(move |r| tx2.send((0, r)).unwrap());
    let (_, r) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(r, Err(RpcError::UnknownRpc { .. })), "{r:?}");

    // A peer that goes away: the closure gets the failure.
    drop(server);
    client
        .call(&to, TWICE, &1)
        .timeout(Duration::from_secs(2))
        .then(move |r| tx.send((1, r)).unwrap());
    let (_, r) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(r.is_err(), "{r:?}");
}

/// [`Engine::execute`] runs a job on one of the engine's workers, and one that panics
/// leaves the workers serving the next.
#[test]
fn execute_runs_jobs_on_a_worker_and_survives_a_panicking_one() {
    let e = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .workers(1)
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    e.execute(|| panic!("a job that fails"));
    for _ in 0..3 {
        let tx = tx.clone();
        e.execute(move || {
            let name = std::thread::current().name().map(str::to_owned);
            tx.send(name).unwrap();
        });
    }
    for _ in 0..3 {
        let name = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(
            name.is_some_and(|n| n.starts_with("qs-worker")),
            "on a worker"
        );
    }
}
