//! Directory listings for the kernel: read from the server once per open directory (a
//! page of entries with their attributes at a time, `posix.readdir_plus`) and handed out
//! by offset, as plain entries (`readdir`) or with their attributes (`readdirplus`: the
//! kernel then needs no lookup per entry, so `ls -l` of N files costs N/256 round trips,
//! not N). The server says with each entry whether it has extended attributes: `ls -l`
//! asks the mount for every file's ACL, answered here for files without any.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

use fuser::{Errno, FileHandle, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use super::attr::{bytes, dt_kind, err, file_attr};
use super::inodes::join;
use super::{Fs, R};
use crate::proto::*;

/// An entry of a listing, and its attributes if the server could read them.
pub(super) type Listed = (DirEntry, Option<Attr>);

/// When a listing was read: the time, and the mount's count of changes to names and
/// extended attributes ([`super::inodes::Inodes::changes`]).
pub(super) type ReadAt = (Instant, u64);

/// Entries a `readdir` call looks at (its reply holds a hundred or two), and a
/// `readdirplus` one (a few dozen).
const BATCH: usize = 512;
const PLUS_BATCH: usize = 128;

impl Fs {
    /// The listing of open directory `fh` from `offset`, read from the server at offset 0
    /// (or when not read yet); at most `max` entries, and when it was read.
    fn listed(&self, fh: FileHandle, offset: u64, max: usize) -> R<(ReadAt, Vec<Listed>)> {
        let lock = || self.listings.lock().unwrap_or_else(|e| e.into_inner());
        if offset == 0 || !lock().contains_key(&fh.0) {
            // Listed without the lock held: other directories are listed meanwhile.
            let at = (Instant::now(), self.inodes().changes());
            let all = self.list(fh.0)?;
            lock().insert(fh.0, (at, all));
        }
        let listings = lock();
        let (at, all) = listings.get(&fh.0).ok_or(Errno::EBADF)?;
        let page = all.iter().skip(offset as usize).take(max).cloned();
        Ok((*at, page.collect()))
    }

    fn list(&self, fh: u64) -> R<Vec<Listed>> {
        let mut all = Vec::new();
        let mut restart = true;
        loop {
            let req = ReaddirReq {
                fh: Fh(fh),
                max: MAX_DIR_PLUS_PAGE,
                restart,
            };
            let page = match self.remote().readdir_plus_page(&req, true).map_err(err) {
                // A server without it: entries without attributes.
                Err(e) if e.code() == libc::ENOSYS => {
                    let req = ReaddirReq {
                        max: MAX_DIR_PAGE,
                        ..req
                    };
                    let p = self.call(READDIR, &req)?;
                    let entries = p.entries.into_iter().map(|e| (e, None)).collect();
                    DirPagePlus {
                        entries,
                        end: p.end,
                    }
                }
                r => r?,
            };
            restart = false;
            all.extend(page.entries);
            if page.end {
                return Ok(all);
            }
        }
    }

    pub(super) fn read_dir(&self, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.listed(fh, offset, BATCH) {
            Ok((_, e)) => e,
            Err(e) => return reply.error(e),
        };
        for (i, (e, _)) in entries.iter().enumerate() {
            let name = OsStr::from_bytes(&e.name);
            let next = offset + i as u64 + 1;
            if reply.add(INodeNo(e.ino.max(2)), next, dt_kind(e.kind), name) {
                break;
            }
        }
        reply.ok()
    }

    /// Entries with their attributes: each but `.` and `..` counts as a lookup of its
    /// path (as the kernel counts it), taken back if the reply had no room for it.
    pub(super) fn read_dir_plus(
        &self,
        dir: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (((listed_at, listed_changes), entries), path) =
            match (self.listed(fh, offset, PLUS_BATCH), self.path(dir)) {
                (Ok(e), Ok(p)) => (e, p),
                (Err(e), _) | (_, Err(e)) => return reply.error(e),
            };
        let ttl = self.ttl();
        for (i, (e, a)) in entries.into_iter().enumerate() {
            let name = OsStr::from_bytes(&e.name);
            let next = offset + i as u64 + 1;
            // Attributes nobody could give (no search right on the directory): listed with
            // nothing for the kernel to trust, so that it looks the entry up when needed.
            let bare = || Attr {
                mode: kind_mode(e.kind) | 0o755,
                nlink: 1,
                ..Attr::default()
            };
            if matches!(e.name.as_slice(), b"." | b"..") {
                // Not linked by the kernel, nor counted: only listed (`.` with this
                // directory's number, `..` with the server's).
                let ino = if e.name.as_slice() == b"." {
                    dir.0
                } else {
                    e.ino.max(2)
                };
                let me = file_attr(ino, &bare());
                if reply.add(INodeNo(ino), next, name, &ttl, &me, Generation(0)) {
                    break;
                }
                continue;
            }
            let Some(child) = join(&path, &e.name) else {
                continue;
            };
            // Asked for one by one: a bare entry would overwrite what the kernel holds of
            // a file it knows (size 0: its cached pages dropped, a mapping faults).
            let a = a
                .map(Ok)
                .unwrap_or_else(|| self.call(STAT, &(Target::Path(bytes(&child)), false)));
            let (attr, ttl) = match a {
                Ok(a) => (a, ttl),
                Err(_) => (bare(), Default::default()),
            };
            let ino = {
                let mut inodes = self.inodes();
                let ino = inodes.learn(&child);
                // As old as the listing, not as its hand-out to the kernel.
                let until = listed_at + self.opts.attr_timeout;
                inodes.listed_xattrs(ino, attr.xattrs, listed_changes, until);
                ino
            };
            if reply.add(
                INodeNo(ino),
                next,
                name,
                &ttl,
                &file_attr(ino, &attr),
                Generation(0),
            ) {
                self.inodes().forget(ino, 1);
                break;
            }
        }
        reply.ok()
    }
}

/// The `st_mode` type bits of a `DT_*` type.
fn kind_mode(dt: u8) -> u32 {
    match dt {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        libc::DT_SOCK => libc::S_IFSOCK,
        _ => libc::S_IFREG,
    }
}
