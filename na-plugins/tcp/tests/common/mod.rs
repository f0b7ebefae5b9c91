//! Helpers of the raw-socket tests: frames by hand, and a bounded progress loop.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use na::{Address, Plugin};
use na_tcp::frame::{Header, Kind};
use na_tcp::{StreamPlugin, TcpPlugin, auth};

/// A plugin listening on a free loopback port.
pub fn plugin() -> StreamPlugin {
    TcpPlugin::new(&Address::parse("tcp://127.0.0.1:0").unwrap()).unwrap()
}

/// A frame's bytes.
pub fn frame(kind: Kind, tag: u64, body: &[u8]) -> Vec<u8> {
    let h = Header {
        kind,
        len: body.len() as u32,
        tag,
    };
    let mut v = h.encode().to_vec();
    v.extend_from_slice(body);
    v
}

/// Drives `ps` until `done` or 10 s.
pub fn drive(ps: &[&StreamPlugin], mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < until, "timed out");
        for p in ps {
            p.progress(Some(Duration::from_millis(2))).unwrap();
        }
    }
}

/// A raw socket connected to `server`, its greeting read (non-blocking), and the `Hello`
/// frame it sends next to be let in.
#[allow(dead_code)] // (not every test binary that shares this module uses it)
pub fn raw_peer(server: &StreamPlugin) -> (TcpStream, Vec<u8>) {
    let mut peer = TcpStream::connect(server.self_addr().locator()).unwrap();
    peer.set_nonblocking(true).unwrap();
    let mut got = 0;
    drive(&[server], || {
        let mut b = [0u8; 256];
        match peer.read(&mut b) {
            Ok(n) => got += n,
            Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
        }
        got >= 16 + 34
    });
    let me = Address::parse("tcp://127.0.0.1:1").unwrap();
    let hello = auth::encode_hello(&me, server.self_addr(), b"");
    (peer, frame(Kind::Hello, 0, &hello))
}
