//! A process given the pid of one killed before it (pids wrap at 32768 by default, and
//! threads take them too) finds that process's shm regions under the names its own
//! endpoints get (`PID:0:N`). The provider will not create a region whose name a live pid
//! holds (`fi_enable`: EBUSY), so the plugin removes, before it opens an endpoint, the
//! regions named with our pid last written before this process started. Its own test
//! binary: it writes files under names this process's endpoints take, which no other test
//! may race.

use std::time::Duration;

use na::Plugin;
use na_ofi::OfiPlugin;
use qs_tests::conformance::Driven;

fn shm() -> OfiPlugin {
    OfiPlugin::new(&"ofi+shm://auto".parse().unwrap()).unwrap()
}

fn region(p: &OfiPlugin) -> String {
    let a = p.self_addr().to_string();
    a.rsplit_once("://").unwrap().1.to_string()
}

/// `from` sends `to` a message with `tag`; returns `from` as `to` knows it.
fn say(from: &mut Driven, to: &mut Driven, peer: na::PeerId, tag: u64) -> na::PeerId {
    let op = from.p.send_unexpected(peer, tag, b"hi".to_vec()).unwrap();
    let (back, t, data) = to
        .next_unexpected_within(Duration::from_secs(10))
        .expect("the message arrives");
    assert_eq!((t, &data[..]), (tag, &b"hi"[..]));
    assert_eq!(
        from.done_within(op, Duration::from_secs(10)),
        Some(Ok(Vec::new()))
    );
    back
}

#[test]
fn regions_left_under_our_pid_do_not_stop_new_endpoints() {
    let first = shm();
    let name = region(&first);
    let (pid, rest) = name.split_once(':').unwrap();
    assert_eq!(pid, std::process::id().to_string(), "{name}");
    let (dom, n) = rest.split_once(':').unwrap();
    let n: u32 = n.parse().unwrap();
    // What a killed process with our pid left: whole regions (with that pid inside) under
    // the names our next endpoints get, last written before we started.
    let bytes = std::fs::read(format!("/dev/shm/{name}")).unwrap();
    let stale: Vec<String> = (n + 1..n + 5).map(|k| format!("{pid}:{dom}:{k}")).collect();
    let then = std::time::SystemTime::now() - Duration::from_secs(3600);
    for s in &stale {
        let path = format!("/dev/shm/{s}");
        std::fs::write(&path, &bytes).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(then).unwrap();
    }
    // A region with our pid made since we started (another library's endpoint in this
    // process, say) is not ours to remove.
    let newer = format!("/dev/shm/{pid}:{dom}:{}", n + 1000);
    std::fs::write(&newer, b"").unwrap();
    let a = std::sync::Arc::new(shm());
    let b = std::sync::Arc::new(shm());
    assert!(
        std::path::Path::new("/dev/shm").join(&name).exists(),
        "a region of ours that is open stays"
    );
    let gone = stale
        .iter()
        .filter(|s| ![region(&a), region(&b)].contains(s))
        .filter(|s| std::path::Path::new("/dev/shm").join(s).exists())
        .count();
    assert_eq!(gone, 0, "the stale regions were removed");
    assert!(std::path::Path::new(&newer).exists(), "a newer one stays");
    std::fs::remove_file(&newer).unwrap();
    // The new endpoints work, both ways.
    let (mut da, mut db) = (Driven::new(a.clone()), Driven::new(b.clone()));
    let pb = a.lookup(b.self_addr()).unwrap();
    let pa = say(&mut da, &mut db, pb, 1);
    say(&mut db, &mut da, pa, 2);
    drop((da, db, a, b, first));
}
