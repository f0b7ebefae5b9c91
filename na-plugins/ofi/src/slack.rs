//! A poll's short sleeps kept short: a thread's timer slack (50 µs by default) lengthens
//! every timed sleep by up to that much, so the few-µs sleeps of a queue polled without a
//! wait object (`crate::poll`) would last some 55 µs each.

/// The timer slack of a poll's short sleep.
pub(crate) const POLL_SLACK_NS: libc::c_ulong = 1_000;

/// The calling thread's timer slack held at a given value while this lives, then put
/// back (the thread may be the application's: a caller that holds the poll).
pub(crate) struct TightSlack(libc::c_int);

impl TightSlack {
    /// Lowers the thread's slack to `ns`; none if it was that low already.
    pub(crate) fn new(ns: libc::c_ulong) -> Option<TightSlack> {
        // SAFETY: PR_GET_TIMERSLACK takes no argument and returns the slack (ns).
        let old = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
        if old < 0 || old as libc::c_ulong <= ns {
            return None;
        }
        // SAFETY: PR_SET_TIMERSLACK takes the slack by value.
        (unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns) } == 0).then_some(TightSlack(old))
    }
}

impl Drop for TightSlack {
    fn drop(&mut self) {
        // SAFETY: as in `new`, with the value read there.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, self.0 as libc::c_ulong) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slack() -> libc::c_int {
        // SAFETY: as in `TightSlack::new`.
        unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) }
    }

    #[test]
    fn the_slack_is_tight_while_held_and_put_back_after() {
        std::thread::spawn(|| {
            let before = slack();
            assert!(
                before as libc::c_ulong > POLL_SLACK_NS,
                "default slack {before}"
            );
            {
                let _held = TightSlack::new(POLL_SLACK_NS).expect("lowered");
                assert_eq!(slack() as libc::c_ulong, POLL_SLACK_NS);
                // Already as low: left alone, and not put back by the inner one.
                assert!(TightSlack::new(POLL_SLACK_NS).is_none());
            }
            assert_eq!(slack(), before);
        })
        .join()
        .unwrap();
    }
}
