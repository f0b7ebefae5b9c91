//! The wire protocol: one typed RPC per POSIX operation.
//!
//! Paths are bytes relative to the server's export (a leading `/` names the export's
//! root). Every answer is a [`Reply`]: the value, or the `errno` the server's system call
//! returned, unchanged. Open files are [`Fh`] handles that exist only in the table of the
//! connection that opened them.

use rpc_core::{Descriptor, Rpc};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// An operation's outcome: the value or the server's `errno`.
pub type Reply<T> = Result<T, i32>;

/// A server-side open file or directory, valid only on the connection that opened it
/// and only until closed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

/// A handle lent to another connection of the same user ([`LEND`], [`ADOPT`]): 128
/// random bits.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pass(pub u128);

/// What a metadata operation applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A path beneath the export.
    Path(ByteBuf),
    /// An open handle (the `f*` calls).
    Handle(Fh),
}

/// A time stamp: seconds and nanoseconds since the epoch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: u32,
}

/// A time to set with `utimens`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// Leave it unchanged (`UTIME_OMIT`).
    Omit,
    /// The server's current time (`UTIME_NOW`).
    Now,
    /// This time.
    At(Time),
}

/// File attributes, as `stat(2)` gives them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct Attr {
    pub dev: u64,
    pub ino: u64,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// Whether the file has extended attributes a client may reach ([`xattr_allowed`]:
    /// `user.*`, POSIX ACLs): `Some` only in [`READDIR_PLUS_XATTRS`] listings (so that a
    /// mount answers `ls -l`'s ACL question per file without a call). Left out of the
    /// encoding when `None` and taken as `None` when absent, so peers built before it
    /// read and write every other message as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<bool>,
}

impl Attr {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// `open`/`create`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct OpenReq {
    /// Path beneath the export.
    pub path: ByteBuf,
    /// `O_*` flags (Linux values): access mode, `O_CREAT`, `O_EXCL`, `O_TRUNC`,
    /// `O_APPEND`, `O_DIRECTORY`, `O_NOFOLLOW`, `O_SYNC`, `O_DSYNC`; others are ignored.
    pub flags: i32,
    /// Permission bits for a created file (the server's umask applies).
    pub mode: u32,
}

/// An opened file.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct Opened {
    /// Its handle.
    pub fh: Fh,
    /// Its attributes just after opening.
    pub attr: Attr,
}

/// `pread`: up to `len` bytes at `offset`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ReadReq {
    /// The file.
    pub fh: Fh,
    /// Where to read.
    pub offset: u64,
    /// How much at most.
    pub len: u64,
    /// The caller's buffer to push the data into; `None`: send it back inline.
    pub dest: Option<Descriptor>,
}

/// Ranges one [`WRITE_MANY`] may write.
pub const MAX_WRITE_MANY: usize = 256;

/// `pwrite` of many ranges of one file in one request (list I/O: an I/O node writing out
/// a file's extents that did not merge): `(offset, length)` each, at most
/// [`MAX_WRITE_MANY`], their bytes one after another in `data` (as many as the lengths
/// add up to, at most [`MAX_IO`]; else `EINVAL`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WriteManyReq {
    /// The file.
    pub fh: Fh,
    /// Where each range goes, in the order of the bytes.
    pub segs: Bounded<(u64, u32), MAX_WRITE_MANY>,
    /// The bytes.
    pub data: WriteData,
}

/// What a read produced.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum ReadData {
    /// The bytes themselves (short at end of file).
    Inline(ByteBuf),
    /// This many bytes were pushed into the caller's buffer.
    Pushed(u64),
}

/// Where a write's bytes are.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum WriteData {
    /// In the request.
    Inline(ByteBuf),
    /// In the caller's exposed buffer, for the server to pull.
    Bulk(Descriptor),
}

/// `pwrite` (or an append).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WriteReq {
    /// The file.
    pub fh: Fh,
    /// Where to write; `None` appends (the file was opened with `O_APPEND`).
    pub offset: Option<u64>,
    /// The bytes.
    pub data: WriteData,
}

