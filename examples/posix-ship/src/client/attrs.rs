//! The client's attribute cache: what a path's `stat` answered, trusted for a lifetime
//! (`ClientOptions::attr_timeout`, the interposer's `POSIX_SHIP_ATTR_TIMEOUT`), as NFS's
//! `acregmin` or the mount's `--attr-timeout`. Filled by stats and by listings with
//! attributes (so `ls -l`, `du` and `find -size` stat each entry without a call).
//!
//! Within one client it is exact: a change made through it (any call but the ones that
//! only look) empties the cache when it starts and again when it ends, and nothing is
//! cached while one is in flight or if one overlapped the stat that found it. Changes
//! made by other clients are seen once the lifetime is over (close-to-open still holds:
//! an open asks the server); the interposer empties it when its process has waited for
//! a child. At most [`MAX_ENTRIES`] paths, each by its plain name only ([`plain`]).
//!
//! A directory whose entries are stat'ed one by one (`git status` walking its index, `ls
//! -l` after listing the names) is listed with attributes at its second miss within the
//! lifetime ([`Attrs::missed`]): one listing instead of a call per entry. A listing that
//! reached its end also answers that a name not in it is not there ([`Attrs::absent`]);
//! a stat's own `ENOENT` is not kept.
//!
//! No I/O and no clock: the caller says what time it is.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::proto::Attr;

/// Paths remembered at most (past it the cache starts again empty).
pub const MAX_ENTRIES: usize = 16 * 1024;

/// The operations that change nothing on the server (by RPC name): everything else
/// empties the cache (`posix.open` too, unless it only reads: [`changes`]).
const LOOKS: &[&str] = &[
    "posix.stat",
    "posix.readdir",
    "posix.readdir_plus",
    "posix.readdir_plus_xattrs",
    "posix.readlink",
    "posix.statfs",
    "posix.access",
    "posix.getxattr",
    "posix.listxattr",
    "posix.read",
    "posix.read_many",
    "posix.close",
    "posix.close_many",
    "posix.lend",
    "posix.adopt",
    "posix.server_stats",
];

/// Whether the operation named `rpc` may change what a stat answers; `open_flags`: an
/// open's flags (one for reading, without creating or truncating, changes nothing).
pub fn changes(rpc: &str, open_flags: Option<i32>) -> bool {
    match open_flags {
        Some(f) if rpc == "posix.open" => {
            f & libc::O_ACCMODE != libc::O_RDONLY || f & (libc::O_CREAT | libc::O_TRUNC) != 0
        }
        _ => !LOOKS.contains(&rpc),
    }
}

/// Directories followed for misses at most (past it, they are forgotten).
const MAX_DIRS: usize = 1024;

/// Which view of a path: following a final symbolic link or not.
type Key = (Vec<u8>, bool);

struct State {
    /// Moved on by every change's start and end.
    epoch: u64,
    /// Changes in flight.
    changing: usize,
    map: HashMap<Key, (Attr, Instant)>,
    /// Per directory: stat misses within the lifetime (from when), and when it was last
    /// listed for them.
    dirs: HashMap<Vec<u8>, Misses>,
    /// Directories listed whole (every entry is in `map`), and when.
    whole: HashMap<Vec<u8>, Instant>,
}

#[derive(Clone, Copy)]
struct Misses {
    count: u32,
    since: Instant,
    listed: Option<Instant>,
}

/// Attributes by path, for a lifetime.
pub struct Attrs {
    ttl: Duration,
    s: Mutex<State>,
}

/// Taken before a stat or listing is asked for: what it brings is kept only if no
/// change started or ended meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

impl State {
    fn put<'a>(
        &mut self,
        t: Ticket,
        now: Instant,
        entries: impl IntoIterator<Item = (Vec<u8>, bool, &'a Attr)>,
    ) {
        if self.epoch != t.0 || self.changing > 0 {
            return;
        }
        for (p, follow, a) in entries {
            if self.map.len() >= MAX_ENTRIES {
                // Room: everything goes, and what was being kept with this ticket stops
                // (a listing's earlier pages are gone: it is not whole).
                self.forget();
                return;
            }
            if !follow && a.mode & libc::S_IFMT != libc::S_IFLNK {
                self.map.insert((p.clone(), true), (*a, now));
            }
            self.map.insert((p, follow), (*a, now));
        }
    }

