//! The I/O node across real processes: merging, write-behind, read-ahead, fsync and
//! crash semantics, identity at the backend.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;
use posix_ship::proto::{FSYNC, SetTime};

const BLOCK: usize = 4096;

/// Writes `data` at 0 in 4 KiB writes.
fn write_blocks(f: &posix_ship::client::RemoteFile, data: &[u8]) {
    for (i, chunk) in data.chunks(BLOCK).enumerate() {
        f.write_at(chunk, (i * BLOCK) as u64).unwrap();
    }
}

#[test]
fn sixteen_sequential_writers_file_per_process_are_merged() {
    let (export, backend, node) = pair("ionode-fpp", &[]);
    let writes_per_client = 256;
    std::thread::scope(|s| {
        for c in 0..16u64 {
            let node = &node;
            s.spawn(move || {
                let fs = node.client();
                let f = fs.create(&format!("/f{c}")).unwrap();
                for i in 0..writes_per_client {
                    let off = (i * BLOCK) as u64;
                    f.write_at(&pattern(c, off, BLOCK), off).unwrap();
                }
                f.close().unwrap();
            });
        }
    });
    for c in 0..16u64 {
        let got = std::fs::read(export.join(format!("f{c}"))).unwrap();
        assert_eq!(got, pattern(c, 0, BLOCK * writes_per_client), "file {c}");
    }
    let st = node.stats();
    let (w_in, w_out) = st.op("posix.write");
    assert_eq!(w_in, 16 * writes_per_client as u64);
    assert!(
        w_out * 16 <= w_in,
        "backend writes {w_out} for {w_in} client writes"
    );
    // Buffered where they arrived, without a worker: all but those a write-out was due at.
    assert!(
        st.answered_inline * 10 >= w_in * 9,
        "{} of {w_in} writes answered inline",
        st.answered_inline
    );
    // The backend's own count agrees: it served about as many requests as the node made.
    let served = backend.client().server_stats().unwrap().requests;
    let (_, out) = st.totals();
    assert!(
        served <= out + 2,
        "backend served {served}, node made {out}"
    );
}

#[test]
fn strided_writes_of_sixteen_clients_to_one_file_are_merged() {
    // (No flush for idleness: on a loaded machine a pause of the writers longer than
    // the default 0.5 s wrote the half-filled file out in pieces.)
    let (export, _backend, node) = pair("ionode-n1", &["--flush-after-ms", "600000"]);
    node.client().create("/shared").unwrap().close().unwrap();
    let rounds = 64u64;
    std::thread::scope(|s| {
        for c in 0..16u64 {
            let node = &node;
            s.spawn(move || {
                let fs = node.client();
                let f = fs.open_with("/shared", libc::O_WRONLY, 0).unwrap();
                for r in 0..rounds {
                    let off = (r * 16 + c) * BLOCK as u64;
                    f.write_at(&pattern(0, off, BLOCK), off).unwrap();
                }
                f.close().unwrap();
            });
        }
    });
    let got = std::fs::read(export.join("shared")).unwrap();
    assert_eq!(got, pattern(0, 0, BLOCK * 16 * rounds as usize));
    let (w_in, w_out) = node.stats().op("posix.write");
    assert_eq!(w_in, 16 * rounds);
    assert!(
        w_out * 16 <= w_in,
        "backend writes {w_out} for {w_in} client writes"
    );
}

#[test]
fn fsync_puts_acknowledged_writes_on_the_backend_and_reads_see_them_before() {
    let (export, _backend, node) = pair("ionode-fsync", &["--flush-after-ms", "600000"]);
    let fs = node.client();
    let f = fs.create("/log").unwrap();
    let data = pattern(7, 0, 25 * BLOCK);
    write_blocks(&f, &data);
    assert_eq!(
        std::fs::metadata(export.join("log")).unwrap().len(),
        0,
        "acknowledged, still buffered in the node"
    );
    // A listing with attributes shows the buffered size (exact attributes are a stat's,
    // which flushes, below).
    let listed = fs.read_dir_plus("/").unwrap();
    let log = listed.iter().find(|(e, _)| e.name.as_slice() == b"log");
    assert_eq!(
        log.and_then(|(_, a)| a.map(|a| a.size)),
        Some(data.len() as u64),
        "a listing sees the buffered size"
    );
    assert_eq!(
        std::fs::metadata(export.join("log")).unwrap().len(),
        0,
        "and does not flush"
    );
    let mut back = vec![0u8; data.len() + 100];
    let n = fs.open("/log").unwrap().read_at(&mut back, 0).unwrap();
    assert_eq!(
        &back[..n],
        &data[..],
        "a read through the node sees buffered writes"
    );
    assert_eq!(
        fs.metadata("/log").unwrap().size,
        data.len() as u64,
        "and stat"
    );
    f.sync_all().unwrap();
    assert_eq!(
        std::fs::read(export.join("log")).unwrap(),
        data,
        "after fsync"
    );
}

