//! Writes through the I/O node to the backend (appends, large writes) that the backend
//! takes only in part.

mod common;

use std::os::unix::process::CommandExt;

use common::*;
use posix_ship::proto::{WRITE, WriteData, WriteReq};
use rpc_core::{Access, Seg};

/// The backend's file size limit (`RLIMIT_FSIZE`).
const LIMIT: u64 = 100_000;

/// An append the backend takes only in part (its process's file size limit: the write
/// stops there, the next meets `EFBIG`) is answered with the bytes it took, as the kernel
/// answers a write cut short, not with the error the rest met (after which an
/// application would write again what landed); the rest, written next, gets the error.
/// The client library's `pwrite_some` answers the same way.
#[test]
fn an_append_cut_short_is_answered_with_what_landed() {
    let export = scratch("ionode-append-short");
    let backend = Proc::backend_with(&export, "sm", &["--trust-forwarder", "0"], |cmd| {
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
    });
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
