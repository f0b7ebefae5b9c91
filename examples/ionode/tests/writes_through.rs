//! Writes through the I/O node to the backend: a write-out's small extents in list
//! writes (and one request per range to a backend without them), and writes (appends,
//! large writes, list writes) the backend takes only in part.

mod common;

use std::os::unix::process::CommandExt;

use common::*;
use posix_ship::proto::{WRITE, WriteData, WriteReq};
use rpc_core::{Access, Seg};

/// The backend's file size limit (`RLIMIT_FSIZE`).
const LIMIT: u64 = 100_000;

/// A backend limited to files of [`LIMIT`] bytes.
fn limited_backend(export: &std::path::Path) -> Proc {
    Proc::backend_with(export, "sm", &["--trust-forwarder", "0"], |cmd| {
        // SAFETY: between fork and exec only signal and setrlimit, async-signal-safe;
        // an ignored signal stays ignored across exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                match libc::setrlimit(libc::RLIMIT_FSIZE, &lim) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            })
        };
    })
}

/// Scattered 4 KiB writes (holes between: no extent merges) of `file` through `fs`, then
/// its fsync's outcome; the bytes each write put, as the file should read.
fn scattered(
    fs: &posix_ship::client::RemoteFs,
    file: &str,
    n: u64,
) -> (std::io::Result<()>, Vec<u8>) {
    let f = fs.create(file).unwrap();
    let mut want = vec![0u8; (n * 8192) as usize];
    // Backwards, so that no write is a stream's next.
    for i in (0..n).rev() {
        let d = pattern(i, i * 8192, 4096);
        f.write_at(&d, i * 8192).unwrap();
        want[(i * 8192) as usize..][..4096].copy_from_slice(&d);
    }
    want.truncate(((n - 1) * 8192 + 4096) as usize);
    (f.sync_all(), want)
}

/// A write-out of many small extents goes in list writes: 300 scattered 4 KiB writes,
/// fsync'd, reach the backend in two requests (256 ranges at most in one), every byte
/// right.
#[test]
fn small_extents_are_written_out_in_list_writes() {
    let (export, _backend, node) = pair("ionode-list-writes", &["--flush-after-ms", "600000"]);
    let fs = node.client();
    let before = node.stats();
    let (synced, want) = scattered(&fs, "/f", 300);
    synced.unwrap();
    let after = node.stats();
    let out = |op: &str| after.op(op).1 - before.op(op).1;
    assert_eq!(
        (out("posix.write_many"), out("posix.write")),
        (2, 0),
        "list writes, no single one"
    );
    assert!(
        std::fs::read(export.join("f")).unwrap() == want,
        "every byte"
    );
}

/// A backend that answers list I/O `ENOSYS` (as one built before it: `--no-list-io`)
/// gets one request per range: a write-out's list writes are made one by one (every
/// byte right), and so are small reads that queued for a list read.
#[test]
fn a_backend_without_list_io_gets_a_request_per_range() {
    let export = scratch("ionode-no-list-io");
    let delay = ["--op-delay-us", "20000"];
    let backend = Proc::backend(
        &export,
        &[&["--trust-forwarder", "0", "--no-list-io"][..], &delay].concat(),
    );
    let node = Proc::node(&backend.addr, &["--flush-after-ms", "600000"]);
    let fs = node.client();
    let (synced, want) = scattered(&fs, "/f", 300);
    synced.unwrap();
    assert!(
        std::fs::read(export.join("f")).unwrap() == want,
        "every byte"
    );
    let s = node.stats();
    let (listed, single) = (s.op("posix.write_many").1, s.op("posix.write").1);
    println!("300 writes to a backend without list I/O: {listed} list writes, {single} writes");
    assert!(
        (1..=2).contains(&listed),
        "{listed}: list writes tried once per request out"
    );
    assert_eq!(single, 300, "then one per range");
    // 8 readers at once of ranges far apart (plain misses, not near each other): those
    // that queue behind the two requests out are asked one by one once the list read is
    // refused.
    let g = std::fs::File::create(export.join("g")).unwrap();
    g.set_len(512 << 20).unwrap();
    // 16 MiB apart: none near another (which would fetch a dense block instead).
    let at = |c: usize, k: usize| ((k * 8 + c) as u64) << 24;
    for i in 0..32 {
        use std::os::unix::fs::FileExt;
        g.write_all_at(&pattern(7, at(i % 8, i / 8), 4096), at(i % 8, i / 8))
            .unwrap();
    }
    let readers: Vec<_> = (0..8).map(|_| node.client()).collect();
    let before = node.stats();
    std::thread::scope(|sc| {
        for (c, r) in readers.iter().enumerate() {
            sc.spawn(move || {
                let f = r.open("/g").unwrap();
                for k in 0..4 {
                    let mut buf = vec![0u8; 4096];
                    assert_eq!(f.read_at(&mut buf, at(c, k)).unwrap(), 4096);
                    assert!(buf == pattern(7, at(c, k), 4096), "reader {c} read {k}");
                }
            });
        }
    });
    let after = node.stats();
    let out = |op: &str| after.op(op).1 - before.op(op).1;
    println!(
        "32 reads: {} list reads tried, {} reads",
        out("posix.read_many"),
        out("posix.read")
    );
    let tried = out("posix.read_many");
    assert!(
        (1..=2).contains(&tried),
        "{tried}: refused, then reads alone"
    );
    assert_eq!(out("posix.read"), 32, "each read alone");
}

