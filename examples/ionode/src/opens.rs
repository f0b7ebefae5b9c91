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

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use posix_ship::proto::Principal;

use crate::backing::Backing;
use crate::node::lock;

/// Handles offered for sharing at most.
const MAX_GRANTS: usize = 4096;

/// Backend, backend path, open flags, user.
pub(crate) type Key = (usize, Vec<u8>, i32, Option<Principal>);

struct Grant {
    backing: Weak<Backing>,
    /// The attribute cache's change count when the backend checked the open.
    epoch: u64,
    until: Instant,
}

/// The handles open for sharing.
pub(crate) struct Opens {
    map: Mutex<HashMap<Key, Grant>>,
    ttl: Duration,
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
            ttl,
        }
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
