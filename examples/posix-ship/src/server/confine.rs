//! Resolving a client's path beneath the export, never outside it.
//!
//! The kernel does it where it can: `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! refuses (`EXDEV`) any resolution that leaves the export by `..`, by an absolute
//! symlink, or by a symlink swapped in during the call. Where `openat2` is missing
//! (Linux < 5.6), or when `POSIX_SHIP_RESOLVE=walk` asks for it, an equivalent walk opens
//! one component at a time with `O_NOFOLLOW` and expands symlinks itself; a link
//! swapped in between its check and its open makes the open fail, never escape.
//!
//! Operations that act on a name rather than on a file (`unlink`, `mkdir`, `rename`,
//! `symlink`, `readlink`, `lstat`) resolve the parent directory this way and then use the
//! `*at` call on the last component, which does not follow it.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How many symlinks one resolution may expand (Linux's own limit).
const MAX_LINKS: usize = 40;

/// The exported directory.
pub struct Export {
    root: OwnedFd,
    walk: bool,
}

impl Export {
    /// Opens `dir` as the export root.
    pub fn open(dir: &std::path::Path) -> std::io::Result<Export> {
        let root = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let forced = std::env::var("POSIX_SHIP_RESOLVE").is_ok_and(|v| v == "walk");
        let walk = forced
            || rustix::fs::openat2(
                &root,
                ".",
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH,
            )
            .err()
                == Some(Errno::NOSYS);
        tracing::info!(
            resolver = if walk { "walk" } else { "openat2" },
            "export opened"
        );
        Ok(Export { root, walk })
    }

    /// The root directory.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens `path` (following symlinks that stay beneath the export).
    pub fn open_at(&self, path: &[u8], flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let rel = relative(path)?;
        let flags = flags | OFlags::CLOEXEC;
        if self.walk {
            return walk(self.root(), rel, flags, mode);
        }
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        // The kernel answers EAGAIN when a rename raced the lookup: try again.
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(&self.root, rel, flags, mode, how) {
                Err(Errno::AGAIN) if tries < 16 => tries += 1,
                r => return r,
            }
        }
    }

    /// Opens the directory that holds `path`'s last component, and names that component;
    /// `None` when the path names no entry of a directory (the root, `.`, `..`), which
    /// each caller answers with the errno its system call would give.
    pub fn parent(&self, path: &[u8]) -> Result<Option<(OwnedFd, CString)>, Errno> {
        let rel = relative(path)?;
        let trimmed = trim_trailing_slashes(rel);
        let (dir, name) = match trimmed.iter().rposition(|&b| b == b'/') {
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => (&b"."[..], trimmed),
        };
        if name.is_empty() || name == b"." || name == b".." {
            return Ok(None);
        }
        let dir = if dir.is_empty() { &b"/"[..] } else { dir };
        let fd = self.open_at(dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        Ok(Some((fd, CString::new(name).map_err(|_| Errno::INVAL)?)))
    }
}

/// A client path made relative to the export root (`/a` and `a` are the same; `/` and the
/// empty path are the root).
fn relative(path: &[u8]) -> Result<&[u8], Errno> {
    if path.contains(&0) {
        return Err(Errno::INVAL);
    }
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    Ok(match &path[start..] {
        [] => b".",
        p => p,
    })
}

fn trim_trailing_slashes(p: &[u8]) -> &[u8] {
    let end = p.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    &p[..end]
}

fn components(p: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
}

/// The user-space resolver: one component at a time, never following a link blindly.
fn walk(root: BorrowedFd<'_>, path: &[u8], flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    let mut pending: VecDeque<Vec<u8>> = components(path).collect();
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    // O_CREAT|O_EXCL never follows a final symlink (POSIX).
    let follow_last =
        !flags.contains(OFlags::NOFOLLOW) && !flags.contains(OFlags::CREATE | OFlags::EXCL);
    while let Some(c) = pending.pop_front() {
        let cur = stack.last().map_or(root, |f| f.as_fd());
        if c == b".." {
            // Popping past the root would leave the export.
            stack.pop().ok_or(Errno::XDEV)?;
            continue;
        }
        let last = pending.is_empty();
        let is_link = match rustix::fs::statat(cur, c.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Symlink,
            Err(Errno::NOENT) if last => false,
            Err(e) => return Err(e),
        };
        if is_link && (!last || follow_last) {
            links += 1;
            if links > MAX_LINKS {
                return Err(Errno::LOOP);
            }
            let target = rustix::fs::readlinkat(cur, c.as_slice(), Vec::new())?;
            let target = target.as_bytes();
            if target.first() == Some(&b'/') {
                return Err(Errno::XDEV);
            }
            for t in components(target).collect::<Vec<_>>().into_iter().rev() {
                pending.push_front(t);
            }
            continue;
        }
        if last {
            return rustix::fs::openat(cur, c.as_slice(), flags | OFlags::NOFOLLOW, mode);
        }
        let dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        stack.push(rustix::fs::openat(cur, c.as_slice(), dir, Mode::empty())?);
    }
    // The path named a directory already open (the root, or one reached by `..`).
    let cur = stack.last().map_or(root, |f| f.as_fd());
    rustix::fs::openat(cur, ".", flags, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_relative_to_the_root() {
        assert_eq!(relative(b"/a/b").unwrap(), b"a/b");
        assert_eq!(relative(b"a").unwrap(), b"a");
        assert_eq!(relative(b"///").unwrap(), b".");
        assert_eq!(relative(b"").unwrap(), b".");
        assert_eq!(relative(b"a\0b"), Err(Errno::INVAL));
        assert_eq!(trim_trailing_slashes(b"a/b//"), b"a/b");
    }
}
