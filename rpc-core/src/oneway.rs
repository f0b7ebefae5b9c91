//! One-way requests whose sender learns that the transport took them: a `notify` to a
//! peer that cannot be reached is an error, not a silent loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use na::Address;

use crate::RpcError;
use crate::driver::{Shared, Waiter};
use crate::slot::{Answer, Slot};

impl Shared {
    /// Sends a one-way request and tracks its send: the slot completes (with an empty
    /// answer) once the transport has taken the message, or with why it could not.
    pub(crate) fn post_one_way(
        self: &Arc<Self>,
        addr: &Address,
        msg: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<(u64, Arc<Slot<Answer>>), RpcError> {
        let peer = self.plugin.lookup(addr)?;
        let slot = Arc::new(Slot::default());
        {
            // Under the lock, so that the send's completion cannot be looked up before
            // it is known (the progress thread takes this lock to find an op's owner).
            let mut c = self.calls.lock();
            let due = timeout.and_then(|t| Instant::now().checked_add(t));
            let tag = c.flight.call(due, Some(peer), Waiter::call(&slot, None));
            let op = match self.plugin.send_unexpected(peer, 0, msg) {
                Ok(op) => op,
                Err(e) => {
                    c.flight.finish(tag);
                    return Err(e.into());
                }
            };
            c.flight.awaits(tag, op);
            drop(c);
            // A send completed by this thread is queued for the progress thread without
            // waking it: wake it, so that it hands the completion over.
            self.plugin.wake();
            Ok((tag, slot))
        }
    }
}