#[test]
fn large_writes_in_any_order_reach_the_backend_as_one_gathered_write() {
    // 16 writes of 256 KiB in a shuffled order: each is kept as it came (a piece of its
    // own) and all leave as one backend write of 4 MiB, their buffers gathered.
    let (export, _backend, node) = pair("ionode-gather", &["--flush-after-ms", "600000"]);
    let f = node.client().create("/ckpt").unwrap();
    const PIECE: usize = 256 << 10;
    let data = pattern(9, 0, 16 * PIECE);
    for i in [5usize, 0, 9, 15, 1, 12, 3, 7, 14, 2, 8, 11, 4, 13, 6, 10] {
        f.write_at(&data[i * PIECE..(i + 1) * PIECE], (i * PIECE) as u64)
            .unwrap();
    }
    let before = node.stats().op("posix.write").1;
    f.sync_all().unwrap();
    assert!(
        std::fs::read(export.join("ckpt")).unwrap() == data,
        "after fsync"
    );
    let writes = node.stats().op("posix.write").1 - before;
    assert_eq!(writes, 1, "backend writes for 16 client writes");
}

#[test]
fn a_write_out_of_scattered_extents_keeps_backend_writes_in_flight() {
    // 64 blocks that do not touch: 64 backend writes, each 20 ms at this backend. Made
    // one after another they take 1.28 s at least; the node keeps up to 16 in flight.
    let export = scratch("ionode-flight");
    let backend = Proc::backend(
        &export,
        &["--trust-forwarder", "0", "--op-delay-us", "20000"],
    );
    let node = Proc::node(&backend.addr, &["--flush-after-ms", "600000"]);
    let f = node.client().create("/scattered").unwrap();
    let block = |i: u64| pattern(11, i * 2 * BLOCK as u64, BLOCK);
    for i in 0..64u64 {
        f.write_at(&block(i), i * 2 * BLOCK as u64).unwrap();
    }
    let t = std::time::Instant::now();
    f.sync_all().unwrap();
    let took = t.elapsed();
    let back = std::fs::read(export.join("scattered")).unwrap();
    for i in 0..64u64 {
        let at = (i * 2 * BLOCK as u64) as usize;
        assert!(back[at..at + BLOCK] == block(i)[..], "block {i}");
    }
    assert!(
        took < std::time::Duration::from_millis(640),
        "fsync after 64 scattered writes took {took:?}"
    );
}

#[test]
fn appends_of_many_clients_through_the_node_all_land_whole() {
    // 8 clients append 64 records each to one log (appends go through the node to the
    // backend, which alone knows where each lands): every record is there once, whole.
    let (export, _backend, node) = pair("ionode-append", &[]);
    node.client().create("/log").unwrap().close().unwrap();
    const REC: usize = 100;
    std::thread::scope(|s| {
        for c in 0..8u8 {
            let node = &node;
            s.spawn(move || {
                use std::io::Write;
                let fs = node.client();
                let mut f = fs
                    .open_with("/log", libc::O_WRONLY | libc::O_APPEND, 0)
                    .unwrap();
                for i in 0..64u8 {
                    let mut rec = vec![b'a' + c; REC - 2];
                    rec.extend_from_slice(&[i, b'\n']);
                    f.write_all(&rec).unwrap();
                }
                f.close().unwrap();
            });
        }
    });
    let log = std::fs::read(export.join("log")).unwrap();
    assert_eq!(log.len(), 8 * 64 * REC, "every record, once");
    let mut seen = std::collections::HashSet::new();
    for rec in log.chunks(REC) {
        let c = rec[0];
        assert!(rec[..REC - 2].iter().all(|b| *b == c), "a record whole");
        assert!(seen.insert((c, rec[REC - 2])), "a record once");
    }
    assert_eq!(seen.len(), 8 * 64);
}

