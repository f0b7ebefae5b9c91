//! Requests as they leave: a payload long enough is gathered behind its header by the
//! provider (`fi_sendv`) instead of copied to it, and arrives whole either way; and what
//! the plugin tells an engine of its provider (`caps`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use na::Plugin;

use crate::OfiPlugin;
use crate::post::Route;

const PROVIDERS: [&str; 3] = [
    "ofi+tcp://127.0.0.1:0",
    "ofi+sockets://127.0.0.1:0",
    "ofi+shm://auto",
];

fn open(addr: &str) -> Arc<OfiPlugin> {
    Arc::new(OfiPlugin::new(&addr.parse().unwrap()).unwrap())
}

#[test]
fn long_payloads_are_gathered_short_ones_copied() {
    for addr in PROVIDERS {
        let p = open(addr);
        assert!(p.sendv, "{addr}: every provider here gathers two pieces");
        // Gathered from SENDV_MIN on, unless the whole message can be injected (shm's
        // 4 KiB: the provider copies it at once, no completion to wait for).
        let header = crate::wire::header_len(&p.self_raw);
        let cut = super::plugin::SENDV_MIN.max(p.inject + 1 - header);
        let max = p.provider.gather_max.min(header + p.max_eager) - header;
        for (len, gathered) in [
            (0, false),
            (100, false),
            (cut - 1, false),
            (cut, true),
            (max, true),
            (max + 1, false),
        ] {
            if len > p.max_eager {
                continue;
            }
            let (head, tail, route) = p.message(9, vec![5u8; len], true).unwrap();
            assert!(matches!(route, Route::Pool));
            assert_eq!(!tail.is_empty(), gathered, "{addr}: {len} bytes");
            assert_eq!(head.len() + tail.len(), header + len);
        }
        // An answer goes as it is, to the receive posted for it.
        let (head, tail, _) = p.message(9, vec![5u8; 4 * cut], false).unwrap();
        assert_eq!((head.len(), tail.len()), (4 * cut, 0));
    }
}

#[test]
fn requests_of_every_size_arrive_whole() {
    for addr in PROVIDERS {
        let (server, client) = (open(addr), open(addr));
        let stop = Arc::new(AtomicBool::new(false));
        let (heard, serving) = crate::oversized_tests::serve(server.clone(), stop.clone());
        let peer = client.lookup(server.self_addr()).unwrap();
        let cut = super::plugin::SENDV_MIN;
        let sizes = [
            0,
            1,
            63,
            64,
            65,
            600,
            cut - 1,
            cut,
            cut + 1,
            4096,
            5000,
            40_000,
            client.max_eager,
        ];
        let payload =
            |i: usize, len: usize| (0..len).map(|b| (b * 7 + i) as u8).collect::<Vec<u8>>();
        for (i, &len) in sizes.iter().enumerate() {
            client
                .send_unexpected(peer, i as u64, payload(i, len))
                .unwrap();
        }
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(20);
        while got.len() < sizes.len() && Instant::now() < end {
            client.progress(Some(Duration::from_millis(1))).unwrap();
            got.extend(heard.try_iter());
        }
        stop.store(true, Ordering::Relaxed);
        serving.join().unwrap();
        got.sort_by_key(|(tag, _)| *tag);
        assert_eq!(got.len(), sizes.len(), "{addr}: every request heard");
        for (tag, data) in got {
            let i = tag as usize;
            assert!(
                data == payload(i, sizes[i]),
                "{addr}: request of {} bytes whole",
                sizes[i]
            );
        }
    }
}

#[test]
fn only_sockets_asks_engines_not_to_spin() {
    for addr in PROVIDERS {
        let threads = open(addr).caps().progress_threads;
        assert_eq!(threads, addr.starts_with("ofi+sockets"), "{addr}");
    }
}

/// More expected receives than the provider's receive queue holds (shm 1.17: 1 024, past
/// which `fi_trecv` answers `-FI_ENOMEM`) are all accepted: the rest wait in the backlog.
#[test]
fn more_receives_than_the_queue_holds_are_accepted() {
    for addr in PROVIDERS {
        let (a, b) = (open(addr), open(addr));
        let peer = a.lookup(b.self_addr()).unwrap();
        for tag in 0..1500 {
            let posted = a.recv_expected(peer, tag);
            assert!(posted.is_ok(), "{addr}: receive {tag}: {posted:?}");
        }
    }
}
