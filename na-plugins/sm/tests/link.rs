//! Connection set-up between processes: handshake, wake-ups, liveness, stale names.

mod common;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use na_sm::link::{Link, Listener, connect};

const CHILD: &str = "QS_SM_LINK_CHILD";

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `fd` is readable (or hung up), at most `ms`.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Sends `msg` through the link's ring, waking the peer if it sleeps.
fn send(l: &Link, msg: &[u8]) {
    let mut at = 0;
    while at < msg.len() {
        at += l.outbox().write(&[&msg[at..]]).unwrap();
    }
    if l.outbox().consumer_needs_wake() {
        l.wake_peer().unwrap();
    }
}

/// Receives `n` bytes, sleeping on the eventfd when the ring is empty.
fn recv(l: &Link, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; n];
    while got.len() < n {
        let k = l.inbox().read(&mut buf[..n - got.len()]).unwrap();
        got.extend_from_slice(&buf[..k]);
        if k == 0 && l.inbox().prepare_sleep().unwrap() {
            assert!(readable(l.wake_me.as_raw_fd(), 10_000), "woken");
            l.drain_wakeups();
        }
    }
    got
}

#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (role, name) = spec.split_once(':').unwrap();
    match role {
        "hold" => {
            let _l = Listener::bind(name).unwrap();
            println!("bound");
            std::thread::sleep(Duration::from_secs(60));
        }
        _ => panic!("unknown role"),
    }
}

/// Accepts, waiting for a peer (the listener is non-blocking).
fn accept(l: &Listener) -> std::io::Result<Link> {
    loop {
        match l.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            r => return r,
        }
    }
}

#[test]
fn peers_connect_exchange_and_wake_each_other() {
    let name = unique("pp");
    let l = Listener::bind(&name).unwrap();
    let me = unique("client");
    let client = std::thread::spawn(move || {
        let link = connect(&name, &me, 4096).unwrap();
        for i in 0..100u32 {
            send(&link, &i.to_le_bytes());
            assert_eq!(recv(&link, 4), (i + 1).to_le_bytes());
        }
        link
    });
    let server = accept(&l).unwrap();
    assert!(server.peer_name.starts_with("test-client-"));
    assert_eq!(server.peer_pid, std::process::id() as i32);
    for _ in 0..100 {
        let v = u32::from_le_bytes(recv(&server, 4).try_into().unwrap());
        send(&server, &(v + 1).to_le_bytes());
    }
    let client = client.join().unwrap();
    // A peer going away hangs up the liveness socket.
    drop(server);
    assert!(readable(client.sock.as_raw_fd(), 5_000));
    let mut b = [0u8; 1];
    // SAFETY: reading one byte from our socket.
    assert_eq!(
        unsafe { libc::read(client.sock.as_raw_fd(), b.as_mut_ptr().cast(), 1) },
        0,
        "EOF"
    );
}

#[test]
fn a_dead_servers_name_is_free_again_and_a_live_one_is_not() {
    let name = unique("stale");
    let mut child = common::child(CHILD, format!("hold:{name}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    while !seen.contains("bound") {
        let mut b = [0u8; 64];
        let n = std::io::Read::read(&mut out, &mut b).unwrap();
        assert!(n > 0, "child exited early");
        seen.push_str(&String::from_utf8_lossy(&b[..n]));
    }
    let e = Listener::bind(&name)
        .err()
        .expect("a live listener holds the name");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    child.kill().unwrap();
    child.wait().unwrap();
    Listener::bind(&name).expect("the killed server's name is free");
}

#[test]
fn a_garbage_hello_is_refused_and_the_listener_goes_on() {
    let name = unique("garbage");
    let l = Listener::bind(&name).unwrap();
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            format!("qs-sm/{name}"),
        )
        .unwrap();
    let s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    std::io::Write::write_all(&mut &s, b"not a hello, no descriptors").unwrap();
    let e = accept(&l).err().expect("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    let me = unique("ok");
    let n2 = name.clone();
    let t = std::thread::spawn(move || connect(&n2, &me, 4096).map(|_| ()));
    assert!(accept(&l).is_ok());
    t.join().unwrap().unwrap();
}

#[test]
fn a_silent_peer_times_out_without_blocking_the_listener_for_long() {
    let name = unique("silent");
    let l = Listener::bind(&name).unwrap();
    assert_eq!(
        l.accept().err().unwrap().kind(),
        std::io::ErrorKind::WouldBlock
    );
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            format!("qs-sm/{name}"),
        )
        .unwrap();
    let _silent = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(
        accept(&l).err().unwrap().kind(),
        std::io::ErrorKind::TimedOut
    );
    assert!(t0.elapsed() < na_sm::link::HELLO_TIMEOUT * 5);
}
