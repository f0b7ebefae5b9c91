//! Open files handed from one client to another of the same user, as the kernel hands
//! a descriptor to a forked or exec'd child: the parent lends its handle ([`LEND`]) and
//! gets a [`Pass`], the child adopts the pass ([`ADOPT`]) and gets its own handle on the
//! same open file. So a child reads a file its parent opened even when the path no
//! longer names it (deleted, renamed over), with the parent's access mode.
//!
//! A pass is 128 random bits, adopted only by a connection of the lender's user
//! (anonymous peers are one user), any number of times while the lender holds its handle
//! and for [`GRACE`] after it closes it or is lost (a shell closes its copy at once after
//! starting the child). A handle lent again gives the same pass. At most
//! [`PER_USER`] passes per user and [`TOTAL`] in all; past them `EMFILE` (the child then
//! opens by path). Unknown, expired and other users' passes are all `EBADF`. Expired
//! passes are let go at the next lend, adopt, close or client loss of anyone (so an
//! orphaned file stays open at most until the server next sees one of those).
//!
//! A pass is bound to the user's uid, as a descriptor handed to a child is: the adopter
//! holds the file with the access the opener had (group rights included).
//!
//! No I/O and no clock: the caller says what time it is.
//!
//! [`LEND`]: crate::proto::LEND
//! [`ADOPT`]: crate::proto::ADOPT

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use super::clients::{ClientId, User};
use crate::proto::{Fh, Pass};

/// How long a pass outlives its lender's handle.
pub const GRACE: Duration = Duration::from_secs(60);
/// Passes one user may hold.
pub const PER_USER: usize = 256;
/// Passes all users together may hold.
pub const TOTAL: usize = 4096;

struct Lent<F> {
    file: Arc<F>,
    user: User,
}

struct Passes<F> {
    by_pass: HashMap<Pass, Lent<F>>,
    by_handle: HashMap<(ClientId, u64), Pass>,
    /// Passes whose lender let go, oldest first, with when.
    orphans: VecDeque<(Instant, Pass)>,
    per_user: HashMap<User, usize>,
}

/// Every pass given out.
pub struct Lending<F> {
    t: Mutex<Passes<F>>,
}

impl<F> Default for Lending<F> {
    fn default() -> Self {
        Lending {
            t: Mutex::new(Passes {
                by_pass: HashMap::new(),
                by_handle: HashMap::new(),
                orphans: VecDeque::new(),
                per_user: HashMap::new(),
            }),
        }
    }
}

impl<F> Lending<F> {
    fn lock(&self) -> MutexGuard<'_, Passes<F>> {
        self.t.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pass for `id`'s handle `fh` on `file`, opened by `user` (the same pass if lent
    /// before); and the files of passes expired by `now`, to let go.
    pub fn lend(
        &self,
        id: ClientId,
        fh: Fh,
        user: User,
        file: Arc<F>,
        now: Instant,
    ) -> (Result<Pass, Errno>, Vec<Arc<F>>) {
        let mut t = self.lock();
        let expired = t.expire(now);
        if let Some(p) = t.by_handle.get(&(id, fh.0)) {
            return (Ok(*p), expired);
        }
        if t.by_pass.len() >= TOTAL || t.per_user.get(&user).copied().unwrap_or(0) >= PER_USER {
            tracing::debug!(client = id, ?user, "lend refused: too many passes");
            return (Err(Errno::MFILE), expired);
        }
        let pass = loop {
            let mut b = [0u8; 16];
            if getrandom::fill(&mut b).is_err() {
                return (Err(Errno::IO), expired);
            }
            let p = Pass(u128::from_le_bytes(b));
            if !t.by_pass.contains_key(&p) {
                break p;
            }
        };
        t.by_pass.insert(pass, Lent { file, user });
        t.by_handle.insert((id, fh.0), pass);
        *t.per_user.entry(user).or_default() += 1;
        (Ok(pass), expired)
    }

    /// The file `pass` stands for, if `user` may adopt it; and the files of passes
    /// expired by `now`, to let go.
    pub fn adopt(
        &self,
        pass: Pass,
        user: User,
        now: Instant,
    ) -> (Result<Arc<F>, Errno>, Vec<Arc<F>>) {
        let mut t = self.lock();
        let expired = t.expire(now);
        let file = match t.by_pass.get(&pass) {
            Some(l) if l.user == user => Ok(l.file.clone()),
            _ => Err(Errno::BADF),
        };
        (file, expired)
    }

