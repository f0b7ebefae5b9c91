//! Directories no backend serves but prefixes lie beneath (`/` of a node started with
//! only `--backend /home=…` and `--backend /scratch=…`): the node shows them as
//! read-only directories (mode 0555, owned by root) listing the next components, so
//! that `ls /`, `cd /` and `find /` work. Changes in them are refused (`EROFS`, or what
//! Linux answers for a mount point: `EBUSY` to remove or rename one); names that are not
//! there are `ENOENT`, to look up and to create alike (no backend holds them).

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use posix_ship::proto::*;
use posix_ship::server::On;
use serde_bytes::ByteBuf;

use crate::backing::Backing;
use crate::node::{Handle, Node, Req, lock};

type R<T> = Result<T, i32>;

/// An open directory of this kind: its names and where the next page starts.
pub(crate) struct Listing {
    path: Vec<u8>,
    names: Vec<Vec<u8>>,
    next: Mutex<usize>,
}

/// The handle's listing if it is such a directory.
pub(crate) fn of(h: &Handle) -> Option<&Listing> {
    h.listing.as_ref()
}

/// Whether the handle or path names such a directory.
pub(crate) fn names(node: &Node, t: &On<'_, Handle>) -> bool {
    match t {
        On::Path(p) => node.routes.above(p).is_some(),
        On::File(h) => of(h).is_some(),
    }
}

/// When this node first showed one (their times).
fn born() -> Time {
    static T: OnceLock<Time> = OnceLock::new();
    *T.get_or_init(|| {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    })
}

/// An inode number for `path`, stable for the node's life, apart from backends' (high
/// bit set).
fn ino(path: &[u8]) -> u64 {
    let norm: Vec<&[u8]> = path
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    norm.hash(&mut h);
    h.finish() | 1 << 63
}

fn attr(path: &[u8], names: usize) -> Attr {
    let t = born();
    Attr {
        dev: 0,
        ino: ino(path),
        mode: libc::S_IFDIR | 0o555,
        nlink: 2 + names as u64,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 4096,
        blksize: 4096,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        xattrs: None,
    }
}

fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn parent(dir: &[u8]) -> Vec<u8> {
    let t = dir.strip_suffix(b"/").unwrap_or(dir);
    match t.iter().rposition(|b| *b == b'/') {
        Some(0) | None => b"/".to_vec(),
        Some(i) => t[..i].to_vec(),
    }
}

impl Node {
    /// The attributes of such a directory at `t`, if it is one.
    pub(crate) fn virtual_attr(&self, t: &On<'_, Handle>) -> Option<Attr> {
        match t {
            On::Path(p) => self.routes.above(p).map(|n| attr(p, n.len())),
            On::File(h) => of(h).map(|l| attr(&l.path, l.names.len())),
        }
    }

    /// Opens such a directory at `o.path`, if it is one (read-only, as any directory).
    pub(crate) fn open_virtual(&self, o: &OpenReq) -> Option<R<(Handle, Attr)>> {
        let names = self.routes.above(&o.path)?;
        let f = o.flags;
        if f & libc::O_CREAT != 0 && f & libc::O_EXCL != 0 {
            return Some(Err(libc::EEXIST));
        }
        if f & libc::O_ACCMODE != libc::O_RDONLY || f & (libc::O_TRUNC | libc::O_CREAT) != 0 {
            return Some(Err(libc::EISDIR));
        }
        let a = attr(&o.path, names.len());
        let h = Handle {
            backend: 0,
            wrote: Default::default(),
            path: o.path.to_vec(),
            // Never used (every call on this handle is answered here); reopening it
            // would find another file (inode 0) and fail with ESTALE.
            backing: Arc::new(Backing::new(
                self.backends[0].clone(),
                b"/",
                libc::O_RDONLY,
                Fh(u64::MAX),
                (0, 0),
            )),
            file: None,
            writable: false,
            append: false,
            token: 0,
            seq: Mutex::new((0, 0)),
            listing: Some(Listing {
                path: o.path.to_vec(),
                names,
                next: Mutex::new(0),
            }),
        };
        Some(Ok((h, a)))
    }

    /// A page of `l`: `.`, `..` and the names, each with its attributes (a backend's
    /// for the root of a prefix, looked up for `r`; `None` where it cannot be read).
    pub(crate) fn list_virtual(
        &self,
        r: &Req,
        l: &Listing,
        restart: bool,
        max: u32,
    ) -> R<DirPagePlus> {
        let mut next = lock(&l.next);
        if restart {
            *next = 0;
        }
        let all = 2 + l.names.len();
        let upto = all.min(*next + max.max(1) as usize);
        let mut entries = Vec::new();
        for i in *next..upto {
            let (name, path) = match i {
                0 => (b".".to_vec(), l.path.clone()),
                1 => (b"..".to_vec(), parent(&l.path)),
                _ => (l.names[i - 2].clone(), child(&l.path, &l.names[i - 2])),
            };
            let a = self.stat(r, On::Path(&path), false).ok();
            let entry = DirEntry {
                name: ByteBuf::from(name),
                ino: a.map_or(ino(&path), |a| a.ino),
                kind: libc::DT_DIR,
            };
            entries.push((entry, a));
        }
        *next = upto;
        Ok(DirPagePlus {
            entries,
            end: upto == all,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_children_of_paths() {
        assert_eq!(parent(b"/"), b"/");
        assert_eq!(parent(b"/a"), b"/");
        assert_eq!(parent(b"/a/b/"), b"/a");
        assert_eq!(child(b"/", b"a"), b"/a");
        assert_eq!(child(b"/a", b"b"), b"/a/b");
        assert_eq!(ino(b"/a/"), ino(b"a"), "one directory, one number");
        assert_ne!(ino(b"/a"), ino(b"/b"));
        assert!(ino(b"/") >> 63 == 1);
    }
}
