//! Resource attacks on a real server process, each while a well-behaved client works:
//! the server's memory stays under 256 MiB, the good client's calls stay fast, and
//! nothing hangs. Attackers are real clients (engines whose progress is never driven, so
//! they never read an answer nor answer a transfer), raw sockets, and a stopped server.
//!
//! The figures each test prints (`cargo test -p posix-ship --test bounds -- --nocapture
//! --test-threads 1`) are the README's.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{ServerProc, errno, scratch};
use posix_ship::client::{ClientOptions, RemoteFs};
use posix_ship::proto::*;
use rpc_core::{Access, Engine, ProgressMode, Seg};
use serde_bytes::ByteBuf;

const RSS_BOUND: u64 = 256 << 20;
const GOOD_CALL: Duration = Duration::from_millis(50);

/// The server's resident memory.
fn rss(s: &ServerProc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb << 10
}

/// Runs `attack` (it returns once the attack is under way), then for `secs` makes a good
/// client's `stat` over and over and samples the server's memory; returns (peak RSS,
/// median and max call time) after asserting the bounds.
fn under_attack(name: &str, s: &ServerProc, secs: u64, attack: impl FnOnce()) -> (u64, Duration) {
    let good = s.client();
    good.metadata("/").unwrap();
    let before = rss(s);
    attack();
    let (mut peak, mut times) = (before, Vec::new());
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let t = Instant::now();
        good.metadata("/").expect("the good client is served");
        times.push(t.elapsed());
        peak = peak.max(rss(s));
        std::thread::sleep(Duration::from_millis(20));
    }
    times.sort();
    let (median, max) = (times[times.len() / 2], times[times.len() - 1]);
    println!(
        "{name}: server RSS {} MiB before, {} MiB peak; good client's stat median {median:?}, max {max:?} ({} calls)",
        before >> 20,
        peak >> 20,
        times.len()
    );
    assert!(
        peak < RSS_BOUND,
        "{name}: server grew to {} MiB",
        peak >> 20
    );
    assert!(median < GOOD_CALL, "{name}: good client waited {median:?}");
    (peak, median)
}

/// An engine that never makes progress once connected: it reads no answer and answers
/// no transfer.
fn frozen_engine(s: &ServerProc) -> (Engine, rpc_core::Endpoint) {
    let e = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .progress_mode(ProgressMode::Manual)
        .auth(rpc_core::Auth::parse(&s.auth).unwrap())
        .build()
        .unwrap();
    let p = e.lookup(&s.addr).unwrap();
    // One call made while progressing, so that the handshake is done.
    e.call(&p, SERVER_STATS, &()).wait().unwrap();
    (e, p)
}

fn server(name: &str, args: &[&str]) -> ServerProc {
    let export = scratch(name);
    std::fs::write(export.join("big"), vec![5u8; 16 << 20]).unwrap();
    ServerProc::start(&export, "tcp", args)
}

#[test]
fn a_client_that_never_reads_answers() {
    let s = server("bounds-noread", &[]);
    let (e, p) = frozen_engine(&s);
    let mut calls = Vec::new();
    let open = OpenReq {
        path: ByteBuf::from(&b"big"[..]),
        flags: libc::O_RDONLY,
        mode: 0,
    };
    let fh = e.call(&p, OPEN, &open).wait().unwrap().unwrap().fh;
    under_attack("never reads answers", &s, 3, || {
        // 20 000 reads of 60 KiB inline (1.2 GB of answers) that it never reads.
        for i in 0..20_000u64 {
            let req = ReadReq {
                fh,
                offset: (i % 256) << 16,
                len: 60 << 10,
                dest: None,
            };
            calls.push(e.call(&p, READ, &req));
        }
    });
    std::mem::forget(calls); // dropping would cancel them: that needs progress
}