#[test]
fn sequential_small_reads_are_read_ahead() {
    let (export, _backend, node) = pair("ionode-ra", &[]);
    let data = pattern(3, 0, 8 << 20);
    std::fs::write(export.join("big"), &data).unwrap();
    let fs = node.client();
    let f = fs.open("/big").unwrap();
    let mut got = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = f.read_at(&mut buf, got.len() as u64).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data, "the bytes read through the node");
    let st = node.stats();
    let (r_in, r_out) = st.op("posix.read");
    assert!(r_in >= 2048, "{r_in} client reads");
    assert!(
        r_out * 16 <= r_in,
        "backend reads {r_out} for {r_in} client reads"
    );
    // Read-ahead hits answered where they arrived, without a worker.
    assert!(
        st.answered_inline * 10 >= r_in * 9,
        "{} of {r_in} reads answered inline",
        st.answered_inline
    );
}

#[test]
fn reads_through_the_node_are_whole_when_the_backend_answers_short() {
    // The backend stages at most 1 MiB for the node at once and answers larger reads
    // short, as POSIX allows; the node's reader asks for 2 MiB at a time (its read-ahead
    // window more) and must still get every byte it asked for, not the backend's share.
    let export = scratch("ionode-short");
    let backend = Proc::backend(&export, &["--trust-forwarder", "0", "--staging-mib", "1"]);
    let node = Proc::node(&backend.addr, &[]);
    let data = pattern(5, 0, 16 << 20);
    std::fs::write(export.join("big"), &data).unwrap();
    let f = node.client().open("/big").unwrap();
    let mut buf = vec![0u8; 2 << 20];
    for at in (0..data.len()).step_by(buf.len()) {
        let n = f.read_at(&mut buf, at as u64).unwrap();
        assert_eq!(n, buf.len(), "a read at {at} came back short");
        assert!(buf[..] == data[at..at + n], "the bytes at {at}");
    }
    assert_eq!(
        f.read_at(&mut buf, data.len() as u64).unwrap(),
        0,
        "the end"
    );
    // Backwards: no read follows the one before, so each is asked of the backend from
    // where it arrived (not fetched with a window), and completed from its short
    // answers there.
    let begun = node.stats().begun_inline;
    for at in (0..data.len()).step_by(buf.len()).rev() {
        let n = f.read_at(&mut buf, at as u64).unwrap();
        assert_eq!(n, buf.len(), "a read at {at} came back short");
        assert!(buf[..] == data[at..at + n], "the bytes at {at}");
    }
    let begun = node.stats().begun_inline - begun;
    assert!(begun >= 7, "{begun} of 8 asked from where they arrived");
    // Writes: a write-out's 8 MiB backend writes come back short too, and go on.
    let w = node.client().create("/written").unwrap();
    for (i, piece) in data.chunks(256 << 10).enumerate() {
        w.write_at(piece, (i * piece.len()) as u64).unwrap();
    }
    w.sync_all().unwrap();
    assert!(
        std::fs::read(export.join("written")).unwrap() == data,
        "after fsync"
    );
}

#[test]
fn random_small_reads_do_not_fetch_a_block_each() {
    // 8 clients read 4 KiB blocks at random over one 32 MiB file: reads near each
    // other by chance once made the node fetch the 1 MiB around each miss. Blocks are
    // tried, found to serve nothing, and given up.
    let (export, _backend, node) = pair("ionode-random-reads", &[]);
    let data = pattern(13, 0, 32 << 20);
    std::fs::write(export.join("shared"), &data).unwrap();
    let blocks = (data.len() / BLOCK) as u64;
    std::thread::scope(|s| {
        for c in 0..8u64 {
            let (node, data) = (&node, &data);
            s.spawn(move || {
                let f = node.client().open("/shared").unwrap();
                let mut buf = vec![0u8; BLOCK];
                let mut x = c.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for _ in 0..256 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let at = (x % blocks) as usize * BLOCK;
                    assert_eq!(f.read_at(&mut buf, at as u64).unwrap(), BLOCK);
                    assert!(buf[..] == data[at..at + BLOCK], "the bytes at {at}");
                }
            });
        }
    });
    // (364 before blocks were judged; 19 with the bound of 32 reads per block.)
    let st = node.stats();
    assert!(
        st.readahead_fetches <= 64,
        "{} blocks fetched for 2048 random reads",
        st.readahead_fetches
    );
}

