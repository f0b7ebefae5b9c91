//! Changes to the namespace (directories, renames, links), ownership and extended
//! attributes, with the caller's rights (see [`super::creds`]): the kernel checks each as
//! it would for that user.
//!
//! Extended attributes are limited to the `user.` namespace and POSIX ACLs: a root server
//! keeps `CAP_SYS_ADMIN` whatever fs uid it takes for a caller, so `trusted.` and
//! `security.` (file capabilities!) would let any user act with it.

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid, XattrFlags};
use rustix::io::Errno;
use serde_bytes::ByteBuf;

use super::LocalFs;
use super::backend::{On, R};
use super::clients::OpenFile;
use super::sys::{Fd, list_xattrs_at, proc_path};
use crate::proto::{Attr, xattr_allowed};

/// The largest attribute value (the kernel's `XATTR_SIZE_MAX`), and list of names.
const XATTR_MAX: usize = 64 << 10;

impl LocalFs {
    pub(super) fn mkdir(&self, path: &[u8], mode: u32) -> R<()> {
        self.writable()?;
        let (parent, name) = self.named(path, Errno::EXIST)?;
        let mode = Mode::from_bits_truncate(self.policy.mode(mode, true));
        rustix::fs::mkdirat(&parent, &name, mode)
    }

    /// `renameat2`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE` (others `EINVAL`).
    pub(super) fn rename(&self, from: &[u8], to: &[u8], flags: u32) -> R<()> {
        use rustix::fs::RenameFlags as F;
        self.writable()?;
        let flags = F::from_bits(flags)
            .filter(|f| (F::NOREPLACE | F::EXCHANGE).contains(*f))
            .ok_or(Errno::INVAL)?;
        let (fp, fname) = self.named(from, Errno::BUSY)?;
        let (tp, tname) = self.named(to, Errno::BUSY)?;
        rustix::fs::renameat_with(&fp, &fname, &tp, &tname, flags)
    }

    /// `symlink`: the link's content is stored as given; it is confined when followed.
    pub(super) fn symlink(&self, target: &[u8], path: &[u8]) -> R<()> {
        self.writable()?;
        let (parent, name) = self.named(path, Errno::EXIST)?;
        rustix::fs::symlinkat(target, &parent, &name)
    }

    /// `link`: a hard link `to` naming `from` (a symlink is linked itself).
    pub(super) fn hard_link(&self, from: &[u8], to: &[u8]) -> R<()> {
        self.writable()?;
        let (fp, fname) = self.named(from, Errno::PERM)?;
        let (tp, tname) = self.named(to, Errno::EXIST)?;
        rustix::fs::linkat(&fp, &fname, &tp, &tname, AtFlags::empty())
    }

    /// `lchown`/`fchown` (`None`: unchanged).
    pub(super) fn set_owner(
        &self,
        t: &On<'_, OpenFile>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> R<()> {
        self.writable()?;
        let (uid, gid) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
        if let On::Path(p) = t
            && let Some((dir, name)) = self.export.parent(p)?
        {
            return rustix::fs::chownat(&dir, &name, uid, gid, AtFlags::SYMLINK_NOFOLLOW);
        }
        let fd = self.target_fd(t, OFlags::PATH | OFlags::NOFOLLOW)?;
        rustix::fs::chownat(rustix::fs::CWD, proc_path(&fd), uid, gid, AtFlags::empty())
    }

    /// The path to reach `t`'s attributes through, or `None` for a symlink (which has
    /// none a client may reach).
    fn xattr_path(&self, t: &On<'_, OpenFile>) -> R<Option<(Fd, String)>> {
        let fd = self.target_fd(t, OFlags::PATH | OFlags::NOFOLLOW)?;
        if rustix::fs::fstat(&fd)?.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Ok(None);
        }
        let p = proc_path(&fd);
        Ok(Some((fd, p)))
    }

    /// `getxattr`.
    pub(super) fn xattr_get(&self, t: &On<'_, OpenFile>, name: &[u8]) -> R<ByteBuf> {
        if !xattr_allowed(name) {
            return Err(Errno::NOTSUP);
        }
        let Some((_fd, p)) = self.xattr_path(t)? else {
            return Err(Errno::NODATA);
        };
        let mut buf = vec![0u8; XATTR_MAX];
        let n = rustix::fs::getxattr(&p, name, &mut buf[..])?;
        buf.truncate(n);
        Ok(ByteBuf::from(buf))
    }

    /// `setxattr` (`flags`: `XATTR_CREATE`, `XATTR_REPLACE`).
    pub(super) fn xattr_set(
        &self,
        t: &On<'_, OpenFile>,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> R<()> {
        self.writable()?;
        if !xattr_allowed(name) {
            return Err(Errno::NOTSUP);
        }
        if value.len() > XATTR_MAX {
            return Err(Errno::TOOBIG);
        }
        let flags = XattrFlags::from_bits(flags as u32).ok_or(Errno::INVAL)?;
        let Some((_fd, p)) = self.xattr_path(t)? else {
            return Err(Errno::PERM);
        };
        rustix::fs::setxattr(&p, name, value, flags)
    }

    /// `listxattr`: the names a client may reach.
    pub(super) fn xattr_list(&self, t: &On<'_, OpenFile>) -> R<Vec<ByteBuf>> {
        let Some((_fd, p)) = self.xattr_path(t)? else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; XATTR_MAX];
        let n = rustix::fs::listxattr(&p, &mut buf[..])?;
        Ok(reachable(&buf[..n])
            .map(|n| ByteBuf::from(n.to_vec()))
            .collect())
    }

    /// Whether entry `name` of directory `dir`, whose `lstat` is `a`, has attributes a
    /// client may reach, for a listing (one `listxattrat`, no file opened); `None` when
    /// that cannot be told cheaply (a long list, an error).
    pub(super) fn xattrs_hint(dir: &impl std::os::fd::AsFd, name: &[u8], a: &Attr) -> Option<bool> {
        if a.is_symlink() {
            return Some(false); // none reachable (above)
        }
        let mut buf = [0u8; 1024];
        let n = list_xattrs_at(dir, name, &mut buf).ok()?;
        Some(reachable(&buf[..n]).next().is_some())
    }

    /// `removexattr`.
    pub(super) fn xattr_remove(&self, t: &On<'_, OpenFile>, name: &[u8]) -> R<()> {
        self.writable()?;
        if !xattr_allowed(name) {
            return Err(Errno::NOTSUP);
        }
        let Some((_fd, p)) = self.xattr_path(t)? else {
            return Err(Errno::PERM);
        };
        rustix::fs::removexattr(&p, name)
    }
}

/// The names in a `listxattr` list (NUL-terminated) that a client may reach.
fn reachable(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == 0)
        .filter(|n| !n.is_empty() && xattr_allowed(n))
}