#[test]
fn a_client_whose_memory_never_answers_its_reads() {
    let s = server("bounds-pin", &["--workers", "8"]);
    let (e, p) = frozen_engine(&s);
    let open = OpenReq {
        path: ByteBuf::from(&b"big"[..]),
        flags: libc::O_RDONLY,
        mode: 0,
    };
    // Opened while progressing; then 64 reads of 16 MiB into memory that never answers:
    // every one pins a handler until the bulk timeout, and holds 16 MiB if it can.
    let fh = {
        let (e2, p2) = (&e, &p);
        e2.call(p2, OPEN, &open).wait().unwrap().unwrap().fh
    };
    let mut bufs: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 16 << 20]).collect();
    let mut calls = Vec::new();
    let mut exposed = Vec::new();
    under_attack("reads into memory that never answers", &s, 4, || {
        for b in bufs.iter_mut() {
            let bulk = e
                .expose(vec![Seg::from(&mut b[..])], Access::WriteOnly)
                .unwrap();
            let req = ReadReq {
                fh,
                offset: 0,
                len: 16 << 20,
                dest: Some(bulk.descriptor()),
            };
            calls.push(e.call(&p, READ, &req));
            exposed.push(bulk);
        }
    });
    std::mem::forget(calls);
    std::mem::forget(exposed);
}

#[test]
fn large_overflow_inputs_are_refused_before_allocation() {
    let s = server("bounds-overflow", &[]);
    let c = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .auth(rpc_core::Auth::parse(&s.auth).unwrap())
        .max_overflow(512 << 20)
        .build()
        .unwrap();
    let p = c.lookup(&s.addr).unwrap();
    let data = ByteBuf::from(vec![3u8; 256 << 20]);
    let open = OpenReq {
        path: ByteBuf::from(&b"out"[..]),
        flags: libc::O_WRONLY | libc::O_CREAT,
        mode: 0o600,
    };
    let fh = c.call(&p, OPEN, &open).wait().unwrap().unwrap().fh;
    let mut calls = Vec::new();
    under_attack("four 256 MiB inline writes", &s, 2, || {
        for _ in 0..4 {
            let req = WriteReq {
                fh,
                offset: Some(0),
                data: WriteData::Inline(data.clone()),
            };
            calls.push(c.call(&p, WRITE, &req));
        }
    });
    for call in calls {
        let r = call.wait();
        assert!(
            matches!(&r, Err(rpc_core::RpcError::BadInput(why)) if why.contains("limit")),
            "{r:?}"
        );
    }
}

