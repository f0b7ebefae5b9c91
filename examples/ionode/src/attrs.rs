//! The node's attribute and lookup cache: `stat` answers, `ENOENT` included, kept for a
//! short time (`--attr-timeout`, `--negative-timeout`), per user (what one user may see
//! of a path says nothing of what another may), and dropped when the node itself changes
//! the path, anything beneath it, or its directory. Other nodes' changes are seen once
//! an entry expires, as with NFS and dfuse attribute caching.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use posix_ship::proto::{Attr, Principal};

use crate::node::lock;

/// Backend, path, follow a final symlink, user.
type Key = (usize, Vec<u8>, bool, Option<Principal>);

/// An answer and when it came.
type Entry = (Result<Attr, i32>, Instant);

/// The cache.
pub struct Attrs {
    map: Mutex<BTreeMap<Key, Entry>>,
    /// Bumped by every change: an answer fetched across a change is not kept.
    epoch: AtomicU64,
    ttl: Duration,
    negative: Duration,
    max: usize,
}

impl Attrs {
    /// Entries live `ttl` (`negative` for `ENOENT`); at most `max` of them.
    pub fn new(ttl: Duration, negative: Duration, max: usize) -> Attrs {
        Attrs {
            map: Mutex::new(BTreeMap::new()),
            epoch: AtomicU64::new(0),
            ttl,
            negative,
            max,
        }
    }

    /// A kept answer.
    pub fn get(
        &self,
        b: usize,
        path: &[u8],
        follow: bool,
        user: &Option<Principal>,
    ) -> Option<Result<Attr, i32>> {
        let key = (b, path.to_vec(), follow, user.clone());
        let mut m = lock(&self.map);
        let (r, t) = m.get(&key)?;
        let ttl = if r.is_ok() { self.ttl } else { self.negative };
        if t.elapsed() < ttl {
            return Some(*r);
        }
        m.remove(&key);
        None
    }

    /// The change count now: pass it to [`Attrs::put`] with the answer fetched after.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps an answer fetched since `epoch` (only successes and `ENOENT`; nothing if
    /// lifetimes are zero, or if the node changed anything meanwhile).
    pub fn put(
        &self,
        epoch: u64,
        b: usize,
        path: &[u8],
        follow: bool,
        user: &Option<Principal>,
        r: Result<Attr, i32>,
    ) {
        let keep = match r {
            Ok(_) => !self.ttl.is_zero(),
            Err(e) => e == libc::ENOENT && !self.negative.is_zero(),
        };
        if !keep {
            return;
        }
        let mut m = lock(&self.map);
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if m.len() >= self.max {
            m.clear();
        }
        m.insert(
            (b, path.to_vec(), follow, user.clone()),
            (r, Instant::now()),
        );
    }

    /// The node changed `path` on backend `b`: forget it, everything beneath it, and its
    /// directory (whose times and link count changed).
    pub fn changed(&self, b: usize, path: &[u8]) {
        let path = path.strip_suffix(b"/").unwrap_or(path);
        let mut m = lock(&self.map);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        // Keys from (b, path) up to (b, path + '0') hold `path` and every path that
        // continues it with a byte below '0', '/' among them.
        let hi = [path, b"0"].concat();
        let doomed: Vec<Key> = m
            .range((b, path.to_vec(), false, None)..(b, hi, false, None))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            m.remove(&k);
        }
        if let Some(i) = path.iter().rposition(|c| *c == b'/') {
            let dir = if i == 0 { &b"/"[..] } else { &path[..i] };
            for follow in [false, true] {
                let lo = (b, dir.to_vec(), follow, None);
                let keys: Vec<Key> = m
                    .range(lo..)
                    .take_while(|(k, _)| k.0 == b && k.1 == dir && k.2 == follow)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    m.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(size: u64) -> Attr {
        Attr {
            size,
            ..Attr::default()
        }
    }

    #[test]
    fn entries_are_per_user_expire_and_die_with_a_change() {
        let c = Attrs::new(Duration::from_secs(60), Duration::from_millis(1), 100);
        let alice = Some(Principal {
            uid: 1,
            gid: 1,
            groups: vec![],
        });
        c.put(0, 0, b"/d/f", true, &alice, Ok(attr(5)));
        c.put(0, 0, b"/d/f/x", true, &alice, Ok(attr(6)));
        c.put(0, 0, b"/d/f-y", true, &alice, Ok(attr(7)));
        c.put(0, 0, b"/d/g", true, &alice, Ok(attr(8)));
        c.put(0, 0, b"/d", false, &alice, Ok(attr(9)));
        c.put(0, 1, b"/d/f", true, &alice, Ok(attr(10)));
        assert_eq!(c.get(0, b"/d/f", true, &alice), Some(Ok(attr(5))));
        assert_eq!(c.get(0, b"/d/f", true, &None), None, "another user");
        assert_eq!(
            c.get(0, b"/d/f", false, &alice),
            None,
            "lstat is another question"
        );
        c.put(0, 0, b"/n", true, &None, Err(libc::ENOENT));
        c.put(0, 0, b"/e", true, &None, Err(libc::EACCES));
        assert_eq!(c.get(0, b"/e", true, &None), None, "only ENOENT is kept");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            c.get(0, b"/n", true, &None),
            None,
            "negative entries expire sooner"
        );
        let before = c.epoch();
        c.changed(0, b"/d/f");
        c.put(before, 0, b"/d/f", true, &alice, Ok(attr(1)));
        assert_eq!(
            c.get(0, b"/d/f", true, &alice),
            None,
            "fetched across the change"
        );
        assert_eq!(c.get(0, b"/d/f/x", true, &alice), None, "beneath it");
        assert_eq!(c.get(0, b"/d", false, &alice), None, "its directory");
        assert!(c.get(0, b"/d/g", true, &alice).is_some(), "a sibling stays");
        assert!(
            c.get(1, b"/d/f", true, &alice).is_some(),
            "another backend stays"
        );
    }
}
