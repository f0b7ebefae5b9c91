//! Who drives progress: a progress thread, the program, or spinning callers.

/// How progress is driven.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A dedicated progress thread sleeps in the transport's poll and runs completions
    /// (the default, as Margo does). A waiting caller first drives progress itself for a
    /// few tens of µs (while few callers of the process spin); then, on an engine that
    /// serves nothing, one waiting caller at a time sleeps in the transport's poll itself
    /// (its answer wakes it, not the progress thread first), and the others, and callers
    /// of a serving engine, block on a condition variable.
    #[default]
    Thread,
    /// No progress thread: the program calls [`crate::Engine::progress`] and [`crate::Engine::trigger`]
    /// (as with Mercury), and a caller in [`crate::Call::wait`] drives progress itself.
    Manual,
    /// No progress thread, and nobody sleeps: waiting callers and [`crate::Engine::drive_until`]
    /// spin on the transport. Lowest latency; burns a core per spinning thread.
    BusyPoll,
}
