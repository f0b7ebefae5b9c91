//! List I/O against a real server process: `posix.read_many` (what an I/O node asks for
//! many clients' small reads of one file): each range's bytes in order, short only where
//! the file ends, one request; `posix.write_many` (its write-outs of extents that did
//! not merge): every range written, the bytes inline or pulled, one request. Lists past
//! their bounds, byte counts that do not add up, offsets past the largest, handles not
//! the caller's or not open for the access refused before anything is read or written.

mod common;

use std::sync::mpsc;

use common::{ServerProc, errno, scratch, transports};
use posix_ship::client::RemoteFs;
use posix_ship::proto::*;
use rpc_core::{Access, Seg};

/// `pread_many_then`, waited for.
fn read_many(fs: &RemoteFs, fh: Fh, ranges: &[(u64, u32)]) -> std::io::Result<Vec<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    fs.pread_many_then(fh, ranges.to_vec(), move |r| tx.send(r).unwrap());
    rx.recv().unwrap()
}

fn list_reads(transport: &str) {
    let export = scratch(&format!("list-reads-{transport}"));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(export.join("f"), &data).unwrap();
    let srv = ServerProc::start(&export, transport, &[]);
    let fs = srv.client();
    let fh = fs.open_raw(b"/f", libc::O_RDONLY, 0).unwrap().fh;

    // Out of order, overlapping, empty, one across the end and one past it.
    let ranges = [
        (90_000, 4096),
        (0, 4096),
        (4000, 200),
        (12_345, 0),
        (98_000, 4096),
        (200_000, 10),
    ];
    let before = srv_requests(&fs);
    let got = read_many(&fs, fh, &ranges).unwrap();
    assert_eq!(srv_requests(&fs) - before, 1, "one request for the list");
    let want: Vec<&[u8]> = ranges
        .iter()
        .map(|&(o, l)| {
            &data[(o as usize).min(data.len())..(o as usize + l as usize).min(data.len())]
        })
        .collect();
    assert_eq!(got.len(), ranges.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.as_slice(), *w, "range {i} {:?}", ranges[i]);
    }
    // As many as one answer carries inline: 15 of 4 KiB (60 KiB in all), 64 small ones;
    // more bytes are pushed into a buffer of the caller's.
    let most: Vec<(u64, u32)> = (0..15).map(|i| (i * 6000, 4096)).collect();
    assert_eq!(read_many(&fs, fh, &most).unwrap().len(), 15);
    let many: Vec<(u64, u32)> = (0..MAX_READ_MANY as u64).map(|i| (i * 1000, 16)).collect();
    let got = read_many(&fs, fh, &many).unwrap();
    assert!(
        got.iter()
            .zip(&many)
            .all(|(g, &(o, _))| g == &data[o as usize..o as usize + 16])
    );
    let pushed = [(70_000, 20_000), (0, 30_000), (95_000, 20_000), (10, 1)];
    let got = read_many(&fs, fh, &pushed).unwrap();
    for (g, &(o, l)) in got.iter().zip(&pushed) {
        assert!(g[..] == data[o as usize..(o + l as u64).min(100_000) as usize]);
    }

    // Refused: past the bytes one inline answer may carry, past the bytes of one request,
    // a buffer shorter than the bytes asked, an offset past the largest, a list longer
    // than its bound (refused while decoded: no allocation, no read).
    let raw = |ranges: Vec<(u64, u32)>, dest: Option<usize>| {
        let buf = dest.map(|n| {
            fs.engine()
                .expose(vec![Seg::from(vec![0u8; n])], Access::WriteOnly)
                .unwrap()
        });
        let req = ReadManyReq {
            fh,
            ranges: Bounded(ranges),
            dest: buf.as_ref().map(|b| b.descriptor()),
        };
        fs.call(READ_MANY, &req).map(drop)
    };
    let too_much: Vec<(u64, u32)> = (0..16).map(|i| (i * 4096, 4096)).collect();
    assert_eq!(errno(raw(too_much, None)), libc::EINVAL);
    let past_io = vec![(0, 9 << 20), (0, 9 << 20)];
    assert_eq!(errno(raw(past_io, Some(4096))), libc::EINVAL);
    assert_eq!(
        errno(raw(vec![(0, 4096), (0, 4096)], Some(4096))),
        libc::EINVAL
    );
    assert_eq!(errno(read_many(&fs, fh, &[(1 << 63, 4)])), libc::EINVAL);
    let huge = [(0, u32::MAX)];
    assert_eq!(errno(read_many(&fs, fh, &huge)), libc::EINVAL);
    let long = (0..MAX_READ_MANY as u64 + 1).map(|i| (i, 1)).collect();
    assert!(raw(long, None).is_err(), "a list past its bound");
    // A handle open only for writing, a closed one, one of another client.
    let w = fs.open_raw(b"/f", libc::O_WRONLY, 0).unwrap().fh;
    assert_eq!(errno(read_many(&fs, w, &[(0, 4)])), libc::EBADF);
    let gone = fs.open_raw(b"/f", libc::O_RDONLY, 0).unwrap().fh;
    fs.call(CLOSE, &gone).unwrap();
    assert_eq!(errno(read_many(&fs, gone, &[(0, 4)])), libc::EBADF);
    let other = srv.client();
    assert_eq!(errno(read_many(&other, fh, &[(0, 4)])), libc::EBADF);
    // The server is well and the file unchanged.
    assert_eq!(read_many(&fs, fh, &[(0, 8)]).unwrap()[0], data[..8]);
    assert_eq!(std::fs::read(export.join("f")).unwrap(), data);
}

