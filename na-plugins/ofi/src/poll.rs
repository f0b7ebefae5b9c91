//! How often progress polls a completion queue that has no wait object (shm's, or any
//! when `OfiConfig::wait_object` is off): soon after activity, since a peer's answer is
//! likely on its way; less often while nothing comes; and, once the queue has been idle
//! for a while, rarely enough that an idle engine costs next to nothing. Pure: the
//! plugin keeps the state in atomics and asks for each sleep.

use std::time::Duration;

/// The longest poll interval of a queue idle for less than [`DEEP_AFTER`] polls (and of
/// a backlog waiting for room, with or without a wait object: `progress::sleep`).
pub(crate) const IDLE_POLL: Duration = Duration::from_micros(200);

/// The longest poll interval while operations are in flight: the provider moves a peer's
/// small transfers into our memory only while we poll, and nothing tells us they come.
pub(crate) const BUSY_POLL: Duration = Duration::from_micros(10);

/// The first poll interval after activity.
pub(crate) const FIRST_POLL: Duration = Duration::from_micros(2);

/// The longest deep interval, whatever `OfiConfig::idle_poll_max` says (a progress call
/// without a deadline would otherwise sleep as long as it asks).
pub(crate) const DEEP_MAX: Duration = Duration::from_secs(1);

/// Polls at [`IDLE_POLL`] (about 0.1 s of them) before the interval grows further, up to
/// `OfiConfig::idle_poll_max`, by an eighth per poll (to 5 ms within some 45 ms more).
pub(crate) const DEEP_AFTER: u32 = 500;

/// Where the policy stands: the next interval (ns) and how many polls have gone by at
/// [`IDLE_POLL`] or more since the last activity.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Poll {
    pub(crate) next_ns: u64,
    pub(crate) idle_polls: u32,
}

impl Poll {
    /// One word, for an atomic: the interval (at most [`DEEP_MAX`], 10^9 ns, fits 32
    /// bits) low, the idle polls high.
    pub(crate) fn pack(self) -> u64 {
        let ns = self.next_ns.min(DEEP_MAX.as_nanos() as u64);
        u64::from(self.idle_polls) << 32 | ns
    }

    /// The state [`Poll::pack`] made.
    pub(crate) fn unpack(w: u64) -> Poll {
        Poll {
            next_ns: w & u64::from(u32::MAX),
            idle_polls: (w >> 32) as u32,
        }
    }

    /// The state right after activity.
    pub(crate) fn active() -> Poll {
        Poll {
            next_ns: FIRST_POLL.as_nanos() as u64,
            idle_polls: 0,
        }
    }

