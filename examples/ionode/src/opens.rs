//! One backend handle for the clients of one user that open one file alike.
//!
//! A thousand ranks of a job opening one file through the node made a thousand backend
//! opens and held a thousand backend handles. Now an open of a regular file without
//! `O_CREAT`, `O_TRUNC` or `O_EXCL` reuses the backend handle an earlier open made with
//! the same flags, for the same user (the identity the backend checked), while that
//! handle is open and for at most the attribute timeout after it was checked, and only
//! if the node changed nothing since (any change: a rename, a chmod, a close after
//! writes) and its attribute cache still names the same file (device and inode). Like an
//! NFS client's access cache, a permission change made elsewhere is seen within the
//! timeout. The backend handle is closed when the last client handle on it closes.
//!
//! Opens alike that come while the first is still at the backend (a job's ranks opening
//! its input at once made one backend open each) wait for it ([`Opens::ask`]): the
//! first leads, and when its answer names a regular file every open waiting on it gains
//! its handle; if it fails (or is never answered), each asks the backend itself.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use posix_ship::proto::{Attr, Principal};

use crate::backing::Backing;
use crate::node::lock;

/// Handles offered for sharing at most.
const MAX_GRANTS: usize = 4096;
/// Opens waiting on one open in flight at most; more ask the backend themselves.
const MAX_JOINERS: usize = 4096;

/// Backend, backend path, open flags, user.
pub(crate) type Key = (usize, Vec<u8>, i32, Option<Principal>);

struct Grant {
    backing: Weak<Backing>,
    /// The attribute cache's change count when the backend checked the open.
    epoch: u64,
    until: Instant,
}

/// What an open that waited on another learns ([`Opens::ask`]).
pub(crate) enum Verdict {
    /// The open in flight gave this regular file's handle, which gained this open as a
    /// user, with its attributes.
    Shared(Attr, Arc<Backing>),
    /// Ask the backend: leading the opens alike that come meanwhile, or alone.
    Ask(Option<Lead>),
}

/// What an open waiting on another does with the outcome.
pub(crate) type Joiner = Box<dyn FnOnce(Verdict) + Send>;

/// Opens asked of the backend and not answered yet: their change count and the opens
/// waiting on them.
type Joins = Arc<Mutex<HashMap<Key, (u64, Vec<Joiner>)>>>;

/// The handles open for sharing.
pub(crate) struct Opens {
    map: Mutex<HashMap<Key, Grant>>,
    joins: Joins,
    ttl: Duration,
}

/// An open leading the opens alike that wait on it. Dropped without
/// [`Lead::share`] (its open failed, or was never answered), each asks the backend.
pub(crate) struct Lead {
    joins: Joins,
    key: Option<Key>,
}

impl Lead {
    fn waiting(&mut self) -> Vec<Joiner> {
        let Some(k) = self.key.take() else {
            return Vec::new();
        };
        lock(&self.joins)
            .remove(&k)
            .map(|(_, w)| w)
            .unwrap_or_default()
    }

    /// The led open got `backing` (a regular file, with `attr`): every open waiting on
    /// it gains it.
    pub(crate) fn share(mut self, opens: &Opens, attr: Attr, backing: &Arc<Backing>) {
        let waiting = self.waiting();
        {
            // Under the grants' lock, as in `take` and `release`.
            let _m = lock(&opens.map);
            backing.users.fetch_add(waiting.len(), Ordering::AcqRel);
        }
        for j in waiting {
            j(Verdict::Shared(attr, backing.clone()));
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        for j in self.waiting() {
            j(Verdict::Ask(None));
        }
    }
}

/// Flags an open may share a handle under (regular files, no creation or truncation:
/// such an open changes the file, and only the backend can say what it does).
fn shareable(flags: i32) -> bool {
    flags & (libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_DIRECTORY | libc::O_PATH) == 0
}

impl Opens {
    /// Handles shared for up to `ttl` after their open (zero: never).
    pub(crate) fn new(ttl: Duration) -> Opens {
        Opens {
            map: Mutex::new(HashMap::new()),
            joins: Arc::default(),
            ttl,
        }
    }

    /// An open under `key` at change count `epoch` that must ask the backend: `then` runs
    /// at once, told to lead, or to ask alone (one alike at another change count is in
    /// flight, or too many wait); or later, when the open alike in flight is answered.
    pub(crate) fn ask(&self, key: Key, epoch: u64, then: Joiner) {
        if self.ttl.is_zero() {
            return then(Verdict::Ask(None));
        }
        let verdict = {
            let mut m = lock(&self.joins);
            match m.get_mut(&key) {
                Some((e, waiting)) if *e == epoch && waiting.len() < MAX_JOINERS => {
                    waiting.push(then);
                    return;
                }
                Some(_) => Verdict::Ask(None),
                None => {
                    m.insert(key.clone(), (epoch, Vec::new()));
                    Verdict::Ask(Some(Lead {
                        joins: self.joins.clone(),
                        key: Some(key),
                    }))
                }
            }
        };
        then(verdict)
    }