#[test]
fn many_sequential_readers_share_the_read_ahead_budget() {
    // 16 readers of 4 MiB files, 8 MiB of read-ahead for all: each reads ahead its share
    // (512 KiB). Windows past the share could not be kept, and every client read missed
    // and fetched again (one backend read per client read before shares).
    let (export, _backend, node) = pair("ionode-ra-share", &["--readahead-total", "8M"]);
    let size = 4 << 20;
    for c in 0..16u64 {
        std::fs::write(export.join(format!("r{c}")), pattern(c, 0, size)).unwrap();
    }
    std::thread::scope(|s| {
        for c in 0..16u64 {
            let node = &node;
            s.spawn(move || {
                let f = node.client().open(&format!("/r{c}")).unwrap();
                let mut buf = vec![0u8; BLOCK];
                for off in (0..size).step_by(BLOCK) {
                    assert_eq!(f.read_at(&mut buf, off as u64).unwrap(), BLOCK);
                    assert!(buf == pattern(c, off as u64, BLOCK), "file {c} at {off}");
                }
            });
        }
    });
    let (r_in, r_out) = node.stats().op("posix.read");
    assert_eq!(r_in, 16 * (size / BLOCK) as u64);
    assert!(
        r_out * 16 <= r_in,
        "backend reads {r_out} for {r_in} client reads"
    );
}

#[test]
fn fsynced_writes_survive_kill_9_of_the_node() {
    let (export, backend, node) = pair("ionode-kill", &["--flush-after-ms", "600000"]);
    let fs = node.client();
    let f = fs.create("/kept").unwrap();
    let data = pattern(9, 0, 64 * BLOCK);
    write_blocks(&f, &data);
    fs.call(FSYNC, &(f.handle().unwrap(), false)).unwrap();
    let mut node = node;
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    assert_eq!(std::fs::read(export.join("kept")).unwrap(), data);
    // The backend is fine, and a new node in front of it serves.
    let again = Proc::node(&backend.addr, &[]);
    assert_eq!(again.client().read("/kept").unwrap(), data);
    again
        .client()
        .set_times("/kept", SetTime::Now, SetTime::Now)
        .unwrap();
}

#[test]
fn the_backend_checks_each_client_identity_through_the_node() {
    let (export, backend, node) = pair("ionode-ids", &[]);
    std::fs::write(export.join("secret"), b"root only").unwrap();
    std::fs::set_permissions(
        export.join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(export.join("public"), b"for all").unwrap();
    let ship = posix_ship_bin();
    let as_nobody = |path: &str| {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&ship)
            .args(["cat", path])
            .env("POSIX_SHIP_SERVER", &node.addr)
            .output()
            .expect("setpriv")
    };
    let out = as_nobody("/public");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"for all");
    let out = as_nobody("/secret");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "nobody read root's 0600 file through the node"
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(
        node.client().read("/secret").unwrap(),
        b"root only",
        "root may"
    );
    // A backend that does not trust the node refuses calls made for others.
    let untrusting = Proc::backend(&export, &[]);
    let rogue = Proc::node(&untrusting.addr, &[]);
    let e = rogue.client().read("/public").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    drop(backend);
}