    fn forget(&mut self) {
        self.epoch += 1;
        self.map.clear();
        self.dirs.clear();
        self.whole.clear();
    }
}

/// Whether `path` is kept under its own name: absolute, without empty, `.` or `..`
/// components and without a trailing `/` (the server resolves the others; they are
/// asked, not looked up, so that one file has one key).
pub fn plain(path: &[u8]) -> bool {
    path.first() == Some(&b'/')
        && (path.len() == 1
            || path[1..]
                .split(|&b| b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b".."))
}

/// `path`'s directory and name (the root's for `/name`).
fn split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    let slash = path.iter().rposition(|&b| b == b'/')?;
    let dir = if slash == 0 {
        &b"/"[..]
    } else {
        &path[..slash]
    };
    Some((dir, &path[slash + 1..]))
}

impl Attrs {
    /// Trusting answers for `ttl`.
    pub fn new(ttl: Duration) -> Attrs {
        Attrs {
            ttl,
            s: Mutex::new(State {
                epoch: 0,
                changing: 0,
                map: HashMap::new(),
                dirs: HashMap::new(),
                whole: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.s.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `path`'s attributes (following a final link if `follow`), if known since less
    /// than the lifetime before `now`.
    pub fn get(&self, path: &[u8], follow: bool, now: Instant) -> Option<Attr> {
        let s = self.lock();
        if s.changing > 0 {
            return None;
        }
        let (a, at) = s.map.get(&(path.to_vec(), follow))?;
        (now.saturating_duration_since(*at) < self.ttl).then_some(*a)
    }

    /// A ticket for a stat or listing about to be asked for.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().epoch)
    }

    /// Keeps what a stat (or a listing) asked for with `t` answered at `now`: each
    /// path's attributes, as seen following a final link if `follow`. A symbolic link's
    /// own attributes are not its target's, so a listing (which does not follow) fills
    /// the following view only for entries that are not links.
    pub fn put<'a>(
        &self,
        t: Ticket,
        now: Instant,
        entries: impl IntoIterator<Item = (Vec<u8>, bool, &'a Attr)>,
    ) {
        self.lock().put(t, now, entries);
    }

    /// A stat of `path` was not answered from the cache at `now`: the directory to list
    /// first, if this is the second miss in it within the lifetime and it was not listed
    /// for misses within the lifetime.
    pub fn missed(&self, path: &[u8], now: Instant) -> Option<Vec<u8>> {
        let (dir, _) = split(path)?;
        let ttl = self.ttl;
        let mut s = self.lock();
        if s.changing > 0 {
            return None;
        }
        if s.dirs.len() >= MAX_DIRS && !s.dirs.contains_key(dir) {
            s.dirs.clear();
        }
        let m = s.dirs.entry(dir.to_vec()).or_insert(Misses {
            count: 0,
            since: now,
            listed: None,
        });
        if now.saturating_duration_since(m.since) >= ttl {
            *m = Misses {
                count: 0,
                since: now,
                listed: m.listed,
            };
        }
        m.count += 1;
        let fresh = m
            .listed
            .is_some_and(|at| now.saturating_duration_since(at) < ttl);
        if m.count < 2 || fresh {
            return None;
        }
        m.listed = Some(now);
        Some(dir.to_vec())
    }

    /// Whether `path` is known not to exist: its directory was listed whole within the
    /// lifetime and the name was not in it (`.`, `..` and empty names are never known).
    pub fn absent(&self, path: &[u8], now: Instant) -> bool {
        let Some((dir, name)) = split(path) else {
            return false;
        };
        if name.is_empty() || name == b"." || name == b".." {
            return false;
        }
        let s = self.lock();
        s.changing == 0
            && s.whole
                .get(dir)
                .is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
            && !s.map.contains_key(&(path.to_vec(), false))
    }

    /// The entries of `dir` (`entries` as [`Attrs::put`] takes them), listed with `t` at
    /// `now`; `whole`: every entry of it (the listing reached its end).
    pub fn put_listing<'a>(
        &self,
        t: Ticket,
        now: Instant,
        dir: &[u8],
        whole: bool,
        entries: impl IntoIterator<Item = (Vec<u8>, bool, &'a Attr)>,
    ) {
        let mut s = self.lock();
        // (Under one lock: a cache emptied for room in between would make the directory
        // "whole" without its earlier entries; emptying moves the epoch on, so the
        // ticket of a listing that lost entries no longer holds.)
        s.put(t, now, entries);
        if whole && s.epoch == t.0 && s.changing == 0 {
            if s.whole.len() >= MAX_DIRS {
                s.whole.clear();
            }
            s.whole.insert(dir.to_vec(), now);
        }
    }

    /// Forgets everything (another process, a child this one waited for, may have
    /// changed anything).
    pub fn forget(&self) {
        let mut s = self.lock();
        s.forget();
    }

    /// A change starts: nothing is trusted until it ends.
    pub fn change_starts(&self) {
        let mut s = self.lock();
        s.changing += 1;
        s.forget();
    }

    /// A change ended (answered, failed or given up).
    pub fn change_ends(&self) {
        let mut s = self.lock();
        s.changing -= 1;
        s.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(mode: u32, size: u64) -> Attr {
        Attr {
            mode,
            size,
            ..Attr::default()
        }
    }

    #[test]
    fn answers_are_trusted_for_their_lifetime() {
        let c = Attrs::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let f = attr(libc::S_IFREG | 0o644, 5);
        c.put(c.ticket(), t0, [(b"/f".to_vec(), true, &f)]);
        assert_eq!(c.get(b"/f", true, t0 + Duration::from_millis(999)), Some(f));
        assert_eq!(
            c.get(b"/f", true, t0 + Duration::from_secs(1)),
            None,
            "expired"
        );
        assert_eq!(
            c.get(b"/f", false, t0),
            None,
            "the other view was not asked"
        );
    }

    #[test]
    fn a_listing_fills_the_following_view_except_for_links() {
        let c = Attrs::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let (f, l) = (attr(libc::S_IFREG, 1), attr(libc::S_IFLNK | 0o777, 3));
        c.put(
            c.ticket(),
            t0,
            [(b"/d/f".to_vec(), false, &f), (b"/d/l".to_vec(), false, &l)],
        );
        assert_eq!(c.get(b"/d/f", true, t0), Some(f));
        assert_eq!(c.get(b"/d/f", false, t0), Some(f));
        assert_eq!(c.get(b"/d/l", false, t0), Some(l));
        assert_eq!(
            c.get(b"/d/l", true, t0),
            None,
            "a link's target is another file"
        );
    }

    #[test]
    fn changes_empty_it_and_keep_overlapping_answers_out() {
        let c = Attrs::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let f = attr(libc::S_IFREG, 1);
        c.put(c.ticket(), t0, [(b"/f".to_vec(), true, &f)]);
        // A stat asked before a change and answered during it is not kept, nor one
        // answered after it ended.
        let before = c.ticket();
        c.change_starts();
        assert_eq!(c.get(b"/f", true, t0), None, "emptied");
        c.put(before, t0, [(b"/f".to_vec(), true, &f)]);
        let during = c.ticket();
        c.put(during, t0, [(b"/f".to_vec(), true, &f)]);
        assert_eq!(c.get(b"/f", true, t0), None, "nothing kept while changing");
        c.change_ends();
        c.put(before, t0, [(b"/f".to_vec(), true, &f)]);
        c.put(during, t0, [(b"/f".to_vec(), true, &f)]);
        assert_eq!(c.get(b"/f", true, t0), None, "overlapping answers not kept");
        c.put(c.ticket(), t0, [(b"/f".to_vec(), true, &f)]);
        assert_eq!(c.get(b"/f", true, t0), Some(f));
    }

    #[test]
    fn it_is_bounded() {
        let c = Attrs::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let f = attr(libc::S_IFDIR, 0);
        let many = (0..MAX_ENTRIES + 10).map(|i| (format!("/{i}").into_bytes(), true, &f));
        c.put(c.ticket(), t0, many);
        assert!(c.lock().map.len() <= MAX_ENTRIES);
    }

    #[test]
    fn only_looks_leave_it() {
        assert!(!changes("posix.stat", None) && !changes("posix.read", None));
        for rpc in [
            "posix.write",
            "posix.open",
            "posix.rename",
            "posix.chmod",
            "posix.x",
        ] {
            assert!(changes(rpc, None), "{rpc}");
        }
        let open = |f| changes("posix.open", Some(f));
        assert!(!open(libc::O_RDONLY) && !open(libc::O_RDONLY | libc::O_DIRECTORY));
        assert!(open(libc::O_WRONLY) && open(libc::O_RDWR) && open(libc::O_RDONLY | libc::O_CREAT));
        assert!(open(libc::O_RDONLY | libc::O_TRUNC));
    }

    #[test]
    fn a_directory_is_listed_at_its_second_miss_once_per_lifetime() {
        let c = Attrs::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(c.missed(b"/d/a", t0), None, "one miss: a stat");
        assert_eq!(c.missed(b"/e/a", t0), None, "another directory");
        assert_eq!(
            c.missed(b"/d/b", t0),
            Some(b"/d".to_vec()),
            "the second: list it"
        );
        assert_eq!(c.missed(b"/d/c", t0), None, "listed within the lifetime");
        assert_eq!(c.missed(b"/top", t0), None);
        assert_eq!(c.missed(b"/other", t0), Some(b"/".to_vec()), "the root");
        // Misses spread wider than the lifetime do not add up.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(c.missed(b"/e/b", t1), None);
        assert_eq!(
            c.missed(b"/e/c", t1 + Duration::from_millis(10)),
            Some(b"/e".to_vec())
        );
        // A change forgets it all: listed again at the next second miss.
        c.change_starts();
        assert_eq!(c.missed(b"/d/x", t0), None, "nothing while changing");
        c.change_ends();
        assert_eq!(c.missed(b"/d/x", t0), None);
        assert_eq!(c.missed(b"/d/y", t0), Some(b"/d".to_vec()));
    }

    #[test]
    fn a_whole_listing_answers_for_names_not_in_it() {
        let c = Attrs::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let f = attr(libc::S_IFREG, 1);
        let part = [(b"/d/f".to_vec(), false, &f)];
        c.put_listing(c.ticket(), t0, b"/d", false, part.clone());
        assert!(!c.absent(b"/d/g", t0), "a listing cut short says nothing");
        c.put_listing(c.ticket(), t0, b"/d", true, part.clone());
        assert!(c.absent(b"/d/g", t0) && !c.absent(b"/d/f", t0));
        for p in [&b"/d/."[..], b"/d/..", b"/d/", b"/e/g"] {
            assert!(!c.absent(p, t0), "{p:?}");
        }
        assert!(!c.absent(b"/d/g", t0 + Duration::from_secs(1)), "expired");
        c.forget();
        assert!(!c.absent(b"/d/g", t0));
        let stale = c.ticket();
        c.change_starts();
        c.change_ends();
        c.put_listing(stale, t0, b"/d", true, part);
        assert!(
            !c.absent(b"/d/g", t0),
            "a listing overlapping a change is not whole"
        );
    }

    #[test]
    fn only_plain_paths_are_kept() {
        for p in [&b"/"[..], b"/d", b"/d/f.c", b"/a/.b/..c"] {
            assert!(plain(p), "{p:?}");
        }
        for p in [
            &b""[..],
            b"d/f",
            b"/d/",
            b"/d//f",
            b"/d/./f",
            b"/d/../f",
            b"/d/.",
        ] {
            assert!(!plain(p), "{p:?}");
        }
    }

    #[test]
    fn a_listing_that_lost_entries_for_room_is_not_whole() {
        let c = Attrs::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let f = attr(libc::S_IFDIR, 0);
        let t = c.ticket();
        let first = [(b"/d/first".to_vec(), false, &f)];
        c.put_listing(t, t0, b"/d", false, first);
        let many = (0..MAX_ENTRIES).map(|i| (format!("/d/{i}").into_bytes(), false, &f));
        c.put_listing(t, t0, b"/d", true, many);
        assert!(!c.absent(b"/d/first", t0), "emptied for room: not whole");
    }
}
