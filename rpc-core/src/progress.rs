//! Driving the transport: the progress thread's loop, a waiting caller's drive (thread
//! mode), one pass of a caller in the manual and busy modes, and the passes that turn
//! transport events and expired deadlines into completed calls.

use std::sync::atomic::Ordering;
use std::sync::{Arc, TryLockError};
use std::time::{Duration, Instant};

use crate::RpcError;
use crate::driver::Shared;
use crate::mode::ProgressMode;
use crate::spin::{CALLER_SPIN, Spinning};
use crate::timed::Stamp;

/// A spinning pass reads the clock for expired deadlines once in this many passes
/// (reading it costs about as much as an empty poll).
const TIMER_EVERY: u32 = 64;

impl Shared {
    /// Drives the transport once, sleeping at most `timeout` or until the next deadline.
    pub(crate) fn progress(&self, timeout: Option<Duration>) -> Result<(), RpcError> {
        self.progress_as(timeout, false).map(|_| ())
    }

    /// As [`Shared::progress`]; `poller`: called by the caller that holds the poll
    /// ([`Shared::poll_for`]), which alone may sleep in it meanwhile. Returns whether the
    /// pass could sleep.
    fn progress_as(&self, timeout: Option<Duration>, poller: bool) -> Result<bool, RpcError> {
        if timeout == Some(Duration::ZERO) {
            // A poll that does not sleep needs no deadline (the busy path).
            self.plugin.progress(timeout)?;
            return Ok(false);
        }
        let now = Instant::now();
        // Unreleased overflow answers are freed on time, not at the next unrelated event.
        let exposed_due = match self.exposed.may_be_due(Stamp::of(now)) {
            true => self.expire_exposed(now),
            false => self.exposed.earliest(),
        };
        let wait = {
            let mut c = self.calls.lock();
            let until_deadline = match (c.flight.next_deadline(), exposed_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|d| d.saturating_duration_since(now));
            let wait = match (timeout, until_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // A caller that started driving before this lock was taken is not left
            // waiting behind a sleeping poll (it checks `asleep` under the same lock).
            // So is one that took the poll, while it is not this one.
            // The holder also waits for the progress thread to be out of the poll
            // before it sleeps there (`sleep_for`; it does not sleep again while the
            // poll is held).
            let wait = self.drivers.sleep_for(wait, poller, c.asleep);
            // Only the progress thread marks itself (the holder naps at most
            // `POLLER_NAP`; the calls it waits for were posted before it slept).
            let sleeps = wait != Some(Duration::ZERO);
            if sleeps && !poller {
                c.armed = wait.and_then(|w| now.checked_add(w));
                c.asleep = true;
            }
            (wait, sleeps)
        };
        let (wait, sleeps) = wait;
        let r = self.plugin.progress(wait);
        if sleeps && !poller {
            self.calls.lock().asleep = false;
        }
        self.waited.store(true, Ordering::Relaxed);
        r?;
        Ok(sleeps)
    }

    /// Drives the transport once, as [`Shared::progress`], and handles what it brings on
    /// this thread (the progress thread's loop and driving callers): a pass that does not
    /// sleep takes its events straight from the transport's pass, not through its queue.
    /// Returns how many events it handled (the queue's rest is [`Shared::trigger_pass`]'s).
    fn progress_handling(self: &Arc<Self>, timeout: Option<Duration>) -> Result<usize, RpcError> {
        if timeout != Some(Duration::ZERO) {
            return self.progress(timeout).map(|()| 0);
        }
        Ok(self
            .plugin
            .progress_events(timeout, &mut |ev| self.on_event(ev))?)
    }

    /// [`crate::Engine::poll`]: a pass that does not wait, its events handled on this
    /// thread, then the queue's and expired deadlines as a spinning trigger does.
    pub(crate) fn poll(self: &Arc<Self>) -> Result<usize, RpcError> {
        let n = self.progress_handling(Some(Duration::ZERO))?;
        Ok(n + self.trigger_pass(true))
    }

    /// Handles queued events and expired deadlines; returns how many events it handled.
    ///
    /// Expired deadlines are looked for after a progress call that waited (it read the
    /// clock anyway), else once in [`TIMER_EVERY`] calls: a program that spins on
    /// zero-timeout progress and trigger does not read the clock at every pass.
    pub(crate) fn trigger(self: &Arc<Self>) -> usize {
        let waited = self.waited.load(Ordering::Relaxed);
        if waited {
            self.waited.store(false, Ordering::Relaxed);
        }
        self.trigger_pass(!waited)
    }

    /// As [`Shared::trigger`]; a `spinning` pass looks for expired deadlines only once in
    /// [`TIMER_EVERY`] passes.
    fn trigger_pass(self: &Arc<Self>, spinning: bool) -> usize {
        let mut n = 0;
        loop {
            let got = self.plugin.poll_events(&mut |ev| self.on_event(ev));
            if got == 0 {
                break;
            }
            n += got;
        }
        // Counted without a locked instruction (a spinning pass is mostly this): two
        // drivers may count one pass, which only moves the next look at the clock a
        // little, and the heartbeat still changes.
        let pass = self.passes.load(Ordering::Relaxed);
        self.passes.store(pass.wrapping_add(1), Ordering::Relaxed);
        if spinning && !pass.is_multiple_of(TIMER_EVERY) {
            return n;
        }
        // Each table publishes (a lower bound of) its earliest deadline: one whose time
        // has not come is not locked.
        let now = Instant::now();
        let stamp = Stamp::of(now);
        if self.calls.may_be_due(stamp) {
            let expired = self.calls.lock().flight.expire(now);
            for (tag, e, lost) in expired {
                match &lost {
                    Some(why) => tracing::debug!(tag, %why, "failed: its peer was lost"),
                    None => tracing::debug!(tag, "timed out"),
                }
                self.withdraw(&e);
                let why = lost.map_or_else(RpcError::timeout, RpcError::from);
                self.settle(e.value, Err(why));
            }
        }
        if self.exposed.may_be_due(stamp) {
            self.expire_exposed(now);
        }
        n
    }

    /// One round of progress and trigger by a waiting caller (manual and busy modes).
    pub(crate) fn drive_once(self: &Arc<Self>) {
        let Ok(_g) = self.drive.try_lock() else {
            std::thread::yield_now();
            return;
        };
        let busy = self.mode == ProgressMode::BusyPoll;
        let t = if busy {
            Duration::ZERO
        } else {
            Duration::from_millis(1)
        };
        if let Err(e) = self.progress_handling(Some(t)) {
            tracing::warn!(error = %e, "progress failed");
        }
        self.trigger_pass(busy);
    }
    /// Thread mode: a caller about to wait drives progress itself for up to the spin
    /// window, or until `done`, so that the answer to a small call completes on the
    /// caller's own thread (no hand-off, no sleeping thread to wake); the progress thread
    /// stands aside meanwhile ([`progress_loop`]). One caller drives at a time; others
    /// watch their own flag.
    pub(crate) fn drive_for(self: &Arc<Self>, done: impl Fn() -> bool) {
        if self.spin.is_zero() || done() {
            return;
        }
        if self.backoff.skip() {
            return;
        }
        let Some(_spinning) = Spinning::enter() else {
            // Enough threads spin already: sleep, and let the progress thread complete it.
            return;
        };
        // A progress thread asleep in the transport's poll would hold it: wake it once.
        if self.drivers.enter(|| self.calls.lock().asleep) {
            self.plugin.wake();
        }
        let start = Instant::now();
        let window = self.spin.min(CALLER_SPIN);
        let mut n = 0u32;
        while !done() {
            match self.drive.try_lock() {
                Ok(_g) => {
                    if let Err(e) = self.progress_handling(Some(Duration::ZERO)) {
                        tracing::warn!(error = %e, "progress failed");
                    }
                    self.trigger_pass(true);
                }
                Err(_) => std::hint::spin_loop(),
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && start.elapsed() >= window {
                break;
            }
        }
        let answered = done();
        // The last driver to leave unanswered hands over at once: the progress thread
        // may be standing aside for up to `STAND_ASIDE_MAX`.
        if self.drivers.leave()
            && !answered
            && let Some(t) = self.progress_thread.get()
        {
            t.unpark();
        }
        self.backoff.outcome(answered);
    }
}

/// The longest a caller holding the poll sleeps in it at once, and the progress thread
/// stands aside between two looks at whether it still does.
const POLLER_NAP: Duration = Duration::from_millis(10);

impl Shared {
    /// Thread mode, an engine that serves nothing (a client): a caller whose answer is
    /// not there after its drive sleeps in the transport's poll itself, instead of on its
    /// slot while the progress thread sleeps in the poll, so that the answer wakes one
    /// thread, not two (64 clients on 2 cores spent most of their CPU switching). One
    /// caller holds the poll at a time (the others sleep on their slots; their answers
    /// complete on its passes); the progress thread stands aside meanwhile
    /// ([`progress_loop`]), and is woken when the holder leaves while others wait (else
    /// it takes the poll back within [`POLLER_NAP`]). Returns when `done`, or at once
    /// when the poll is not the caller's to take.
    pub(crate) fn poll_for(self: &Arc<Self>, done: impl Fn() -> bool) {
        if self.serves.load(Ordering::Relaxed) || self.stopping.load(Ordering::Relaxed) {
            return;
        }
        // A progress thread asleep in the poll would take the answer: wake it (it then
        // stands aside). The transport keeps the wake-up until a sleeping pass takes it,
        // and this thread's passes do not sleep until the progress thread is out
        // (`progress_as`), so the wake-up is its. One that has not gone to sleep yet sees
        // the flag under the lock (`handoff`, loom-checked).
        match self.drivers.take_poll(|| self.calls.lock().asleep) {
            None => return,
            Some(true) => self.plugin.wake(),
            Some(false) => {}
        }
        let _held = Held(self);
        let start = Instant::now();
        while !done() && !self.stopping.load(Ordering::Relaxed) {
            let g = match self.drive.try_lock() {
                Ok(g) => g,
                // (A thread that panicked while driving left nothing half done here.)
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // A caller drives (spins): it takes the events meanwhile.
                Err(TryLockError::WouldBlock) => {
                    std::thread::yield_now();
                    continue;
                }
            };
            // Passes that yield the CPU between them within the spin window (the
            // progress thread's own way after an event), then sleeps in the poll.
            let yielding = start.elapsed() < self.spin;
            let nap = if yielding { Duration::ZERO } else { POLLER_NAP };
            let slept = self.progress_as(Some(nap), true).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "progress failed");
                false
            });
            self.trigger_pass(false);
            drop(g);
            if !slept {
                // (Also while the progress thread is still on its way out of the poll.)
                std::thread::yield_now();
            }
        }
    }
}