    /// How long this poll sleeps, and the state for the next one; `busy`: operations are
    /// in flight; `deep_max`: `OfiConfig::idle_poll_max` (taken as at least [`IDLE_POLL`]).
    pub(crate) fn step(self, busy: bool, deep_max: Duration) -> (Duration, Poll) {
        let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        let deep = ns(deep_max.min(DEEP_MAX)).max(ns(IDLE_POLL));
        let (first, idle) = (ns(FIRST_POLL), ns(IDLE_POLL));
        if busy {
            let cur = self.next_ns.clamp(first, ns(BUSY_POLL));
            let next = Poll {
                next_ns: cur.saturating_mul(2).min(ns(BUSY_POLL)),
                idle_polls: 0,
            };
            return (Duration::from_nanos(cur), next);
        }
        let cur = self.next_ns.clamp(first, deep);
        let next = if cur < idle {
            Poll {
                next_ns: cur.saturating_mul(2).min(idle),
                idle_polls: 0,
            }
        } else {
            let idle_polls = self.idle_polls.saturating_add(1);
            let grown = match idle_polls >= DEEP_AFTER {
                true => cur.saturating_add(cur / 8).min(deep),
                false => cur,
            };
            Poll {
                next_ns: grown,
                idle_polls,
            }
        };
        (Duration::from_nanos(cur), next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEEP: Duration = Duration::from_millis(5);

    /// Steps `n` idle polls from `p`; the sleeps and the last state.
    fn idle(mut p: Poll, n: usize) -> (Vec<Duration>, Poll) {
        let mut sleeps = Vec::new();
        for _ in 0..n {
            let (d, q) = p.step(false, DEEP);
            sleeps.push(d);
            p = q;
        }
        (sleeps, p)
    }

    #[test]
    fn after_activity_polls_come_soon_then_every_200_us() {
        let (s, _) = idle(Poll::active(), 10);
        let us: Vec<u128> = s.iter().map(|d| d.as_micros()).collect();
        assert_eq!(us, [2, 4, 8, 16, 32, 64, 128, 200, 200, 200]);
    }

    #[test]
    fn a_long_silence_slows_polling_to_the_deep_interval_and_no_further() {
        let (s, p) = idle(Poll::active(), 700);
        // About 0.1 s at 200 µs first: the first message after a short pause waits little.
        let at_200 = s.iter().filter(|d| **d == IDLE_POLL).count();
        assert_eq!(at_200, DEEP_AFTER as usize);
        let before_deep: Duration = s[..DEEP_AFTER as usize].iter().sum();
        assert!(before_deep >= Duration::from_millis(95), "{before_deep:?}");
        // Then growing, to the cap and not past it.
        assert_eq!(*s.last().unwrap(), DEEP);
        assert!(s.iter().all(|d| *d <= DEEP));
        assert!(
            s.windows(2).all(|w| w[1] >= w[0]),
            "never shrinks while idle"
        );
        // Reaching the cap takes well under a second more.
        let to_cap: Duration = s[DEEP_AFTER as usize..]
            .iter()
            .take_while(|d| **d < DEEP)
            .sum();
        assert!(to_cap < Duration::from_millis(100), "{to_cap:?}");
        // An idle second costs about 200 polls, not 5 000.
        let (s, _) = idle(p, 200);
        assert_eq!(s.iter().sum::<Duration>(), Duration::from_secs(1));
    }

    #[test]
    fn activity_or_work_in_flight_brings_quick_polls_back() {
        let (_, deep) = idle(Poll::active(), 700);
        assert_eq!(Poll::active().step(false, DEEP).0, FIRST_POLL);
        // An operation in flight: 10 µs at most at once, whatever the idle state.
        let (d, p) = deep.step(true, DEEP);
        assert_eq!(d, BUSY_POLL);
        assert_eq!(p.idle_polls, 0);
        // And when it is over, the idle count starts again from zero.
        let (s, _) = idle(p, 3);
        assert!(s.iter().all(|d| *d <= IDLE_POLL), "{s:?}");
    }

    #[test]
    fn states_pack_into_one_word_and_back() {
        let (_, deep) = idle(Poll::active(), 700);
        for p in [
            Poll::active(),
            deep,
            Poll {
                next_ns: 1_000_000_000,
                idle_polls: u32::MAX,
            },
        ] {
            assert_eq!(Poll::unpack(p.pack()), p);
        }
        assert_eq!(Poll::unpack(0), Poll::default());
    }

    #[test]
    fn a_deep_cap_is_at_most_a_second() {
        let mut p = Poll::active();
        for _ in 0..2000 {
            p = p.step(false, Duration::from_secs(3600)).1;
        }
        assert_eq!(p.step(false, Duration::from_secs(3600)).0, DEEP_MAX);
    }

    #[test]
    fn a_deep_cap_below_200_us_keeps_the_old_policy() {
        let (s, _) = idle(Poll::active(), 900);
        let (t, _) = {
            let mut p = Poll::active();
            let mut v = Vec::new();
            for _ in 0..900 {
                let (d, q) = p.step(false, Duration::from_micros(50));
                v.push(d);
                p = q;
            }
            (v, p)
        };
        assert!(t.iter().all(|d| *d <= IDLE_POLL));
        assert_eq!(*t.last().unwrap(), IDLE_POLL);
        assert!(s.last().unwrap() > t.last().unwrap());
    }
}