#[test]
fn with_a_journal_acknowledged_writes_survive_kill_9_of_the_node() {
    let export = scratch("ionode-journal");
    let backend = Proc::backend(&export, &["--trust-forwarder", "0"]);
    let journal = scratch("ionode-journal-dir");
    let j = journal.to_str().unwrap();
    let node = Proc::node(
        &backend.addr,
        &["--flush-after-ms", "600000", "--journal", j],
    );
    let fs = node.client();
    let mut files = Vec::new();
    for i in 0..4u64 {
        let f = fs.create(&format!("/j{i}")).unwrap();
        let data = pattern(i, 0, 40 * BLOCK + 100);
        write_blocks(&f, &data);
        files.push((i, data, f));
    }
    let st = node.stats();
    assert!(st.journal_records >= 4 * 41, "{st:?}");
    assert_eq!(
        std::fs::metadata(export.join("j0")).unwrap().len(),
        0,
        "acknowledged, buffered, not on the backend"
    );
    let mut node = node;
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    drop(files);
    // The journal is replayed when the node starts again.
    let again = Proc::node(&backend.addr, &["--journal", j]);
    for i in 0..4u64 {
        let want = pattern(i, 0, 40 * BLOCK + 100);
        assert_eq!(
            std::fs::read(export.join(format!("j{i}"))).unwrap(),
            want,
            "file {i}"
        );
    }
    assert_eq!(
        std::fs::metadata(journal.join("journal.log"))
            .unwrap()
            .len(),
        0,
        "emptied after the replay"
    );
    drop(again);
}

