//! A process that connects and names another's address in its hello does not receive what
//! is meant for that address: only connections a plugin dialled are found by address.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use na::{Address, Event, Plugin};
use na_tcp::frame::{Header, Kind};
use na_tcp::{StreamPlugin, TcpPlugin, auth};

fn plugin() -> StreamPlugin {
    TcpPlugin::new(&Address::parse("tcp://127.0.0.1:0").unwrap()).unwrap()
}

fn frame(kind: Kind, body: &[u8]) -> Vec<u8> {
    let h = Header {
        kind,
        len: body.len() as u32,
        tag: 0,
    };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(body);
    v
}

/// Drives `ps` until `done` or 5 s.
fn drive(ps: &[&StreamPlugin], mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < until, "timed out");
        for p in ps {
            p.progress(Some(Duration::from_millis(5))).unwrap();
        }
    }
}

#[test]
fn a_hello_naming_another_process_does_not_capture_its_traffic() {
    let (server, victim) = (plugin(), plugin());
    let mut impostor = TcpStream::connect(server.self_addr().locator()).unwrap();
    impostor.set_nonblocking(true).unwrap();
    // Read the challenge, then answer with a hello that names the victim's address.
    let mut challenge = Vec::new();
    drive(&[&server], || {
        let mut b = [0u8; 256];
        match impostor.read(&mut b) {
            Ok(n) => challenge.extend_from_slice(&b[..n]),
            Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
        }
        challenge.len() >= 16 + 34
    });
    let hello = auth::encode_hello(victim.self_addr(), server.self_addr(), b"");
    impostor.write_all(&frame(Kind::Hello, &hello)).unwrap();
    for _ in 0..20 {
        server.progress(Some(Duration::from_millis(5))).unwrap();
    }
    // The server's traffic for the victim's address goes to the victim.
    let p = server.lookup(victim.self_addr()).unwrap();
    server
        .send_unexpected(p, 7, b"for the victim".to_vec())
        .unwrap();
    let mut got = None;
    drive(&[&server, &victim], || {
        while let Some(ev) = victim.poll_event() {
            if let Event::Unexpected { data, .. } = ev {
                got = Some(data);
            }
        }
        got.is_some()
    });
    assert_eq!(got.unwrap(), b"for the victim");
    let mut b = [0u8; 256];
    let leaked = impostor.read(&mut b);
    assert!(
        matches!(&leaked, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the impostor received {leaked:?}"
    );
}
