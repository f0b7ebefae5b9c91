//! The mount's inode table, without I/O: the protocol names files by path, the kernel by
//! inode number. A number is handed out per file the kernel looked up (a hard link made
//! through the mount adds a path to its file's number), kept until the kernel forgets it,
//! and follows its file through renames; a number whose paths are all unlinked stays
//! valid for the kernel (open files live on through their handles) but names no path.

use std::collections::HashMap;
use std::time::Instant;

/// The root's number (FUSE's).
pub const ROOT: u64 = 1;

struct Node {
    /// Its paths beneath the export (`/` for the root), first the one used; none once
    /// unlinked.
    paths: Vec<Vec<u8>>,
    /// Lookups the kernel holds.
    lookups: u64,
    /// Until when the file is known to have no extended attributes a client may reach
    /// (a listing said so; any change through the mount forgets it).
    bare_until: Option<Instant>,
}

/// Inode numbers and the paths they stand for.
pub struct Inodes {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<Vec<u8>, u64>,
    next: u64,
    /// Changes made through the mount to names (rename, link, unlink) or extended
    /// attributes: a listing read before the last one may not say a file has none (its
    /// name may stand for another file by now).
    changes: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT + 1,
            changes: 0,
        };
        t.nodes.insert(
            ROOT,
            Node {
                paths: vec![b"/".to_vec()],
                lookups: 1,
                bare_until: None,
            },
        );
        t.by_path.insert(b"/".to_vec(), ROOT);
        t
    }
}

/// `parent/name` (a single component; `None` for `.`, `..`, empty or slashed names).
pub fn join(parent: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return None;
    }
    let mut p = parent.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    Some(p)
}

fn under(path: &[u8], dir: &[u8]) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

impl Inodes {
    /// The path `ino` stands for (`None`: unknown, or unlinked).
    pub fn path(&self, ino: u64) -> Option<Vec<u8>> {
        self.nodes.get(&ino)?.paths.first().cloned()
    }

    /// The path of `name` in directory `parent`.
    pub fn child(&self, parent: u64, name: &[u8]) -> Option<Vec<u8>> {
        join(&self.path(parent)?, name)
    }

    /// `path` is a new hard link to `ino`'s file: one more lookup of `ino`.
    pub fn linked(&mut self, ino: u64, path: &[u8]) -> Option<u64> {
        self.unlinked(path); // (counts the change)
        let n = self.nodes.get_mut(&ino)?;
        n.paths.push(path.to_vec());
        n.lookups += 1;
        self.by_path.insert(path.to_vec(), ino);
        Some(ino)
    }

