//! Write leases (`na_stream::direct`): a requester that writes straight into its peer's
//! memory declares the region's key in a word of the link's shared header first, and the
//! owner, before it lets a region go, waits until no peer of its uid declares that key.
//!
//! The protocol is two store-then-load pairs, each side sequentially consistent:
//!
//! ```text
//! requester                           owner (deregistering key K)
//! lease := K                          entry.key := 0
//! if owner hung up: lease := 0, stop  (wait while lease == K and the requester lives)
//! read entry; if entry.key == K:      free the memory
//!     write the region
//! lease := 0
//! ```
//!
//! With a sequentially consistent fence between each side's store and load, one of the
//! two sees the other's store: the requester reads a cleared entry and writes nothing,
//! or the owner reads the lease and waits (the model below checks it with a write and a
//! free that race, `loom` reporting the race if they could overlap; without the fences
//! it reports one). The
//! owner's close of a link is the same shape (shut the socket, then look at the lease:
//! the requester looks at the socket after declaring), so a link closed under a write is
//! kept until the write ends (`StreamPlugin::close_conn`). A requester that died holding
//! a lease writes nothing more: its lease counts as ended once its pidfd says so (a link
//! without one offers no direct copies). The requester reads the entry with
//! `process_vm_readv`, not an atomic load: after its fence, a kernel copy's loads are
//! ordinary loads, ordered as the model's on x86-64 (`na_stream::direct::SUPPORTED`).
//! The owner waits on every link of the process that copies directly, of any plugin
//! (the arena is the process's), and a requester writes only over a link whose
//! handshake is done (the owner watches it from before it sends its first frame).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use std::sync::atomic::{AtomicU64, Ordering};

/// Declares a write into the peer's region `key` on `lease` (this side's word), unless the
/// peer's end of liveness socket `sock` is gone; false: write nothing.
pub fn take(lease: &AtomicU64, sock: RawFd, key: u64) -> bool {
    lease.store(key, Ordering::SeqCst);
    // The declaration before any look at the owner's state (its socket here, its entry
    // next, by the caller).
    std::sync::atomic::fence(Ordering::SeqCst);
    if hung_up(sock) {
        lease.store(0, Ordering::SeqCst);
        return false;
    }
    true
}

/// Ends this side's lease.
pub fn end(lease: &AtomicU64) {
    lease.store(0, Ordering::SeqCst);
}

/// The key the peer declares on `lease` (its word), or 0 if none or the peer process
/// (`pidfd`) has ended.
pub fn peer(lease: &AtomicU64, pidfd: &OwnedFd) -> u64 {
    // The owner's clearing of the entry (or shutdown of the socket) before the look.
    std::sync::atomic::fence(Ordering::SeqCst);
    let k = lease.load(Ordering::SeqCst);
    if k != 0 && readable(pidfd.as_raw_fd()) {
        return 0;
    }
    k
}

/// A pidfd of process `pid` (readable once it has ended), if the kernel has them.
pub fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; the result is checked and then owned.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn poll(fd: RawFd, events: libc::c_short) -> libc::c_short {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one pollfd of ours, zero timeout.
    match unsafe { libc::poll(&mut p, 1, 0) } {
        1 => p.revents,
        _ => 0,
    }
}

fn hung_up(sock: RawFd) -> bool {
    poll(sock, libc::POLLRDHUP) & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

fn readable(fd: RawFd) -> bool {
    poll(fd, libc::POLLIN) & libc::POLLIN != 0
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A socket pair: (ours, the peer's).
    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills two fresh descriptors, which we then own.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: fresh descriptors from socketpair.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_lease_is_declared_while_the_owner_is_there_and_refused_once_it_hung_up() {
        let word = AtomicU64::new(0);
        let (ours, theirs) = pair();
        assert!(take(&word, ours.as_raw_fd(), 7));
        assert_eq!(word.load(Ordering::SeqCst), 7);
        end(&word);
        assert_eq!(word.load(Ordering::SeqCst), 0);
        drop(theirs);
        assert!(!take(&word, ours.as_raw_fd(), 7), "the owner hung up");
        assert_eq!(word.load(Ordering::SeqCst), 0, "nothing left declared");
    }

    #[test]
    fn a_peer_lease_counts_until_the_peer_process_has_ended() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let fd = pidfd(child.id() as i32).expect("pidfd_open (Linux 5.3 and later)");
        let word = AtomicU64::new(9);
        assert_eq!(peer(&word, &fd), 9, "alive: its lease holds");
        child.kill().unwrap();
        // Not reaped yet (a zombie, as a peer whose parent does not wait for it): ended
        // all the same.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while peer(&word, &fd) != 0 {
            assert!(
                std::time::Instant::now() < end,
                "a killed peer's lease still counts"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.wait().unwrap();
        assert_eq!(peer(&word, &fd), 0, "ended: it writes nothing more");
        word.store(0, Ordering::SeqCst);
        assert_eq!(peer(&word, &fd), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicU64, Ordering, fence};

    /// A requester writing region K under the protocol, racing the owner letting it go
    /// (clearing the entry, then waiting out the lease, when `clear_first`; the other
    /// order otherwise), then writing it as a free would: loom reports a race on the
    /// region if the write and the free can overlap.
    fn race(clear_first: bool) {
        loom::model(move || {
            const K: u64 = 7;
            let entry = Arc::new(AtomicU64::new(K));
            let lease = Arc::new(AtomicU64::new(0));
            let region = Arc::new(UnsafeCell::new(0u32));
            let req = {
                let (entry, lease, region) = (entry.clone(), lease.clone(), region.clone());
                loom::thread::spawn(move || {
                    lease.store(K, Ordering::SeqCst);
                    fence(Ordering::SeqCst);
                    if entry.load(Ordering::SeqCst) == K {
                        // SAFETY (model): exclusive if the protocol holds; loom checks it.
                        region.with_mut(|r| unsafe { *r = 1 });
                    }
                    lease.store(0, Ordering::SeqCst);
                })
            };
            if clear_first {
                entry.store(0, Ordering::SeqCst);
            }
            fence(Ordering::SeqCst);
            while lease.load(Ordering::SeqCst) == K {
                loom::thread::yield_now();
            }
            if !clear_first {
                entry.store(0, Ordering::SeqCst);
            }
            // SAFETY (model): as above; the free.
            region.with_mut(|r| unsafe { *r = 2 });
            req.join().unwrap();
        });
    }

    #[test]
    fn a_write_never_lands_after_the_region_is_let_go() {
        race(true);
    }

    /// The mutant (the owner looks at the lease before it clears the entry) is caught.
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn looking_before_clearing_is_caught() {
        race(false);
    }
}