/// List reads on handles a restarted backend forgot (`EBADF`) fail whole, and each of
/// their reads is made again the blocking way, which opens the file again: 8 readers of
/// a file opened before the restart get every byte right after it.
#[test]
fn list_reads_a_restarted_backend_forgot_are_made_again() {
    let export = scratch("ionode-list-restart");
    let name = format!("sm://qs-ionode-list-restart-{}", std::process::id());
    let args = ["--trust-forwarder", "0", "--op-delay-us", "20000"];
    let backend = Proc::backend_on(&export, &name, &args);
    let node = Proc::node(&backend.addr, &[]);
    let g = std::fs::File::create(export.join("g")).unwrap();
    g.set_len(128 << 20).unwrap();
    let at = |c: usize| (c as u64) << 24;
    for c in 0..8 {
        use std::os::unix::fs::FileExt;
        g.write_all_at(&pattern(9, at(c), 4096), at(c)).unwrap();
    }
    std::fs::write(export.join("probe"), b"p").unwrap();
    let readers: Vec<_> = (0..8).map(|_| node.client()).collect();
    let files: Vec<_> = readers.iter().map(|r| r.open("/g").unwrap()).collect();
    assert!(backend.stop(), "the backend stops cleanly");
    let _back = Proc::backend_on(&export, &name, &args);
    // The node reaches it again (a file opened now).
    let t0 = std::time::Instant::now();
    while node.client().read("/probe").is_err() {
        assert!(
            t0.elapsed().as_secs() < 20,
            "the node never reached the backend again"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before = node.stats().op("posix.read_many").1;
    std::thread::scope(|s| {
        for (c, f) in files.iter().enumerate() {
            s.spawn(move || {
                let mut buf = vec![0u8; 4096];
                assert_eq!(f.read_at(&mut buf, at(c)).unwrap(), 4096);
                assert!(buf == pattern(9, at(c), 4096), "reader {c}");
            });
        }
    });
    let listed = node.stats().op("posix.read_many").1 - before;
    assert!(listed >= 1, "no list read tried on the forgotten handle");
}

/// A list write the backend takes only in part (its file size limit falls in one of the
/// ranges) is made the rest of the way the blocking way: the ranges below the limit land
/// whole, the one across it up to it, and the fsync reports the error of the rest.
#[test]
fn a_list_write_cut_short_lands_what_it_can_and_reports_the_rest() {
    let export = scratch("ionode-list-write-short");
    let backend = limited_backend(&export);
    let node = Proc::node(&backend.addr, &["--flush-after-ms", "600000"]);
    let fs = node.client();
    // 20 writes 8 KiB apart: the limit (100 000) falls in the 13th.
    let (synced, want) = scattered(&fs, "/f", 20);
    assert_eq!(
        common_errno(synced),
        libc::EFBIG,
        "the deferred write's error"
    );
    let on_backend = std::fs::read(export.join("f")).unwrap();
    assert_eq!(on_backend.len() as u64, LIMIT);
    assert!(
        on_backend == want[..LIMIT as usize],
        "the bytes below the limit"
    );
    assert!(node.stats().op("posix.write_many").1 >= 1, "a list write");
}

/// An append the backend takes only in part (its process's file size limit: the write
/// stops there, the next meets `EFBIG`) is answered with the bytes it took, as the kernel
/// answers a write cut short, not with the error the rest met (after which an
/// application would write again what landed); the rest, written next, gets the error.
/// The client library's `pwrite_some` answers the same way.
#[test]
fn an_append_cut_short_is_answered_with_what_landed() {
    let export = scratch("ionode-append-short");
    let backend = limited_backend(&export);
    let node = Proc::node(&backend.addr, &[]);
    let fs = node.client();
    let o = append_to(&fs, b"/log");
    let data = pattern(1, 0, 256 << 10);
    let src = fs
        .engine()
        .expose(vec![Seg::from(&data[..])], Access::ReadOnly)
        .unwrap();
    let req = WriteReq {
        fh: o.fh,
        offset: None,
        data: WriteData::Bulk(src.descriptor()),
    };
    let w = fs
        .start(WRITE, &req)
        .wait()
        .expect("answered with what landed, not EFBIG");
    assert_eq!((w.n, w.end), (LIMIT, LIMIT), "the bytes the backend took");
    let rest = fs.pwrite(o.fh, &data[LIMIT as usize..], None);
    assert_eq!(common_errno(rest), libc::EFBIG, "the rest meets the limit");
    fs.close_raw(o.fh).unwrap();
    let on_backend = std::fs::read(export.join("log")).unwrap();
    assert!(
        on_backend == data[..LIMIT as usize],
        "each byte once, in order"
    );
    // The client library's `pwrite_some` (an interposed `write`'s) answers the same.
    let o = append_to(&fs, b"/log2");
    let w = fs.pwrite_some(o.fh, &data, None).expect("what landed");
    assert_eq!((w.n, w.end), (LIMIT, LIMIT));
    let again = fs.pwrite_some(o.fh, &data[LIMIT as usize..], None);
    assert_eq!(common_errno(again), libc::EFBIG, "nothing lands: the error");
    fs.close_raw(o.fh).unwrap();
    let on_backend = std::fs::read(export.join("log2")).unwrap();
    assert!(on_backend == data[..LIMIT as usize]);
}

/// A new file opened for appending.
fn append_to(fs: &posix_ship::client::RemoteFs, path: &[u8]) -> posix_ship::proto::Opened {
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_APPEND;
    fs.open_raw(path, flags, 0o644).unwrap()
}
