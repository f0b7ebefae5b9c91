//! What one client can make the I/O node hold: open files, requests, bulk staging memory.

mod common;

use common::*;
use posix_ship::proto::{WRITE, WriteData, WriteReq};
use rpc_core::{Access, Seg};

fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        >> 10
}

#[test]
fn open_files_per_client_are_bounded_and_others_go_on() {
    let (_export, _backend, node) = pair("ionode-open-bound", &["--max-open", "4"]);
    let fs = node.client();
    let held: Vec<_> = (0..4)
        .map(|i| fs.create(&format!("/f{i}")).unwrap())
        .collect();
    let e = fs.create("/f4").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
    assert!(
        node.client().create("/other").is_ok(),
        "another client is not affected"
    );
    drop(held);
    assert!(fs.create("/f4").is_ok(), "given back at close");
}

#[test]
fn one_client_cannot_make_the_node_hold_its_whole_bulk_load() {
    let (export, _backend, node) = pair("ionode-staging", &["--staging-mib", "32"]);
    let fs = node.client();
    let o = fs
        .open_raw(b"/big", libc::O_CREAT | libc::O_WRONLY, 0o644)
        .unwrap();
    const PART: usize = 16 << 20;
    let bufs: Vec<Vec<u8>> = (0..32).map(|i| pattern(i, 0, PART)).collect();
    let bulks: Vec<_> = bufs
        .iter()
        .map(|b| {
            fs.engine()
                .expose(vec![Seg::from(&b[..])], Access::ReadOnly)
                .unwrap()
        })
        .collect();
    let before = peak_rss_mib(node.child.id());
    // 32 writes of 16 MiB in flight at once from one client: 512 MiB offered; the
    // client's 32 MiB staging share holds (measured: +52 MiB resident; with only the
    // user's 128 MiB share, +132 MiB).
    let pending: Vec<_> = bulks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let req = WriteReq {
                fh: o.fh,
                offset: Some((i * PART) as u64),
                data: WriteData::Bulk(b.descriptor()),
            };
            fs.start(WRITE, &req)
        })
        .collect();
    let mut short = 0;
    for (i, p) in pending.into_iter().enumerate() {
        let n = p.wait().expect("a write").n as usize;
        assert!(n > 0 && n <= PART);
        if n < PART {
            short += 1;
        }
        // Finish it as a client library would.
        fs.pwrite(o.fh, &bufs[i][n..], Some((i * PART + n) as u64))
            .unwrap();
    }
    fs.close_raw(o.fh).unwrap();
    let peak = peak_rss_mib(node.child.id());
    assert!(short > 0, "the staging bound served some writes short");
    assert!(
        peak < before + 100,
        "the node grew from {before} to {peak} MiB for one client's 512 MiB"
    );
    let on_disk = std::fs::read(export.join("big")).unwrap();
    for (i, b) in bufs.iter().enumerate() {
        assert!(on_disk[i * PART..(i + 1) * PART] == b[..], "part {i}");
    }
}

#[test]
fn hostile_offsets_and_handles_get_errors_and_the_node_serves_on() {
    use posix_ship::proto::{Fh, READ, ReadData, ReadReq};
    use rpc_core::ByteBuf;
    let (_export, _backend, node) = pair("ionode-hostile", &[]);
    let fs = node.client();
    let o = fs
        .open_raw(b"/h", libc::O_CREAT | libc::O_RDWR, 0o644)
        .unwrap();
    let write = |fh, off| {
        let req = WriteReq {
            fh,
            offset: Some(off),
            data: WriteData::Inline(ByteBuf::from(vec![1u8; 4096])),
        };
        fs.call(WRITE, &req)
            .map(|w| w.n)
            .map_err(|e| e.raw_os_error())
    };
    let big = i64::MAX as u64;
    assert_eq!(write(o.fh, u64::MAX - 10), Err(Some(libc::EFBIG)), "wraps");
    assert_eq!(write(o.fh, big + 1), Err(Some(libc::EINVAL)), "negative");
    assert_eq!(
        write(o.fh, big - 100),
        Err(Some(libc::EFBIG)),
        "past the end"
    );
    assert_eq!(write(Fh(o.fh.0 ^ 1), 0), Err(Some(libc::EBADF)), "forged");
    let read = |offset| {
        let req = ReadReq {
            fh: o.fh,
            offset,
            len: u64::MAX,
            dest: None,
        };
        fs.call(READ, &req).map_err(|e| e.raw_os_error())
    };
    assert_eq!(read(u64::MAX).err(), Some(Some(libc::EINVAL)));
    match read(big - 5) {
        Ok(ReadData::Inline(d)) => assert!(d.is_empty(), "past the end of file"),
        other => panic!("{other:?}"),
    }
    // The node serves on, this client included.
    assert_eq!(write(o.fh, 0), Ok(4096));
    assert_eq!(fs.metadata("/h").unwrap().size, 4096);
}

