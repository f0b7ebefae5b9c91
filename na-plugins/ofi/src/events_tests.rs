//! Events handed out in a batch (`Plugin::poll_events`) are not lost when the caller's
//! callback unwinds (the queue is `na::EventQueue`, tested there too); peers' messages
//! that cannot be read make none.

use na::{Event, OpId, Plugin};

use crate::OfiPlugin;

fn done(i: u64) -> Event {
    Event::Done {
        op: OpId(i),
        result: Ok(Vec::new()),
    }
}

fn id(e: &Event) -> u64 {
    match e {
        Event::Done { op, .. } => op.0,
        _ => u64::MAX,
    }
}

#[test]
fn events_left_when_the_callback_unwinds_stay_queued_in_order() {
    let p = OfiPlugin::new(&"ofi+tcp://127.0.0.1:0".parse().unwrap()).unwrap();
    for i in 1..=4 {
        p.push_event(done(i));
    }
    let mut seen = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.poll_events(&mut |e| {
            seen.push(id(&e));
            if seen.len() == 2 {
                panic!("the caller fails on its second event");
            }
        })
    }));
    assert!(r.is_err());
    assert_eq!(seen, [1, 2]);
    p.push_event(done(5));
    let rest: Vec<u64> = std::iter::from_fn(|| p.poll_event())
        .map(|e| id(&e))
        .collect();
    assert_eq!(
        rest,
        [3, 4, 5],
        "the unhanded ones first, in order, then the new one"
    );

    for i in 6..=8 {
        p.push_event(done(i));
    }
    let mut all = Vec::new();
    assert_eq!(p.poll_events(&mut |e| all.push(id(&e))), 3);
    assert_eq!(all, [6, 7, 8]);
    assert_eq!(p.poll_events(&mut |_| {}), 0, "nothing twice");
}

#[test]
fn garbage_and_other_wire_versions_are_dropped_counted_and_make_no_event() {
    let p = OfiPlugin::new(&"ofi+tcp://127.0.0.1:0".parse().unwrap()).unwrap();
    let mut other_version = crate::wire::header(crate::wire::Kind::Request, 1, b"addr", 4);
    other_version.extend_from_slice(b"data");
    other_version[0] = (crate::wire::VERSION + 1) << 4;
    let bad_sender = crate::wire::header(crate::wire::Kind::Request, 1, b"x", 0);
    // A thousand of each: all counted, none an event (the log says it once a second).
    for _ in 0..1000 {
        p.handle_unexpected(&other_version);
        p.handle_unexpected(&[0xff; 3]);
        p.handle_unexpected(&[]);
    }
    assert_eq!(p.stats().dropped, 3000);
    assert!(p.poll_event().is_none());
    // Well formed, from a raw address the provider refuses (not a socket address): too.
    p.handle_unexpected(&bad_sender);
    assert_eq!(p.stats().dropped, 3001);
    assert!(p.poll_event().is_none());
}
