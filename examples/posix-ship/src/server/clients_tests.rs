//! Tests of the per-client, per-user and global bounds.

use super::*;

fn devnull() -> OpenFile {
    OpenFile {
        fd: rustix::fs::open("/dev/null", rustix::fs::OFlags::RDONLY, 0.into()).unwrap(),
        append: false,
        writable: false,
        dir: Mutex::new(None),
    }
}

#[test]
fn handles_belong_to_their_client_and_die_with_it() {
    let c = Clients::<OpenFile>::new(Limits {
        open_files: 2,
        in_flight: 1,
        ..Limits::default()
    });
    let a = c.insert(1, None, devnull()).unwrap();
    assert!(c.get(1, a).is_ok());
    assert_eq!(
        c.get(2, a).err(),
        Some(Errno::BADF),
        "another client's handle"
    );
    assert_eq!(c.get(1, Fh(a.0 ^ 1)).err(), Some(Errno::BADF), "forged");
    c.insert(1, None, devnull()).unwrap();
    assert_eq!(c.insert(1, None, devnull()).err(), Some(Errno::MFILE));
    assert_eq!(c.stats().open_files, 2);
    c.remove(1, a).unwrap();
    assert_eq!(c.get(1, a).err(), Some(Errno::BADF), "used after close");
    assert_eq!(c.remove(1, a).err(), Some(Errno::BADF), "closed twice");
    c.lost(1);
    assert_eq!(c.stats().open_files, 0);
    assert_eq!(c.admit(1, None).err(), Some(Errno::CONNRESET));
    assert_eq!(
        c.stats().clients,
        0,
        "a refused request leaves no state behind"
    );
    assert_eq!(c.insert(1, None, devnull()).err(), Some(Errno::CONNRESET));
    for id in 100..100 + GONE_KEPT as u64 {
        c.lost(id);
    }
    assert!(
        c.admit(1, None).is_ok(),
        "only the most recent lost clients are remembered"
    );
}

#[test]
fn the_file_budget_and_staging_memory_hold_across_clients() {
    let c = Clients::<OpenFile>::new(Limits {
        total_open: 3,
        staging_per_client: 1 << 20,
        staging_total: 3 << 19,
        ..Limits::default()
    });
    for id in 1..=3 {
        c.insert(id, None, devnull()).unwrap();
    }
    assert_eq!(c.insert(4, None, devnull()).err(), Some(Errno::MFILE));
    let _busy = c.admit(1, None).unwrap();
    let a = c.stage(1, None, 4 << 20);
    assert_eq!(a.len, 1 << 20, "the client's share");
    let b = c.stage(2, None, 4 << 20);
    assert_eq!(b.len, 1 << 19, "what is left in total");
    assert_eq!(c.stage(3, None, 4 << 20).len, MIN_STAGE, "the floor");
    assert_eq!(c.stage(3, None, 100).len, 100);
    drop((a, b));
    assert_eq!(c.stage(2, None, 4 << 20).len, 1 << 20, "given back");
}

#[test]
fn a_user_cannot_multiply_its_share_with_connections() {
    let c = Clients::<OpenFile>::new(Limits {
        in_flight: 2,
        open_files: 2,
        staging_per_client: 1 << 20,
        per_user: UserLimits {
            in_flight: 3,
            open_files: 3,
            staging: 3 << 19,
        },
        ..Limits::default()
    });
    let alice = Some(1000);
    let held: Vec<_> = (1..=3).map(|id| c.admit(id, alice).unwrap()).collect();
    assert_eq!(
        c.admit(4, alice).err(),
        Some(Errno::AGAIN),
        "a fourth connection"
    );
    assert!(
        c.admit(5, Some(1001)).is_ok(),
        "another user is not affected"
    );
    assert!(c.admit(6, None).is_ok(), "nor the anonymous one");
    for id in 1..=3 {
        c.insert(id, alice, devnull()).unwrap();
    }
    assert_eq!(c.insert(1, alice, devnull()).err(), Some(Errno::MFILE));
    let a = c.stage(1, alice, 4 << 20);
    let b = c.stage(2, alice, 4 << 20);
    assert_eq!(
        (a.len, b.len),
        (1 << 20, 1 << 19),
        "the user's staging share"
    );
    drop((a, b, held));
    assert!(c.admit(4, alice).is_ok(), "given back");
}

#[test]
fn requests_past_the_bound_and_after_drain_are_refused() {
    let c = Clients::<OpenFile>::new(Limits {
        open_files: 2,
        in_flight: 1,
        ..Limits::default()
    });
    let first = c.admit(5, None).unwrap();
    assert_eq!(c.admit(5, None).err(), Some(Errno::AGAIN));
    assert!(c.admit(6, None).is_ok(), "other clients are not affected");
    drop(first);
    assert!(c.admit(5, None).is_ok());
    c.drain();
    assert_eq!(c.admit(7, None).err(), Some(Errno::SHUTDOWN));
    assert_eq!(c.stats().refused, 2);
    assert_eq!(
        c.stats().clients,
        0,
        "no state for refused or finished requests"
    );
}

#[test]
fn one_forwarder_connection_counts_each_user_it_carries() {
    let c = Clients::<OpenFile>::new(Limits {
        per_user: UserLimits {
            in_flight: 8,
            open_files: 1,
            staging: 1 << 20,
        },
        ..Limits::default()
    });
    let (alice, bob) = (Some(1000), Some(1001));
    let a = c.insert(9, alice, devnull()).unwrap();
    assert_eq!(
        c.insert(9, alice, devnull()).err(),
        Some(Errno::MFILE),
        "alice's bound, through the forwarder"
    );
    let b = c.insert(9, bob, devnull()).unwrap();
    c.remove(9, a).unwrap();
    assert!(
        c.insert(9, alice, devnull()).is_ok(),
        "alice's close gave back alice's share, not bob's"
    );
    assert_eq!(c.insert(9, bob, devnull()).err(), Some(Errno::MFILE));
    let _ = b;
    c.lost(9);
    assert_eq!(c.stats().open_files, 0);
    for user in [alice, bob] {
        assert!(
            c.insert(10, user, devnull()).is_ok(),
            "the lost forwarder gave back each user's files"
        );
    }
}