#[test]
fn closed_files_are_let_go_at_the_backend_many_at_a_time() {
    // A slow backend (50 ms per operation, 8 workers) and 32 clients that each create
    // and close a file at once: the node answers the closes at once and lets the 32
    // backend handles go behind, 16 at a time (one at a time took 32 x 50 ms).
    let export = scratch("ionode-close-behind");
    let backend = Proc::backend(
        &export,
        &["--trust-forwarder", "0", "--op-delay-us", "50000"],
    );
    let node = Proc::node(&backend.addr, &[]);
    let server = backend.client();
    let clients: Vec<_> = (0..32).map(|_| node.client()).collect();
    std::thread::scope(|s| {
        for (i, fs) in clients.iter().enumerate() {
            s.spawn(move || drop(fs.create(&format!("/f{i}")).unwrap()));
        }
    });
    let closed = std::time::Instant::now();
    while server.server_stats().unwrap().open_files > 0 {
        assert!(
            closed.elapsed() < std::time::Duration::from_secs(10),
            "backend handles still open"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let took = closed.elapsed();
    println!("32 backend handles let go {took:?} after their clients' closes");
    assert!(
        took < std::time::Duration::from_millis(1300),
        "{took:?}: closed one at a time?"
    );
    // Closes that queued while others were in flight went in one request.
    let s = node.stats();
    let (one, many) = (s.op("posix.close").1, s.op("posix.close_many").1);
    println!("{one} close and {many} close_many requests");
    assert!(
        many >= 1 && one + many < 32,
        "{one} + {many} requests for 32 closes"
    );
}

/// `fsync`s through a node of one worker, to a backend whose every operation takes 200
/// ms (8 workers): answered from the backend's completions, no worker of the node waits
/// on one (a waiting worker has the pool start a stand-in thread, as it did for each
/// `fsync` before: four for four), and they are synced side by side.
#[test]
fn fsyncs_attribute_changes_and_stats_hold_no_worker_while_the_backend_works() {
    const DELAY: std::time::Duration = std::time::Duration::from_millis(200);
    let export = scratch("ionode-fsync-then");
    let (_backend, node) = slow_pair(&export, DELAY);
    let clients: Vec<_> = (0..4).map(|_| node.client()).collect();
    let files: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, fs)| fs.create(&format!("/f{i}")).unwrap())
        .collect();
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for f in &files {
            s.spawn(move || f.sync_all().unwrap());
        }
    });
    // Stand-ins linger 2 s once started: counted now, they are those of the fsyncs.
    held_no_worker(&node, t.elapsed(), DELAY, "fsyncs");
    assert_eq!(
        node.stats().op("posix.fsync").1,
        4,
        "each one at the backend"
    );
    // Attribute changes alike: a mode, a length, times and an owner at once.
    use posix_ship::proto::{CHOWN, SetTime, Target, Time};
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| clients[0].set_permissions("/f0", 0o600).unwrap());
        s.spawn(|| files[1].set_len(10).unwrap());
        s.spawn(|| {
            let when = SetTime::At(Time {
                sec: 86_400,
                nsec: 0,
            });
            clients[2].set_times("/f2", when, when).unwrap()
        });
        s.spawn(|| {
            let fh = Target::Handle(files[3].handle().unwrap());
            // SAFETY: getuid cannot fail.
            let me = unsafe { libc::getuid() };
            clients[3].call(CHOWN, &(fh, Some(me), None)).unwrap()
        });
    });
    let took = t.elapsed();
    let stand_ins = stand_ins_of(node.child.id());
    println!("4 attribute changes through one worker: {took:?}, {stand_ins} stand-in threads");
    assert!(took < 3 * DELAY, "{took:?}: one after another?");
    assert_eq!(stand_ins, 0, "workers waited on the backend's changes");
    use std::os::unix::fs::MetadataExt;
    let md = |f: &str| std::fs::metadata(export.join(f)).unwrap();
    assert_eq!(md("f0").mode() & 0o777, 0o600);
    assert_eq!((md("f1").len(), md("f2").mtime()), (10, 86_400));
    // And a `stat` of each open file.
    let t = std::time::Instant::now();
    let sizes: Vec<u64> = std::thread::scope(|s| {
        let asks: Vec<_> = files
            .iter()
            .map(|f| s.spawn(|| f.metadata().unwrap().size))
            .collect();
        asks.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let took = t.elapsed();
    let stand_ins = stand_ins_of(node.child.id());
    println!("4 stats of open files through one worker: {took:?}, {stand_ins} stand-in threads");
    assert_eq!(sizes, [0, 10, 0, 0]);
    assert!(took < 3 * DELAY, "{took:?}: one after another?");
    assert_eq!(stand_ins, 0, "workers waited on the backend's stat");
}

/// Queries passed on as asked (`readlink`, `statfs`, `access`, extended attributes,
/// directory pages) through a node of one worker, at a backend of 200 ms per operation:
/// four of each kind at once are answered from the backend's completions, side by side,
/// with no stand-in thread (each had started one, and gone one after another past the
/// stand-ins' bound).
#[test]
fn queries_hold_no_worker_while_the_backend_answers() {
    use posix_ship::proto::{GETXATTR, LISTXATTR, MAX_DIR_PAGE, SETXATTR, Target};
    use serde_bytes::ByteBuf;
    const DELAY: std::time::Duration = std::time::Duration::from_millis(200);
    let export = scratch("ionode-query-then");
    for i in 0..4 {
        std::fs::create_dir(export.join(format!("d{i}"))).unwrap();
        std::fs::write(export.join(format!("d{i}/f")), b"x").unwrap();
        std::os::unix::fs::symlink(format!("target-{i}"), export.join(format!("l{i}"))).unwrap();
    }
    let (_backend, node) = slow_pair(&export, DELAY);
    let clients: Vec<_> = (0..4).map(|_| node.client()).collect();
    let four = |what: &str, f: &(dyn Fn(usize, &posix_ship::client::RemoteFs) + Sync)| {
        let t = std::time::Instant::now();
        std::thread::scope(|s| {
            for (i, c) in clients.iter().enumerate() {
                s.spawn(move || f(i, c));
            }
        });
        held_no_worker(&node, t.elapsed(), DELAY, what);
    };
    four("readlinks", &|i, c| {
        assert_eq!(
            c.read_link(&format!("/l{i}")).unwrap(),
            format!("target-{i}").as_bytes()
        )
    });
    four("statfs", &|_, c| assert!(c.statfs("/").unwrap().blocks > 0));
    four("accesses", &|i, c| {
        c.access(&format!("/d{i}"), libc::R_OK | libc::X_OK)
            .unwrap()
    });
    let name = || ByteBuf::from(b"user.q".to_vec());
    let on = |i: usize| Target::Path(ByteBuf::from(format!("/d{i}/f").into_bytes()));
    let xattrs = std::fs::write(export.join("probe"), b"")
        .and_then(|()| xattr_works(&export.join("probe")))
        .unwrap();
    if xattrs {
        four("setxattrs", &|i, c| {
            let v = ByteBuf::from(vec![i as u8; 3]);
            c.call(SETXATTR, &(on(i), name(), v, 0)).unwrap()
        });
        four("getxattrs", &|i, c| {
            assert_eq!(
                c.call(GETXATTR, &(on(i), name())).unwrap().into_vec(),
                [i as u8; 3]
            )
        });
        four("listxattrs", &|i, c| {
            assert!(c.call(LISTXATTR, &on(i)).unwrap().contains(&name()))
        });
    }
    let dirs: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.open_raw(
                format!("/d{i}").as_bytes(),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
        })
        .map(|o| o.unwrap().fh)
        .collect();
    four("directory pages", &|i, c| {
        let page = c.readdir_page(dirs[i], MAX_DIR_PAGE, true).unwrap();
        assert!(page.entries.iter().any(|e| e.name.as_slice() == b"f"));
    });
    four("directory pages with attributes", &|i, c| {
        let req = posix_ship::proto::ReaddirReq {
            fh: dirs[i],
            max: 16,
            restart: true,
        };
        let page = c.readdir_plus_page(&req, true).unwrap();
        let f = page.entries.iter().find(|(e, _)| e.name.as_slice() == b"f");
        assert_eq!(f.and_then(|(_, a)| a.as_ref()).map(|a| a.size), Some(1));
    });
}