#[test]
fn a_client_that_goes_away_leaves_no_handle_and_its_writes_land() {
    let (export, _backend, node) = pair("ionode-lost", &["--flush-after-ms", "600000"]);
    let fs = node.client();
    let o = fs
        .open_raw(b"/orphan", libc::O_CREAT | libc::O_WRONLY, 0o644)
        .unwrap();
    let data = pattern(5, 0, 10 * BLOCK);
    for (i, chunk) in data.chunks(BLOCK).enumerate() {
        fs.pwrite(o.fh, chunk, Some((i * BLOCK) as u64)).unwrap();
    }
    assert_eq!(node.stats().handles, 1);
    // Gone without closing: its engine and connection drop.
    drop(fs);
    // The node notices, closes in the background, and the bytes land.
    let t0 = std::time::Instant::now();
    loop {
        let handles = node.stats().handles;
        let backend_open = _backend.client().server_stats().unwrap().open_files;
        let landed = std::fs::read(export.join("orphan")).unwrap() == data;
        if handles == 0 && backend_open == 0 && landed {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 10,
            "after the client left: {handles} handles on the node, {backend_open} on the \
             backend, bytes landed: {landed}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_backend_restart_loses_no_fsynced_byte_and_buffered_bytes_land_after_it() {
    let export = scratch("ionode-restart");
    let name = format!("sm://qs-ionode-restart-{}", std::process::id());
    let args = ["--trust-forwarder", "0"];
    let backend = Proc::backend_on(&export, &name, &args);
    let node = Proc::node(&backend.addr, &["--flush-after-ms", "100"]);
    let fs = node.client();
    let f = fs.create("/synced").unwrap();
    let data = pattern(11, 0, 16 * BLOCK);
    write_blocks(&f, &data);
    f.sync_all().unwrap();
    let g = fs.create("/unsynced").unwrap();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND;
    let log = fs.open_raw(b"/log", flags, 0o644).unwrap().fh;
    fs.pwrite(log, b"one\n", None).unwrap();
    assert!(backend.stop(), "the backend stops cleanly");
    // Acknowledged while the backend is away: buffered.
    write_blocks(&g, &data);
    // Calls fail with a clear errno while it is away; fsync reports the bytes not there.
    let e = fs.metadata("/synced").unwrap_err();
    assert!(
        [libc::ECONNRESET, libc::ECONNREFUSED, libc::ETIMEDOUT]
            .contains(&e.raw_os_error().unwrap_or(0)),
        "{e}"
    );
    let e = g.sync_all().unwrap_err();
    assert!(
        e.raw_os_error().is_some(),
        "fsync reports the lost writes: {e}"
    );
    let back = Proc::backend_on(&export, &name, &args);
    assert_eq!(
        std::fs::read(export.join("synced")).unwrap(),
        data,
        "fsync'd bytes"
    );
    // Once the backend is back, the node serves again, and the buffered bytes land (the
    // file is opened again at the backend, as its writer, and checked to be the same).
    let t0 = std::time::Instant::now();
    loop {
        let served = node.client().read("/synced").ok();
        let landed = std::fs::read(export.join("unsynced")).ok();
        if served.as_ref() == Some(&data) && landed.as_ref() == Some(&data) {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 20,
            "after the restart: served {:?} bytes, {:?} bytes landed",
            served.map(|d| d.len()),
            landed.map(|d| d.len())
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // An fsync of a file opened before the restart: the backend forgot its handle, so
    // the node opens the file again there and syncs it.
    f.sync_all().unwrap();
    // So does an append (a write through, answered from the backend's completion: its
    // `EBADF` has the write made again the blocking way, which opens the file again).
    fs.pwrite(log, b"two\n", None).unwrap();
    assert_eq!(std::fs::read(export.join("log")).unwrap(), b"one\ntwo\n");
    // Its close may still report the outage (an error owed from a retry that failed
    // before the backend came back: conservative, the bytes are on the backend).
    let _ = g.close();
    drop(back);
}

#[test]
fn a_fuse_mount_over_the_node_serves_programs_and_its_writes_are_merged() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    if fuse.is_err() {
        println!("skipped: /dev/fuse cannot be opened here");
        return;
    }
    let (export, _backend, node) = pair("ionode-mount", &[]);
    let at = scratch("ionode-mount-at");
    let mut mount = Command::new(posix_ship_bin())
        .args(["-s", &node.addr, "mount"])
        .arg(&at)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(mount.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("mounted"), "mount said {line:?}");
    let out = Command::new("sh")
        .args([
            "-c",
            "dd if=/dev/zero of=z bs=4k count=1024 status=none && mkdir d \
             && cp /etc/passwd d/p && cmp /etc/passwd d/p && ls d && wc -c < z \
             && fallocate -l 8M big && stat -c %s big",
        ])
        .current_dir(&at)
        .output()
        .unwrap();
    // SAFETY: kill(2) on our own child; it unmounts on SIGTERM.
    unsafe { libc::kill(mount.id() as i32, libc::SIGTERM) };
    let _ = mount.wait();
    let _ = Command::new("umount")
        .arg("-l")
        .arg(&at)
        .stderr(Stdio::null())
        .status();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "p\n4194304\n8388608\n"
    );
    assert_eq!(std::fs::metadata(export.join("z")).unwrap().len(), 4 << 20);
    assert_eq!(
        std::fs::read(export.join("d/p")).unwrap(),
        std::fs::read("/etc/passwd").unwrap()
    );
    let (w_in, w_out) = node.stats().op("posix.write");
    assert!(w_in >= 1024, "{w_in} writes from the mount");
    assert!(w_out * 16 <= w_in, "backend writes {w_out} for {w_in}");
}

#[test]
fn a_refused_truncating_open_destroys_no_buffered_write() {
    let (export, _backend, node) = pair("ionode-trunc-refused", &["--flush-after-ms", "600000"]);
    let fs = node.client();
    let f = fs.create("/f").unwrap();
    let data = pattern(1, 0, 8 * BLOCK);
    write_blocks(&f, &data);
    let src = scratch("ionode-trunc-src").join("x");
    std::fs::write(&src, "y").unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(posix_ship_bin())
        .args(["put", src.to_str().unwrap(), "/f"])
        .env("POSIX_SHIP_SERVER", &node.addr)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "{err}"
    );
    f.sync_all().unwrap();
    assert_eq!(
        std::fs::read(export.join("f")).unwrap(),
        data,
        "root's writes intact"
    );
}

/// Clients of one user opening one file alike at the same moment (a job's ranks opening
/// its input) make one backend open: the opens that come while it is under way wait for
/// it and share its handle.
#[test]
fn concurrent_first_opens_of_one_file_make_one_backend_open() {
    let (export, backend, node) = pair("ionode-join", &["--attr-timeout", "60"]);
    std::fs::write(export.join("input"), vec![7u8; BLOCK]).unwrap();
    const N: usize = 32;
    let clients: Vec<_> = (0..N).map(|_| node.client()).collect();
    let gate = std::sync::Barrier::new(N);
    let fhs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = clients
            .iter()
            .map(|c| {
                let gate = &gate;
                s.spawn(move || {
                    gate.wait();
                    c.open_raw(b"/input", libc::O_RDONLY, 0).unwrap().fh
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let st = node.stats();
    assert_eq!(st.op("posix.open"), (N as u64, 1), "one backend open");
    assert_eq!(st.shared_opens, N as u64 - 1);
    assert_eq!(backend.client().server_stats().unwrap().open_files, 1);
    for (c, fh) in clients.iter().zip(&fhs) {
        let mut b = [0u8; 4];
        assert_eq!(c.pread(*fh, &mut b, 0).unwrap(), 4);
        assert_eq!(b, [7u8; 4]);
        c.close_raw(*fh).unwrap();
    }
    let t = std::time::Instant::now();
    while backend.client().server_stats().unwrap().open_files != 0 {
        assert!(t.elapsed().as_secs() < 10, "backend handle left open");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Opens alike of a file that is not there: each is refused, none waits for ever.
    std::thread::scope(|s| {
        for c in &clients {
            let gate = &gate;
            s.spawn(move || {
                gate.wait();
                let e = c.open_raw(b"/missing", libc::O_RDONLY, 0).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
            });
        }
    });
}

/// Clients of one user opening one file alike share one backend handle (one backend
/// open, one close); another user's open is still checked at the backend; a change made
/// through the node ends the sharing.
#[test]
fn clients_of_one_user_opening_one_file_share_one_backend_handle() {
    // (Attributes kept long enough that no open of the test comes after them.)
    let (export, backend, node) = pair(
        "ionode-share",
        &["--flush-after-ms", "600000", "--attr-timeout", "60"],
    );
    std::fs::write(export.join("shared"), vec![0u8; 8 * BLOCK]).unwrap();
    std::fs::set_permissions(
        export.join("shared"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let backend_open = || backend.client().server_stats().unwrap().open_files;
    let clients: Vec<_> = (0..8).map(|_| node.client()).collect();
    let fhs: Vec<_> = clients
        .iter()
        .map(|c| c.open_raw(b"/shared", libc::O_RDWR, 0).unwrap().fh)
        .collect();
    let s = node.stats();
    assert_eq!(s.shared_opens, 7);
    assert_eq!(s.op("posix.open"), (8, 1), "one backend open");
    assert_eq!(backend_open(), 1, "one backend handle");

    // Another user opens through the node while root's handle is shared: the backend
    // checks that user, and refuses.
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(posix_ship_bin())
        .args(["cat", "/shared"])
        .env("POSIX_SHIP_SERVER", &node.addr)
        .output()
        .expect("setpriv");
    assert!(!out.status.success(), "nobody read root's 0600 file");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));

    for (i, (c, fh)) in clients.iter().zip(&fhs).enumerate() {
        let block = pattern(1, (i * BLOCK) as u64, BLOCK);
        c.pwrite(*fh, &block, Some((i * BLOCK) as u64)).unwrap();
    }
    for (c, fh) in clients.iter().zip(&fhs).take(7) {
        c.close_raw(*fh).unwrap();
    }
    assert_eq!(backend_open(), 1, "open while one client still has it");
    // A change through the node: the next open is checked at the backend again.
    clients[0].set_permissions("/shared", 0o640).unwrap();
    let again = clients[0].open_raw(b"/shared", libc::O_RDWR, 0).unwrap().fh;
    // (Eight of root, one of nobody, this one: three made at the backend.)
    assert_eq!(node.stats().op("posix.open"), (10, 3));
    clients[0].close_raw(again).unwrap();
    clients[7].close_raw(fhs[7]).unwrap();
    let t = std::time::Instant::now();
    while backend_open() != 0 {
        assert!(t.elapsed().as_secs() < 10, "backend handles left open");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let want: Vec<u8> = (0..8)
        .flat_map(|i| pattern(1, (i * BLOCK) as u64, BLOCK))
        .collect();
    assert_eq!(std::fs::read(export.join("shared")).unwrap(), want);
    // Two backend handles, closed in one request or two.
    let s = node.stats();
    let requests = s.op("posix.close").1 + s.op("posix.close_many").1;
    assert!((1..=2).contains(&requests), "{requests} close requests");
}
