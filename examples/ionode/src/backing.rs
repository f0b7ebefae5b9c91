//! A client's open file at its backend, opened again if the backend forgets it (a
//! restarted server drops every handle of its old connections): the same path, as the
//! same user, checked to be the same file (device and inode), so buffered writes and
//! reads carry on across a backend restart.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use posix_ship::client::RemoteFs;
use posix_ship::proto::{CLOSE, Fh, OPEN, OpenReq};
use serde_bytes::ByteBuf;

use crate::node::lock;

/// A backend handle that can be opened again.
pub struct Backing {
    /// The backend, acting for the client that opened the file.
    pub fs: RemoteFs,
    path: Vec<u8>,
    flags: i32,
    id: (u64, u64),
    /// The handle now: read without a lock (by progress and completion threads, which
    /// must not wait behind a reopen's `OPEN`).
    fh: AtomicU64,
    /// Held while the file is opened again.
    reopening: Mutex<()>,
    /// Client handles on it (`crate::opens`): the backend handle closes with the last.
    pub users: AtomicUsize,
    /// Its small reads out and queued (`crate::listed`).
    pub(crate) reads: Mutex<crate::listed::Queue>,
    /// The backend answered `ENOSYS` to a list write (`crate::files`'s write-outs).
    pub(crate) writes_alone: AtomicBool,
}

impl Backing {
    /// `fh`, opened as `path` with `flags`, file `id` (device, inode).
    pub fn new(fs: RemoteFs, path: &[u8], flags: i32, fh: Fh, id: (u64, u64)) -> Backing {
        Backing {
            fs,
            path: path.to_vec(),
            flags: flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC),
            id,
            fh: AtomicU64::new(fh.0),
            reopening: Mutex::new(()),
            users: AtomicUsize::new(1),
            reads: Mutex::default(),
            writes_alone: AtomicBool::new(false),
        }
    }

    /// The file (device, inode) it was opened on.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    /// The backend's handle now.
    pub fn fh(&self) -> Fh {
        Fh(self.fh.load(Ordering::Acquire))
    }

    /// Runs `f` with the handle; if the backend no longer knows it (`EBADF`), opens the
    /// file again and runs `f` once more.
    pub fn with<T>(&self, mut f: impl FnMut(Fh) -> io::Result<T>) -> io::Result<T> {
        let fh = self.fh();
        match f(fh) {
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
                self.reopen(fh)?;
                f(self.fh())
            }
            r => r,
        }
    }

    fn reopen(&self, stale: Fh) -> io::Result<()> {
        let _g = lock(&self.reopening);
        if self.fh() != stale {
            return Ok(()); // another thread did
        }
        let req = OpenReq {
            path: ByteBuf::from(self.path.clone()),
            flags: self.flags,
            mode: 0,
        };
        let o = self.fs.call(OPEN, &req)?;
        if (o.attr.dev, o.attr.ino) != self.id {
            let _ = self.fs.call(CLOSE, &o.fh);
            tracing::warn!(path = %String::from_utf8_lossy(&self.path), "the backend's path names another file now");
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        tracing::info!(path = %String::from_utf8_lossy(&self.path), "reopened at the backend");
        self.fh.store(o.fh.0, Ordering::Release);
        Ok(())
    }
}