#[test]
fn slowloris_and_silent_sm_connects() {
    let s = server("bounds-slowloris", &[]);
    let mut socks = Vec::new();
    under_attack("1000 slowloris tcp connections", &s, 3, || {
        // Each announces a 512 KiB hello (the largest frame) and sends 16 bytes of it.
        let mut h = vec![0x53, 0x51, 1, 1]; // "QS", wire version 1, Hello
        h.extend_from_slice(&(512u32 << 10).to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        for _ in 0..1000 {
            let mut t = TcpStream::connect(s.addr.trim_start_matches("tcp://")).unwrap();
            t.write_all(&h).unwrap();
            t.write_all(&[0u8; 16]).unwrap();
            socks.push(t);
        }
    });
    drop(socks);
    let export = scratch("bounds-sm");
    let name = format!("bounds-{}", std::process::id());
    let s = ServerProc::start(&export, &format!("sm://{name}"), &[]);
    let mut silent = Vec::new();
    under_attack("50 silent sm connects", &s, 2, || {
        use std::os::linux::net::SocketAddrExt;
        let a =
            std::os::unix::net::SocketAddr::from_abstract_name(format!("qs-sm/{name}")).unwrap();
        for _ in 0..50 {
            silent.push(std::os::unix::net::UnixStream::connect_addr(&a).unwrap());
        }
    });
}

/// Connects clients to `s` until one is refused, which must happen within `within` and
/// take under a second; returns the clients served and why the last was refused.
fn connect_until_refused(
    s: &ServerProc,
    timeout: Duration,
    within: Duration,
) -> (Vec<RemoteFs>, String) {
    let mut held = Vec::new();
    let t = Instant::now();
    loop {
        assert!(t.elapsed() < within, "never refused");
        let opts = ClientOptions {
            timeout: Some(timeout),
            ..s.options()
        };
        let t1 = Instant::now();
        match RemoteFs::connect_with(&s.addr, opts) {
            Ok(c) => held.push(c),
            Err(e) => {
                assert!(
                    t1.elapsed() < Duration::from_secs(1),
                    "{:?}: {e}",
                    t1.elapsed()
                );
                return (held, e.to_string());
            }
        }
    }
}

#[test]
fn clients_past_the_file_budget_are_refused_at_once() {
    // 512 descriptors: 384 for clients' files, the rest for connections.
    let export = scratch("bounds-fds");
    for i in 0..20 {
        std::fs::write(export.join(format!("f{i}")), b"x").unwrap();
    }
    let s = ServerProc::start_with(&export, "tcp", &["--max-open", "20"], &[], Some(512));
    let clients: Vec<RemoteFs> = (0..20).map(|_| s.client()).collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for c in &clients {
        for i in 0..20 {
            match c.open(&format!("f{i}")) {
                Ok(f) => held.push(f),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(held.len(), 384, "the budget, no more");
    assert_eq!(refused, 400 - 384);
    // The 21st client is served, and told EMFILE at once for a new file.
    let t = Instant::now();
    let late = s.client();
    late.metadata("f0").unwrap();
    assert_eq!(errno(late.open("f0")), libc::EMFILE);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Connections past the descriptor limit are refused with the reason, not left waiting.
    let (extra, why) = connect_until_refused(&s, Duration::from_secs(2), Duration::from_secs(10));
    println!(
        "file budget: {} files held, {refused} opens refused with EMFILE; connection {} refused: {why}",
        held.len(),
        clients.len() + extra.len() + 2
    );
    assert!(why.contains("file descriptors"), "{why}");
    drop(extra);
    assert!(late.metadata("f0").is_ok(), "the server still serves");
}

#[test]
fn the_cli_fails_within_its_timeout_against_a_stopped_server() {
    let export = scratch("bounds-stopped");
    let s = ServerProc::start(&export, "tcp", &[]);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGSTOP) };
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_posix-ship"))
        .args(["--timeout", "2", "stat", "/"])
        .env("POSIX_SHIP_SERVER", &s.addr)
        .env("QS_AUTH", &s.auth)
        .output()
        .unwrap();
    let took = t.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGCONT) };
    let err = String::from_utf8_lossy(&out.stderr);
    println!("stopped server: the CLI (--timeout 2) failed after {took:?}: {err}");
    assert!(!out.status.success());
    assert!(err.contains("timed out"), "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn one_way_requests_count_against_the_client_bounds() {
    let s = server("bounds-oneway", &["--max-open", "100"]);
    let fs = s.client();
    let one_way: rpc_core::Rpc<OpenReq, ()> = rpc_core::Rpc::new(OPEN.name());
    let p = fs.engine().lookup(&s.addr).unwrap();
    let open = OpenReq {
        path: ByteBuf::from(&b"big"[..]),
        flags: libc::O_RDONLY,
        mode: 0,
    };
    for _ in 0..1000 {
        fs.engine().notify(&p, one_way, &open).unwrap();
    }
    // Watched from another client: the sender's own calls may well be refused (Busy)
    // while its one-way requests fill its queue.
    let watcher = s.client();
    let until = Instant::now() + Duration::from_secs(10);
    while watcher.server_stats().unwrap().open_files < 100 {
        assert!(Instant::now() < until, "one-way opens not served");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let st = watcher.server_stats().unwrap();
    assert_eq!(st.open_files, 100, "--max-open holds");
}

/// `munged`'s pid, when it runs and we may stop it (root).
fn munged() -> Option<i32> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let pid: i32 = std::fs::read_to_string("/run/munge/munged.pid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

#[test]
fn a_stalled_munged_delays_only_the_hellos_waiting_for_it() {
    let Some(pid) = munged() else {
        println!("skipped: needs root and a running munged");
        return;
    };
    let export = scratch("bounds-munge");
    let s = ServerProc::start(&export, "tcp", &["--auth", "munge", "--no-root-squash"]);
    let opts = || ClientOptions {
        auth: Some(rpc_core::Auth::Munge),
        ..ClientOptions::default()
    };
    let good = RemoteFs::connect_with(&s.addr, opts()).unwrap();
    // munged stops; a client then says hello with a credential the server must take to
    // munged (it cannot make a real one now: a well-formed forgery will do).
    // SAFETY: kill(2) on munged, continued below whatever happens.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    struct Cont(i32);
    impl Drop for Cont {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let _cont = Cont(pid);
    let mut stuck = TcpStream::connect(s.addr.trim_start_matches("tcp://")).unwrap();
    let mut challenge = [0u8; 16 + 34];
    std::io::Read::read_exact(&mut stuck, &mut challenge).unwrap();
    let me: rpc_core::Address = "tcp://127.0.0.1:1".parse().unwrap();
    let to: rpc_core::Address = s.addr.parse().unwrap();
    let cred = format!("MUNGE:AwQFAAD{}:", "A".repeat(120));
    let mut hello = Vec::new();
    for a in [&me, &to] {
        let t = a.to_string();
        hello.extend_from_slice(&(t.len() as u16).to_le_bytes());
        hello.extend_from_slice(t.as_bytes());
    }
    hello.extend_from_slice(cred.as_bytes());
    let mut frame = vec![0x53, 0x51, 1, 1];
    frame.extend_from_slice(&(hello.len() as u32).to_le_bytes());
    frame.extend_from_slice(&0u64.to_le_bytes());
    frame.extend_from_slice(&hello);
    stuck.write_all(&frame).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The connected client is served meanwhile.
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        good.metadata("/").expect("served while munged is stopped");
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "munged stopped, a hello waiting on it: the connected client's stat median {:?}, max {:?}",
        times[10], times[19]
    );
    assert!(times[10] < GOOD_CALL, "{:?}", times[10]);
    // (With the check on the progress thread, the first call waited 10 s for munged.)
    assert!(times[19] < Duration::from_millis(500), "{:?}", times[19]);
}

#[test]
fn sm_connections_past_the_descriptor_limit_fail_at_once() {
    let export = scratch("bounds-sm-fds");
    let name = format!("bounds-fds-{}", std::process::id());
    let s = ServerProc::start_with(&export, &format!("sm://{name}"), &[], &[], Some(64));
    let (held, why) = connect_until_refused(&s, Duration::from_secs(5), Duration::from_secs(30));
    println!(
        "sm, descriptor limit 64: {} clients served, the next failed at once: {why}",
        held.len()
    );
    drop(held);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match RemoteFs::connect_with(&s.addr, s.options()) {
            Ok(c) => {
                c.metadata("/").unwrap();
                break;
            }
            Err(e) => assert!(Instant::now() < until, "not served again: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn calls_past_the_in_flight_bound_wait_it_out_instead_of_failing() {
    // One request in flight per client; eight threads share one connection. The server
    // answers "busy" past the bound (a program reading a file never expects EAGAIN), and
    // the client tries again until it is served.
    let export = scratch("bounds-busy");
    std::fs::write(export.join("f"), b"x").unwrap();
    let srv = ServerProc::start(&export, "sm", &["--max-in-flight", "1"]);
    let fs = srv.client();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let fs = fs.clone();
            s.spawn(move || {
                for _ in 0..200 {
                    assert_eq!(fs.metadata("/f").unwrap().size, 1);
                }
            });
        }
    });
    let refused = srv.client().server_stats().unwrap().refused;
    assert!(
        refused > 0,
        "the bound was never reached: the test shows nothing"
    );
}