/// A write's outcome.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Bytes written.
    pub n: u64,
    /// The file offset just past them (for appends: where the file now ends).
    pub end: u64,
}

/// A page of `readdir`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ReaddirReq {
    /// A directory opened with `O_DIRECTORY`.
    pub fh: Fh,
    /// At most this many entries.
    pub max: u32,
    /// Start again from the first entry (`rewinddir`).
    pub restart: bool,
}

/// One directory entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name.
    pub name: ByteBuf,
    /// Inode number.
    pub ino: u64,
    /// `DT_*` type.
    pub kind: u8,
}

/// Entries, and whether the directory is exhausted.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DirPage {
    /// The entries of this page.
    pub entries: Vec<DirEntry>,
    /// No entries follow.
    pub end: bool,
}

/// Entries with their attributes, and whether the directory is exhausted.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DirPagePlus {
    /// The entries of this page, each with its attributes (`None`: they could not be
    /// read for the caller, e.g. no search permission on the directory).
    pub entries: Vec<(DirEntry, Option<Attr>)>,
    /// No entries follow.
    pub end: bool,
}

/// `statfs`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct FsStat {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub namemax: u64,
}

/// What the server holds, for operators and tests.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServerStats {
    /// Connections holding open files or with requests being served.
    pub clients: u64,
    /// Open files and directories, all clients together.
    pub open_files: u64,
    /// Requests being served.
    pub in_flight: u64,
    /// Requests served since start.
    pub requests: u64,
    /// Requests refused by a per-client bound.
    pub refused: u64,
}

/// `stat`/`lstat`/`fstat` (the lookup): target, follow a final symlink.
pub const STAT: Rpc<(Target, bool), Reply<Attr>> = Rpc::new("posix.stat");
/// `open`/`create`.
pub const OPEN: Rpc<OpenReq, Reply<Opened>> = Rpc::new("posix.open");
/// `close`.
pub const CLOSE: Rpc<Fh, Reply<()>> = Rpc::new("posix.close");
/// Several `close`s in one request (an I/O node letting go of what its clients closed):
/// each handle's `errno` (0: closed), in order; at most [`MAX_CLOSE_MANY`] handles (else
/// `EINVAL`, none closed). A server built before it answers `ENOSYS`.
pub const CLOSE_MANY: Rpc<FhList, Reply<Vec<i32>>> = Rpc::new("posix.close_many");
/// A pass for the caller's handle, which another connection of the same user may adopt
/// (a forked or exec'd child: `crate::server::lending`). A server built before it
/// answers `ENOSYS`.
pub const LEND: Rpc<Fh, Reply<Pass>> = Rpc::new("posix.lend");
/// A handle of the caller's on the open file a pass stands for (`EBADF` for a pass
/// unknown, expired, or of another user).
pub const ADOPT: Rpc<Pass, Reply<Opened>> = Rpc::new("posix.adopt");
/// Handles one [`CLOSE_MANY`] may close.
pub const MAX_CLOSE_MANY: usize = 256;

/// The handles of a [`CLOSE_MANY`].
pub type FhList = Bounded<Fh, MAX_CLOSE_MANY>;

/// A list of at most `MAX` items, a longer one refused while it is decoded (never
/// allocated: a peer's length prefix decides nothing); encoded as a plain list.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Bounded<T, const MAX: usize>(pub Vec<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for Bounded<T, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T, const MAX: usize>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const MAX: usize> serde::de::Visitor<'de> for Visit<T, MAX> {
            type Value = Bounded<T, MAX>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a list of at most {MAX} items")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(MAX));
                while let Some(x) = a.next_element()? {
                    if v.len() == MAX {
                        return Err(serde::de::Error::invalid_length(v.len() + 1, &self));
                    }
                    v.push(x);
                }
                Ok(Bounded(v))
            }
        }
        d.deserialize_seq(Visit(std::marker::PhantomData))
    }
}

