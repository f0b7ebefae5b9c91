//! RPCs between separate processes over loopback.

use std::collections::VecDeque;
use std::process::Command;
use std::time::Duration;

use qs_tests::rpcs::*;
use qs_tests::{ServerProcess, bin, client, listen_addr, transport};
use rpc_core::{Call, Engine, ProgressMode, RpcError};
use serde_bytes::ByteBuf;

#[test]
fn ten_thousand_calls_with_a_hundred_in_flight_are_all_correct() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let e = client();
    let peer = e.lookup(&server.addr).unwrap();
    let mut window: VecDeque<(u64, Call<u64>)> = VecDeque::new();
    let mut echoes: VecDeque<(Vec<u8>, Call<ByteBuf>)> = VecDeque::new();
    for i in 0..5_000u64 {
        window.push_back((i, e.call(&peer, SUM, &(i, i * 3))));
        let p: Vec<u8> = (0..(i % 300) as usize)
            .map(|j| (i as usize + j) as u8)
            .collect();
        echoes.push_back((p.clone(), e.call(&peer, ECHO, &ByteBuf::from(p))));
        if window.len() >= 50 {
            let (i, c) = window.pop_front().unwrap();
            assert_eq!(c.wait().unwrap(), i * 4);
            let (p, c) = echoes.pop_front().unwrap();
            assert_eq!(c.wait().unwrap().into_vec(), p);
        }
    }
    for (i, c) in window {
        assert_eq!(c.wait().unwrap(), i * 4);
    }
    for (p, c) in echoes {
        assert_eq!(c.wait().unwrap().into_vec(), p);
    }
    let stats = e.call(&peer, STATS, &()).wait().unwrap();
    assert_eq!(stats.0, 10_001, "server counted every request");
    assert_eq!(e.counters().calls_in_flight, 0);
}

#[test]
fn the_transport_is_chosen_by_rpc_transport_alone() {
    let server = ServerProcess::spawn(&[], &[("RPC_TRANSPORT", transport().as_str())]);
    assert!(
        server.addr.starts_with(&format!("{}://", transport())),
        "{}",
        server.addr
    );
    let out = Command::new(bin("qs-test-client"))
        .args([&server.addr, "10000", "100"])
        .env("RPC_TRANSPORT", transport().as_str())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK 10000");
}

#[test]
fn an_unknown_transport_is_a_clear_error() {
    let out = Command::new(bin("qs-test-client"))
        .args(["tcp://127.0.0.1:1", "1", "1"])
        .env("RPC_TRANSPORT", "carrier-pigeon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("carrier-pigeon") && err.contains("available: tcp"),
        "{err}"
    );
}

#[test]
fn arguments_and_results_of_every_size_round_trip_through_overflow() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let e = client();
    let peer = e.lookup(&server.addr).unwrap();
    // The echo body is a msgpack bin: up to 5 bytes of framing.
    let eager = e.max_payload();
    let mut sizes: Vec<usize> = (0..=64).collect();
    sizes.extend([
        255,
        256,
        4095,
        4096,
        4097,
        8192,
        eager - 6,
        eager - 5,
        eager - 4,
        eager - 1,
        eager,
        eager + 1,
    ]);
    sizes.extend([1 << 20, 16 << 20]);
    for n in sizes {
        let p = qs_tests::rpcs::pattern(n as u64, n);
        let got = e
            .call(&peer, ECHO, &ByteBuf::from(p.clone()))
            .wait()
            .unwrap();
        assert!(got.into_vec() == p, "size {n} came back different");
    }
    // Every overflow answer was released by the caller after its pull.
    let stats = e.call(&peer, STATS, &()).wait().unwrap();
    assert_eq!(stats.3, 0, "server still exposes overflow answers");
    assert_eq!(e.counters().calls_in_flight, 0);
}

#[test]
fn inputs_over_the_overflow_limits_are_refused_clearly() {
    let server = ServerProcess::spawn(&["--max-overflow", "1048576", &listen_addr()], &[]);
    let small = Engine::builder()
        .listen(&listen_addr())
        .max_overflow(1 << 20)
        .build()
        .unwrap();
    let peer = small.lookup(&server.addr).unwrap();
    let r = small
        .call(&peer, ECHO, &ByteBuf::from(vec![1u8; 2 << 20]))
        .wait();
    assert!(matches!(r, Err(RpcError::TooLarge { .. })), "{r:?}");
    let big = client();
    let peer = big.lookup(&server.addr).unwrap();
    let r = big
        .call(&peer, ECHO, &ByteBuf::from(vec![1u8; 2 << 20]))
        .wait();
    assert!(
        matches!(&r, Err(RpcError::BadInput(m)) if m.contains("limit")),
        "{r:?}"
    );
    assert_eq!(big.call(&peer, SUM, &(1, 1)).wait(), Ok(2));
}