    /// `id` closed `fh`: its pass, if any, lasts [`GRACE`] from `now`; and the files of
    /// passes expired by `now`, to let go.
    pub fn closed(&self, id: ClientId, fh: Fh, now: Instant) -> Vec<Arc<F>> {
        let mut t = self.lock();
        if let Some(p) = t.by_handle.remove(&(id, fh.0)) {
            t.orphans.push_back((now, p));
        }
        t.expire(now)
    }

    /// `id` is lost: its passes last [`GRACE`] from `now`; and the files of passes
    /// expired by `now`, to let go.
    pub fn lost(&self, id: ClientId, now: Instant) -> Vec<Arc<F>> {
        let mut t = self.lock();
        let mine: Vec<(ClientId, u64)> =
            t.by_handle.keys().filter(|k| k.0 == id).copied().collect();
        for k in mine {
            if let Some(p) = t.by_handle.remove(&k) {
                t.orphans.push_back((now, p));
            }
        }
        t.expire(now)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_pass.len()
    }
}

impl<F> Passes<F> {
    /// Forgets the passes orphaned [`GRACE`] before `now`; their files.
    fn expire(&mut self, now: Instant) -> Vec<Arc<F>> {
        let mut out = Vec::new();
        while let Some(&(at, p)) = self.orphans.front() {
            if now.saturating_duration_since(at) < GRACE {
                break;
            }
            self.orphans.pop_front();
            if let Some(l) = self.by_pass.remove(&p) {
                if let Some(n) = self.per_user.get_mut(&l.user) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_user.remove(&l.user);
                    }
                }
                out.push(l.file);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: User = Some(1000);

    #[test]
    fn a_pass_is_adopted_by_its_user_while_lent_and_for_the_grace_after() {
        let l = Lending::default();
        let t0 = Instant::now();
        let f = Arc::new("file");
        let (p, _) = l.lend(7, Fh(1), ME, f.clone(), t0);
        let p = p.unwrap();
        assert_eq!(
            l.lend(7, Fh(1), ME, f.clone(), t0).0,
            Ok(p),
            "same handle, same pass"
        );
        assert_ne!(
            l.lend(7, Fh(2), ME, f.clone(), t0).0,
            Ok(p),
            "another handle, another"
        );
        assert!(Arc::ptr_eq(&l.adopt(p, ME, t0).0.unwrap(), &f));
        assert_eq!(
            l.adopt(p, Some(1001), t0).0.err(),
            Some(Errno::BADF),
            "another user"
        );
        assert_eq!(l.adopt(p, None, t0).0.err(), Some(Errno::BADF), "anonymous");
        assert_eq!(
            l.adopt(Pass(p.0 ^ 1), ME, t0).0.err(),
            Some(Errno::BADF),
            "unknown"
        );
        // Held for ever while the lender holds the handle...
        assert!(l.adopt(p, ME, t0 + GRACE * 10).0.is_ok());
        // ...and for the grace once it closes.
        let t1 = t0 + GRACE * 10;
        assert!(l.closed(7, Fh(1), t1).is_empty());
        assert!(l.adopt(p, ME, t1 + GRACE / 2).0.is_ok());
        let (r, expired) = l.adopt(p, ME, t1 + GRACE);
        assert_eq!(r.err(), Some(Errno::BADF));
        assert_eq!(expired.len(), 1, "its file let go");
        assert_eq!(l.len(), 1, "the other handle's pass stays");
        assert!(l.lost(7, t1).is_empty());
        assert_eq!(
            l.closed(9, Fh(9), t1 + GRACE).len(),
            1,
            "a lost lender's too, at a close"
        );
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn passes_are_bounded_per_user_and_in_all() {
        let l = Lending::default();
        let t = Instant::now();
        for i in 0..PER_USER as u64 {
            assert!(l.lend(1, Fh(i), ME, Arc::new(()), t).0.is_ok());
        }
        assert_eq!(
            l.lend(1, Fh(u64::MAX), ME, Arc::new(()), t).0,
            Err(Errno::MFILE)
        );
        assert!(
            l.lend(2, Fh(0), Some(5), Arc::new(()), t).0.is_ok(),
            "another user"
        );
        // Expired passes give their room back.
        assert!(l.lost(1, t).is_empty());
        assert!(
            l.lend(1, Fh(u64::MAX), ME, Arc::new(()), t + GRACE)
                .0
                .is_ok()
        );
        let l = Lending::default();
        for u in 0..TOTAL as u32 {
            assert!(l.lend(3, Fh(u.into()), Some(u), Arc::new(()), t).0.is_ok());
        }
        assert_eq!(
            l.lend(3, Fh(1 << 40), Some(1 << 30), Arc::new(()), t).0,
            Err(Errno::MFILE)
        );
    }
}
