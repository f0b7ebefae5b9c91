//! Large files, many clients, and faults: a 1 GiB file through the library and through
//! `dd` via the interposer; 16 clients writing disjoint regions of one file; a client
//! killed mid-write; a server restarted.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ServerProc, errno, preload_lib, scratch};
use posix_ship::client::{ClientOptions, RemoteFs};

const GIB: u64 = 1 << 30;

fn pattern(block: u64, buf: &mut [u8]) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        let v = (block << 32 | i as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn a_gibibyte_travels_intact_through_the_library_and_through_dd() {
    let base = scratch("gib");
    let export = base.join("export");
    std::fs::create_dir_all(&export).unwrap();
    let srv = ServerProc::start(&export, "tcp", &[]);
    let fs = srv.client();
    // Library: write 1 GiB in 8 MiB blocks, read it back, compare block by block.
    let block = 8u64 << 20;
    let mut buf = vec![0u8; block as usize];
    let mut f = fs.create("/lib.bin").unwrap();
    for b in 0..GIB / block {
        pattern(b, &mut buf);
        f.write_all(&buf).unwrap();
    }
    f.close().unwrap();
    assert_eq!(
        std::fs::metadata(export.join("lib.bin")).unwrap().len(),
        GIB
    );
    let mut f = fs.open("/lib.bin").unwrap();
    let mut want = vec![0u8; block as usize];
    for b in 0..GIB / block {
        pattern(b, &mut want);
        f.read_exact(&mut buf).unwrap();
        assert!(buf == want, "block {b} differs");
    }
    assert_eq!(f.read(&mut buf).unwrap(), 0, "end of file");

    // dd via the interposer: local -> shipped -> local, checksums equal.
    let lib = preload_lib();
    let dd = |i: &str, o: &str| {
        let st = Command::new("dd")
            .args([
                &format!("if={i}"),
                &format!("of={o}"),
                "bs=1M",
                "status=none",
            ])
            .env("LD_PRELOAD", &lib)
            .env("POSIX_SHIP_SERVER", &srv.addr)
            .env("QS_AUTH", &srv.auth)
            .env("POSIX_SHIP_MOUNT", "/qs-fwd")
            .status()
            .unwrap();
        assert!(st.success(), "dd {i} -> {o}");
    };
    let lib_copy = export.join("lib.bin");
    let back = base.join("back.bin");
    dd(lib_copy.to_str().unwrap(), "/qs-fwd/dd.bin");
    dd("/qs-fwd/dd.bin", back.to_str().unwrap());
    let h = sha256(&lib_copy);
    assert_eq!(sha256(&export.join("dd.bin")), h);
    assert_eq!(sha256(&back), h);
}

#[test]
fn sixteen_clients_write_disjoint_regions_of_one_file_and_read_it_back() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_thread_names(true)
        .try_init();
    let export = scratch("shared-file");
    let srv = ServerProc::start(&export, "tcp", &[]);
    drop(srv.client().create("/shared").unwrap());
    let (clients, region) = (16u64, 3 << 20);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let addr = srv.addr.clone();
            let opts = srv.options();
            std::thread::spawn(move || {
                let inline = posix_ship::client::DEFAULT_INLINE_MAX;
                let fs = RemoteFs::connect_with(
                    &addr,
                    ClientOptions {
                        inline_max: inline,
                        timeout: Some(Duration::from_secs(10)),
                        ..opts
                    },
                )
                .unwrap();
                let f = fs.open_with("/shared", libc::O_RDWR, 0).unwrap();
                let mut buf = vec![0u8; region as usize];
                pattern(c, &mut buf);
                // Uneven pieces: inline and bulk writes interleave between clients.
                let mut off = 0;
                for piece in [1000usize, 40_000, 1 << 20].iter().cycle() {
                    if off >= buf.len() {
                        break;
                    }
                    let end = (off + piece).min(buf.len());
                    f.write_at(&buf[off..end], c * region + off as u64)
                        .unwrap_or_else(|e| panic!("client {c} write at {off}: {e}"));
                    off = end;
                }
                let mut back = vec![0u8; region as usize];
                assert_eq!(f.read_at(&mut back, c * region).unwrap(), back.len());
                assert!(back == buf, "client {c} reads its own region back");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = std::fs::read(export.join("shared")).unwrap();
    assert_eq!(all.len() as u64, clients * region);
    let mut want = vec![0u8; region as usize];
    for c in 0..clients {
        pattern(c, &mut want);
        let got = &all[(c * region) as usize..((c + 1) * region) as usize];
        assert!(got == want.as_slice(), "region {c} lost or misplaced");
    }
}

#[test]
fn a_client_killed_mid_write_leaks_nothing_and_a_restarted_server_is_reached_again() {
    let export = scratch("killed-client");
    let srv = ServerProc::start(&export, "tcp", &[]);
    let lib = preload_lib();
    // A dd that writes for ever, killed while it writes.
    let mut dd = Command::new("dd")
        .args(["if=/dev/zero", "of=/qs-fwd/endless", "bs=1M"])
        .env("LD_PRELOAD", &lib)
        .env("POSIX_SHIP_SERVER", &srv.addr)
        .env("QS_AUTH", &srv.auth)
        .env("POSIX_SHIP_MOUNT", "/qs-fwd")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watcher = srv.client();
    let t0 = Instant::now();
    while std::fs::metadata(export.join("endless")).map_or(0, |m| m.len()) < 8 << 20 {
        assert!(t0.elapsed() < Duration::from_secs(20), "dd never wrote");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        watcher.server_stats().unwrap().open_files,
        1,
        "dd's file is open"
    );
    dd.kill().unwrap();
    dd.wait().unwrap();
    let t0 = Instant::now();
    while watcher.server_stats().unwrap().open_files != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the killed client's handle leaked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Restart the server at the same address: old handles fail clearly, new calls work.
    let f = watcher.create("/kept").unwrap();
    let addr = srv.addr.clone();
    let port = addr.rsplit(':').next().unwrap().to_string();
    drop(srv);
    // The connection was reset, or (once the loss is known) a new one is refused.
    let e = errno(f.write_at(b"x", 0));
    assert!(
        e == libc::ECONNRESET || e == libc::ECONNREFUSED,
        "server gone: errno {e}"
    );
    let srv2 = ServerProc::start(&export, &format!("tcp://127.0.0.1:{port}"), &[]);
    assert_eq!(srv2.addr, addr);
    let fs = srv2.client();
    fs.write("/after", b"restarted").unwrap();
    assert_eq!(fs.read("/after").unwrap(), b"restarted");
    assert!(srv2.stop(), "graceful stop after the restart");
}
