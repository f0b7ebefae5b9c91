//! Posting a call: entering it in the table and sending its request, on the connection
//! its endpoint resolved or on a new one if that ended. Its answer is awaited on a posted
//! receive, or, over a plugin that hands answers over unposted
//! (`na::Caps::unposted_expected`), matched by the driver itself (`Shared::on_answer`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use na::{NaError, NaResult, PeerId, Unsent};

use crate::RpcError;
use crate::counters::Counters;
use crate::driver::{Shared, Waiter};
use crate::endpoint::Endpoint;
use crate::handler::ReplyTo;
use crate::proto::{Entry, Flight};
use crate::slot::{Answer, Slot};
use crate::transfer::Then;

impl Shared {
    pub(crate) fn post_call(
        self: &Arc<Self>,
        target: &Endpoint,
        msg: Vec<u8>,
        timeout: Option<Duration>,
    ) -> (u64, Arc<Slot<Answer>>) {
        let slot = Arc::new(Slot::default());
        // The clock is read only for a call that can time out.
        let due = timeout.and_then(|t| Instant::now().checked_add(t));
        Counters::add(&self.counters.rpcs_sent, 1);
        Counters::add(&self.counters.bytes_sent, msg.len() as u64);
        let posted = if target.is_local_to(self.id, &self.self_addr) {
            self.insert_local(due, &slot).inspect(|&tag| {
                self.on_request(ReplyTo::Local { tag }, msg);
            })
        } else {
            self.post_remote(target, &slot, due, msg)
        };
        match posted {
            Ok(tag) => (tag, slot),
            Err(e) => {
                self.complete(Some(slot.clone()), Err(e));
                (0, slot)
            }
        }
    }

    /// Enters a call to this engine itself into the table.
    fn insert_local(
        &self,
        due: Option<Instant>,
        slot: &Arc<Slot<Answer>>,
    ) -> Result<u64, RpcError> {
        let (tag, wake) = {
            let mut c = self.calls.lock();
            if self.stopping.load(Ordering::Acquire) {
                return Err(RpcError::Shutdown);
            }
            let tag = c.flight.call(due, None, Waiter::call(slot, None));
            (tag, c.must_wake(due))
        };
        self.wake_for(wake);
        Ok(tag)
    }

    /// Posts a call's receive (unless answers come unposted) and sends its request.
    fn post_remote(
        self: &Arc<Self>,
        target: &Endpoint,
        slot: &Arc<Slot<Answer>>,
        due: Option<Instant>,
        msg: Vec<u8>,
    ) -> Result<u64, RpcError> {
        let (msg, keep) = self.maybe_overflow(msg)?;
        let out = Outgoing {
            slot,
            due,
            msg: Some(msg),
            keep: Some(keep.map(Box::new)),
        };
        match self.unposted {
            true => self.send_unposted(target, out),
            false => self.post_with_receive(target, out),
        }
    }

    /// Enters the call and sends its request, whose answer the driver matches itself:
    /// one lock of the table and the send. A send that finds the connection gone gets its
    /// message back, and the call goes again on a new one.
    fn send_unposted(
        self: &Arc<Self>,
        target: &Endpoint,
        mut out: Outgoing,
    ) -> Result<u64, RpcError> {
        let sent = self.with_peer(target, |peer| {
            let Some(entered) = self.enter(&mut out, peer, |_, _| Ok(())) else {
                return Ok(None);
            };
            let (tag, wake) = entered?;
            self.wake_for(wake);
            let msg = out.msg.take().unwrap_or_default();
            let Err(Unsent { error, data }) = self.plugin.send_quiet(peer, false, tag, msg) else {
                return Ok(Some(tag));
            };
            let entry = self.calls.lock().flight.finish(tag);
            match entry {
                // The message and the overflow input go again on a new connection.
                Some(e) if !data.is_empty() => {
                    (out.msg, out.keep) = (Some(data), Some(kept_input(e)));
                    Err(error)
                }
                // A plugin that kept no message back: nothing to send again.
                Some(e) => {
                    self.settle(e.value, Err(error.into()));
                    Ok(Some(tag))
                }
                // Ended meanwhile (the peer's loss failed it): nothing to try again.
                None => Ok(Some(tag)),
            }
        })?;
        sent.ok_or(RpcError::Shutdown)
    }

