//! Timeouts, cancellation, dead servers.

use std::time::{Duration, Instant};

use qs_tests::rpcs::*;
use qs_tests::{ServerProcess, block_on, client, listen_addr};
use rpc_core::{NaError, RpcError};

#[test]
fn a_slow_handler_times_out_and_its_late_answer_is_discarded() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let e = client();
    let peer = e.lookup(&server.addr).unwrap();
    let t0 = Instant::now();
    let r = e
        .call_timeout(&peer, SLEEP, &300, Some(Duration::from_millis(100)))
        .wait();
    // The error names the RPC and the peer.
    assert!(
        matches!(&r, Err(RpcError::Timeout { rpc, peer: p }) if rpc == SLEEP.name() && *p == server.addr),
        "{r:?}"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(e.counters().calls_in_flight, 0);
    // Let the late answer arrive; it must be dropped, and the engine keeps working.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(e.call(&peer, SUM, &(1, 2)).wait(), Ok(3));
    let c = e.counters();
    assert_eq!((c.calls_in_flight, c.timeouts), (0, 1));
}

#[test]
fn cancel_and_drop_end_calls_with_canceled() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let e = client();
    let peer = e.lookup(&server.addr).unwrap();
    let c = e.call(&peer, SLEEP, &200);
    c.cancel();
    assert_eq!(c.wait(), Err(RpcError::Canceled));
    drop(e.call(&peer, SLEEP, &200));
    assert_eq!(e.counters().calls_in_flight, 0);
    assert_eq!(e.counters().canceled, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(e.call(&peer, SUM, &(2, 3)).wait(), Ok(5));
}

#[test]
fn calls_as_futures_complete_under_a_plain_executor() {
    let server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let e = client();
    let peer = e.lookup(&server.addr).unwrap();
    let fut = async {
        let a = e.call(&peer, SUM, &(1, 2)).await?;
        let b = e.call(&peer, LATER, &a).await?;
        Ok::<_, RpcError>(b)
    };
    assert_eq!(block_on(fut), Ok(6));
}

#[test]
fn a_killed_server_fails_calls_in_flight_promptly() {
    let mut server = ServerProcess::spawn(&[&listen_addr()], &[]);
    let e = client();
    let peer = e.lookup(&server.addr).unwrap();
    assert_eq!(e.call(&peer, SUM, &(1, 1)).wait(), Ok(2));
    let calls: Vec<_> = (0..20)
        .map(|_| e.call_timeout(&peer, SLEEP, &10_000, Some(Duration::from_secs(30))))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    server.kill();
    for c in calls {
        let r = c.wait();
        assert!(
            matches!(r, Err(RpcError::Transport(NaError::Disconnected(_)))),
            "{r:?}"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    // A new call to the dead address fails as unreachable, not hangs.
    let r = e
        .call_timeout(&peer, SUM, &(1, 1), Some(Duration::from_secs(10)))
        .wait();
    assert!(
        matches!(
            r,
            Err(RpcError::Transport(
                NaError::Unreachable(_) | NaError::Disconnected(_)
            ))
        ),
        "{r:?}"
    );
}

#[test]
fn a_restarted_server_is_reached_again_at_the_same_address() {
    let mut first = ServerProcess::spawn(&[&listen_addr()], &[]);
    let addr = first.addr.clone();
    let e = client();
    let peer = e.lookup(&addr).unwrap();
    assert_eq!(e.call(&peer, SUM, &(1, 1)).wait(), Ok(2));
    first.kill();
    let _ = e.call(&peer, SUM, &(1, 1)).wait();
    let _second = ServerProcess::spawn(&[&addr], &[]);
    assert_eq!(e.call(&peer, SUM, &(2, 2)).wait(), Ok(4));
}
