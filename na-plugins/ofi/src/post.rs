//! Posting to the provider: retries while its queue is full (driving completions
//! between tries), receive buffers of the unexpected pool, and sends (untagged into a
//! peer's pool, tagged to an expected receive: see [`crate::wire`] for why).

use std::time::{Duration, Instant};

use libfabric_sys as fi;
use na::{NaError, NaResult};

use crate::fabric;
use crate::plugin::{Ctx, OfiPlugin, What, lock};

/// Where a message goes at its peer.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Route {
    /// Untagged, into the peer's pool of unexpected receives (header first).
    Pool,
    /// Tagged, to the receive the peer posted for this tag.
    Expected(u64),
}

impl OfiPlugin {
    /// Retries a post while the provider says `-FI_EAGAIN`, driving completions between
    /// tries; gives up after 10 s with `Exhausted`.
    pub(crate) fn post(&self, what: &str, f: impl FnMut() -> isize) -> NaResult<()> {
        self.retry(None, what, f)
    }

    /// As [`Self::post`] for a send to `peer`, which also gives up as soon as the peer's
    /// process or port is gone (checked every 5 ms of retries): a dead peer's full queue
    /// must not hold a server's worker for 10 s per answer. A peer reached before that is
    /// unreachable now is reported lost (`Disconnected`).
    fn post_to(&self, peer: u64, what: &str, f: impl FnMut() -> isize) -> NaResult<()> {
        self.retry(Some(peer), what, f)
            .map_err(|e| self.as_seen(peer, e))
    }

    /// The retry loop of both; the clock is read only once the queue is full.
    fn retry(&self, peer: Option<u64>, what: &str, mut f: impl FnMut() -> isize) -> NaResult<()> {
        let (mut start, mut checked) = (None, None);
        loop {
            match self.post_once(what, &mut f) {
                Err(NaError::Exhausted(_))
                    if start.get_or_insert_with(Instant::now).elapsed()
                        <= Duration::from_secs(10) =>
                {
                    let checked = checked.get_or_insert_with(Instant::now);
                    if let Some(peer) = peer
                        && checked.elapsed() >= Duration::from_millis(5)
                    {
                        *checked = Instant::now();
                        if self.peer_gone(peer) {
                            return Err(NaError::Unreachable(format!(
                                "{what}: the peer is gone and its queue is full"
                            )));
                        }
                    }
                    self.poll_cq(false)
                }
                Err(NaError::Exhausted(_)) => {
                    return Err(NaError::Exhausted(format!(
                        "{what}: the provider's queue stayed full for 10 s"
                    )));
                }
                r => return r,
            }
        }
    }

    /// Whether `peer`'s process or port is certainly gone. (Not whether it is declared
    /// lost: a server restarted at the same address is the same peer again.)
    fn peer_gone(&self, peer: u64) -> bool {
        let Some(raw) = lock(&self.state).peers.get(&peer).map(|p| p.raw.clone()) else {
            return false;
        };
        crate::provider::certainly_dead(self.provider.death_check, &raw)
    }

    /// One post; `-FI_EAGAIN` is `Exhausted`.
    pub(crate) fn post_once(&self, what: &str, mut f: impl FnMut() -> isize) -> NaResult<()> {
        let rc = f();
        if rc == 0 {
            Ok(())
        } else if rc == -(fi::FI_EAGAIN as isize) {
            Err(NaError::Exhausted(format!("{what}: provider queue full")))
        } else {
            Err(fabric::error(what, rc as i64))
        }
    }

    pub(crate) fn post_pool(&self, ctx: *mut Ctx) -> NaResult<()> {
        // SAFETY: ctx is a live Ctx owned by the plugin (in `live`); its buffer stays put
        // until the completion hands it back.
        let (buf, len) = unsafe { ((*ctx).buf.as_mut_ptr(), (*ctx).buf.len()) };
        self.post("fi_recv(unexpected)", || unsafe {
            // SAFETY: as above; the endpoint is open.
            fi::fi_recv(
                self.ep.0,
                buf.cast(),
                len,
                std::ptr::null_mut(),
                fi::FI_ADDR_UNSPEC,
                ctx.cast(),
            )
        })
    }

    /// Sends a control message (header included) into `peer`'s pool, injected when it fits.
    pub(crate) fn send_control(&self, peer: u64, buf: Vec<u8>) -> NaResult<bool> {
        self.send_to(peer, Route::Pool, buf, What::Control, true)
    }

    /// Sends `buf` to `peer` by `route`: injected (no completion) when `inject` allows and
    /// it fits, else with a context that owns the buffer (`inject` false asks for a
    /// completion even for a small message: an answer's failure is how a server learns
    /// that its client died). Returns whether a completion will come.
    pub(crate) fn send_to(
        &self,
        peer: u64,
        route: Route,
        buf: Vec<u8>,
        what: What,
        inject: bool,
    ) -> NaResult<bool> {
        if inject && buf.len() <= self.inject {
            let (p, n, ep) = (buf.as_ptr().cast(), buf.len(), self.ep.0);
            self.post_to(peer, "fi_inject", || match route {
                // SAFETY: buf is valid for its length during the call; inject copies it.
                Route::Pool => unsafe { fi::fi_inject(ep, p, n, peer) },
                // SAFETY: as above.
                Route::Expected(tag) => unsafe { fi::fi_tinject(ep, p, n, peer, tag) },
            })?;
            return Ok(false);
        }
        let ctx = Ctx::new(what, buf);
        {
            let mut s = lock(&self.state);
            s.live.insert(ctx as usize);
            if let What::Op(id) = what
                && let Some(op) = s.ops.get_mut(&id)
            {
                op.ctxs.push(ctx as usize);
            }
        }
        // SAFETY: ctx is live until its completion; its buffer is not touched meanwhile.
        let (p, n) = unsafe { ((*ctx).buf.as_ptr(), (*ctx).buf.len()) };
        let (ep, none) = (self.ep.0, std::ptr::null_mut());
        let r = self.post_to(peer, "fi_send", || match route {
            // SAFETY: as above.
            Route::Pool => unsafe { fi::fi_send(ep, p.cast(), n, none, peer, ctx.cast()) },
            Route::Expected(tag) => unsafe {
                // SAFETY: as above.
                fi::fi_tsend(ep, p.cast(), n, none, peer, tag, ctx.cast())
            },
        });
        if let Err(e) = r {
            let mut s = lock(&self.state);
            s.live.remove(&(ctx as usize));
            // SAFETY: the post failed, so libfabric holds no reference to ctx.
            drop(unsafe { Box::from_raw(ctx) });
            return Err(e);
        }
        Ok(true)
    }
}