/// Ranges one [`READ_MANY`] may read.
pub const MAX_READ_MANY: usize = 64;

/// `pread` of many ranges of one file in one request (list I/O, as IOFSL's and PVFS's:
/// an I/O node asks the reads of many clients of one file together, one backend request
/// for them): `(offset, length)` each, at most [`MAX_READ_MANY`] of them, and in all
/// [`MAX_INLINE_READ`] bytes answered inline or [`MAX_IO`] pushed into `dest` (else
/// `EINVAL`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ReadManyReq {
    /// The file.
    pub fh: Fh,
    /// What to read, in the order the answer gives it.
    pub ranges: Bounded<(u64, u32), MAX_READ_MANY>,
    /// The caller's buffer to push the bytes into, each range's at the sum of the
    /// lengths asked before it; `None`: sent back inline.
    pub dest: Option<Descriptor>,
}

/// What a [`READ_MANY`] read.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum ManyRead {
    /// Each range's bytes (short only where the file ends).
    Inline(Vec<ByteBuf>),
    /// How many bytes of each of the first ranges were pushed into the caller's buffer
    /// (fewer ranges than asked: the server's staging memory; the rest were not read).
    Pushed(Vec<u32>),
}

/// `read`/`pread`.
pub const READ: Rpc<ReadReq, Reply<ReadData>> = Rpc::new("posix.read");
/// [`ReadManyReq`]: what each range read, in order.
pub const READ_MANY: Rpc<ReadManyReq, Reply<ManyRead>> = Rpc::new("posix.read_many");
/// `write`/`pwrite`.
pub const WRITE: Rpc<WriteReq, Reply<Written>> = Rpc::new("posix.write");
/// [`WriteManyReq`]: the bytes written, in the ranges' order (fewer than all: the ranges
/// before them written whole, the rest not, or in part), and where the last one ended.
pub const WRITE_MANY: Rpc<WriteManyReq, Reply<Written>> = Rpc::new("posix.write_many");
/// `truncate`/`ftruncate`.
pub const TRUNCATE: Rpc<(Target, u64), Reply<()>> = Rpc::new("posix.truncate");
/// `fsync` (`false`) / `fdatasync` (`true`).
pub const FSYNC: Rpc<(Fh, bool), Reply<()>> = Rpc::new("posix.fsync");
/// `fallocate`: handle, mode (`FALLOC_FL_KEEP_SIZE`, `FALLOC_FL_PUNCH_HOLE` with it,
/// `FALLOC_FL_ZERO_RANGE`; others `EOPNOTSUPP`), offset, length.
pub const FALLOCATE: Rpc<(Fh, i32, u64, u64), Reply<()>> = Rpc::new("posix.fallocate");
/// `unlink`.
pub const UNLINK: Rpc<ByteBuf, Reply<()>> = Rpc::new("posix.unlink");
/// `mkdir`: path, mode.
pub const MKDIR: Rpc<(ByteBuf, u32), Reply<()>> = Rpc::new("posix.mkdir");
/// `rmdir`.
pub const RMDIR: Rpc<ByteBuf, Reply<()>> = Rpc::new("posix.rmdir");
/// `rename`: from, to.
pub const RENAME: Rpc<(ByteBuf, ByteBuf), Reply<()>> = Rpc::new("posix.rename");
/// `renameat2`: from, to, `RENAME_NOREPLACE` (1) and/or `RENAME_EXCHANGE` (2).
pub const RENAME2: Rpc<(ByteBuf, ByteBuf, u32), Reply<()>> = Rpc::new("posix.rename2");
/// `readdir`, a page at a time.
pub const READDIR: Rpc<ReaddirReq, Reply<DirPage>> = Rpc::new("posix.readdir");
/// `readdir` with each entry's attributes (as `lstat` gives them), a page of at most
/// [`MAX_DIR_PLUS_PAGE`] at a time: what a FUSE `readdirplus` needs, in one round trip.
pub const READDIR_PLUS: Rpc<ReaddirReq, Reply<DirPagePlus>> = Rpc::new("posix.readdir_plus");
/// [`READDIR_PLUS`] with each attribute's [`Attr::xattrs`] filled (one `listxattr` per
/// entry at the server). A server without it answers `ENOSYS`: use `READDIR_PLUS` then.
pub const READDIR_PLUS_XATTRS: Rpc<ReaddirReq, Reply<DirPagePlus>> =
    Rpc::new("posix.readdir_plus_xattrs");
