//! Helpers of the raw-socket tests: frames by hand, and a bounded progress loop.

use std::time::{Duration, Instant};

use na::{Address, Plugin};
use na_tcp::frame::{Header, Kind};
use na_tcp::{StreamPlugin, TcpPlugin};

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
