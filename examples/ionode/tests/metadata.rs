//! The I/O node's metadata, across real processes: its attribute cache, calls begun
//! where they arrive, `setattr` passed on whole, `stat` by other names, and prefixes
//! routed to several backends.

mod common;

use common::*;

#[test]
fn the_node_sees_its_own_changes_at_once_and_others_after_the_attribute_timeout() {
    let args = ["--attr-timeout", "0.3", "--negative-timeout", "0.3"];
    let (export, _backend, node) = pair("ionode-attrs", &args);
    let fs = node.client();
    assert_eq!(common_errno(fs.metadata("/h")), libc::ENOENT);
    let f = fs.create("/h").unwrap();
    assert_eq!(fs.metadata("/h").unwrap().size, 0, "no longer ENOENT");
    f.write_at(&[7; 100], 0).unwrap();
    f.close().unwrap();
    assert_eq!(
        fs.metadata("/h").unwrap().size,
        100,
        "written through the node"
    );
    fs.set_permissions("/h", 0o600).unwrap();
    assert_eq!(fs.metadata("/h").unwrap().mode & 0o777, 0o600);
    fs.truncate("/h", 10).unwrap();
    assert_eq!(fs.metadata("/h").unwrap().size, 10);
    fs.rename("/h", "/g").unwrap();
    assert_eq!(common_errno(fs.metadata("/h")), libc::ENOENT);
    assert_eq!(fs.metadata("/g").unwrap().size, 10);
    fs.create_dir("/d").unwrap();
    assert!(fs.metadata("/d").unwrap().is_dir());
    fs.remove_dir("/d").unwrap();
    assert_eq!(common_errno(fs.metadata("/d")), libc::ENOENT);
    fs.remove_file("/g").unwrap();
    assert_eq!(common_errno(fs.metadata("/g")), libc::ENOENT);
    // A change behind the node's back is seen once the kept answer expires.
    std::fs::write(export.join("g"), b"abc").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(fs.metadata("/g").unwrap().size, 3);
    std::fs::write(export.join("g"), b"abcdef").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(fs.metadata("/g").unwrap().size, 6);
    assert_eq!(fs.metadata("/g").unwrap().size, 6);
    assert!(node.stats().attr_hits > 0, "the cache answered the repeat");
}

#[test]
fn metadata_calls_begin_on_the_progress_thread_unless_writes_are_held() {
    let (export, _backend, node) = pair("ionode-md-inline", &[]);
    let fs = node.client();
    let n = 20;
    let before = node.stats().begun_inline;
    for i in 0..n {
        fs.create(&format!("/m{i}")).unwrap().close().unwrap();
    }
    for i in 0..n {
        assert_eq!(fs.metadata(&format!("/m{i}")).unwrap().size, 0);
    }
    for i in 0..n {
        fs.remove_file(&format!("/m{i}")).unwrap();
    }
    let begun = node.stats().begun_inline - before;
    assert!(begun >= 3 * n, "{begun} of {} begun inline", 3 * n);
    // Changes to the namespace, each begun inline and answered from the backend's
    // completion (no worker waits on it).
    let before = node.stats().begun_inline;
    fs.create_dir("/d").unwrap();
    fs.write("/d/a", b"x").unwrap();
    fs.rename("/d/a", "/d/b").unwrap();
    fs.call(posix_ship::proto::LINK, &(path("/d/b"), path("/d/c")))
        .unwrap();
    fs.symlink("b", "/d/s").unwrap();
    assert_eq!(fs.read("/d/s").unwrap(), b"x", "through the link");
    assert_eq!(common_errno(fs.remove_dir("/d")), libc::ENOTEMPTY);
    for f in ["/d/b", "/d/c", "/d/s"] {
        fs.remove_file(f).unwrap();
    }
    fs.remove_dir("/d").unwrap();
    assert!(!export.join("d").exists(), "gone at the backend");
    let begun = node.stats().begun_inline - before;
    assert!(begun >= 6, "{begun} of 6 changes begun inline");
    // A path's stat while the node holds writes to the file: they are written out
    // first, on a worker, and the size is the written one.
    let f = fs.create("/held").unwrap();
    f.write_at(&[1; 4096], 0).unwrap();
    let before = node.stats().begun_inline;
    assert_eq!(fs.metadata("/held").unwrap().size, 4096);
    assert_eq!(node.stats().begun_inline, before, "begun inline");
    // And a truncating open of a file open here.
    f.write_at(&[2; 4096], 4096).unwrap();
    let g = fs.create("/held").unwrap();
    assert_eq!(node.stats().begun_inline, before, "begun inline");
    assert_eq!(fs.metadata("/held").unwrap().size, 0);
    g.close().unwrap();
    f.close().unwrap();
}