    /// Posts the call's receive and sends its request. The entry, its receive (posted
    /// first, so that the answer always finds it) and the receive's owner go in under one
    /// lock of the table (once more if the peer's connection had ended, see `with_peer`);
    /// the receive is posted under it, as transfers' pieces are (a provider whose queue is
    /// full keeps the lock while it retries, up to its give-up time).
    fn post_with_receive(
        self: &Arc<Self>,
        target: &Endpoint,
        mut out: Outgoing,
    ) -> Result<u64, RpcError> {
        let entered = self.with_peer(target, |peer| {
            let posted = self.enter(&mut out, peer, |flight, tag| {
                let recv = self.plugin.recv_expected(peer, tag)?;
                flight.awaits(tag, recv);
                Ok(())
            });
            posted
                .map(|p| p.map(|(tag, wake)| (peer, tag, wake)))
                .transpose()
        })?;
        let Some((peer, tag, wake)) = entered else {
            return Err(RpcError::Shutdown);
        };
        self.wake_for(wake);
        let msg = out.msg.take().unwrap_or_default();
        if let Err(u) = self.plugin.send_quiet(peer, false, tag, msg) {
            self.end_call(tag, Err(u.error.into()), true);
        }
        Ok(tag)
    }

    /// Enters `out` as a call to `peer` and runs `then` on it, under one lock of the
    /// table; returns its tag and whether the progress thread must wake for its deadline,
    /// `None` if the engine is stopping. If `then` fails, the entry leaves again and its
    /// overflow input is kept for a try on a new connection.
    fn enter(
        &self,
        out: &mut Outgoing,
        peer: PeerId,
        then: impl FnOnce(&mut Flight<Waiter>, u64) -> NaResult<()>,
    ) -> Option<NaResult<(u64, bool)>> {
        let mut c = self.calls.lock();
        // Looked at under the table's lock: a stopping engine ends what its table holds
        // once (its `Guard`, after setting the flag), and nothing may join it after.
        if self.stopping.load(Ordering::Acquire) {
            return None;
        }
        let w = Waiter::call(out.slot, out.keep.take().flatten());
        let tag = c.flight.call(out.due, Some(peer), w);
        if let Err(e) = then(&mut c.flight, tag) {
            out.keep = c.flight.finish(tag).map(kept_input);
            return Some(Err(e));
        }
        Some(Ok((tag, c.must_wake(out.due))))
    }

    /// Runs `f` with the transport's peer for `target`: the one resolved when it was
    /// looked up, or, if `f` finds that connection ended, a new one (dialled again).
    pub(crate) fn with_peer<R>(
        &self,
        target: &Endpoint,
        mut f: impl FnMut(PeerId) -> Result<R, NaError>,
    ) -> Result<R, RpcError> {
        let known = target.peer_in(self.id);
        let peer = match known {
            Some(p) => p,
            None => self.plugin.lookup(target.addr())?,
        };
        match f(peer) {
            Err(e) if known.is_some() => {
                let again = self.plugin.lookup(target.addr())?;
                if again == peer {
                    return Err(e.into());
                }
                target.remember(self.id, again);
                Ok(f(again)?)
            }
            r => Ok(r?),
        }
    }
}

/// A call to a remote peer on its way out: what a try on a new connection needs again.
struct Outgoing<'a> {
    slot: &'a Arc<Slot<Answer>>,
    due: Option<Instant>,
    /// The request (taken by a send; back if it found the connection gone).
    msg: Option<Vec<u8>>,
    /// The overflow input (taken by the entry; back if the entry never went out).
    keep: Option<Option<Box<bulk::Bulk<'static>>>>,
}

/// The overflow input an entry that never went out kept, for its next try.
fn kept_input(e: Entry<Waiter>) -> Option<Box<bulk::Bulk<'static>>> {
    match e.value.then {
        Then::Call { keep } => keep,
        _ => None,
    }
}
