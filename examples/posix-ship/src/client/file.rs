//! An open remote file: `Read`, `Write`, `Seek`, and positional I/O.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::RemoteFs;
use super::readahead::ReadAhead;
use super::writebehind::{Settings, WriteBehind};
use crate::proto::{Attr, FSYNC, Fh, Opened, TRUNCATE, Target};

/// A file open on the server. The position is kept here; every transfer names its
/// offset, so the server holds no cursor. Sequential reads through [`Read`] are read
/// ahead (see [`super::readahead`]); positional reads are not. Closed on drop (errors
/// then are lost: call [`RemoteFile::close`] to see them).
pub struct RemoteFile {
    fs: RemoteFs,
    fh: Option<Fh>,
    pos: u64,
    append: bool,
    /// Opened for writing (a write otherwise fails at once, as the kernel's would).
    writable: bool,
    ahead: ReadAhead,
    /// Its writes in flight: `write` returns once a write is sent, so that the caller's
    /// next piece (a local read, for `put`) overlaps the transfer; any other call waits
    /// for them, and an error of one comes at the next write, `flush`, sync or close.
    behind: WriteBehind,
}

impl RemoteFile {
    pub(super) fn new(fs: RemoteFs, o: Opened, flags: i32) -> RemoteFile {
        RemoteFile {
            fs,
            fh: Some(o.fh),
            pos: 0,
            append: flags & libc::O_APPEND != 0,
            writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
            ahead: ReadAhead::new(Some((o.attr.dev, o.attr.ino))),
            behind: WriteBehind::with(Settings::for_files()),
        }
    }

    fn fh(&self) -> io::Result<Fh> {
        self.fh
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// The handle, once the writes in flight have landed (their error is kept for the
    /// next write, flush, sync or close).
    fn landed(&self) -> io::Result<Fh> {
        self.behind.drain();
        self.fh()
    }

    /// The handle, once the writes in flight have landed; the error of one, once.
    fn settled(&self) -> io::Result<Fh> {
        let fh = self.fh()?;
        self.behind.settle(fh)?;
        Ok(fh)
    }

    /// The server's handle.
    pub fn handle(&self) -> Option<Fh> {
        self.fh
    }

    /// `fstat`.
    pub fn metadata(&self) -> io::Result<Attr> {
        self.fs.fstat(self.landed()?)
    }

    /// `pread`: reads at `offset` without moving the position.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.fs.pread(self.landed()?, buf, offset)
    }

    /// `pwrite`: writes all of `buf` at `offset` without moving the position.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.ahead.invalidate();
        self.fs.pwrite(self.settled()?, buf, Some(offset))?;
        Ok(buf.len())
    }

    /// `ftruncate`.
    pub fn set_len(&self, len: u64) -> io::Result<()> {
        self.ahead.invalidate();
        self.fs
            .call(TRUNCATE, &(Target::Handle(self.landed()?), len))
    }

    /// `fsync`.
    pub fn sync_all(&self) -> io::Result<()> {
        self.fs.call(FSYNC, &(self.settled()?, false))
    }

    /// `fdatasync`.
    pub fn sync_data(&self) -> io::Result<()> {
        self.fs.call(FSYNC, &(self.settled()?, true))
    }

    /// Closes the file, reporting the server's answer.
    pub fn close(mut self) -> io::Result<()> {
        let written = self.fh.map_or(Ok(()), |fh| self.behind.settle(fh));
        match self.fh.take() {
            Some(fh) => written.and(self.fs.close_raw(fh)),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFile")
            .field("fh", &self.fh)
            .field("pos", &self.pos)
            .finish()
    }
}

impl Read for RemoteFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fh = self.landed()?;
        let fs = &self.fs;
        let n = self.ahead.read(self.pos, buf, |o, b| fs.pread(fh, b, o))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for RemoteFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.writable {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.ahead.invalidate();
        if self.append {
            // Only the server knows where an append lands.
            self.pos = self.fs.pwrite(self.settled()?, buf, None)?;
        } else {
            self.behind.write(&self.fs, self.fh()?, self.pos, buf)?;
            self.pos += buf.len() as u64;
        }
        Ok(buf.len())
    }

    /// Waits for the writes in flight; the error of one, once.
    fn flush(&mut self) -> io::Result<()> {
        self.settled().map(drop)
    }
}

impl Seek for RemoteFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            SeekFrom::Start(o) => (0, o as i128),
            SeekFrom::Current(d) => (self.pos, d as i128),
            SeekFrom::End(d) => (self.metadata()?.size, d as i128),
        };
        let new = base as i128 + delta;
        if new < 0 || new > i64::MAX as i128 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

impl Drop for RemoteFile {
    fn drop(&mut self) {
        self.behind.drain();
        if let Some(fh) = self.fh.take() {
            let _ = self.fs.close_raw(fh);
        }
    }
}
