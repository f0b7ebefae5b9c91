//! The NA conformance suite over the shared-memory plugin, in both RMA modes.

use std::sync::Arc;

use na::Plugin;

/// RMA by single copy (`process_vm_readv`/`writev`), as detected on this machine.
fn sm() -> Arc<dyn Plugin> {
    Arc::new(na_sm::SmPlugin::new(&"sm://auto".parse().unwrap()).unwrap())
}

qs_tests::conformance_suite!(sm);

/// RMA data through the rings: the fallback when the kernel refuses cross-memory attach.
mod through_rings {
    use super::*;

    pub fn sm_rings() -> Arc<dyn Plugin> {
        let cfg = na_sm::SmConfig {
            single_copy: false,
            ..Default::default()
        };
        Arc::new(na_sm::SmPlugin::with_config(&"sm://auto".parse().unwrap(), cfg).unwrap())
    }

    qs_tests::conformance_suite!(sm_rings);
}

/// An owner that does not copy for a peer (another uid; here, one configured so) refuses
/// the peer's single-copy requests with its memory untouched: the exec'd-setuid deputy of
/// the trust-boundaries issue cannot be made to write anywhere.
#[test]
fn an_owner_refuses_copy_requests_it_does_not_serve() {
    use na::{Access, NaError};
    use qs_tests::conformance::{Driven, Guarded};
    if na_sm::cma::probe().is_err() {
        eprintln!("skipped: the kernel refuses cross-memory attach here, nobody copies");
        return;
    }
    let mut requester = Driven::new(sm());
    let owner = Driven::new(through_rings::sm_rings());
    let peer = requester.p.lookup(owner.p.self_addr()).unwrap();
    // Large enough to go by single copy (small transfers go through the rings).
    const N: usize = 64 << 10;
    let theirs = Guarded::new(&*owner.p, N, |i| i as u8, Access::ReadWrite);
    let mine = Guarded::new(&*requester.p, N, |_| 0x11, Access::ReadWrite);
    for get in [true, false] {
        let op = if get {
            requester
                .p
                .get(peer, &mine.h, 0, &theirs.h.remote, 0, N as u64)
        } else {
            requester
                .p
                .put(peer, &mine.h, 0, &theirs.h.remote, 0, N as u64)
        }
        .unwrap();
        let r = requester.done(op);
        assert!(
            matches!(&r, Err(NaError::AccessDenied(_))),
            "get {get}: {r:?}"
        );
    }
    assert!(
        mine.bytes().iter().all(|&b| b == 0x11),
        "our memory untouched"
    );
    assert!(
        theirs
            .bytes()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == i as u8),
        "the owner's memory untouched"
    );
    assert!(mine.guards_intact() && theirs.guards_intact());
}
