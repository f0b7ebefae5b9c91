//! Peers' messages that cannot be read make no event (the event queue itself is
//! `na::EventQueue`, tested there).

use na::Plugin;

use crate::OfiPlugin;

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
