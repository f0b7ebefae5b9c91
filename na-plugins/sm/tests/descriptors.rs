//! A listener whose process has no descriptor left turns waiting peers away (they see the
//! hang-up at once) instead of leaving them in the backlog.

mod common;
use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use na_sm::link::Listener;

const CHILD: &str = "QS_SM_FDS_CHILD";

/// The child's side: listen, spend every descriptor, then accept for a while.
#[test]
fn child_entry() {
    let Ok(name) = std::env::var(CHILD) else {
        return;
    };
    let l = Listener::bind(&name).unwrap();
    let mut hold = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hold.push(f);
    }
    println!("ready");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let _ = l.accept();
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_listener_out_of_descriptors_turns_peers_away_at_once() {
    let name = format!("fds-{}", std::process::id());
    let mut child = common::child(CHILD, name.clone())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended early"
        );
    }
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            format!("qs-sm/{name}"),
        )
        .unwrap();
    let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let t = Instant::now();
    let r = s.read(&mut [0u8; 16]);
    assert!(
        matches!(r, Ok(0)),
        "{r:?} after {:?}: left waiting in the backlog",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    let _ = child.wait();
}