/// `symlink`: link target (stored as given), path of the new link.
pub const SYMLINK: Rpc<(ByteBuf, ByteBuf), Reply<()>> = Rpc::new("posix.symlink");
/// `readlink`.
pub const READLINK: Rpc<ByteBuf, Reply<ByteBuf>> = Rpc::new("posix.readlink");
/// `statfs`.
pub const STATFS: Rpc<ByteBuf, Reply<FsStat>> = Rpc::new("posix.statfs");
/// `chmod`/`fchmod`.
pub const CHMOD: Rpc<(Target, u32), Reply<()>> = Rpc::new("posix.chmod");
/// `utimens`/`futimens`: target, atime, mtime, follow a final symlink.
pub const UTIMENS: Rpc<(Target, SetTime, SetTime, bool), Reply<()>> = Rpc::new("posix.utimens");
/// Several attribute changes and the attributes after them, in one request (what a
/// FUSE `setattr` asks): owner, then mode, then size, then times, each with the
/// caller's rights, stopping at the first that fails (its errno). Owner, times and the
/// attributes answered are a final symlink's own; mode and size follow it (as `chmod`
/// and `truncate` do). A server built before it answers `ENOSYS`.
pub const SETATTR: Rpc<(Target, SetAttr), Reply<Attr>> = Rpc::new("posix.setattr");

/// What a [`SETATTR`] changes (`None`: unchanged).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (`chmod`).
    pub mode: Option<u32>,
    /// Owner (`chown`).
    pub uid: Option<u32>,
    /// Group (`chown`).
    pub gid: Option<u32>,
    /// Length (`truncate`).
    pub size: Option<u64>,
    /// Access time (`utimens`; `Omit` as `None`).
    pub atime: Option<SetTime>,
    /// Modification time (`utimens`; `Omit` as `None`).
    pub mtime: Option<SetTime>,
}

/// `access`: path, `R_OK|W_OK|X_OK` (or `F_OK`).
pub const ACCESS: Rpc<(ByteBuf, i32), Reply<()>> = Rpc::new("posix.access");
/// `link`: existing path, new path (a symlink is linked itself).
pub const LINK: Rpc<(ByteBuf, ByteBuf), Reply<()>> = Rpc::new("posix.link");
/// `lchown`/`fchown`: target, uid, gid (`None`: unchanged).
pub const CHOWN: Rpc<(Target, Option<u32>, Option<u32>), Reply<()>> = Rpc::new("posix.chown");
/// Extended attributes (`user.*` and POSIX ACLs only; others `ENOTSUP`): target, name.
pub const GETXATTR: Rpc<(Target, ByteBuf), Reply<ByteBuf>> = Rpc::new("posix.getxattr");
/// `setxattr`: target, name, value, `XATTR_CREATE`/`XATTR_REPLACE`.
pub const SETXATTR: Rpc<(Target, ByteBuf, ByteBuf, i32), Reply<()>> = Rpc::new("posix.setxattr");
/// `listxattr`: the names a client may reach.
pub const LISTXATTR: Rpc<Target, Reply<Vec<ByteBuf>>> = Rpc::new("posix.listxattr");
/// `removexattr`: target, name.
pub const REMOVEXATTR: Rpc<(Target, ByteBuf), Reply<()>> = Rpc::new("posix.removexattr");
/// The server's counters.
pub const SERVER_STATS: Rpc<(), ServerStats> = Rpc::new("posix.server_stats");

