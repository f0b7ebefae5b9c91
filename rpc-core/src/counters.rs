//! Counters a user or operator reads from a running engine.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, updated with relaxed atomics.
        #[derive(Default)]
        pub(crate) struct Counters { $(pub(crate) $name: AtomicU64),* }

        /// A snapshot of an engine's counters ([`crate::Engine::counters`]).
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct CounterSnapshot {
            $($(#[$doc])* pub $name: u64,)*
            /// Calls and transfers in flight now.
            pub calls_in_flight: u64,
            /// Overflow answers exposed now, waiting for their callers to pull them.
            pub answers_exposed: u64,
            /// Stand-in worker threads alive now (handlers waiting on the engine).
            pub stand_ins: u64,
        }

        impl Counters {
            pub(crate) fn snapshot(&self, calls_in_flight: u64, answers_exposed: u64, stand_ins: u64) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Relaxed),)* calls_in_flight, answers_exposed, stand_ins }
            }
        }

        impl fmt::Display for CounterSnapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                $(writeln!(f, "{:<18} {}", stringify!($name), self.$name)?;)*
                writeln!(f, "{:<18} {}", "calls_in_flight", self.calls_in_flight)?;
                writeln!(f, "{:<18} {}", "answers_exposed", self.answers_exposed)?;
                write!(f, "{:<18} {}", "stand_ins", self.stand_ins)
            }
        }
    };
}

counters! {
    /// Requests this engine sent (calls and one-way).
    rpcs_sent,
    /// Requests this engine received.
    rpcs_received,
    /// Answers this engine sent.
    responses_sent,
    /// Calls that ended in an error (timeouts and cancels included).
    rpcs_failed,
    /// Calls that timed out.
    timeouts,
    /// Calls canceled.
    canceled,
    /// Message bytes sent.
    bytes_sent,
    /// Message bytes received.
    bytes_received,
    /// Handler errors and panics.
    handler_errors,
    /// Requests refused as malformed, unknown or over capacity.
    bad_requests,
    /// Requests queued for or running on the worker pool.
    queue_depth,
    /// Connections to peers lost (closed, killed, or dropped for misbehaving).
    peers_lost,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
    pub(crate) fn sub(c: &AtomicU64, n: u64) {
        c.fetch_sub(n, Relaxed);
    }
}
