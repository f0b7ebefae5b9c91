//! The NA conformance suite over the TCP plugin.

use std::sync::Arc;

use na::Plugin;

fn tcp() -> Arc<dyn Plugin> {
    Arc::new(na_tcp::TcpPlugin::new(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap())
}

qs_tests::conformance_suite!(tcp);

/// Writes held for a peer (`Plugin::hold`, nested) leave only when the last hold is let
/// go, all of them, in order; a release without a hold changes nothing.
#[test]
fn held_writes_leave_together_when_the_last_hold_goes() {
    use std::time::Duration;
    let (mut a, mut b, pb) = qs_tests::conformance::pair(tcp);
    // A first message: the connection is up and greeted.
    let first = a.p.send_unexpected(pb, 1, b"up".to_vec()).unwrap();
    assert_eq!(b.next_unexpected().unwrap().1, 1);
    a.done(first).unwrap();
    a.p.hold(pb, true);
    a.p.hold(pb, true);
    let sends: Vec<_> = (0..8u8)
        .map(|i| {
            a.p.send_unexpected(pb, 10 + i as u64, vec![i; 100])
                .unwrap()
        })
        .collect();
    let quiet = Duration::from_millis(300);
    assert!(b.next_unexpected_within(quiet).is_none(), "held twice");
    a.p.hold(pb, false);
    assert!(b.next_unexpected_within(quiet).is_none(), "still held once");
    a.p.hold(pb, false);
    for i in 0..8u8 {
        let (_, tag, data) = b.next_unexpected().unwrap();
        assert_eq!((tag, data), (10 + i as u64, vec![i; 100]));
    }
    for s in sends {
        a.done(s).unwrap();
    }
    a.p.hold(pb, false);
    let after = a.p.send_unexpected(pb, 99, b"free".to_vec()).unwrap();
    assert_eq!(
        b.next_unexpected().unwrap().1,
        99,
        "an extra release holds nothing"
    );
    a.done(after).unwrap();
}

/// Messages sent while another thread takes and lets go of holds all arrive: none is left
/// in the queue by a release that looked before it was there.
#[test]
fn writes_posted_while_holds_come_and_go_all_arrive() {
    let (mut a, mut b, pb) = qs_tests::conformance::pair(tcp);
    let first = a.p.send_unexpected(pb, 1, b"up".to_vec()).unwrap();
    assert_eq!(b.next_unexpected().unwrap().1, 1);
    a.done(first).unwrap();
    const N: u64 = 3000;
    let p = a.p.clone();
    std::thread::scope(|s| {
        let holder = s.spawn(|| {
            for _ in 0..N {
                p.hold(pb, true);
                p.hold(pb, false);
            }
        });
        for i in 0..N {
            p.send_unexpected(pb, 100 + i, vec![i as u8]).unwrap();
        }
        holder.join().unwrap();
    });
    let mut got: Vec<u64> = (0..N)
        .map(|i| {
            b.next_unexpected()
                .unwrap_or_else(|| panic!("message {i} of {N} never came"))
                .1
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (100..100 + N).collect::<Vec<_>>());
}