/// The server's request count (stats calls not counted).
fn srv_requests(fs: &RemoteFs) -> u64 {
    fs.server_stats().unwrap().requests
}

fn list_writes(transport: &str) {
    let export = scratch(&format!("list-writes-{transport}"));
    let srv = ServerProc::start(&export, transport, &[]);
    let fs = srv.client();
    let fh = fs
        .open_raw(b"/f", libc::O_RDWR | libc::O_CREAT, 0o644)
        .unwrap()
        .fh;
    let mut want = vec![0u8; 3 << 20];
    // Small (inline) and large (pulled) lists; pieces out of order, in parts.
    for (n, len) in [
        (10u64, 100usize),
        (MAX_WRITE_MANY as u64, 4096),
        (3, 700_000),
    ] {
        let pieces: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|i| {
                let off = (n - 1 - i) * (len as u64 + 4096);
                (
                    off,
                    (0..len).map(|j| (j as u64 * 3 + i + n) as u8).collect(),
                )
            })
            .collect();
        let list: Vec<(u64, Vec<&[u8]>)> = pieces
            .iter()
            .map(|(o, d)| (*o, d.chunks(1000).collect()))
            .collect();
        let before = srv_requests(&fs);
        let w = fs.pwrite_many_start(fh, &list).unwrap().wait().unwrap();
        assert_eq!(srv_requests(&fs) - before, 1, "one request for the list");
        assert_eq!(w.n, n * len as u64, "{n} writes of {len}");
        for (o, d) in &pieces {
            want[*o as usize..*o as usize + len].copy_from_slice(d);
        }
        let on_disk = std::fs::read(export.join("f")).unwrap();
        assert_eq!(on_disk, want[..on_disk.len()], "{n} writes of {len}");
    }
    // Refused, the file untouched: bytes that do not add up to the ranges, an offset
    // past the largest (EINVAL) or a range past it (EFBIG), a list past its bound.
    let raw = |segs: Vec<(u64, u32)>, data: &[u8]| {
        let req = WriteManyReq {
            fh,
            segs: Bounded(segs),
            data: WriteData::Inline(serde_bytes::ByteBuf::from(data.to_vec())),
        };
        fs.call(WRITE_MANY, &req)
    };
    let before = std::fs::read(export.join("f")).unwrap();
    assert_eq!(errno(raw(vec![(0, 4), (10, 4)], b"1234567")), libc::EINVAL);
    assert_eq!(
        errno(raw(vec![(0, 4), (10, 4)], b"123456789")),
        libc::EINVAL
    );
    assert_eq!(
        errno(raw(vec![(0, 4), (1 << 63, 4)], b"12345678")),
        libc::EINVAL
    );
    let end = (1u64 << 63) - 2;
    assert_eq!(errno(raw(vec![(0, 4), (end, 4)], b"12345678")), libc::EFBIG);
    let long = (0..MAX_WRITE_MANY as u64 + 1).map(|i| (i, 1)).collect();
    assert!(
        raw(long, &[7; MAX_WRITE_MANY + 1]).is_err(),
        "a list past its bound"
    );
    assert_eq!(
        std::fs::read(export.join("f")).unwrap(),
        before,
        "nothing written"
    );
    // A handle open only for reading, one of another client.
    let r = fs.open_raw(b"/f", libc::O_RDONLY, 0).unwrap().fh;
    let one = [(0u64, vec![&b"x"[..]])];
    assert_eq!(
        errno(fs.pwrite_many_start(r, &one).unwrap().wait()),
        libc::EBADF
    );
    let other = srv.client();
    assert_eq!(
        errno(other.pwrite_many_start(fh, &one).unwrap().wait()),
        libc::EBADF
    );
    // The client's own bounds: too many ranges, too many bytes.
    let many: Vec<_> = (0..MAX_WRITE_MANY as u64 + 1)
        .map(|i| (i, vec![&b"x"[..]]))
        .collect();
    assert_eq!(
        errno(fs.pwrite_many_start(fh, &many).map(drop)),
        libc::EINVAL
    );
    assert_eq!(
        std::fs::read(export.join("f")).unwrap(),
        before,
        "nothing written"
    );
}

