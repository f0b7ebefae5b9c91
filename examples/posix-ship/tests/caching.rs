//! Client-side caching through the interposer, measured in server requests: a sequential
//! reader is read ahead (few large requests instead of one per 4 KiB read), writes through
//! the process are seen by its later reads, and the setting turns it off.

mod common;

use std::process::{Command, Output};

use common::{ServerProc, preload_lib, scratch};

const MOUNT: &str = "/qs-cache";

/// Runs `prog args` under the interposer with extra environment; returns its output and
/// the requests the server served meanwhile.
fn shipped(srv: &ServerProc, env: &[(&str, &str)], prog: &str, args: &[&str]) -> (Output, u64) {
    let fs = srv.client();
    let before = fs.server_stats().unwrap().requests;
    let out = Command::new(prog)
        .args(args)
        .env("LD_PRELOAD", preload_lib())
        .env("POSIX_SHIP_SERVER", &srv.addr)
        .env("QS_AUTH", &srv.auth)
        .env("POSIX_SHIP_MOUNT", MOUNT)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Less this query itself.
    (out, fs.server_stats().unwrap().requests - before - 1)
}

fn sha(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_sequential_reader_makes_few_requests_and_reads_every_byte_right() {
    let export = scratch("cache-readahead");
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(export.join("big"), &data).unwrap();
    let srv = ServerProc::start(&export, "sm", &[]);
    let local = Command::new("sha256sum")
        .arg(export.join("big"))
        .output()
        .unwrap();
    let path = format!("{MOUNT}/big");
    let (out, calls) = shipped(&srv, &[], "sha256sum", &[&path]);
    assert_eq!(
        sha(&out),
        sha(&local),
        "the bytes read ahead are the file's"
    );
    // 16 MiB in windows of 128K doubling to 8M: a handful of reads (4096 without),
    // plus open, stat and close.
    assert!(calls <= 16, "{calls} requests for a 16 MiB sequential read");
    let (out, off) = shipped(
        &srv,
        &[("POSIX_SHIP_READAHEAD", "0")],
        "sha256sum",
        &[&path],
    );
    assert_eq!(sha(&out), sha(&local));
    assert!(off >= 512, "off: {off} requests (one per stdio buffer)");
    // Random reads are not read ahead: `tail -c` seeks to the end and reads once.
    let (out, calls) = shipped(&srv, &[], "tail", &["-c", "100", &path]);
    assert_eq!(out.stdout, &data[data.len() - 100..]);
    assert!(calls <= 6, "{calls}");
}

const PY: &str = r#"
import os, sys
p = sys.argv[1]
with open(p, "wb") as f:
    f.write(bytes(range(256)) * 4096)
r = open(p, "rb", buffering=0)
a = r.read(4096); b = r.read(4096)
w = open(p, "r+b", buffering=0)
w.seek(8192); w.write(b"X" * 4096)
c = r.read(4096)
print(a[:2].hex(), b[:2].hex(), c[:2].hex())
"#;

#[test]
fn a_write_through_another_descriptor_is_seen_by_the_next_read() {
    let export = scratch("cache-coherent");
    let srv = ServerProc::start(&export, "sm", &[]);
    let path = format!("{MOUNT}/f");
    let (out, _) = shipped(&srv, &[], "python3", &["-c", PY, &path]);
    // The third read comes from the window the second one filled, unless the write
    // through the other descriptor dropped it.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0001 0001 5858"
    );
}