/// The poll held by a caller ([`Shared::poll_for`]): let go when dropped, also by a panic
/// on the way (a `then` callback's or a lost-peer hook's).
struct Held<'a>(&'a Arc<Shared>);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let s = self.0;
        s.drivers.release_poll();
        // Another caller waiting on its slot (counted before it looks at the poll), or a
        // future or a callback: the progress thread takes the poll back now, not after
        // its nap.
        let others = s.waiters.load(Ordering::SeqCst) > 1 || s.unseen_waits.load(Ordering::SeqCst);
        if others
            && !s.calls.lock().flight.is_empty()
            && let Some(t) = s.progress_thread.get()
        {
            t.unpark();
        }
    }
}

/// How long the progress thread first sleeps while a caller drives, and the most it
/// sleeps as the caller's passes go on (doubling from the first): each wake-up takes a
/// core from the caller or from the peer it waits on. On 2 cores, `qs-rate -t sm -x 1`
/// in the default mode, five rounds alternated with a check every 20 µs: 2.76-3.87 ->
/// 1.37-2.54 µs median round trip (the progress thread had woken 17 000 times a second);
/// ofi+shm within its own swing (2-20 µs either way), 16 in flight level, tcp level.
/// The sleep is a park: the last caller to stop driving without its answer unparks the
/// progress thread, which takes over at once. Answers of other waiters that come after
/// the last driver left with its own are taken within one such sleep (at most 200 µs plus
/// timer slack); a caller stuck in an inline handler within two. (A call whose handler
/// spins 150 µs after 19 fast ones, `sm` and `tcp`, three rounds alternated with the
/// plain sleep, by a scratch program not kept: level, 160-170 µs median over sm, 177-215
/// over tcp either way.)
const STAND_ASIDE_FIRST: Duration = Duration::from_micros(20);
const STAND_ASIDE_MAX: Duration = Duration::from_micros(200);