#[test]
fn list_reads_over_every_transport() {
    for t in transports() {
        list_reads(&t);
    }
}

#[test]
fn list_writes_over_every_transport() {
    for t in transports() {
        list_writes(&t);
    }
}

/// A list read larger than the server stages for a client at once answers the ranges
/// that fit (at least the first, or its first part): the rest were not read.
#[test]
fn a_list_read_past_the_staging_memory_answers_its_first_ranges() {
    let export = scratch("list-reads-staging");
    let data: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i * 13 + i / 4093) as u8)
        .collect();
    std::fs::write(export.join("f"), &data).unwrap();
    let srv = ServerProc::start(&export, "sm", &["--staging-mib", "1"]);
    let fs = srv.client();
    let fh = fs.open_raw(b"/f", libc::O_RDONLY, 0).unwrap().fh;
    let ranges = [(3 << 20, 600_000), (0, 500_000), (1 << 20, 100_000)];
    let got = read_many(&fs, fh, &ranges).unwrap();
    assert_eq!(got.len(), 2, "1 MiB staged: the first two ranges, in part");
    assert!(got[0] == data[3 << 20..(3 << 20) + 600_000]);
    let n = got[1].len();
    assert!((1..=500_000).contains(&n));
    assert!(got[1] == data[..n]);
}

/// `--no-list-io` answers both `ENOSYS`, as a server built before them (what an I/O
/// node's fallback to one request per range is tested against).
#[test]
fn a_server_without_list_io_answers_enosys() {
    let export = scratch("no-list-io");
    std::fs::write(export.join("f"), b"0123456789").unwrap();
    let srv = ServerProc::start(&export, "sm", &["--no-list-io"]);
    let fs = srv.client();
    let fh = fs.open_raw(b"/f", libc::O_RDWR, 0).unwrap().fh;
    assert_eq!(errno(read_many(&fs, fh, &[(0, 4)])), libc::ENOSYS);
    let one = [(0u64, vec![&b"x"[..]])];
    assert_eq!(
        errno(fs.pwrite_many_start(fh, &one).unwrap().wait()),
        libc::ENOSYS
    );
    assert_eq!(std::fs::read(export.join("f")).unwrap(), b"0123456789");
}
