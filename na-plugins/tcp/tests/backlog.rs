//! A peer that sends requests and never reads the answers stops being read once its
//! answers pile up: the plugin's memory stays bounded, other peers are served meanwhile,
//! and the peer's leaving frees everything.

use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use na::{Event, Plugin};
use na_tcp::StreamConfig;
use na_tcp::frame::{Kind, RmaReq};

mod common;
use common::{drive, frame, plugin, raw_peer};

#[test]
fn a_peer_that_never_reads_answers_is_paused_and_bounded() {
    let server = plugin();
    let bound = StreamConfig::default().backlog.per_conn;
    let (mut flood, hello) = raw_peer(&server);
    flood.write_all(&hello).unwrap();
    // Write requests (puts into no region: each earns a refusal) as fast as the server
    // takes them, never reading; count what the server accepted.
    let put = frame(Kind::PutReq, 1, &RmaReq::encode_put_prefix(99, 0));
    let batch: Vec<u8> = put.repeat(4096);
    let (mut sent, mut stalled_since) = (0usize, None::<Instant>);
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < until,
            "the server kept reading: {sent} bytes"
        );
        server.progress(Some(Duration::ZERO)).unwrap();
        peak = peak.max(server.backlog());
        match flood.write(&batch) {
            Ok(n) => {
                sent += n;
                stalled_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let s = *stalled_since.get_or_insert_with(Instant::now);
                if s.elapsed() > Duration::from_millis(500) {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("backlog peak {peak} bytes after {sent} bytes of requests");
    assert!(
        peak > bound / 2 && peak <= bound + 2 * 1024 * 1024,
        "backlog peaked at {peak} bytes (bound {bound}) after {sent} bytes of requests"
    );
    // Meanwhile another peer is served at once.
    let good = plugin();
    let p = good.lookup(server.self_addr()).unwrap();
    good.send_unexpected(p, 5, b"ping".to_vec()).unwrap();
    let t = Instant::now();
    let mut seen = false;
    drive(&[&server, &good], || {
        while let Some(ev) = server.poll_event() {
            seen |= matches!(ev, Event::Unexpected { tag: 5, .. });
        }
        seen
    });
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    // Leaving frees the backlog and the connection.
    drop(flood);
    drive(&[&server], || {
        server.backlog() == 0 && server.connections() == 1
    });
}
