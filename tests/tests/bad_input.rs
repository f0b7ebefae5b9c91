//! Malformed input from peers: each gets a typed error or a closed connection, never a
//! crash, and the server keeps serving others.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use na_tcp::frame::{Header as Frame, Kind};
use qs_tests::rpcs::*;
use qs_tests::{ServerProcess, raw_frame, raw_hello, read_challenge};
use rpc_core::proto::{Header, Status};
use rpc_core::{Engine, RpcError};

fn locator(addr: &str) -> &str {
    addr.strip_prefix("tcp://").unwrap()
}

fn hello(server: &str) -> Vec<u8> {
    raw_hello("tcp://127.0.0.1:9", server)
}

/// Connects, sends `bytes`, and reports whether the server closed the connection.
fn server_closes_after(addr: &str, bytes: &[u8], then_close: bool) -> bool {
    let mut s = TcpStream::connect(locator(addr)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    read_challenge(&mut s);
    s.write_all(bytes).unwrap();
    if then_close {
        drop(s);
        return true;
    }
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        // A read timeout means the server kept the connection open.
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    }
}

fn still_serves(addr: &str) {
    let e = Engine::new("tcp://127.0.0.1:0").unwrap();
    let peer = e.lookup(addr).unwrap();
    assert_eq!(e.call(&peer, SUM, &(20, 22)).wait().unwrap(), 42);
}

#[test]
fn malformed_frames_close_only_that_connection() {
    let server = ServerProcess::spawn(&["tcp://127.0.0.1:0"], &[]);
    let a = &server.addr;
    let mut wrong_magic = hello(&server.addr);
    wrong_magic[0] ^= 0xff;
    let mut wrong_version = hello(&server.addr);
    wrong_version[2] = 99;
    let mut four_gib = raw_frame(Kind::Unexpected, 1, b"");
    four_gib[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut four_gib_after_hello = hello(&server.addr);
    four_gib_after_hello.extend(&four_gib);
    let cases: [(&str, Vec<u8>); 6] = [
        ("wrong magic", wrong_magic),
        ("wrong version", wrong_version),
        ("frame announcing 4 GiB", four_gib_after_hello),
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("no Hello first", raw_frame(Kind::Unexpected, 1, b"hi")),
        ("unknown frame kind", {
            let mut f = hello(&server.addr);
            f.extend(raw_frame(Kind::Expected, 1, b""));
            let n = f.len();
            f[n - 16 + 3] = 200;
            f
        }),
    ];
    for (what, bytes) in cases {
        assert!(
            server_closes_after(a, &bytes, false),
            "server kept the connection after {what}"
        );
        still_serves(a);
    }
}

#[test]
fn truncated_frames_and_disconnects_mid_frame_do_not_hurt_the_server() {
    let server = ServerProcess::spawn(&["tcp://127.0.0.1:0"], &[]);
    let mut half = hello(&server.addr);
    let f = raw_frame(Kind::Unexpected, 1, &[7u8; 1000]);
    half.extend(&f[..500]);
    assert!(server_closes_after(&server.addr, &half, true));
    assert!(server_closes_after(
        &server.addr,
        &hello(&server.addr)[..7],
        true
    ));
    still_serves(&server.addr);
}

/// Sends one request with a raw socket and returns the answer's header and body.
fn raw_call(addr: &str, msg: &[u8]) -> (Header, Vec<u8>) {
    let mut s = TcpStream::connect(locator(addr)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    read_challenge(&mut s);
    let mut out = hello(addr);
    out.extend(raw_frame(Kind::Unexpected, 77, msg));
    s.write_all(&out).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let f = Frame::decode(&h, 1 << 20).unwrap();
    assert_eq!((f.kind, f.tag), (Kind::Expected, 77));
    let mut body = vec![0u8; f.len as usize];
    s.read_exact(&mut body).unwrap();
    let (h, rest) = Header::decode(&body).unwrap();
    (h, rest.to_vec())
}

#[test]
fn malformed_rpc_headers_are_answered_with_a_status() {
    let server = ServerProcess::spawn(&["tcp://127.0.0.1:0"], &[]);
    let (h, why) = raw_call(&server.addr, b"short");
    assert_eq!(
        h.status,
        Status::BadHeader,
        "{}",
        String::from_utf8_lossy(&why)
    );
    let mut bad_version = Vec::new();
    Header::request(SUM.id(), false).write(&mut bad_version);
    bad_version[2] = 9;
    assert_eq!(
        raw_call(&server.addr, &bad_version).0.status,
        Status::BadHeader
    );
    let mut truncated_input = Vec::new();
    Header::request(SUM.id(), false).write(&mut truncated_input);
    truncated_input.extend_from_slice(&[0x92, 0x01]);
    assert_eq!(
        raw_call(&server.addr, &truncated_input).0.status,
        Status::BadInput
    );
    still_serves(&server.addr);
}

#[test]
fn unknown_rpcs_and_undecodable_inputs_are_typed_errors_at_the_caller() {
    let server = ServerProcess::spawn(&["tcp://127.0.0.1:0"], &[]);
    let e = Engine::new("tcp://127.0.0.1:0").unwrap();
    let peer = e.lookup(&server.addr).unwrap();
    let r = e.call(&peer, MISSING, &()).wait();
    assert_eq!(
        r,
        Err(RpcError::UnknownRpc {
            rpc: MISSING.name().into(),
            id: MISSING.id()
        })
    );
    assert!(r.unwrap_err().to_string().contains(MISSING.name()));
    let r = e
        .call(&peer, SUM_WRONG_TYPE, &"not a pair".to_string())
        .wait();
    // The server names the RPC and the type it expected.
    assert!(
        matches!(&r, Err(RpcError::BadInput(why)) if why.contains(SUM_WRONG_TYPE.name()) && why.contains("u64")),
        "{r:?}"
    );
    assert_eq!(e.call(&peer, SUM, &(1, 2)).wait(), Ok(3));
    let (_, _, bad, _) = e.call(&peer, STATS, &()).wait().unwrap();
    assert_eq!(bad, 2, "the server counted both bad requests");
}

/// A fake server that answers every request with `answer(tag)`.
fn fake_server(answer: fn(u64) -> Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let challenge = na_tcp::auth::Challenge::new(&rpc_core::Auth::None).unwrap();
        s.write_all(&raw_frame(Kind::Challenge, 0, &challenge.encode()))
            .unwrap();
        let mut h = [0u8; 16];
        while s.read_exact(&mut h).is_ok() {
            let f = Frame::decode(&h, 1 << 20).unwrap();
            let mut body = vec![0u8; f.len as usize];
            s.read_exact(&mut body).unwrap();
            if f.kind == Kind::Unexpected {
                s.write_all(&answer(f.tag)).unwrap();
            }
        }
    });
    addr
}

