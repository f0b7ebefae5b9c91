//! A process that connects and names another's address in its hello does not receive what
//! is meant for that address: only connections a plugin dialled are found by address.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use na::{Event, Plugin};
use na_tcp::auth;
use na_tcp::frame::Kind;

mod common;
use common::{drive, frame, plugin};

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
    impostor.write_all(&frame(Kind::Hello, 0, &hello)).unwrap();
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