    /// The kernel looked `path` up: its number, with one more lookup held.
    pub fn learn(&mut self, path: &[u8]) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.lookups += 1;
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(
            ino,
            Node {
                paths: vec![path.to_vec()],
                lookups: 1,
                bare_until: None,
            },
        );
        self.by_path.insert(path.to_vec(), ino);
        ino
    }

    /// The count of changes made through the mount to names and extended attributes.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// What the server said of `ino`'s extended attributes in a listing read when
    /// [`Inodes::changes`] was `listed`, kept until `until` (`Some(true)` or `None`: ask
    /// it); ignored if names or attributes changed through the mount since.
    pub fn listed_xattrs(&mut self, ino: u64, has: Option<bool>, listed: u64, until: Instant) {
        let stale = listed != self.changes;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.bare_until = (has == Some(false) && !stale).then_some(until);
        }
    }

    /// Whether `ino` is known, at `now`, to have no extended attributes a client may reach.
    pub fn bare(&self, ino: u64, now: Instant) -> bool {
        let until = self.nodes.get(&ino).and_then(|n| n.bare_until);
        until.is_some_and(|t| now < t)
    }

    /// `ino`'s extended attributes are changed through the mount.
    pub fn xattrs_changed(&mut self, ino: u64) {
        self.changes += 1;
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.bare_until = None;
        }
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            for p in std::mem::take(&mut node.paths) {
                self.by_path.remove(&p);
            }
            self.nodes.remove(&ino);
        }
    }

    /// `path` was unlinked or removed: its number names nothing any more.
    pub fn unlinked(&mut self, path: &[u8]) {
        self.changes += 1;
        if let Some(ino) = self.by_path.remove(path)
            && let Some(n) = self.nodes.get_mut(&ino)
        {
            n.paths.retain(|p| p != path);
        }
    }

    /// `a` and `b` swapped places (`RENAME_EXCHANGE`), each with what is beneath it.
    pub fn exchanged(&mut self, a: &[u8], b: &[u8]) {
        // Through a name no file can have (a NUL byte), so neither side is unlinked.
        let tmp = [a, b"\0"].concat();
        self.renamed(a, &tmp);
        self.renamed(b, a);
        self.renamed(&tmp, b);
    }

    /// `from` was renamed to `to`: it and everything beneath it move; whatever `to` was
    /// is replaced.
    pub fn renamed(&mut self, from: &[u8], to: &[u8]) {
        self.unlinked(to); // (counts the change)
        let moved: Vec<(Vec<u8>, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_slice() == from || under(p, from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let mut new = to.to_vec();
            new.extend_from_slice(&old[from.len()..]);
            if let Some(n) = self.nodes.get_mut(&ino) {
                for p in n.paths.iter_mut().filter(|p| **p == old) {
                    *p = new.clone();
                }
            }
            self.by_path.insert(new, ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_swaps_both_names_and_what_is_beneath() {
        let mut t = Inodes::default();
        let (a, b, x) = (t.learn(b"/a"), t.learn(b"/b"), t.learn(b"/a/x"));
        t.exchanged(b"/a", b"/b");
        assert_eq!(t.path(a).unwrap(), b"/b");
        assert_eq!(t.path(b).unwrap(), b"/a");
        assert_eq!(t.path(x).unwrap(), b"/b/x", "beneath it too");
    }

    #[test]
    fn numbers_follow_lookups_renames_and_unlinks() {
        let mut t = Inodes::default();
        assert_eq!(t.child(ROOT, b"a").unwrap(), b"/a");
        assert!(t.child(ROOT, b"..").is_none() && t.child(ROOT, b"x/y").is_none());
        let a = t.learn(b"/a");
        let f = t.learn(b"/a/f");
        assert_eq!(t.learn(b"/a"), a, "one number per path");
        t.renamed(b"/a", b"/b");
        assert_eq!(t.path(a).unwrap(), b"/b");
        assert_eq!(t.path(f).unwrap(), b"/b/f", "the subtree moves");
        assert_eq!(t.child(a, b"g").unwrap(), b"/b/g");
        let g = t.learn(b"/g");
        t.renamed(b"/b/f", b"/g");
        assert_eq!(t.path(g), None, "the replaced file names nothing");
        assert_eq!(t.path(f).unwrap(), b"/g");
        t.unlinked(b"/g");
        assert_eq!(t.path(f), None);
        let f2 = t.learn(b"/g");
        assert_ne!(f2, f, "a new file at the path gets a new number");
        t.forget(a, 2);
        assert_eq!(t.path(a), None);
        t.forget(ROOT, 100);
        assert_eq!(t.path(ROOT).unwrap(), b"/", "the root is never forgotten");
    }

    #[test]
    fn hard_links_share_a_number_until_every_path_is_gone() {
        let mut t = Inodes::default();
        let f = t.learn(b"/f");
        assert_eq!(t.linked(f, b"/g"), Some(f));
        assert_eq!(t.learn(b"/g"), f, "found by either path");
        t.unlinked(b"/f");
        assert_eq!(t.path(f).unwrap(), b"/g", "the other path remains");
        t.renamed(b"/g", b"/h");
        assert_eq!(t.path(f).unwrap(), b"/h");
        t.unlinked(b"/h");
        assert_eq!(t.path(f), None);
    }

    #[test]
    fn a_listed_bare_file_stays_bare_until_its_time_or_a_change() {
        let mut t = Inodes::default();
        let (f, g) = (t.learn(b"/f"), t.learn(b"/g"));
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        let read = t.changes();
        t.listed_xattrs(f, Some(false), read, later);
        t.listed_xattrs(g, Some(true), read, later);
        assert!(t.bare(f, now) && !t.bare(f, later), "until its time");
        assert!(!t.bare(g, now), "a file with attributes is asked");
        t.listed_xattrs(g, None, read, later);
        assert!(!t.bare(g, now), "nor one the server could not tell");
        t.xattrs_changed(f);
        assert!(!t.bare(f, now), "a change forgets it");
        t.listed_xattrs(f, Some(false), read, later);
        assert!(
            !t.bare(f, now),
            "nor does a listing read before the change say it"
        );
        t.listed_xattrs(f, Some(false), t.changes(), later);
        assert!(t.bare(f, now), "one read after it does");
        // A name renamed over after the listing was read stands for another file.
        let read = t.changes();
        t.renamed(b"/g", b"/f");
        t.listed_xattrs(g, Some(false), read, later);
        assert!(
            !t.bare(g, now),
            "a listing from before a rename says nothing"
        );
        t.forget(f, 1);
        let again = t.learn(b"/f");
        assert!(!t.bare(again, now), "a forgotten number keeps nothing");
    }

    #[test]
    fn a_prefix_is_not_a_parent() {
        let mut t = Inodes::default();
        let ab = t.learn(b"/ab");
        t.learn(b"/a");
        t.renamed(b"/a", b"/z");
        assert_eq!(t.path(ab).unwrap(), b"/ab");
    }
}