#[test]
fn malformed_answers_are_protocol_errors_at_the_caller() {
    let e = Engine::new("tcp://127.0.0.1:0").unwrap();
    let garbage_rpc = fake_server(|tag| raw_frame(Kind::Expected, tag, b"not an rpc header"));
    let peer = e.lookup(&garbage_rpc).unwrap();
    assert!(matches!(
        e.call(&peer, SUM, &(1, 2)).wait(),
        Err(RpcError::Protocol(_))
    ));

    let wrong_type = fake_server(|tag| {
        let mut m = Vec::new();
        Header::response(SUM.id(), Status::Ok).write(&mut m);
        m.extend(rmp_serde_bytes("a string, not a number"));
        raw_frame(Kind::Expected, tag, &m)
    });
    let peer = e.lookup(&wrong_type).unwrap();
    assert!(matches!(
        e.call(&peer, SUM, &(1, 2)).wait(),
        Err(RpcError::Decode(_))
    ));

    let garbage_frame = fake_server(|_| b"\xde\xad\xbe\xef not a frame at all".to_vec());
    let peer = e.lookup(&garbage_frame).unwrap();
    let r = e.call(&peer, SUM, &(1, 2)).wait();
    assert!(
        matches!(
            r,
            Err(RpcError::Transport(rpc_core::NaError::PeerMisbehaved(_)))
        ),
        "{r:?}"
    );
}

fn rmp_serde_bytes(s: &str) -> Vec<u8> {
    // msgpack fixstr/str8 encoding of `s`.
    let mut v = if s.len() < 32 {
        vec![0xa0 | s.len() as u8]
    } else {
        vec![0xd9, s.len() as u8]
    };
    v.extend_from_slice(s.as_bytes());
    v
}