#[test]
fn handler_errors_panics_and_dropped_responders_reach_the_caller() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let e = client();
    let peer = e.lookup(&server.addr).unwrap();
    assert_eq!(
        e.call(&peer, FAIL, &()).wait(),
        Err(RpcError::Handler("this handler always fails".into()))
    );
    assert_eq!(
        e.call(&peer, PANIC, &()).wait(),
        Err(RpcError::HandlerPanicked(
            "deliberate panic in handler".into()
        ))
    );
    assert!(
        matches!(e.call(&peer, DROP_RESPONDER, &()).wait(), Err(RpcError::Handler(m)) if m.contains("without answering"))
    );
    assert!(
        matches!(e.call(&peer, SUM, &(u64::MAX, 1)).wait(), Err(RpcError::Handler(m)) if m == "overflow")
    );
    assert_eq!(e.call(&peer, LATER, &21).wait().unwrap(), 42);
    assert_eq!(e.call(&peer, SUM, &(2, 2)).wait().unwrap(), 4);
    let c = e.counters();
    assert_eq!(
        (c.rpcs_sent, c.rpcs_failed),
        (6, 4),
        "answers that report errors count as failed calls"
    );
}

#[test]
fn one_way_requests_arrive_without_answers() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let e = client();
    let peer = e.lookup(&server.addr).unwrap();
    for _ in 0..100 {
        e.notify(&peer, BUMP, &3).unwrap();
    }
    let mut seen = 0;
    for _ in 0..200 {
        seen = e.call(&peer, COUNT, &()).wait().unwrap();
        if seen == 300 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen, 300);
    let (received, answered, _, _) = e.call(&peer, STATS, &()).wait().unwrap();
    assert!(
        received >= 101 && answered < received,
        "one-way requests are not answered"
    );
}

#[test]
fn manual_and_busy_progress_modes_complete_calls() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    for mode in [ProgressMode::Manual, ProgressMode::BusyPoll] {
        let e = Engine::builder()
            .listen(&listen_addr())
            .progress_mode(mode)
            .build()
            .unwrap();
        let peer = e.lookup(&server.addr).unwrap();
        let calls: Vec<_> = (0..200u64).map(|i| e.call(&peer, SUM, &(i, 1))).collect();
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.wait().unwrap(), i as u64 + 1, "{mode:?}");
        }
    }
}

#[test]
fn many_client_engines_are_all_served() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let threads: Vec<_> = (0..64u64)
        .map(|k| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let e = Engine::builder()
                    .listen(&listen_addr())
                    .workers(1)
                    .build()
                    .unwrap();
                let peer = e.lookup(&addr).unwrap();
                let calls: Vec<_> = (0..50u64).map(|i| e.call(&peer, SUM, &(k, i))).collect();
                calls.into_iter().enumerate().all(|(i, c)| match c.wait() {
                    Ok(v) if v == k + i as u64 => true,
                    other => {
                        eprintln!("client {k} call {i}: {other:?}");
                        false
                    }
                })
            })
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, 64);
}

#[test]
fn calls_to_oneself_bypass_the_network() {
    let e = client();
    e.register(SUM, |(a, b): (u64, u64)| Ok::<_, String>(a + b))
        .unwrap();
    let me = e.lookup(&e.self_addr().to_string()).unwrap();
    assert_eq!(e.call(&me, SUM, &(40, 2)).wait().unwrap(), 42);
    let c = e.counters();
    assert_eq!(
        (c.rpcs_sent, c.rpcs_received, c.responses_sent),
        (1, 1, 0),
        "answered locally, not over the wire"
    );
}

#[test]
fn registering_a_name_twice_is_refused() {
    let e = client();
    e.register(SUM, |(a, b): (u64, u64)| Ok::<_, String>(a + b))
        .unwrap();
    assert_eq!(
        e.register(SUM, |_: (u64, u64)| Ok::<_, String>(0)),
        Err(RpcError::AlreadyRegistered("sum".into()))
    );
}

/// Polls `f` until it holds, for at most `secs` seconds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

fn client_process(addr: &str, calls: u64, window: usize) -> Command {
    let mut c = Command::new(bin("qs-test-client"));
    c.args([addr, &calls.to_string(), &window.to_string()])
        .env("RPC_TRANSPORT", transport().as_str())
        .stdout(std::process::Stdio::piped());
    c
}

#[test]
fn a_client_killed_mid_rpc_is_noticed_and_new_clients_are_served() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let e = client();
    let peer = e.lookup(&server.addr).unwrap();
    let received = || e.call(&peer, STATS, &()).wait().unwrap().0;
    let before = received();
    let mut victim = client_process(&server.addr, u64::MAX / 2, 16)
        .spawn()
        .unwrap();
    assert!(
        eventually(10, || received() > before + 1000),
        "the victim's calls reach the server"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(
        eventually(10, || e.call(&peer, PEERS_LOST, &()).wait() == Ok(1)),
        "the server noticed the killed client"
    );
    let out = client_process(&server.addr, 2000, 8).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sixteen_client_processes_on_one_server_are_all_served() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let kids: Vec<_> = (0..16)
        .map(|_| client_process(&server.addr, 2000, 8).spawn().unwrap())
        .collect();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK 2000");
    }
}