/// Whom a trusted forwarder (an I/O node) calls for: the identity its own transport
/// verified for its client (`None`: an anonymous client). The server applies its policy
/// (squash, allow lists) to it exactly as to a direct client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (at most 65 536, the transports' `na::MAX_GROUPS`).
    pub groups: Vec<u32>,
}

/// Operation `rpc` called by a forwarder for a client: the same request, preceded by
/// whom it acts for. A server serves it only from a peer it is configured to trust
/// (`posix-ship server --trust-forwarder UID`), and refuses it with `EPERM` otherwise.
pub const fn forwarded<In, Out>(rpc: Rpc<In, Out>) -> Rpc<(Option<Principal>, In), Out> {
    rpc.prefixed("posix.forwarded")
}

/// Whether a client may reach extended attribute `name`: `user.*` and POSIX ACLs (the
/// server refuses the others with `ENOTSUP`, and clients need not ask).
pub fn xattr_allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// The largest read or write one request carries; larger calls are split by the client.
pub const MAX_IO: u64 = 16 << 20;

/// The most a read answers inline: an answer must fit in one message, so that no client
/// can make a server hold a large answer for it to pull.
pub const MAX_INLINE_READ: u64 = 60 << 10;

/// The most entries a `readdir` page carries.
pub const MAX_DIR_PAGE: u32 = 1024;

/// The most entries a `readdir_plus` page carries (the service holds every backend to it:
/// with names of usual length an answer fits in one message).
pub const MAX_DIR_PLUS_PAGE: u32 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    /// `Attr` as peers built before `xattrs` encode it.
    #[derive(Serialize, Deserialize, Default, PartialEq, Debug)]
    struct OldAttr {
        dev: u64,
        ino: u64,
        mode: u32,
        nlink: u64,
        uid: u32,
        gid: u32,
        rdev: u64,
        size: u64,
        blksize: u64,
        blocks: u64,
        atime: Time,
        mtime: Time,
        ctime: Time,
    }

    #[test]
    fn attributes_without_the_xattrs_hint_are_what_older_peers_read_and_write() {
        let old = OldAttr {
            ino: 7,
            size: 42,
            ..OldAttr::default()
        };
        let from_old: Attr = rmp_serde::from_slice(&rmp_serde::to_vec(&old).unwrap()).unwrap();
        assert_eq!(
            (from_old.ino, from_old.size, from_old.xattrs),
            (7, 42, None)
        );
        let to_old: OldAttr =
            rmp_serde::from_slice(&rmp_serde::to_vec(&from_old).unwrap()).unwrap();
        assert_eq!(to_old, old, "no hint: the encoding older peers know");
        let hinted = Attr {
            xattrs: Some(false),
            ..from_old
        };
        let back: Attr = rmp_serde::from_slice(&rmp_serde::to_vec(&hinted).unwrap()).unwrap();
        assert_eq!(back, hinted);
    }

    #[test]
    fn a_close_many_list_past_its_bound_is_refused_while_decoded() {
        let list = |n: u64| (0..n).map(Fh).collect::<Vec<_>>();
        let enc = |v: Vec<Fh>| rmp_serde::to_vec(&v).unwrap();
        let ok: FhList = rmp_serde::from_slice(&enc(list(MAX_CLOSE_MANY as u64))).unwrap();
        assert_eq!(ok.0.len(), MAX_CLOSE_MANY);
        assert_eq!(
            rmp_serde::to_vec(&ok).unwrap(),
            enc(ok.0.clone()),
            "encoded as a list"
        );
        assert!(rmp_serde::from_slice::<FhList>(&enc(list(MAX_CLOSE_MANY as u64 + 1))).is_err());
        // A length prefix claiming 2^32 - 1 handles, with none behind it: no allocation.
        let forged = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(rmp_serde::from_slice::<FhList>(&forged).is_err());
    }
}