/// A `setattr` (mode, size and times at once) through the node is one backend request,
/// where it was one per change and a `stat`; it comes after the writes the node holds,
/// and reads through the node see the cut.
#[test]
fn a_setattr_is_one_backend_request_after_the_writes_held() {
    use posix_ship::proto::{SETATTR, SetAttr, SetTime, Target, Time};
    let (export, _backend, node) = pair("ionode-setattr", &[]);
    let fs = node.client();
    let f = fs.create("/f").unwrap();
    f.write_at(&[5; 8192], 0).unwrap();
    assert_eq!(
        std::fs::metadata(export.join("f")).unwrap().len(),
        0,
        "held"
    );
    // Read once through the node (what it keeps of the file is then the old length).
    assert_eq!(fs.read("/f").unwrap(), vec![5; 8192]);
    let before = node.stats();
    let a = SetAttr {
        mode: Some(0o640),
        size: Some(4096),
        mtime: Some(SetTime::At(Time {
            sec: 1_000_000,
            nsec: 7,
        })),
        ..SetAttr::default()
    };
    let attr = fs
        .call(SETATTR, &(Target::Handle(f.handle().unwrap()), a))
        .unwrap();
    assert_eq!((attr.size, attr.mode & 0o7777), (4096, 0o640));
    let after = node.stats();
    let out = |op: &str| after.op(op).1 - before.op(op).1;
    assert_eq!(out("posix.setattr"), 1, "one request");
    for op in [
        "posix.chmod",
        "posix.truncate",
        "posix.utimens",
        "posix.stat",
    ] {
        assert_eq!(out(op), 0, "{op}");
    }
    let on_disk = std::fs::metadata(export.join("f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (on_disk.mode() & 0o7777, on_disk.mtime()),
        (0o640, 1_000_000)
    );
    assert_eq!(
        std::fs::read(export.join("f")).unwrap(),
        vec![5; 4096],
        "written, then cut"
    );
    assert_eq!(
        fs.read("/f").unwrap(),
        vec![5; 4096],
        "the cut seen through the node"
    );
    // By path too.
    let a = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let attr = fs.call(SETATTR, &(Target::Path(path("/f")), a)).unwrap();
    assert_eq!(attr.mode & 0o7777, 0o600);
    assert_eq!(
        node.stats().op("posix.setattr").1 - before.op("posix.setattr").1,
        2
    );
    f.close().unwrap();
}

#[test]
fn a_stat_by_another_name_sees_the_writes_the_node_holds() {
    let (export, _backend, node) = pair("ionode-alias", &[]);
    let fs = node.client();
    fs.create_dir("/d").unwrap();
    let f = fs.create("/d/f").unwrap();
    f.write_at(&[3; 10_000], 0).unwrap();
    std::fs::hard_link(export.join("d/f"), export.join("g")).unwrap();
    // Not yet on the backend; every name of the file shows them.
    assert_eq!(std::fs::metadata(export.join("d/f")).unwrap().len(), 0);
    // (The file's own name last: a stat by it writes the bytes out.)
    for alias in ["//d/f", "/d/./f", "/g", "/d/f"] {
        assert_eq!(fs.metadata(alias).unwrap().size, 10_000, "{alias}");
    }
    // A truncation by another name comes after the writes held: they do not land
    // after it, by a truncating open or by truncate.
    f.write_at(&[4; 20_000], 0).unwrap();
    fs.create("//d/f").unwrap().close().unwrap();
    assert_eq!(fs.metadata("/g").unwrap().size, 0, "truncating open");
    f.write_at(&[5; 30_000], 0).unwrap();
    fs.truncate("/d/./f", 100).unwrap();
    f.close().unwrap();
    assert_eq!(
        std::fs::metadata(export.join("d/f")).unwrap().len(),
        100,
        "truncate"
    );
    assert_eq!(std::fs::read(export.join("g")).unwrap(), vec![5; 100]);
}

/// Two backends under prefixes and none for the whole namespace: each prefix reaches its
/// own backend (the prefix removed), and the directories above them are the node's own,
/// read-only, listing the prefixes.
#[test]
fn prefixes_route_to_their_backends_and_the_root_lists_them() {
    let (home, scratch) = (
        scratch("ionode-prefix-home"),
        scratch("ionode-prefix-scratch"),
    );
    let b1 = Proc::backend(&home, &["--trust-forwarder", "0"]);
    let b2 = Proc::backend(&scratch, &["--trust-forwarder", "0"]);
    let node = Proc::node(
        &format!("/home={}", b1.addr),
        &["--backend", &format!("/scratch/big={}", b2.addr)],
    );
    let fs = node.client();
    fs.write("/home/a", b"one").unwrap();
    fs.create_dir("/scratch/big/d").unwrap();
    fs.write("/scratch/big/d/b", b"two").unwrap();
    assert_eq!(std::fs::read(home.join("a")).unwrap(), b"one");
    assert_eq!(std::fs::read(scratch.join("d/b")).unwrap(), b"two");

    let names = |p: &str| {
        let mut v: Vec<String> = fs
            .read_dir(p)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("/"), ["home", "scratch"]);
    assert_eq!(names("/scratch"), ["big"]);
    assert_eq!(names("/scratch/big"), ["d"], "the backend's own");
    let root = fs.metadata("/").unwrap();
    assert!(root.is_dir());
    assert_eq!(root.mode & 0o7777, 0o555);
    let plus = fs.read_dir_plus("/").unwrap();
    let home_attr = plus
        .iter()
        .find(|(e, _)| &e.name[..] == b"home")
        .and_then(|(_, a)| *a)
        .expect("attributes of the prefix's root");
    let on_disk = std::fs::metadata(&home).unwrap();
    assert_eq!(
        home_attr.ino,
        std::os::unix::fs::MetadataExt::ino(&on_disk),
        "the backend's root, as the backend sees it"
    );
    assert_eq!(fs.access("/", libc::R_OK | libc::X_OK).ok(), Some(()));
    assert_eq!(common_errno(fs.access("/", libc::W_OK)), libc::EROFS);
    assert_eq!(common_errno(fs.create_dir("/scratch")), libc::EEXIST);
    assert_eq!(common_errno(fs.remove_dir("/scratch")), libc::EBUSY);
    assert_eq!(common_errno(fs.rename("/scratch", "/x")), libc::EBUSY);
    assert_eq!(
        common_errno(fs.rename("/home/a", "/scratch/big/a")),
        libc::EXDEV,
        "across backends"
    );
    assert_eq!(common_errno(fs.set_permissions("/", 0o777)), libc::EROFS);
    assert_eq!(common_errno(fs.read("/scratch")), libc::EISDIR);
    assert_eq!(common_errno(fs.write("/scratch", b"x")), libc::EISDIR);
    assert_eq!(
        common_errno(fs.metadata("/tmp")),
        libc::ENOENT,
        "nothing there"
    );
    assert!(
        fs.statfs("/").unwrap().blocks > 0,
        "the first prefix's file system"
    );
    assert_eq!(node.client().server_stats().unwrap().open_files, 0);
}

/// A close of a file the node holds nothing of is answered on the thread that received
/// it (no worker woken); one whose file holds buffered writes is made on a worker, which
/// writes them out before the close answers.
#[test]
fn closes_holding_nothing_are_answered_where_they_arrive() {
    let (export, _backend, node) = pair("ionode-close-inline", &[]);
    let fs = node.client();
    let files: Vec<_> = (0..20)
        .map(|i| fs.create(&format!("/c{i}")).unwrap())
        .collect();
    let before = node.stats().answered_inline;
    for f in files {
        f.close().unwrap();
    }
    assert_eq!(node.stats().answered_inline - before, 20);
    let f = fs.create("/w").unwrap();
    f.write_at(b"held", 0).unwrap();
    assert_eq!(
        export.join("w").metadata().unwrap().len(),
        0,
        "buffered at the node"
    );
    let before = node.stats().answered_inline;
    f.close().unwrap();
    assert_eq!(node.stats().answered_inline - before, 0, "made on a worker");
    assert_eq!(
        std::fs::read(export.join("w")).unwrap(),
        b"held",
        "written out first"
    );
}