/// Writes through the node (appends; writes too large to buffer) through a node of one
/// worker, at a backend of 200 ms per operation: four of each at once are answered from
/// the backend's completions, side by side, every byte on the backend. Appends carried
/// by their requests start no stand-in thread (each had started one); a large write's
/// worker still waits while it pulls the bytes from the client (a stand-in may start for
/// that), not while the backend writes them.
#[test]
fn writes_through_hold_no_worker_while_the_backend_writes() {
    const DELAY: std::time::Duration = std::time::Duration::from_millis(200);
    let export = scratch("ionode-write-then");
    let (_backend, node) = slow_pair(&export, DELAY);
    let clients: Vec<_> = (0..4).map(|_| node.client()).collect();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND;
    let logs: Vec<_> = (clients.iter().enumerate())
        .map(|(i, c)| c.open_raw(format!("/log{i}").as_bytes(), flags, 0o644))
        .map(|o| o.unwrap().fh)
        .collect();
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for (i, c) in clients.iter().enumerate() {
            let fh = logs[i];
            s.spawn(move || {
                c.pwrite(fh, format!("entry {i}\n").as_bytes(), None)
                    .unwrap()
            });
        }
    });
    held_no_worker(&node, t.elapsed(), DELAY, "appends");
    let big: Vec<_> = (clients.iter().enumerate())
        .map(|(i, c)| c.create(&format!("/big{i}")).unwrap())
        .collect();
    let block = |i: usize| vec![i as u8 + 1; 4 << 20];
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for (i, f) in big.iter().enumerate() {
            s.spawn(move || f.write_at(&block(i), 0).unwrap());
        }
    });
    let took = t.elapsed();
    println!("4 writes of 4 MiB through one worker: {took:?}");
    assert!(
        took >= DELAY && took < 3 * DELAY,
        "{took:?}: one after another?"
    );
    for i in 0..4 {
        let log = std::fs::read(export.join(format!("log{i}"))).unwrap();
        assert_eq!(log, format!("entry {i}\n").as_bytes());
        assert!(std::fs::read(export.join(format!("big{i}"))).unwrap() == block(i));
    }
}