pub(crate) fn progress_loop(shared: &Arc<Shared>) {
    let mut last_event: Option<Instant> = None;
    let mut heartbeat = u32::MAX;
    let mut aside = STAND_ASIDE_FIRST;
    while !shared.stopping.load(Ordering::Acquire) {
        if shared.drivers.poll_held() {
            // A caller holds the poll ([`Shared::poll_for`]); it wakes this thread when
            // it leaves while others wait.
            std::thread::park_timeout(POLLER_NAP);
            continue;
        }
        if shared.drivers.any() {
            // A waiting caller drives: stand aside while its passes go on, checking less
            // often the longer they go on. One that stops passing (a handler it runs
            // inline is waiting) is not waited for.
            let beat = shared.passes.load(Ordering::Relaxed);
            if beat != heartbeat {
                heartbeat = beat;
                std::thread::park_timeout(aside);
                aside = (aside * 2).min(STAND_ASIDE_MAX);
                continue;
            }
        }
        aside = STAND_ASIDE_FIRST;
        let spinning =
            !shared.spin.is_zero() && last_event.is_some_and(|t| t.elapsed() < shared.spin);
        let handled = shared.progress_handling(spinning.then_some(Duration::ZERO));
        let handled = handled.unwrap_or_else(|e| {
            tracing::error!(error = %e, "progress failed");
            std::thread::sleep(Duration::from_millis(10));
            0
        });
        // (With no spin window, when the last event was does not matter: no clock read.)
        if handled + shared.trigger_pass(spinning) > 0 && !shared.spin.is_zero() {
            last_event = Some(Instant::now());
        } else if spinning {
            // Let a runnable caller or handler have this core between empty polls.
            std::thread::yield_now();
        }
    }
}