    /// The key of an open that may share, or `None`.
    pub(crate) fn key(b: usize, path: &[u8], flags: i32, user: &Option<Principal>) -> Option<Key> {
        shareable(flags).then(|| (b, path.to_vec(), flags & !libc::O_CLOEXEC, user.clone()))
    }

    /// A handle opened under `key` at change count `epoch`, still open: it gains a user.
    pub(crate) fn take(&self, key: &Key, epoch: u64) -> Option<Arc<Backing>> {
        if self.ttl.is_zero() {
            return None;
        }
        let m = lock(&self.map);
        let g = m.get(key)?;
        if g.epoch != epoch || Instant::now() >= g.until {
            return None;
        }
        let b = g.backing.upgrade()?;
        // Under the lock, as in `release`: a handle whose last user left is closing.
        if b.users.load(Ordering::Acquire) == 0 {
            return None;
        }
        b.users.fetch_add(1, Ordering::AcqRel);
        Some(b)
    }

    /// Offers `backing`, just opened and checked at change count `epoch`, for sharing.
    pub(crate) fn put(&self, key: Key, backing: &Arc<Backing>, epoch: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut m = lock(&self.map);
        if m.len() >= MAX_GRANTS {
            m.retain(|_, g| g.until > now && g.backing.strong_count() > 0);
            if m.len() >= MAX_GRANTS {
                // All live: this one is not offered (memory stays bounded).
                return;
            }
        }
        m.insert(
            key,
            Grant {
                backing: Arc::downgrade(backing),
                epoch,
                until: now + self.ttl,
            },
        );
    }

    /// A client handle on `backing` closed: whether it was the last (the backend handle
    /// is then to be closed).
    pub(crate) fn release(&self, backing: &Backing) -> bool {
        let _m = lock(&self.map);
        let users = &backing.users;
        let left = users
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .map_or(0, |n| n - 1);
        left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_alike_wait_on_the_first_and_ask_themselves_if_it_fails() {
        let o = Opens::new(Duration::from_secs(1));
        let key = Opens::key(0, b"/f", libc::O_RDONLY, &None).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let note = |tag: &'static str| -> Joiner {
            let seen = seen.clone();
            Box::new(move |v| {
                let what = match v {
                    Verdict::Shared(..) => "shared",
                    Verdict::Ask(Some(_)) => "lead",
                    Verdict::Ask(None) => "alone",
                };
                lock(&seen).push((tag, what));
            })
        };
        let lead = Arc::new(Mutex::new(None));
        let keep = lead.clone();
        o.ask(
            key.clone(),
            1,
            Box::new(move |v| {
                if let Verdict::Ask(Some(l)) = v {
                    *lock(&keep) = Some(l);
                }
            }),
        );
        assert!(lock(&lead).is_some(), "the first leads");
        o.ask(key.clone(), 1, note("b"));
        o.ask(key.clone(), 1, note("c"));
        o.ask(key.clone(), 2, note("other epoch"));
        assert_eq!(*lock(&seen), [("other epoch", "alone")]);
        drop(lock(&lead).take());
        assert_eq!(
            lock(&seen)[1..],
            [("b", "alone"), ("c", "alone")],
            "a lead that fails lets the waiting ask"
        );
        o.ask(key, 1, note("next"));
        assert_eq!(lock(&seen)[3], ("next", "lead"));
        let off = Opens::new(Duration::ZERO);
        off.ask(Opens::key(0, b"/f", 0, &None).unwrap(), 1, note("off"));
        assert_eq!(lock(&seen)[4], ("off", "alone"));
    }

    #[test]
    fn only_plain_opens_share() {
        assert!(shareable(libc::O_RDONLY));
        assert!(shareable(libc::O_RDWR | libc::O_CLOEXEC));
        assert!(shareable(libc::O_WRONLY | libc::O_APPEND));
        for f in [
            libc::O_CREAT,
            libc::O_TRUNC,
            libc::O_EXCL,
            libc::O_DIRECTORY,
        ] {
            assert!(!shareable(libc::O_RDWR | f), "{f:#o}");
        }
        let k = |f| Opens::key(0, b"/f", f, &None).map(|k| k.2);
        assert_eq!(k(libc::O_RDONLY | libc::O_CLOEXEC), k(libc::O_RDONLY));
        assert_ne!(
            k(libc::O_RDONLY),
            k(libc::O_RDWR),
            "other flags, other handle"
        );
    }
}
