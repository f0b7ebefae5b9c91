//! Reads through the I/O node that hold no worker while the backend answers: misses,
//! read-ahead windows, dense blocks, files being written and written out.

mod common;

use common::*;

/// Reads that miss every buffer (far apart, of files with nothing buffered) are asked
/// of the backend from the worker that takes them, which goes on at once: four such
/// reads through a node of one worker, at a backend of 200 ms per operation, take about
/// one operation's time and start no stand-in thread.
#[test]
fn reads_that_miss_hold_no_worker_while_the_backend_reads() {
    const DELAY: std::time::Duration = std::time::Duration::from_millis(200);
    const AT: u64 = 40 << 20;
    let export = scratch("ionode-read-then");
    for i in 0..4u64 {
        let f = std::fs::File::create(export.join(format!("f{i}"))).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&pattern(i, AT, 4096), AT).unwrap();
    }
    let (_backend, node) = slow_pair(&export, DELAY);
    let clients: Vec<_> = (0..4).map(|_| node.client()).collect();
    let files: Vec<_> = (0..4)
        .map(|i| clients[i].open(&format!("/f{i}")).unwrap())
        .collect();
    let before = node.stats();
    let reads_before = before.op("posix.read").1;
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for (i, f) in files.iter().enumerate() {
            s.spawn(move || {
                let mut buf = vec![0u8; 4096];
                assert_eq!(f.read_at(&mut buf, AT).unwrap(), 4096);
                assert!(buf == pattern(i as u64, AT, 4096), "the bytes of f{i}");
            });
        }
    });
    held_no_worker(&node, t.elapsed(), DELAY, "reads that miss");
    let begun = node.stats().begun_inline - before.begun_inline;
    assert_eq!(begun, 4, "begun where they arrived");
    assert_eq!(
        node.stats().op("posix.read").1 - reads_before,
        4,
        "each one at the backend"
    );
}

/// A sequential reader's read-ahead window is fetched from the backend the same way: four
/// readers starting at once through a node of one worker, at a backend of 200 ms per
/// operation, take about one operation's time and start no stand-in thread; their next
/// reads come from the windows kept, with no backend read.
#[test]
fn read_ahead_windows_are_fetched_holding_no_worker() {
    const DELAY: std::time::Duration = std::time::Duration::from_millis(200);
    let export = scratch("ionode-window-then");
    for i in 0..4u64 {
        std::fs::write(export.join(format!("f{i}")), pattern(i, 0, 1 << 20)).unwrap();
    }
    let (_backend, node) = slow_pair(&export, DELAY);
    let clients: Vec<_> = (0..4).map(|_| node.client()).collect();
    let files: Vec<_> = (0..4)
        .map(|i| clients[i].open(&format!("/f{i}")).unwrap())
        .collect();
    let reads_before = node.stats().op("posix.read").1;
    let read = |i: usize, f: &posix_ship::client::RemoteFile, at: u64| {
        let mut buf = vec![0u8; 4096];
        assert_eq!(f.read_at(&mut buf, at).unwrap(), 4096);
        assert!(
            buf == pattern(i as u64, at, 4096),
            "the bytes of f{i} at {at}"
        );
    };
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for (i, f) in files.iter().enumerate() {
            s.spawn(move || read(i, f, 0));
        }
    });
    held_no_worker(&node, t.elapsed(), DELAY, "reads fetching windows");
    let fetched = node.stats().op("posix.read").1 - reads_before;
    assert_eq!(fetched, 4, "a window each");
    for (i, f) in files.iter().enumerate() {
        read(i, f, 4096);
    }
    let fetched = node.stats().op("posix.read").1 - reads_before;
    assert_eq!(fetched, 4, "the next reads from the windows");
}

