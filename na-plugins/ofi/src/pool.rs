//! The pool of receives for unexpected messages (requests and control messages, sent
//! untagged: see [`crate::wire`]).
//!
//! Where the provider has multi-receive buffers (`FI_MULTI_RECV`: rxm over tcp, shm and
//! sockets in libfabric 1.17) the pool is a few large buffers, each posted once with
//! `fi_recvmsg(FI_MULTI_RECV)`: the provider packs arriving messages one after another
//! into a buffer until less than the largest message is left (`FI_OPT_MIN_MULTI_RECV`),
//! then releases it (the flag on a completion), and only then is it posted again. Small
//! messages cost no repost each, and the same memory holds thousands of them at once
//! instead of one per receive, which absorbs a burst of many clients' requests. Without
//! them, each receive holds one message and is posted again after it.
//!
//! A message is handled, and its bytes copied out, before its completion returns, so a
//! released buffer can be posted again at once.

use std::ffi::c_void;

use libfabric_sys as fi;
use na::{NaError, NaResult};

use crate::ctx::{Ctx, What};
use crate::plugin::{OfiPlugin, lock};

/// The largest messages one multi-receive buffer holds: it is released, and posted
/// again, after at most this many of them, after hundreds of small ones.
const SLOTS_PER_BUF: usize = 16;

/// How the pool's memory is laid out.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Receives (buffers) posted.
    pub bufs: usize,
    /// Bytes of each.
    pub bytes: usize,
}

/// The pool for `recv_pool` messages of at most `slot` bytes: that many receives of one
/// message each, or (`multi`) about the same memory in buffers of [`SLOTS_PER_BUF`]
/// messages, two at least (one fills while the other is posted again).
pub(crate) fn shape(recv_pool: usize, slot: usize, multi: bool) -> Shape {
    if !multi {
        return Shape {
            bufs: recv_pool.max(1),
            bytes: slot,
        };
    }
    let bufs = (recv_pool / SLOTS_PER_BUF).max(2);
    Shape {
        bufs,
        bytes: slot * (recv_pool / bufs).clamp(2, SLOTS_PER_BUF),
    }
}

/// Where the message a pool completion of `len` bytes at `at` names lies in the
/// receive's buffer of `cap` bytes at `base` (offset, length): at its start for a
/// receive of one message, anywhere in it for a multi-receive buffer (where the provider
/// says). `None` when it lies outside the buffer or is longer than `slot`, the largest
/// message the pool takes (a multi-receive buffer accepts whatever fits in its free
/// space: a peer's oversized message is refused here).
pub(crate) fn landed(
    base: *const u8,
    cap: usize,
    at: *const c_void,
    len: usize,
    multi: bool,
    slot: usize,
) -> Option<(usize, usize)> {
    let off = if multi {
        (at as usize).checked_sub(base as usize)?
    } else {
        0
    };
    let end = off.checked_add(len)?;
    (end <= cap && len <= slot).then_some((off, len))
}

/// Whether a failed completion of a multi-receive buffer (other than its cancellation)
/// means the provider let it go, flag or not, under libfabric `version` (as
/// `fi_version()` gives it). Before 2.1 the providers drop the buffer with the error and
/// do not say so: rxm in 1.17 writes a truncation error for a message longer than the
/// whole buffer, then releases the buffer's receive (`rxm_finish_recv`); nothing more came
/// from it here, and the pool starved after as many such messages as it had buffers
/// (`oversized_tests`). Mercury's `na_ofi` takes the buffer as released on any error
/// before 2.1 (except over cxi) and always over sockets; so does this.
pub(crate) fn error_releases(version: u32, provider: &str) -> bool {
    (version >> 16, version & 0xffff) < (2, 1) && provider != "cxi" || provider == "sockets"
}