/// Whether the file system of `p` takes `user.*` extended attributes (tmpfs before 6.6
/// does not).
fn xattr_works(p: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    // SAFETY: a valid C string and a 1-byte value of ours.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.probe".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    Ok(r == 0)
}

/// Large writes (their bytes pulled from the client by bulk) through a node of one
/// worker to a backend of 200 ms per operation: the pull holds no worker either (begun
/// on the worker, finished from its completion, the rest on a worker again): four
/// appends of 1 MiB at once in about one operation's time and no stand-in thread.
#[test]
fn large_writes_through_hold_no_worker_while_their_bytes_are_pulled() {
    const DELAY: std::time::Duration = std::time::Duration::from_millis(200);
    let export = scratch("ionode-large-then");
    let (_backend, node) = slow_pair(&export, DELAY);
    let clients: Vec<_> = (0..4).map(|_| node.client()).collect();
    let files: Vec<_> = (0..4)
        .map(|i| {
            let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_APPEND;
            clients[i]
                .open_with(&format!("/a{i}"), flags, 0o644)
                .unwrap()
        })
        .collect();
    let data: Vec<Vec<u8>> = (0..4).map(|i| pattern(i, 0, 1 << 20)).collect();
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for (f, d) in files.iter().zip(&data) {
            s.spawn(move || f.write_at(d, 0).unwrap());
        }
    });
    held_no_worker(&node, t.elapsed(), DELAY, "large appends");
    drop(files);
    for (i, d) in data.iter().enumerate() {
        assert!(
            std::fs::read(export.join(format!("a{i}"))).unwrap() == *d,
            "a{i}"
        );
    }
}

/// A backend built before `posix.setattr` (a server in this process with it removed):
/// the node's first `setattr` gets `ENOSYS` there and is made as the calls it names;
/// later ones go that way at once, each right.
#[test]
fn setattrs_reach_a_backend_without_setattr() {
    use posix_ship::proto::{SETATTR, SetAttr, Target, forwarded};
    let (export, engine, _svc) = backend_without("ionode-old-setattr", 0, |e| {
        e.deregister(SETATTR) && e.deregister(forwarded(SETATTR))
    });
    let node = Proc::node(&engine.self_addr().to_string(), &[]);
    let client = node.client();
    let f = client.create("/f").unwrap();
    f.write_at(&[1; 100], 0).unwrap();
    for (i, mode) in [0o640, 0o604].into_iter().enumerate() {
        let a = SetAttr {
            mode: Some(mode),
            size: Some(10 + i as u64),
            ..SetAttr::default()
        };
        let attr = client
            .call(SETATTR, &(Target::Handle(f.handle().unwrap()), a))
            .unwrap();
        assert_eq!((attr.mode & 0o7777, attr.size), (mode, 10 + i as u64));
    }
    let s = node.stats();
    assert_eq!(s.op("posix.setattr").1, 1, "asked once");
    assert_eq!(s.op("posix.chmod").1, 2, "then by its parts");
    let mut want = vec![1; 10];
    want.push(0); // cut to 10, then grown to 11
    assert_eq!(std::fs::read(export.join("f")).unwrap(), want);
}

