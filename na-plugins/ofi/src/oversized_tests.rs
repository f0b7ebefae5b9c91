//! A peer that sends more than a message holds: the receiver drops it (the provider fails
//! the receive as truncated; the pool receive is posted again) and goes on serving
//! everyone else. The hostile sender's own send may never finish; that is its problem, so
//! it runs on a thread of its own that the test leaves behind. (tcp and sockets queue
//! unexpected messages themselves, so a pool short of a few receives would not show here.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use na::{Event, Plugin};

use crate::plugin::What;
use crate::post::Route;
use crate::{OfiPlugin, wire};

fn open(addr: &str) -> Arc<OfiPlugin> {
    Arc::new(OfiPlugin::new(&addr.parse().unwrap()).unwrap())
}

/// Drives `server` on a thread of its own (peers connect only while it progresses) and
/// hands over every request it hears (tag, payload), until `stop`. (Shared by the
/// plugin's tests that need a peer served.)
pub(crate) fn serve(
    server: Arc<OfiPlugin>,
    stop: Arc<AtomicBool>,
) -> (mpsc::Receiver<(u64, Vec<u8>)>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            server.progress(Some(Duration::from_millis(1))).unwrap();
            for e in std::iter::from_fn(|| server.poll_event()) {
                if let Event::Unexpected { tag, data, .. } = e {
                    let _ = tx.send((tag, data));
                }
            }
        }
    });
    (rx, t)
}

/// At most `n` payloads from `rx`, waiting up to 10 s in all.
fn take(rx: &mpsc::Receiver<(u64, Vec<u8>)>, n: usize) -> Vec<Vec<u8>> {
    let end = Instant::now() + Duration::from_secs(10);
    std::iter::from_fn(|| {
        rx.recv_timeout(end.saturating_duration_since(Instant::now()))
            .ok()
            .map(|(_, data)| data)
    })
    .take(n)
    .collect()
}

fn a_message_over_the_limit_is_dropped_and_the_receiver_goes_on(addr: &str) {
    let (server, hostile, good) = (open(addr), open(addr), open(addr));
    let stop = Arc::new(AtomicBool::new(false));
    let (heard, serving) = serve(server.clone(), stop.clone());
    // The senders progress too: a send may wait in the backlog (a connection being made).
    let senders = [&hostile, &good].map(|p| serve(p.clone(), stop.clone()).1);
    let to_server = |p: &OfiPlugin| p.lookup(server.self_addr()).unwrap();
    let (ph, pg) = (to_server(&hostile), to_server(&good));
    hostile.send_unexpected(ph, 1, b"hello".to_vec()).unwrap();
    good.send_unexpected(pg, 1, b"hello".to_vec()).unwrap();
    assert_eq!(take(&heard, 2).len(), 2, "{addr}: both greeted");
    // 16 messages of four times the eager limit, past the sender's own check, then 8
    // larger than a whole multi-receive buffer of the pool (more than it has buffers).
    let sizes = [4 * hostile.max_eager; 16]
        .into_iter()
        .chain([32 * hostile.max_eager; 8]);
    let (h, (done, sent)) = (hostile.clone(), mpsc::channel());
    std::thread::spawn(move || {
        for big in sizes {
            let mut m = wire::header(wire::Kind::Request, 7, &h.self_raw, 0);
            m.resize(big, 0xAB);
            let sent = h.send_to(ph.0, Route::Pool, m, What::Control, false);
            assert!(sent.is_ok(), "the oversized message went out: {sent:?}");
        }
        // Long enough for the provider to deliver them (a rendezvous needs the sender).
        let end = Instant::now() + Duration::from_millis(500);
        while Instant::now() < end {
            let _ = h.progress(Some(Duration::from_millis(1)));
        }
        let _ = done.send(());
    });
    sent.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{addr}: the hostile sends never returned or failed"));
    // The server goes on: more requests than its pool holds receives all arrive.
    let n = 2 * server.cfg.recv_pool;
    for i in 0..n {
        good.send_unexpected(pg, 2, vec![i as u8; 32]).unwrap();
    }
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while got.iter().filter(|d: &&Vec<u8>| d.len() == 32).count() < n && Instant::now() < end {
        got.extend(take(&heard, 1));
    }
    stop.store(true, Ordering::Relaxed);
    serving.join().unwrap();
    senders.into_iter().for_each(|t| t.join().unwrap());
    let good_ones = got.iter().filter(|d| d.len() == 32).count();
    assert_eq!(
        good_ones,
        n,
        "{addr}: every good request served ({} heard)",
        got.len()
    );
    assert!(
        got.iter().all(|d| d.len() <= server.max_eager),
        "{addr}: nothing over the limit is delivered"
    );
}

/// libfabric 1.17's shm receives a message sent by memory copy (CMA, every size above
/// 4 KiB) in `smr_cma_loop` (`prov/shm/src/smr.h`), which loops until the whole message
/// is copied: into a smaller receive it copies nothing more and loops for ever, holding
/// the receiver's region lock (seen with gdb: the receiver in `process_vm_readv`, the
/// sender spinning on the lock). Only peers of the same user (or root) can send to a shm
/// endpoint (its region is created 0600), and such a peer may write any command into the
/// region anyway: the provider trusts them. Ignored until the provider bounds the copy.
#[test]
#[ignore = "libfabric 1.17 shm: a message larger than the receive spins the receiver for ever (smr_cma_loop)"]
fn over_shm() {
    a_message_over_the_limit_is_dropped_and_the_receiver_goes_on("ofi+shm://auto");
}

#[test]
fn over_tcp() {
    a_message_over_the_limit_is_dropped_and_the_receiver_goes_on("ofi+tcp://127.0.0.1:0");
}

#[test]
fn over_sockets() {
    a_message_over_the_limit_is_dropped_and_the_receiver_goes_on("ofi+sockets://127.0.0.1:0");
}