impl OfiPlugin {
    /// Creates the pool's receives and posts them.
    pub(crate) fn open_pool(&self) -> NaResult<()> {
        let shape = shape(self.cfg.recv_pool, self.pool_slot(), self.multi_recv);
        for _ in 0..shape.bufs {
            let ctx = Ctx::new(What::Pool, vec![0u8; shape.bytes]);
            lock(&self.state).live.insert(ctx as usize);
            self.post_pool(ctx)?;
        }
        Ok(())
    }

    /// The largest message a pool receive takes: `max_eager` bytes behind a header.
    pub(crate) fn pool_slot(&self) -> usize {
        self.max_eager + crate::wire::HEADER_MAX
    }

    /// A completion of a pool receive: `Ok(len)` of a message at `at` (or none, a
    /// multi-receive buffer's release alone), `flags` as the provider gave them. The
    /// receive is posted again once the provider is done with its buffer.
    pub(crate) fn on_pool(
        &self,
        ctx: *mut Ctx,
        r: Result<usize, NaError>,
        at: *mut c_void,
        flags: u64,
    ) {
        let released = !self.multi_recv
            || flags & fi::FI_MULTI_RECV as u64 != 0
            // SAFETY: `fi_version` only returns the library's version.
            || r.is_err() && error_releases(unsafe { fi::fi_version() }, self.provider.name);
        match r {
            Ok(0) if self.multi_recv => {}
            Ok(len) => {
                // SAFETY: the pool context is live; its buffer is only read through raw
                // parts (the provider may be writing its free part meanwhile).
                let (base, cap) = unsafe { ((*ctx).buf.as_ptr(), (*ctx).buf.len()) };
                match landed(base, cap, at, len, self.multi_recv, self.pool_slot()) {
                    Some((off, len)) => {
                        // SAFETY: within the buffer (`landed`), and the provider does not
                        // write where this message lies until the buffer is posted again
                        // (after this call); the bytes are copied out before it returns.
                        let msg = unsafe { std::slice::from_raw_parts(base.add(off), len) };
                        self.handle_unexpected(msg)
                    }
                    None => self.drop_message(format_args!(
                        "a message of {len} bytes, over the {} a receive takes",
                        self.pool_slot()
                    )),
                }
            }
            Err(NaError::Canceled) => return,
            Err(e) => tracing::warn!("ofi: unexpected receive failed: {e}"),
        }
        if released && let Err(e) = self.post_pool(ctx) {
            tracing::error!("ofi: cannot repost an unexpected receive: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use na::Plugin;

    use super::*;
    use crate::OfiConfig;

    /// `n` small requests from one peer, each different: with multi-receive buffers the
    /// server posts its pool a few times in all, without them once per message, and
    /// every request arrives whole either way.
    fn small_requests_pack_into_few_buffers(addr: &str) {
        let n = 5000;
        for multi in [true, false] {
            let cfg = OfiConfig {
                multi_recv: multi,
                ..Default::default()
            };
            let open =
                || Arc::new(OfiPlugin::with_config(&addr.parse().unwrap(), cfg.clone()).unwrap());
            let (server, client) = (open(), open());
            assert_eq!(server.has_multi_recv(), multi, "{addr}");
            let stop = Arc::new(AtomicBool::new(false));
            let (heard, serving) = crate::oversized_tests::serve(server.clone(), stop.clone());
            let peer = client.lookup(server.self_addr()).unwrap();
            let msg = |i: u32| [i.to_le_bytes().as_slice(), &[i as u8; 196]].concat();
            // Sent in waves of `WAVE`, each heard before the next: a burst of thousands
            // makes the `sockets` provider stop delivering part-way in some runs (975 of
            // 5 000 once, without multi-receive; README, the skipped
            // `backlog::sockets_keeps_order_to_a_stalled_peer`), which is not the pool.
            const WAVE: u32 = 250;
            let mut got = Vec::new();
            let end = Instant::now() + Duration::from_secs(30);
            for wave in (0..n).step_by(WAVE as usize) {
                for i in wave..(wave + WAVE).min(n) {
                    client.send_unexpected(peer, 1, msg(i)).unwrap();
                }
                let sent = (wave + WAVE).min(n) as usize;
                while got.len() < sent && Instant::now() < end {
                    client.progress(Some(Duration::from_millis(1))).unwrap();
                    got.extend(heard.try_iter().map(|(_, data)| data));
                }
            }
            stop.store(true, Ordering::Relaxed);
            serving.join().unwrap();
            got.sort();
            let mut want: Vec<Vec<u8>> = (0..n).map(msg).collect();
            want.sort();
            assert!(
                got == want,
                "{addr} multi {multi}: {} of {n} requests whole",
                got.len()
            );
            let posts = server.stats().pool_posts as usize;
            // (Shown with `--nocapture`: the README quotes it.)
            eprintln!("{addr}: multi-receive {multi}: {posts} pool posts for {n} requests");
            let first = shape(server.cfg.recv_pool, server.pool_slot(), multi).bufs;
            if multi {
                // About 1 MiB of requests through buffers of 16 slots of 64 KiB.
                assert!(
                    posts <= first + 4,
                    "{addr}: {posts} posts with multi-receive"
                );
            } else {
                assert!(posts >= first + n as usize, "{addr}: {posts} posts without");
            }
        }
    }

    #[test]
    fn small_requests_pack_into_few_buffers_over_tcp() {
        small_requests_pack_into_few_buffers("ofi+tcp://127.0.0.1:0");
    }

    #[test]
    fn small_requests_pack_into_few_buffers_over_sockets() {
        small_requests_pack_into_few_buffers("ofi+sockets://127.0.0.1:0");
    }

    #[test]
    fn shm_keeps_receives_of_one_message() {
        let p = OfiPlugin::new(&"ofi+shm://auto".parse().unwrap()).unwrap();
        assert!(!p.has_multi_recv());
    }

    #[test]
    fn the_pool_keeps_its_memory_in_fewer_larger_buffers() {
        let slot = 1000;
        // (pool, multi) -> (buffers, slots per buffer)
        let cases = [
            ((64, false), (64, 1)),
            ((0, false), (1, 1)),
            ((64, true), (4, 16)),
            // Two buffers at least, each room for two of the largest messages at least.
            ((4, true), (2, 2)),
            ((0, true), (2, 2)),
            ((1000, true), (62, 16)),
        ];
        for ((pool, multi), (bufs, slots)) in cases {
            let want = Shape {
                bufs,
                bytes: slots * slot,
            };
            assert_eq!(shape(pool, slot, multi), want, "{pool} {multi}");
        }
    }

    #[test]
    fn errors_release_a_buffer_before_libfabric_2_1() {
        let v = |major: u32, minor: u32| (major << 16) | minor;
        assert!(error_releases(v(1, 17), "tcp"));
        assert!(error_releases(v(2, 0), "tcp"));
        assert!(!error_releases(v(2, 1), "tcp"));
        assert!(!error_releases(v(1, 17), "cxi"));
        assert!(error_releases(v(2, 2), "sockets"));
    }

    #[test]
    fn a_landed_message_must_lie_in_its_buffer_and_within_a_slot() {
        let buf = [7u8; 100];
        let (base, cap) = (buf.as_ptr(), buf.len());
        let at = |off: usize| base.wrapping_add(off).cast::<c_void>();
        let multi = |at, len| landed(base, cap, at, len, true, 50);
        assert_eq!(multi(at(10), 20), Some((10, 20)));
        assert_eq!(multi(at(90), 10), Some((90, 10)));
        // Past the end, before the start, longer than a slot, overflowing.
        assert_eq!(multi(at(90), 11), None);
        assert_eq!(multi(base.wrapping_sub(1).cast(), 1), None);
        assert_eq!(multi(at(0), 51), None);
        assert_eq!(multi(at(usize::MAX / 2), usize::MAX), None);
        // A receive of one message starts at its buffer, wherever `at` points.
        let one = |len| landed(base, cap, std::ptr::null(), len, false, 100);
        assert_eq!(one(5), Some((0, 5)));
        assert_eq!(one(101), None);
    }
}
