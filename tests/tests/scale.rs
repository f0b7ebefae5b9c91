//! Many clients on one server: memory stays bounded (PERF.md: 1 000 connected clients under
//! 100 MiB resident).

use std::io::{Read, Write};
use std::net::TcpStream;

use na_tcp::frame::{Header as Frame, Kind};
use qs_tests::rpcs::SUM;
use qs_tests::{ServerProcess, raw_frame, raw_hello, read_challenge};
use rpc_core::proto::Header;

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_connected_clients_cost_under_100_mib() {
    let server = ServerProcess::spawn(&["tcp://127.0.0.1:0"], &[]);
    let locator = server.addr.strip_prefix("tcp://").unwrap().to_owned();
    let before = resident_kib(server.child.id());
    let mut request = Vec::new();
    Header::request(SUM.id(), false).write(&mut request);
    request.extend(rmp_serde_pair(20, 22));
    let mut clients = Vec::new();
    for i in 0..1000u64 {
        let mut s = TcpStream::connect(&locator).unwrap();
        let mut out = raw_hello(&format!("tcp://127.0.0.1:{}", 20000 + i), &server.addr);
        out.extend(raw_frame(Kind::Unexpected, i, &request));
        s.write_all(&out).unwrap();
        clients.push(s);
    }
    // Every client got its answer: all 1 000 are connected and served.
    for s in &mut clients {
        read_challenge(s);
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let f = Frame::decode(&h, 1 << 20).unwrap();
        let mut body = vec![0u8; f.len as usize];
        s.read_exact(&mut body).unwrap();
        assert_eq!(body.last(), Some(&42), "answer 42");
    }
    let after = resident_kib(server.child.id());
    eprintln!("server resident: {before} KiB idle, {after} KiB with 1000 clients");
    assert!(
        after < 100 * 1024,
        "server uses {after} KiB with 1000 clients"
    );
}

/// msgpack of the pair (a, b) for small a and b.
fn rmp_serde_pair(a: u8, b: u8) -> Vec<u8> {
    vec![0x92, a, b]
}
