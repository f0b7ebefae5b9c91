//! The remote backend: another posix-ship server, reached through the client, each call
//! made for the caller's identity (the server applies its own policy to it, and serves
//! such calls only from a forwarder it trusts: `posix-ship server --trust-forwarder UID`).
//!
//! A relay and no more: nothing is cached or merged (the I/O node, `examples/ionode`, is
//! the backend that does). It is the smallest complete [`Backend`], and lets a service on
//! one transport front a server on another (clients on `sm`, the server over `tcp`).

use std::io;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

use rustix::io::Errno;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::backend::{Backend, Change, Done, On, Payload, R, Who};
use crate::client::RemoteFs;
use crate::proto::*;

/// Another server, as a backend.
pub struct Remote {
    fs: RemoteFs,
    /// Handles of lost clients, closed in the background.
    closer: Mutex<Sender<Vec<Arc<RemoteFile>>>>,
}

/// A file open at the remote server, for the user who opened it.
pub struct RemoteFile {
    fs: RemoteFs,
    fh: Fh,
}

fn errno(e: io::Error) -> Errno {
    Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO))
}

fn buf(p: &[u8]) -> ByteBuf {
    ByteBuf::from(p.to_vec())
}

impl Remote {
    /// Forwards to the server `fs` is connected to.
    pub fn new(fs: RemoteFs) -> io::Result<Remote> {
        let (tx, rx) = channel::<Vec<Arc<RemoteFile>>>();
        std::thread::Builder::new()
            .name("remote-close".into())
            .spawn(move || {
                for f in rx.into_iter().flatten() {
                    let _ = f.fs.call(CLOSE, &f.fh);
                }
            })?;
        Ok(Remote {
            fs,
            closer: Mutex::new(tx),
        })
    }

    fn as_caller(&self, who: &Who) -> RemoteFs {
        self.fs.acting_for(who.principal())
    }

    /// `rpc` on the server for `who`.
    fn call<In: Serialize + Clone + 'static, Out: DeserializeOwned>(
        &self,
        who: &Who,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        input: In,
    ) -> R<Out> {
        self.as_caller(who).call(rpc, &input).map_err(errno)
    }

    /// `rpc` on a path or an open file, the target as the server names it.
    fn on<In: Serialize + Clone + 'static, Out: DeserializeOwned>(
        &self,
        who: &Who,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        t: On<'_, RemoteFile>,
        with: impl FnOnce(Target) -> In,
    ) -> R<Out> {
        let (fs, t) = match t {
            On::Path(p) => (self.as_caller(who), Target::Path(buf(p))),
            On::File(f) => (f.fs.clone(), Target::Handle(f.fh)),
        };
        fs.call(rpc, &with(t)).map_err(errno)
    }
}

impl Backend for Remote {
    type File = RemoteFile;

    fn open(&self, who: &Who, r: &OpenReq) -> R<(RemoteFile, Attr)> {
        let fs = self.as_caller(who);
        let o = fs.call(OPEN, r).map_err(errno)?;
        Ok((RemoteFile { fs, fh: o.fh }, o.attr))
    }

    fn close(&self, _: &Who, f: Arc<RemoteFile>) -> R<()> {
        f.fs.call(CLOSE, &f.fh).map_err(errno)
    }

    fn lost(&self, files: Vec<Arc<RemoteFile>>) {
        // Closing waits for the server: not on the progress thread.
        if !files.is_empty() {
            let tx = self.closer.lock().unwrap_or_else(|e| e.into_inner());
            let _ = tx.send(files);
        }
    }

    fn read(&self, _: &Who, f: &Arc<RemoteFile>, off: u64, b: &mut [u8]) -> R<usize> {
        f.fs.pread(f.fh, b, off).map_err(errno)
    }

    fn write(&self, _: &Who, f: &Arc<RemoteFile>, off: Option<u64>, d: Payload<'_>) -> R<Written> {
        let data = d.bytes()?;
        let end = f.fs.pwrite(f.fh, &data, off).map_err(errno)?;
        Ok(Written {
            n: data.len() as u64,
            end,
        })
    }