/// A backend built before `posix.close_many` (a server in this process with it removed):
/// the node's batched closes fall back to one `close` per handle, and every handle goes.
#[test]
fn closes_reach_a_backend_without_close_many() {
    use posix_ship::proto::{CLOSE_MANY, forwarded};
    // Slow enough that closes queue behind one another at the node.
    let (_export, engine, svc) = backend_without("ionode-old-backend", 20, |e| {
        e.deregister(CLOSE_MANY) && e.deregister(forwarded(CLOSE_MANY))
    });
    let node = Proc::node(&engine.self_addr().to_string(), &[]);
    let clients: Vec<_> = (0..32).map(|_| node.client()).collect();
    std::thread::scope(|s| {
        for (i, fs) in clients.iter().enumerate() {
            s.spawn(move || drop(fs.create(&format!("/f{i}")).unwrap()));
        }
    });
    let t = std::time::Instant::now();
    while svc.stats().open_files > 0 {
        assert!(t.elapsed().as_secs() < 10, "backend handles still open");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let s = node.stats();
    assert!(s.op("posix.close_many").1 >= 1, "a batch was tried");
    // Each handle closed once, one by one: the batch's as well after its ENOSYS.
    assert!(s.op("posix.close").1 >= 32, "then one close per handle");
}

/// A posix-ship server in this process (8 workers, `delay_ms` more per operation)
/// exporting a fresh directory `name`, made a backend built before what `remove`
/// deregisters (true if it was there).
fn backend_without(
    name: &str,
    delay_ms: u64,
    remove: impl FnOnce(&rpc_core::Engine) -> bool,
) -> (
    std::path::PathBuf,
    rpc_core::Engine,
    std::sync::Arc<posix_ship::server::Service<posix_ship::server::LocalFs>>,
) {
    use posix_ship::server::{Limits, LocalFs, ServerConfig, Service};
    let export = scratch(name);
    let engine = rpc_core::Engine::builder()
        .listen("sm")
        .workers(8)
        .build()
        .unwrap();
    let mut cfg = ServerConfig::new(&export, "sm");
    cfg.policy.root_squash = false;
    cfg.op_delay = std::time::Duration::from_millis(delay_ms);
    let fs = LocalFs::open(&cfg).unwrap();
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let svc = Service::register(
        &engine,
        std::sync::Arc::new(fs),
        Limits::default(),
        vec![me],
    )
    .unwrap();
    assert!(remove(&engine), "it was there");
    (export, engine, svc)
}

/// One user's requests in flight, all its clients together, are bounded
/// (`--user-in-flight`; by default 64 clients' worth, the processes of a job being one
/// user's): past it a request is answered busy, and the client waits it out. With a
/// bound of one, of two clients' reads at a backend of 200 ms one is refused, then served.
#[test]
fn one_users_requests_in_flight_are_bounded_and_waited_out() {
    let export = scratch("ionode-user-in-flight");
    for i in 0..2u64 {
        std::fs::write(export.join(format!("f{i}")), pattern(i, 0, 4096)).unwrap();
    }
    let args = ["--trust-forwarder", "0", "--op-delay-us", "200000"];
    let backend = Proc::backend(&export, &args);
    let node = Proc::node(&backend.addr, &["--user-in-flight", "1"]);
    let clients: Vec<_> = (0..2).map(|_| node.client()).collect();
    let files: Vec<_> = (0..2)
        .map(|i| clients[i].open(&format!("/f{i}")).unwrap())
        .collect();
    let refused = node.stats().refused;
    std::thread::scope(|s| {
        for (i, f) in files.iter().enumerate() {
            s.spawn(move || {
                let mut buf = vec![0u8; 4096];
                assert_eq!(f.read_at(&mut buf, 0).unwrap(), 4096);
                assert!(buf == pattern(i as u64, 0, 4096), "f{i}");
            });
        }
    });
    assert!(node.stats().refused > refused, "no request refused");
}
