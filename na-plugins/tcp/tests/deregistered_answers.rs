//! Answers to a peer's reads still queued when the owner lets the region go carry the
//! region's bytes as they were at deregistration (copied into the frames before it
//! returns: the memory is the program's again after), and the stream stays in step.
//! Deregistration looks for such frames only where one may exist (the region's pins):
//! this is the case where one does.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use na::{Access, Plugin, Segment};
use na_tcp::frame::{HEADER_LEN, Header, Kind, RmaReq};

mod common;
use common::{frame, plugin, raw_peer};

#[test]
fn answers_queued_when_the_region_goes_carry_its_bytes_as_they_were() {
    const LEN: usize = 512 << 10;
    const GETS: u64 = 32;
    let server = plugin();
    let mut region = vec![0x5au8; LEN];
    // SAFETY: the region outlives its registration (deregistered below).
    let h =
        unsafe { server.register(&[Segment::from_slice(&mut region)], Access::ReadOnly) }.unwrap();
    let (mut peer, mut out) = raw_peer(&server);
    for tag in 0..GETS {
        let get = RmaReq {
            key: h.remote.key,
            offset: 0,
            len: LEN as u64,
        };
        out.extend(frame(Kind::GetReq, tag, &get.encode_get()));
    }
    peer.set_nonblocking(false).unwrap();
    peer.write_all(&out).unwrap();
    // The server reads the requests and queues their answers, which the peer does not
    // read yet: more than the sockets hold (16 MiB), so answers naming the region wait in
    // the server's queue.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        server.progress(Some(Duration::from_millis(1))).unwrap();
    }
    server.deregister(&h).unwrap();
    region.fill(0xee);
    // Every answer comes whole: the region's bytes as they were, or (a request read
    // after the region went) a refusal.
    peer.set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut buf = Vec::new();
    let (mut served, mut refused) = (0u64, 0u64);
    let until = Instant::now() + Duration::from_secs(20);
    while served + refused < GETS {
        assert!(Instant::now() < until, "{served} served, {refused} refused");
        server.progress(Some(Duration::ZERO)).unwrap();
        let mut b = vec![0u8; 1 << 20];
        match peer.read(&mut b) {
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
        while buf.len() >= HEADER_LEN {
            let hdr = Header::decode(buf[..HEADER_LEN].try_into().unwrap(), usize::MAX)
                .expect("the stream stays in step");
            let end = HEADER_LEN + hdr.len as usize;
            if buf.len() < end {
                break;
            }
            assert_eq!(hdr.kind, Kind::GetResp);
            let body = &buf[HEADER_LEN..end];
            if body.len() == 1 + LEN {
                assert_eq!(body[0], 0, "status Ok");
                assert!(
                    body[1..].iter().all(|b| *b == 0x5a),
                    "answer {} carries bytes written after the deregistration",
                    hdr.tag
                );
                served += 1;
            } else {
                assert_eq!(body.len(), 1, "a refusal is its status alone");
                refused += 1;
            }
            buf.drain(..end);
        }
    }
    assert_eq!(
        served, GETS,
        "every request was read before the region went"
    );
}