    fn fsync(&self, _: &Who, f: &Arc<RemoteFile>, data_only: bool) -> R<()> {
        f.fs.call(FSYNC, &(f.fh, data_only)).map_err(errno)
    }

    fn fallocate(&self, _: &Who, f: &Arc<RemoteFile>, m: i32, off: u64, len: u64) -> R<()> {
        f.fs.call(FALLOCATE, &(f.fh, m, off, len)).map_err(errno)
    }

    fn readdir(&self, _: &Who, f: &Arc<RemoteFile>, restart: bool, max: u32) -> R<DirPage> {
        f.fs.readdir_page(f.fh, max, restart).map_err(errno)
    }

    fn readdir_plus(
        &self,
        _: &Who,
        f: &Arc<RemoteFile>,
        restart: bool,
        max: u32,
        xattrs: bool,
    ) -> R<DirPagePlus> {
        let req = ReaddirReq {
            fh: f.fh,
            max,
            restart,
        };
        f.fs.readdir_plus_page(&req, xattrs).map_err(errno)
    }

    fn stat(&self, who: &Who, t: On<'_, RemoteFile>, follow: bool) -> R<Attr> {
        self.on(who, STAT, t, |t| (t, follow))
    }

    fn truncate(&self, who: &Who, t: On<'_, RemoteFile>, len: u64) -> R<()> {
        self.on(who, TRUNCATE, t, |t| (t, len))
    }

    fn chmod(&self, who: &Who, t: On<'_, RemoteFile>, m: u32) -> R<()> {
        self.on(who, CHMOD, t, |t| (t, m))
    }

    fn utimens(&self, who: &Who, t: On<'_, RemoteFile>, a: SetTime, m: SetTime, f: bool) -> R<()> {
        self.on(who, UTIMENS, t, |t| (t, a, m, f))
    }

    fn chown(&self, who: &Who, t: On<'_, RemoteFile>, u: Option<u32>, g: Option<u32>) -> R<()> {
        self.on(who, CHOWN, t, |t| (t, u, g))
    }

    fn getxattr(&self, who: &Who, t: On<'_, RemoteFile>, k: &[u8]) -> R<ByteBuf> {
        self.on(who, GETXATTR, t, |t| (t, buf(k)))
    }

    fn setxattr(&self, who: &Who, t: On<'_, RemoteFile>, k: &[u8], v: &[u8], f: i32) -> R<()> {
        self.on(who, SETXATTR, t, |t| (t, buf(k), buf(v), f))
    }

    fn listxattr(&self, who: &Who, t: On<'_, RemoteFile>) -> R<Vec<ByteBuf>> {
        self.on(who, LISTXATTR, t, |t| t)
    }

    fn removexattr(&self, who: &Who, t: On<'_, RemoteFile>, k: &[u8]) -> R<()> {
        self.on(who, REMOVEXATTR, t, |t| (t, buf(k)))
    }

    fn unlink(&self, who: &Who, p: &[u8]) -> R<()> {
        self.call(who, UNLINK, buf(p))
    }

    fn change_then(self: Arc<Self>, who: Who, c: Change, done: Done<()>) {
        done(match c {
            Change::Mkdir(p, mode) => self.call(&who, MKDIR, (p, mode)),
            Change::Rmdir(p) => self.call(&who, RMDIR, p),
            Change::Rename(a, b, 0) => self.call(&who, RENAME, (a, b)),
            Change::Rename(a, b, f) => self.call(&who, RENAME2, (a, b, f)),
            Change::Link(a, b) => self.call(&who, LINK, (a, b)),
            Change::Symlink(t, p) => self.call(&who, SYMLINK, (t, p)),
        })
    }

    fn readlink(&self, who: &Who, p: &[u8]) -> R<ByteBuf> {
        self.call(who, READLINK, buf(p))
    }

    fn statfs(&self, who: &Who, p: &[u8]) -> R<FsStat> {
        self.call(who, STATFS, buf(p))
    }

    fn access(&self, who: &Who, p: &[u8], mode: i32) -> R<()> {
        self.call(who, ACCESS, (buf(p), mode))
    }
}
