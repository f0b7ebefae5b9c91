//! The plugin against hostile peers that share its memory: garbage frames and impossible
//! ring indices close that connection with a typed error, and the victim serves others.

use std::time::{Duration, Instant};

use na::{Event, NaError, Plugin};
use na_sm::SmPlugin;
use na_sm::link::connect;

#[test]
fn garbage_frames_and_corrupt_indices_close_only_that_connection() {
    let victim = SmPlugin::new(&"sm://auto".parse().unwrap()).unwrap();
    let name = victim.self_addr().locator().to_owned();
    let garbage = connect(&name, "hostile-garbage", 4096).unwrap();
    garbage
        .outbox()
        .write(&[b"this is not a frame header at all"])
        .unwrap();
    let corrupt = connect(&name, "hostile-indices", 4096).unwrap();
    corrupt.outbox().corrupt(0, 1 << 40);
    let good = SmPlugin::new(&"sm://auto".parse().unwrap()).unwrap();
    let peer = good.lookup(victim.self_addr()).unwrap();
    good.send_unexpected(peer, 7, b"still served".to_vec())
        .unwrap();

    let (mut lost, mut served) = (Vec::new(), false);
    let end = Instant::now() + Duration::from_secs(10);
    while (lost.len() < 2 || !served) && Instant::now() < end {
        good.progress(Some(Duration::ZERO)).unwrap();
        while good.poll_event().is_some() {}
        victim.progress(Some(Duration::from_millis(5))).unwrap();
        while let Some(ev) = victim.poll_event() {
            match ev {
                Event::PeerLost { error, .. } => lost.push(error),
                Event::Unexpected { tag: 7, data, .. } => {
                    served = data == b"still served";
                }
                _ => {}
            }
        }
    }
    assert!(served, "the well-behaved peer is served");
    assert_eq!(lost.len(), 2, "{lost:?}");
    assert!(
        lost.iter().all(|e| matches!(e, NaError::PeerMisbehaved(_))),
        "{lost:?}"
    );
    assert_eq!(victim.connections(), 1);
}
