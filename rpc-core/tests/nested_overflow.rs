//! A peer that breaks the overflow protocol, over a raw transport: the request body it has
//! the server pull is itself an overflow stub (which would have the server pull again, and
//! again). The server refuses it with `BadInput` and counts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bulk::{Bulk, Seg};
use na::{Access, Event, Plugin};
use rpc_core::proto::{Header, Status};
use rpc_core::{Engine, Rpc};
use serde_bytes::ByteBuf;

const ECHO: Rpc<ByteBuf, usize> = Rpc::new("nested.echo");

/// An overflow stub for `ECHO` naming `b`'s memory.
fn stub(b: &Bulk<'_>) -> Vec<u8> {
    let mut m = Vec::new();
    Header::request(ECHO.id(), false).overflow().write(&mut m);
    rmp_serde::encode::write(&mut m, &b.descriptor()).unwrap();
    m
}

#[test]
fn a_pulled_request_that_is_itself_a_stub_is_refused() {
    let server = Engine::new("tcp://127.0.0.1:0").unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    server
        .register(ECHO, move |b: ByteBuf| {
            r.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(b.len())
        })
        .unwrap();
    let raw: Arc<dyn Plugin> =
        Arc::new(na_tcp::TcpPlugin::new(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap());
    let peer = raw.lookup(server.self_addr()).unwrap();
    // What the server pulls: a stub again, naming a real request.
    let mut real = Vec::new();
    Header::request(ECHO.id(), false).write(&mut real);
    rmp_serde::encode::write(&mut real, &ByteBuf::from(vec![1u8; 8])).unwrap();
    let real = Bulk::new(&raw, vec![Seg::from(real)], Access::ReadOnly).unwrap();
    let inner = Bulk::new(&raw, vec![Seg::from(stub(&real))], Access::ReadOnly).unwrap();
    let recv = raw.recv_expected(peer, 1).unwrap();
    raw.send_unexpected(peer, 1, stub(&inner)).unwrap();
    // Drive our side (it serves the server's pull) until the answer comes.
    let until = Instant::now() + Duration::from_secs(10);
    let answer = 'answer: loop {
        assert!(Instant::now() < until, "no answer");
        raw.progress(Some(Duration::from_millis(10))).unwrap();
        while let Some(ev) = raw.poll_event() {
            if let Event::Done { op, result } = ev
                && op == recv
            {
                break 'answer result.unwrap();
            }
        }
    };
    let (h, body) = Header::decode(&answer).unwrap();
    assert_eq!(h.status, Status::BadInput);
    assert!(
        String::from_utf8_lossy(body).contains("itself an overflow stub"),
        "{}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(server.counters().bad_requests, 1);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the handler never ran");
}