/// Reads of files holding buffered writes (just written, and written on while the reads
/// are out) are asked of the backend the same way and answered with the buffered bytes
/// laid over the backend's: four at once through a node of one worker, at a backend of
/// 200 ms per operation, in about one operation's time and with no stand-in thread, each
/// with the bytes its client wrote.
#[test]
fn reads_of_files_holding_writes_hold_no_worker() {
    const DELAY: std::time::Duration = std::time::Duration::from_millis(200);
    let export = scratch("ionode-held-then");
    for i in 0..4u64 {
        std::fs::write(export.join(format!("f{i}")), pattern(i, 0, 64 << 10)).unwrap();
    }
    let (_backend, node) = slow_pair(&export, DELAY);
    let clients: Vec<_> = (0..4).map(|_| node.client()).collect();
    let files: Vec<_> = (0..4)
        .map(|i| {
            clients[i]
                .open_with(&format!("/f{i}"), libc::O_RDWR, 0)
                .unwrap()
        })
        .collect();
    for (i, f) in files.iter().enumerate() {
        f.write_at(&[i as u8 + 1; 100], 1000).unwrap();
    }
    let on_backend = std::fs::read(export.join("f0")).unwrap();
    assert!(
        on_backend[1000..1100] == pattern(0, 1000, 100),
        "buffered at the node"
    );
    let t = std::time::Instant::now();
    let reading = std::sync::atomic::AtomicUsize::new(4);
    std::thread::scope(|s| {
        for (i, f) in files.iter().enumerate() {
            let reading = &reading;
            s.spawn(move || {
                let mut want = pattern(i as u64, 0, 4096);
                want[1000..1100].fill(i as u8 + 1);
                let mut buf = vec![0u8; 4096];
                assert_eq!(f.read_at(&mut buf, 0).unwrap(), 4096);
                assert!(
                    buf == want,
                    "f{i}: the backend's bytes with its write over them"
                );
                reading.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
            // The file written on while its read is out (elsewhere in it): the read is
            // answered with what is buffered at its answer, not made again.
            s.spawn(move || {
                let mut k = 0u64;
                while reading.load(std::sync::atomic::Ordering::SeqCst) > 0 && k < 100 {
                    f.write_at(&[i as u8 + 1; 100], 8192 + k * 200).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    k += 1;
                }
            });
        }
    });
    held_no_worker(&node, t.elapsed(), DELAY, "reads of files being written");
}

/// Reads that come while their file is being written out (the node's timed write-out,
/// at a backend of 200 ms per operation) through a node of one worker: begun as the
/// write-out ends, by the thread that ends it, and answered from the backend's completions
/// in about two operations' time with no stand-in thread (each had waited on a worker for
/// the write-out, and then for its backend read); each with its bytes, the written ones
/// from the backend.
#[test]
fn reads_during_a_write_out_hold_no_worker() {
    const DELAY: std::time::Duration = std::time::Duration::from_millis(200);
    let export = scratch("ionode-reads-write-out");
    std::fs::write(export.join("f"), pattern(3, 0, 1 << 20)).unwrap();
    let delay = DELAY.as_micros().to_string();
    let backend = Proc::backend(
        &export,
        &["--trust-forwarder", "0", "--op-delay-us", &delay],
    );
    let node = Proc::node(
        &backend.addr,
        &["--workers", "1", "--flush-after-ms", "100"],
    );
    let writer = node.client();
    let w = writer.open_with("/f", libc::O_RDWR, 0).unwrap();
    let clients: Vec<_> = (0..4).map(|_| node.client()).collect();
    let files: Vec<_> = clients.iter().map(|c| c.open("/f").unwrap()).collect();
    let writes_before = node.stats().op("posix.write").1;
    w.write_at(&[9; 100], 1000).unwrap();
    // The timed write-out's backend write is out: read while it lasts.
    let t0 = std::time::Instant::now();
    while node.stats().op("posix.write").1 == writes_before {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "no write-out"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for (i, f) in files.iter().enumerate() {
            s.spawn(move || {
                let at = i as u64 * (256 << 10);
                let mut want = pattern(3, at, 4096);
                if i == 0 {
                    want[1000..1100].fill(9);
                }
                let mut buf = vec![0u8; 4096];
                assert_eq!(f.read_at(&mut buf, at).unwrap(), 4096);
                assert!(buf == want, "reader {i}: the file's bytes at {at}");
            });
        }
    });
    let took = t.elapsed();
    let stand_ins = stand_ins_of(node.child.id());
    println!("4 reads during a write-out through one worker: {took:?}, {stand_ins} stand-ins");
    assert!(took < 3 * DELAY, "{took:?}: one after another?");
    assert_eq!(stand_ins, 0, "workers waited for the write-out");
    let on_backend = std::fs::read(export.join("f")).unwrap();
    assert!(on_backend[1000..1100] == [9; 100], "written out");
}

/// Readers missing near each other in one file (the dense block around them) through a
/// node of one worker, at a backend of 200 ms per operation: one backend read of the
/// block, which the others join, in about one operation's time and with no stand-in
/// thread (the first had held a worker, and the others one each while they waited for
/// it); each gets its own bytes.
#[test]
fn reads_missing_together_in_a_dense_block_hold_no_worker() {
    const DELAY: std::time::Duration = std::time::Duration::from_millis(200);
    let export = scratch("ionode-near-then");
    std::fs::write(export.join("f"), pattern(7, 0, 1 << 20)).unwrap();
    let (_backend, node) = slow_pair(&export, DELAY);
    let clients: Vec<_> = (0..4).map(|_| node.client()).collect();
    let files: Vec<_> = clients.iter().map(|c| c.open("/f").unwrap()).collect();
    let reads_before = node.stats().op("posix.read").1;
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for (i, f) in files.iter().enumerate() {
            s.spawn(move || {
                let at = (i as u64 + 1) << 16;
                let mut buf = vec![0u8; 4096];
                assert_eq!(f.read_at(&mut buf, at).unwrap(), 4096);
                assert!(buf == pattern(7, at, 4096), "the bytes at {at}");
            });
        }
    });
    held_no_worker(&node, t.elapsed(), DELAY, "reads near each other");
    let fetched = node.stats().op("posix.read").1 - reads_before;
    assert_eq!(fetched, 1, "one block for the four");
}

