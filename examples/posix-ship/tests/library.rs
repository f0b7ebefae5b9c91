//! Every operation of the client library against a real server process, over tcp and
//! sm, with the errno cases.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};

use common::{ServerProc, errno, scratch, transports};
use posix_ship::proto::{
    READDIR_PLUS, READDIR_PLUS_XATTRS, REMOVEXATTR, ReaddirReq, SETXATTR, STAT, SetTime, Target,
    Time,
};
use rpc_core::ByteBuf;

fn every_operation(transport: &str) {
    let export = scratch(&format!("lib-{transport}"));
    let srv = ServerProc::start(&export, transport, &[]);
    let fs = srv.client();

    // mkdir, create, write, read, stat.
    fs.create_dir("/d").unwrap();
    assert_eq!(errno(fs.create_dir("/d")), libc::EEXIST);
    fs.write("/d/small", b"hello").unwrap();
    assert_eq!(fs.read("/d/small").unwrap(), b"hello");
    assert_eq!(
        std::fs::read(export.join("d/small")).unwrap(),
        b"hello",
        "on the server's disk"
    );
    let a = fs.metadata("/d/small").unwrap();
    assert!(a.is_file() && a.size == 5);
    assert!(fs.metadata("/d").unwrap().is_dir());

    // Sizes around the inline threshold and the per-request maximum travel intact.
    for len in [0usize, 1, 32 << 10, (32 << 10) + 1, 1 << 20, (16 << 20) + 3] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        fs.write("/d/big", &data).unwrap();
        assert_eq!(fs.read("/d/big").unwrap(), data, "{len} bytes");
    }

    // RemoteFile: Read, Write, Seek, positional I/O, append, set_len, sync.
    let mut f = fs
        .open_with("/d/f", libc::O_RDWR | libc::O_CREAT, 0o600)
        .unwrap();
    f.write_all(b"0123456789").unwrap();
    assert_eq!(f.seek(SeekFrom::Start(2)).unwrap(), 2);
    let mut b = [0u8; 3];
    f.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"234");
    assert_eq!(f.seek(SeekFrom::End(-1)).unwrap(), 9);
    f.write_at(b"AB", 4).unwrap();
    let mut b = [0u8; 10];
    assert_eq!(f.read_at(&mut b, 0).unwrap(), 10);
    assert_eq!(&b, b"0123AB6789");
    f.set_len(4).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    assert_eq!(f.metadata().unwrap().size, 4);
    assert_eq!(f.metadata().unwrap().mode & 0o777, 0o600);
    f.close().unwrap();
    let mut ap = fs
        .open_with("/d/f", libc::O_WRONLY | libc::O_APPEND, 0)
        .unwrap();
    ap.write_all(b"++").unwrap();
    drop(ap);
    assert_eq!(fs.read("/d/f").unwrap(), b"0123++");

    // O_EXCL, O_TRUNC, O_DIRECTORY, O_NOFOLLOW.
    let excl = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    assert_eq!(errno(fs.open_with("/d/f", excl, 0o644)), libc::EEXIST);
    drop(
        fs.open_with("/d/f", libc::O_WRONLY | libc::O_TRUNC, 0)
            .unwrap(),
    );
    assert_eq!(fs.metadata("/d/f").unwrap().size, 0);
    assert_eq!(
        errno(fs.open_with("/d/f", libc::O_RDONLY | libc::O_DIRECTORY, 0)),
        libc::ENOTDIR
    );
    fs.symlink("f", "/d/link").unwrap();
    assert_eq!(fs.read_link("/d/link").unwrap(), b"f");
    assert!(fs.symlink_metadata("/d/link").unwrap().is_symlink());
    assert!(fs.metadata("/d/link").unwrap().is_file(), "stat follows");
    assert_eq!(
        errno(fs.open_with("/d/link", libc::O_RDONLY | libc::O_NOFOLLOW, 0)),
        libc::ELOOP
    );

    // The errno cases.
    assert_eq!(errno(fs.open("/nope")), libc::ENOENT);
    assert_eq!(errno(fs.metadata("/nope")), libc::ENOENT);
    assert_eq!(errno(fs.open_with("/d", libc::O_WRONLY, 0)), libc::EISDIR);
    assert_eq!(errno(fs.metadata("/d/small/x")), libc::ENOTDIR);
    assert_eq!(errno(fs.remove_dir("/d")), libc::ENOTEMPTY);
    assert_eq!(errno(fs.remove_file("/d")), libc::EISDIR);
    assert_eq!(errno(fs.truncate("/d/small", u64::MAX)), libc::EINVAL);
    let g = fs.open("/d/small").unwrap();
    let fh = g.handle().unwrap();
    g.close().unwrap();
    assert_eq!(errno(fs.close_raw(fh)), libc::EBADF, "closed twice");
    assert_eq!(errno(fs.fstat(fh)), libc::EBADF, "used after close");
    assert_eq!(errno(fs.pread(fh, &mut [0u8; 4], 0)), libc::EBADF);
    assert_eq!(
        errno(fs.fstat(posix_ship::proto::Fh(0x1234))),
        libc::EBADF,
        "forged"
    );
    let ro = fs.open("/d/small").unwrap();
    assert_eq!(
        errno(ro.write_at(b"x", 0)),
        libc::EBADF,
        "written through O_RDONLY"
    );

    // rename, truncate, chmod, utimens, access, statfs, unlink, rmdir.
    fs.rename("/d/small", "/d/renamed").unwrap();
    assert_eq!(errno(fs.metadata("/d/small")), libc::ENOENT);
    fs.truncate("/d/renamed", 2).unwrap();
    assert_eq!(fs.read("/d/renamed").unwrap(), b"he");
    fs.set_permissions("/d/renamed", 0o640).unwrap();
    assert_eq!(fs.metadata("/d/renamed").unwrap().mode & 0o777, 0o640);
    let t = Time {
        sec: 1_000_000_000,
        nsec: 5,
    };
    fs.set_times("/d/renamed", SetTime::Omit, SetTime::At(t))
        .unwrap();
    assert_eq!(fs.metadata("/d/renamed").unwrap().mtime, t);
    fs.access("/d/renamed", libc::R_OK).unwrap();
    assert_eq!(errno(fs.access("/d/none", libc::F_OK)), libc::ENOENT);
    assert!(fs.statfs("/").unwrap().blocks > 0);
    let mut names: Vec<_> = fs
        .read_dir("/d")
        .unwrap()
        .into_iter()
        .map(|e| e.name.into_vec())
        .collect();
    names.sort();
    assert_eq!(names, [&b"big"[..], b"f", b"link", b"renamed"]);
    // With attributes: each entry's own lstat; none for `.` and `..` (`..` of the
    // export's root is outside it).
    for (e, a) in fs.read_dir_plus("/").unwrap() {
        match e.name.as_slice() {
            b"." | b".." => assert!(a.is_none(), "{:?}", e.name),
            b"d" => assert_eq!(a, Some(fs.symlink_metadata("/d").unwrap())),
            other => panic!("unexpected entry {other:?}"),
        }
    }
    // Asked for, each also says whether it has extended attributes.
    let root = fs
        .open_raw(b"/", libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .unwrap();
    let xattrs_of_d = || {
        let req = ReaddirReq {
            fh: root.fh,
            max: 16,
            restart: true,
        };
        let page = fs.call(READDIR_PLUS_XATTRS, &req).unwrap();
        let d = page.entries.iter().find(|(e, _)| e.name.as_slice() == b"d");
        d.and_then(|(_, a)| a.and_then(|a| a.xattrs))
    };
    assert_eq!(xattrs_of_d(), Some(false));
    let d = || Target::Path(ByteBuf::from(b"/d".to_vec()));
    let k = || ByteBuf::from(b"user.k".to_vec());
    fs.call(SETXATTR, &(d(), k(), ByteBuf::from(b"v".to_vec()), 0))
        .unwrap();
    assert_eq!(xattrs_of_d(), Some(true));
    fs.call(REMOVEXATTR, &(d(), k())).unwrap();
    fs.close_raw(root.fh).unwrap();
    let d = fs
        .open_raw(b"/d", libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .unwrap();
    let req = ReaddirReq {
        fh: d.fh,
        max: 2,
        restart: true,
    };
    let page = fs.call(READDIR_PLUS, &req).unwrap();
    assert_eq!(page.entries.len(), 2, "at most what was asked");
    let listed = fs.read_dir_plus("/d").unwrap();
    let link = listed.iter().find(|(e, _)| e.name.as_slice() == b"link");
    let link = link.and_then(|(_, a)| *a).expect("the link's attributes");
    assert_eq!(link.mode & libc::S_IFMT, libc::S_IFLNK, "lstat, not stat");
    assert_eq!(link, fs.symlink_metadata("/d/link").unwrap());
    fs.close_raw(d.fh).unwrap();
    for n in ["big", "f", "link", "renamed"] {
        fs.remove_file(&format!("/d/{n}")).unwrap();
    }
    fs.remove_dir("/d").unwrap();
    assert_eq!(errno(fs.remove_dir("/d")), libc::ENOENT);
    drop(ro);
    assert_eq!(
        fs.server_stats().unwrap().open_files,
        0,
        "every handle closed"
    );
    assert!(srv.stop(), "graceful stop");
}

#[test]
fn every_operation_over_every_transport() {
    for t in transports() {
        every_operation(&t);
    }
}

#[test]
fn calls_started_together_all_complete_with_their_own_outcome() {
    let export = scratch("pending");
    for i in 0..32 {
        std::fs::write(export.join(format!("f{i}")), vec![b'x'; i]).unwrap();
    }
    let srv = ServerProc::start(&export, "sm", &[]);
    let fs = srv.client();
    let stat = |p: String| fs.start(STAT, &(Target::Path(ByteBuf::from(p.into_bytes())), true));
    // 64 calls in flight from one thread: each answer reaches its own call.
    let pending: Vec<_> = (0..64).map(|i| stat(format!("/f{i}"))).collect();
    for (i, p) in pending.into_iter().enumerate() {
        match p.wait() {
            Ok(a) => assert_eq!((i < 32, a.size), (true, i as u64)),
            Err(e) => assert_eq!((i >= 32, e.raw_os_error()), (true, Some(libc::ENOENT))),
        }
    }
}

#[test]
fn a_read_only_export_refuses_every_change_with_eacces() {
    let export = scratch("readonly");
    std::fs::write(export.join("f"), b"data").unwrap();
    let srv = ServerProc::start(&export, "tcp", &["--read-only"]);
    let fs = srv.client();
    assert_eq!(fs.read("/f").unwrap(), b"data");
    assert_eq!(errno(fs.create("/g")), libc::EACCES);
    assert_eq!(errno(fs.open_with("/f", libc::O_RDWR, 0)), libc::EACCES);
    assert_eq!(errno(fs.remove_file("/f")), libc::EACCES);
    assert_eq!(errno(fs.create_dir("/d")), libc::EACCES);
    assert_eq!(errno(fs.rename("/f", "/g")), libc::EACCES);
    assert_eq!(errno(fs.truncate("/f", 0)), libc::EACCES);
    assert_eq!(errno(fs.set_permissions("/f", 0o600)), libc::EACCES);
    assert_eq!(errno(fs.access("/f", libc::W_OK)), libc::EACCES);
    assert_eq!(
        std::fs::read(export.join("f")).unwrap(),
        b"data",
        "untouched"
    );
}

#[test]
fn a_directory_of_100000_entries_is_listed_page_by_page() {
    let export = scratch("bigdir");
    let dir = export.join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..100_000 {
        std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
    }
    let srv = ServerProc::start(&export, "tcp", &[]);
    let fs = srv.client();
    let before = fs.engine().counters().rpcs_sent;
    let entries = fs.read_dir("/many").unwrap();
    let calls = fs.engine().counters().rpcs_sent - before;
    assert_eq!(entries.len(), 100_000);
    let mut names: Vec<_> = entries.into_iter().map(|e| e.name.into_vec()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 100_000, "no entry twice");
    assert!((100..200).contains(&calls), "{calls} calls: paged by 1024");
}

#[test]
fn per_client_bounds_give_clear_errors_and_other_clients_go_on() {
    let export = scratch("bounds");
    std::fs::write(export.join("f"), b"x").unwrap();
    let srv = ServerProc::start(&export, "tcp", &["--max-open", "3"]);
    let a = srv.client();
    let held: Vec<_> = (0..3).map(|_| a.open("/f").unwrap()).collect();
    assert_eq!(errno(a.open("/f")), libc::EMFILE);
    let b = srv.client();
    assert!(b.open("/f").is_ok(), "another client has its own bound");
    drop(held);
    assert!(a.open("/f").is_ok(), "freed by close");
}

#[test]
fn malformed_requests_get_errors_and_the_server_goes_on() {
    use posix_ship::proto::{READ, ReadReq, STAT, Target, WRITE, WriteData, WriteReq};
    use rpc_core::{Access, Seg};
    let export = scratch("hostile");
    std::fs::write(export.join("f"), vec![5u8; 1 << 20]).unwrap();
    let srv = ServerProc::start(&export, "tcp", &[]);
    let fs = srv.client();
    let f = fs.open_with("/f", libc::O_RDWR, 0).unwrap();
    let fh = f.handle().unwrap();
    // A destination smaller than the read asked for.
    let mut small = [0u8; 100];
    let dest = fs
        .engine()
        .expose(vec![Seg::from(&mut small[..])], Access::WriteOnly)
        .unwrap();
    let req = ReadReq {
        fh,
        offset: 0,
        len: 1 << 20,
        dest: Some(dest.descriptor()),
    };
    assert_eq!(errno(fs.call(READ, &req)), libc::EINVAL);
    drop(dest);
    assert!(
        small.iter().all(|&b| b == 0),
        "nothing written into the short buffer"
    );
    // A bulk write beyond the per-request maximum.
    let big = vec![1u8; (posix_ship::proto::MAX_IO + 1) as usize];
    let src = fs
        .engine()
        .expose(vec![Seg::from(&big[..])], Access::ReadOnly)
        .unwrap();
    let req = WriteReq {
        fh,
        offset: Some(0),
        data: WriteData::Bulk(src.descriptor()),
    };
    assert_eq!(errno(fs.call(WRITE, &req)), libc::EINVAL);
    // Paths with a NUL, and names that are no entry.
    let nul = serde_bytes::ByteBuf::from(b"f\0x".to_vec());
    assert_eq!(
        errno(fs.call(STAT, &(Target::Path(nul), false))),
        libc::EINVAL
    );
    assert!(
        fs.symlink_metadata("/").unwrap().is_dir(),
        "lstat of the root"
    );
    fs.create_dir("/d").unwrap();
    assert!(
        fs.symlink_metadata("/d/..").unwrap().is_dir(),
        "lstat of .."
    );
    assert_eq!(errno(fs.remove_dir("/")), libc::EBUSY);
    assert_eq!(errno(fs.remove_file("/d/..")), libc::EISDIR);
    assert_eq!(errno(fs.create_dir("/")), libc::EEXIST);
    assert_eq!(errno(fs.rename("/", "/x")), libc::EBUSY);
    assert_eq!(
        fs.read("/f").unwrap(),
        vec![5u8; 1 << 20],
        "the file is untouched"
    );
}

#[test]
fn fallocate_reserves_extends_and_punches_holes() {
    use posix_ship::proto::{FALLOCATE, Fh};
    use std::os::unix::fs::MetadataExt;
    let export = scratch("fallocate");
    let srv = ServerProc::start(&export, "sm", &[]);
    let fs = srv.client();
    let o = fs
        .open_raw(b"/f", libc::O_CREAT | libc::O_RDWR, 0o644)
        .unwrap();
    let fa = |fh, mode, off, len| fs.call(FALLOCATE, &(fh, mode, off, len));
    fa(o.fh, libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20).unwrap();
    let m = std::fs::metadata(export.join("f")).unwrap();
    assert_eq!(m.len(), 0, "KEEP_SIZE: size unchanged");
    assert!(m.blocks() * 512 >= 1 << 20, "but the blocks are reserved");
    fa(o.fh, 0, 0, 8192).unwrap();
    assert_eq!(std::fs::metadata(export.join("f")).unwrap().len(), 8192);
    fs.pwrite(o.fh, &[9u8; 8192], Some(0)).unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fa(o.fh, punch, 0, 4096).unwrap();
    let d = std::fs::read(export.join("f")).unwrap();
    assert!(d[..4096].iter().all(|b| *b == 0) && d[4096..].iter().all(|b| *b == 9));
    assert_eq!(
        errno(fa(o.fh, 0x40, 0, 1)),
        libc::EOPNOTSUPP,
        "an unknown mode"
    );
    assert_eq!(errno(fa(o.fh, 0, 0, 0)), libc::EINVAL, "no length");
    assert_eq!(errno(fa(o.fh, 0, u64::MAX, 2)), libc::EINVAL, "wraps");
    assert_eq!(errno(fa(Fh(o.fh.0 ^ 1), 0, 0, 1)), libc::EBADF, "forged");
    let ro = fs.open_raw(b"/f", libc::O_RDONLY, 0).unwrap();
    assert_eq!(errno(fa(ro.fh, 0, 0, 1)), libc::EBADF, "read-only handle");
}

#[test]
fn rename_flags_noreplace_and_exchange() {
    use posix_ship::proto::RENAME2;
    let export = scratch("rename2");
    std::fs::write(export.join("a"), "A").unwrap();
    std::fs::write(export.join("b"), "B").unwrap();
    let srv = ServerProc::start(&export, "sm", &[]);
    let fs = srv.client();
    let r2 = |a: &str, b: &str, f: u32| {
        let p = |s: &str| ByteBuf::from(s.as_bytes().to_vec());
        fs.call(RENAME2, &(p(a), p(b), f))
    };
    assert_eq!(errno(r2("/a", "/b", libc::RENAME_NOREPLACE)), libc::EEXIST);
    r2("/a", "/b", libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(std::fs::read(export.join("a")).unwrap(), b"B");
    assert_eq!(std::fs::read(export.join("b")).unwrap(), b"A");
    r2("/a", "/c", libc::RENAME_NOREPLACE).unwrap();
    assert!(!export.join("a").exists() && export.join("c").exists());
    assert_eq!(errno(r2("/c", "/d", libc::RENAME_WHITEOUT)), libc::EINVAL);
    assert_eq!(errno(r2("/c", "/../x", 0)), libc::EXDEV, "confined");
}

/// A server that lies about what it moved (more bytes read or written than asked, inline
/// or by bulk) makes the call fail with `EIO`; nothing past the caller's buffer is taken,
/// and a write it "over-took" is not reported as done. A real engine plays the server.
#[test]
fn a_lying_server_is_an_eio() {
    use posix_ship::client::RemoteFs;
    use posix_ship::proto::*;
    use rpc_core::Engine;
    let srv = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .build()
        .unwrap();
    srv.register(SERVER_STATS, |()| Ok::<_, String>(ServerStats::default()))
        .unwrap();
    srv.register(OPEN, |_: OpenReq| {
        Ok::<_, String>(Ok(Opened {
            fh: Fh(1),
            attr: Attr::default(),
        }))
    })
    .unwrap();
    srv.register(CLOSE, |_: Fh| Ok::<_, String>(Ok(())))
        .unwrap();
    srv.register(FSYNC, |_: (Fh, bool)| Ok::<_, String>(Ok(())))
        .unwrap();
    srv.register(READ, |r: ReadReq| {
        Ok::<_, String>(Ok(match r.dest {
            Some(_) => ReadData::Pushed(r.len + 1),
            None => ReadData::Inline(ByteBuf::from(vec![7u8; r.len as usize + 10])),
        }))
    })
    .unwrap();
    srv.register(WRITE, |w: WriteReq| {
        let n = match &w.data {
            WriteData::Inline(b) => b.len() as u64,
            WriteData::Bulk(d) => d.len(),
        };
        Ok::<_, String>(Ok(Written { n: n + 1, end: 0 }))
    })
    .unwrap();
    let me = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .build()
        .unwrap();
    let fs = RemoteFs::on(&me, &srv.self_addr().to_string(), 4096).unwrap();
    let f = fs.open_with("/f", libc::O_RDWR, 0).unwrap();
    let mut small = [0u8; 100];
    assert_eq!(errno(f.read_at(&mut small, 0)), libc::EIO, "inline read");
    assert!(small.iter().all(|&b| b == 0), "nothing taken");
    let mut big = vec![0u8; 1 << 20];
    assert_eq!(errno(f.read_at(&mut big, 0)), libc::EIO, "bulk read");
    let fh = f.handle().unwrap();
    assert_eq!(
        errno(fs.pwrite(fh, &[1; 10], Some(0))),
        libc::EIO,
        "inline write"
    );
    let data = vec![1u8; 3 * posix_ship::proto::MAX_IO as usize / 2];
    assert_eq!(
        errno(fs.pwrite(fh, &data, Some(0))),
        libc::EIO,
        "bulk write"
    );
}

/// A handle lent by one connection is adopted by another of the same user (a child of
/// the interposer's): the same open file, though its path is gone; passes outlive their
/// lender's handle (for a while), and a made-up pass is `EBADF`.
#[test]
fn a_lent_handle_is_the_same_open_file_on_another_connection() {
    for transport in transports() {
        let export = scratch(&format!("lib-lend-{transport}"));
        let srv = ServerProc::start(&export, &transport, &[]);
        let (parent, child) = (srv.client(), srv.client());
        parent.write("/f", b"the file").unwrap();
        let o = parent.open_raw(b"/f", libc::O_RDONLY, 0).unwrap();
        parent.remove_file("/f").unwrap();
        let pass = parent.lend(o.fh).unwrap();
        assert_eq!(
            parent.lend(o.fh).unwrap(),
            pass,
            "lent again: the same pass"
        );
        let a = child.adopt(pass).unwrap();
        assert_ne!(a.fh, o.fh);
        assert_eq!((a.attr.ino, a.attr.size), (o.attr.ino, 8));
        let mut b = [0u8; 8];
        assert_eq!(child.pread(a.fh, &mut b, 0).unwrap(), 8);
        assert_eq!(&b, b"the file");
        // The child's handle is its own: the parent's is unknown to it.
        assert_eq!(errno(child.pread(o.fh, &mut b, 0)), libc::EBADF);
        // The lender closing leaves the pass good for a while (a shell closes its copy
        // as soon as the child is started).
        parent.close_raw(o.fh).unwrap();
        let again = child.adopt(pass).unwrap();
        assert_eq!(child.pread(again.fh, &mut b, 0).unwrap(), 8);
        let forged = posix_ship::proto::Pass(pass.0 ^ (1 << 77));
        assert_eq!(errno(child.adopt(forged)), libc::EBADF);
        assert_eq!(errno(parent.lend(o.fh)), libc::EBADF, "a closed handle");
    }
}

/// `posix.setattr`: owner, mode, size and times in one request, answered with the
/// attributes after, on a path or a handle; the first change refused is the answer.
#[test]
fn setattr_changes_several_attributes_in_one_request() {
    use posix_ship::proto::{SETATTR, SetAttr};
    for transport in transports() {
        let export = scratch(&format!("lib-setattr-{transport}"));
        let srv = ServerProc::start(&export, &transport, &[]);
        let fs = srv.client();
        fs.write("/f", b"0123456789").unwrap();
        let when = Time {
            sec: 1_000_000_000,
            nsec: 5,
        };
        let change = SetAttr {
            mode: Some(0o600),
            size: Some(4),
            mtime: Some(SetTime::At(when)),
            ..SetAttr::default()
        };
        let path = Target::Path(ByteBuf::from(b"/f".to_vec()));
        let a = fs.call(SETATTR, &(path.clone(), change)).unwrap();
        assert_eq!((a.mode & 0o7777, a.size, a.mtime), (0o600, 4, when));
        let on_disk = std::fs::metadata(export.join("f")).unwrap();
        assert_eq!(on_disk.len(), 4);
        let o = fs.open_raw(b"/f", libc::O_RDWR, 0).unwrap();
        let by_handle = SetAttr {
            mode: Some(0o640),
            ..SetAttr::default()
        };
        let a = fs
            .call(SETATTR, &(Target::Handle(o.fh), by_handle))
            .unwrap();
        assert_eq!((a.mode & 0o7777, a.size), (0o640, 4));
        // Nothing to change: the attributes.
        assert_eq!(
            fs.call(SETATTR, &(path, SetAttr::default())).unwrap().size,
            4
        );
        let missing = Target::Path(ByteBuf::from(b"/none".to_vec()));
        assert_eq!(errno(fs.call(SETATTR, &(missing, change))), libc::ENOENT);
        fs.close_raw(o.fh).unwrap();
    }
}
