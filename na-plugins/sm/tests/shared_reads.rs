//! Large reads by single copy are shared: the owner copies the head, the requester the
//! tail out of the owner's memory, and only what the owner exposed, while it is exposed.

use std::time::{Duration, Instant};

use na::{Access, Event, MemHandle, NaError, Plugin, RemoteMem, Segment};
use na_sm::SmPlugin;
use na_stream::StreamPlugin;
use na_stream::direct::Direct;

const LEN: usize = 1 << 20;

/// Whether single copy is on (test-all also runs everything with `QS_SM_CMA=0`).
fn single_copy() -> bool {
    std::env::var("QS_SM_CMA").map_or(true, |v| v.trim() != "0")
}

fn plugin() -> StreamPlugin {
    SmPlugin::new(&"sm://auto".parse().unwrap()).unwrap()
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..LEN).map(|i| (i * 7 + seed as usize) as u8).collect()
}

/// Connects `req` to `owner` and waits until the owner has accepted (and announced its
/// arena of direct reads on the link).
fn connect(req: &StreamPlugin, owner: &StreamPlugin) {
    let peer = req.lookup(owner.self_addr()).unwrap();
    req.send_unexpected(peer, 1, b"hello".to_vec()).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < end, "never accepted");
        req.progress(Some(Duration::ZERO)).unwrap();
        while req.poll_event().is_some() {}
        owner.progress(Some(Duration::from_millis(1))).unwrap();
        if std::iter::from_fn(|| owner.poll_event()).any(|e| matches!(e, Event::Unexpected { .. }))
        {
            return;
        }
    }
}

fn register(p: &StreamPlugin, buf: &mut [u8], access: Access) -> MemHandle {
    // SAFETY: every buffer outlives its registration in these tests (deregistered or
    // leaked before the buffer goes).
    unsafe { p.register(&[Segment::from_slice(buf)], access) }.unwrap()
}

/// `len` bytes at `off` of `remote` read into the start of `local`, both plugins driven.
fn get(
    req: &StreamPlugin,
    owner: &StreamPlugin,
    local: &MemHandle,
    remote: &RemoteMem,
    len: u64,
) -> Result<(), NaError> {
    let peer = req.lookup(owner.self_addr())?;
    let op = req.get(peer, local, 0, remote, 0, len)?;
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        owner.progress(Some(Duration::ZERO))?;
        while owner.poll_event().is_some() {}
        req.progress(Some(Duration::ZERO))?;
        while let Some(ev) = req.poll_event() {
            if let Event::Done { op: o, result } = ev
                && o == op
            {
                return result.map(drop);
            }
        }
    }
    panic!("the read never completed")
}

#[test]
fn a_large_read_is_copied_half_by_each_side_and_is_right() {
    let (owner, req) = (plugin(), plugin());
    connect(&req, &owner);
    let mut src = pattern(1);
    let exposed = register(&owner, &mut src, Access::ReadOnly);
    let mut dst = vec![0u8; LEN];
    let local = register(&req, &mut dst, Access::ReadWrite);
    get(&req, &owner, &local, &exposed.remote, LEN as u64).unwrap();
    req.deregister(&local).unwrap();
    assert!(dst == src, "the bytes read");
    let expected = if single_copy() { LEN as u64 / 2 } else { 0 };
    assert_eq!(req.direct_bytes(), expected);
    // Small reads are the owner's alone.
    let mut small = vec![0u8; 64 << 10];
    let local = register(&req, &mut small, Access::ReadWrite);
    get(&req, &owner, &local, &exposed.remote, 64 << 10).unwrap();
    assert_eq!(small[..], src[..64 << 10]);
    assert_eq!(req.direct_bytes(), expected, "no more copied here");
    req.deregister(&local).unwrap();
    owner.deregister(&exposed).unwrap();
}

#[test]
fn a_forged_region_or_entry_is_not_read_here() {
    let (owner, req) = (plugin(), plugin());
    connect(&req, &owner);
    let mut src = pattern(2);
    let mut secret = vec![0x5au8; 2 * LEN];
    let exposed = register(&owner, &mut src, Access::ReadOnly);
    let salt = na_stream::direct::Arena::get().announced().salt;
    let key = exposed.remote.key;
    let Some(real) = Direct::decode(&exposed.remote.extra, key, LEN as u64, salt) else {
        assert!(!single_copy(), "a readable region offers direct reads");
        return owner.deregister(&exposed).unwrap();
    };
    // A third party's descriptors: the real key and entry with another address of the
    // owner's; then an entry outside the arena the owner announced, made to confirm
    // (the owner holds bytes a client chose: key, address, length, key).
    let at = secret.as_ptr() as u64;
    let fake = [
        exposed.remote.key,
        at + 4096,
        LEN as u64,
        exposed.remote.key,
    ];
    for (i, w) in fake.iter().enumerate() {
        secret[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
    }
    let forged = [
        Direct {
            addr: at,
            ..real.clone()
        },
        Direct {
            entry: at,
            addr: at + 4096,
            ..real.clone()
        },
    ];
    for f in forged {
        let remote = RemoteMem {
            extra: f.encode(key, salt),
            ..exposed.remote.clone()
        };
        let mut dst = vec![0u8; LEN];
        let local = register(&req, &mut dst, Access::ReadWrite);
        get(&req, &owner, &local, &remote, LEN as u64).unwrap();
        req.deregister(&local).unwrap();
        assert!(
            dst == src,
            "the owner's bytes, by its checks, not the secret"
        );
        // With the key refused too, nothing at all lands: not a byte of the secret.
        let refused = RemoteMem {
            key: key ^ 1,
            extra: f.encode(key ^ 1, salt),
            ..remote.clone()
        };
        let mut dst = vec![0xeeu8; LEN];
        let local = register(&req, &mut dst, Access::ReadWrite);
        assert!(get(&req, &owner, &local, &refused, LEN as u64).is_err());
        req.deregister(&local).unwrap();
        assert!(dst.iter().all(|b| *b == 0xee), "not a byte read");
    }
    assert_eq!(req.direct_bytes(), 0, "nothing copied here");
    owner.deregister(&exposed).unwrap();
    drop(secret);
}

#[test]
fn a_region_let_go_is_not_read_here() {
    let (owner, req) = (plugin(), plugin());
    connect(&req, &owner);
    let mut src = pattern(3);
    let exposed = register(&owner, &mut src, Access::ReadOnly);
    owner.deregister(&exposed).unwrap();
    // (The memory is still there: only the registration ended.)
    let mut dst = vec![0xeeu8; LEN];
    let local = register(&req, &mut dst, Access::ReadWrite);
    let r = get(&req, &owner, &local, &exposed.remote, LEN as u64);
    req.deregister(&local).unwrap();
    assert!(r.is_err(), "{r:?}");
    assert_eq!(req.direct_bytes(), 0);
    assert!(dst.iter().all(|b| *b == 0xee), "not a byte read");
}