/// Many clients' small reads of one file, far apart (neither sequential nor near each
/// other: each a plain miss), go to the backend together: past two requests out for the
/// file, reads queue, and each request that lands sends what queued as one list read
/// (`posix.read_many`). 16 clients × 8 reads at a backend of 20 ms per operation: at
/// most half as many backend requests as reads (26 to 31 for the 128 in five runs: the
/// clients a list read answers send their next reads together, and the first of them
/// finds a request's place free and goes alone), every byte right.
#[test]
fn many_clients_small_reads_of_one_file_go_to_the_backend_as_list_reads() {
    let (reads, plain, listed) = random_readers("ionode-list-reads", (16, 8), 4096, &[]);
    assert!(listed > 0, "no list read");
    assert!(
        plain + listed <= reads / 2,
        "{plain} + {listed} backend requests for {reads} reads"
    );
}

/// More such readers than the node has places for reads out at its backends
/// (`READS_OUT`, 64): a read that queues for a list read gives its place back, so every
/// read of 80 clients is still begun where it arrives, none waits on a worker (which
/// asked each alone: 128 readers made 15 087 backend requests for 33 039 reads in
/// `qs-fwd -n 128 --shapes shared-random`, 2 170 since).
#[test]
fn more_list_readers_than_places_for_reads_out_wait_on_no_worker() {
    let (reads, plain, listed) = random_readers("ionode-list-readers", (80, 3), 4096, &[]);
    assert!(
        plain + listed <= reads / 2,
        "{plain} + {listed} backend requests for {reads} reads"
    );
}

/// Reads of 128 KiB (the largest that go in lists) of 24 clients, at a backend that
/// stages 1 MiB for the node at once: list reads of up to 1 MiB each, two out, are
/// answered in part, and the reads not made go first in the next; every byte right.
#[test]
fn list_reads_a_backend_answers_in_part_are_made_next() {
    let args = ["--staging-mib", "1"];
    let (reads, plain, listed) = random_readers("ionode-list-part", (24, 3), 128 << 10, &args);
    assert!(listed > 0, "no list read");
    assert!(
        plain + listed < reads,
        "{plain} + {listed} backend requests for {reads} reads"
    );
}

/// `clients` clients each reading `n` times `len` bytes of one file, far apart, through
/// a node of one worker at a backend of 20 ms per operation (and `args`); every read is
/// checked, and begun where it arrived. The reads, and the backend's plain and list
/// reads for them.
fn random_readers(
    name: &str,
    (clients, n): (u64, u64),
    len: usize,
    args: &[&str],
) -> (u64, u64, u64) {
    use std::os::unix::fs::FileExt;
    // 16 MiB apart from any other client's, `clients` × 16 MiB from its own last: no
    // read near another (within 8 MiB: a dense block would be fetched instead, which a
    // backend short of staging memory answers in many pieces).
    let at = |i: u64, k: u64| ((k * clients + i) << 24) + 4096 * k;
    let export = scratch(name);
    let f = std::fs::File::create(export.join("f")).unwrap();
    f.set_len((clients * n) << 24).unwrap();
    for (i, k) in (0..clients).flat_map(|i| (0..n).map(move |k| (i, k))) {
        f.write_all_at(&pattern(0, at(i, k), len), at(i, k))
            .unwrap();
    }
    let backend = Proc::backend(
        &export,
        &[
            &["--trust-forwarder", "0", "--op-delay-us", "20000"][..],
            args,
        ]
        .concat(),
    );
    let node = Proc::node(&backend.addr, &["--workers", "1"]);
    let fss: Vec<_> = (0..clients).map(|_| node.client()).collect();
    let files: Vec<_> = fss.iter().map(|c| c.open("/f").unwrap()).collect();
    let before = node.stats();
    std::thread::scope(|s| {
        for (i, f) in files.iter().enumerate() {
            s.spawn(move || {
                for k in 0..n {
                    let at = at(i as u64, k);
                    let mut buf = vec![0u8; len];
                    assert_eq!(f.read_at(&mut buf, at).unwrap(), len);
                    assert!(buf == pattern(0, at, len), "client {i} at {at}");
                }
            });
        }
    });
    let after = node.stats();
    let out = |op: &str| after.op(op).1 - before.op(op).1;
    let (reads, plain, listed) = (clients * n, out("posix.read"), out("posix.read_many"));
    println!("{reads} reads through the node: {plain} backend reads and {listed} list reads");
    let begun = after.begun_inline - before.begun_inline;
    assert_eq!(begun, reads, "every read begun where it arrived");
    (reads, plain, listed)
}
