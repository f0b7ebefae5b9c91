//! The receive side of the stream core: accepting connections, reading and decoding
//! frames, serving RMA requests out of registered memory, landing RMA answers, and
//! failing everything on a connection that ends.

use std::io;

use mio::unix::SourceFd;
use std::sync::atomic::Ordering;

use na::{Event, NaError, NaResult, PeerId};

use crate::conn::{Body, Conn, OutFrame, Prefix, ReadState};
use crate::frame::{Header, Kind, RmaReq, RmaStatus};
use crate::{StreamPlugin, lock};

/// Bytes read from one connection per progress call before completions get their turn.
const READ_BUDGET: usize = 2 << 20;

/// Single-copy requests read and not yet served, per connection, before reading stops
/// until they are served.
const MAX_COPIES_QUEUED: usize = 256;

impl StreamPlugin {
    pub(crate) fn accept_all(&self) {
        for wire in self.net.accept() {
            match self.add_conn(wire, false, true, None) {
                Ok(peer) => tracing::debug!(peer = peer.0, "{} accepted", self.net.name()),
                Err(e) => tracing::warn!(error = %e, "accept: cannot register connection"),
            }
        }
    }

    pub(crate) fn on_conn_event(&self, peer: PeerId, ev: &mio::event::Event) {
        let Ok(conn) = self.conn(peer) else { return };
        if (ev.is_read_closed() || ev.is_error()) && conn.is_paused() {
            // Paused for answers it never read, and now gone: nothing it sent is worth
            // reading, and its answers cannot be delivered.
            let why = format!("hung up with {} bytes of answers unread", conn.backlog());
            return self.close_conn(peer, NaError::Disconnected(why));
        }
        let (read, write) = conn.wire.ready(ev);
        if write {
            if !conn.is_connected() {
                match conn.wire.connected() {
                    Ok(true) => conn.set_connected(),
                    Ok(false) => {}
                    Err(e) => return self.close_conn(peer, self.conn_error(&conn, e)),
                }
            }
            let f = conn.flush(&self.mem);
            self.after_flush(&conn, f);
        }
        if read {
            self.read_or_close(&conn);
        }
    }

    /// A spinning pass over memory wires that would find nothing, told by plain loads:
    /// nothing queued, left over or held, no connection's memory showing input, and not
    /// the pass that looks at the kernel (connections coming and going). Such a pass
    /// took about 460 instructions through the full path (`progress`); a message that
    /// lands during one waits for the next, so this is latency.
    pub(crate) fn quiet_pass(&self) -> bool {
        if !self.net.polls_memory()
            || self.found_last.load(Ordering::Relaxed)
            || !self.events.is_empty()
            || !self.unread.is_empty()
            || self.tails_pending()
            || self.batched_n.load(Ordering::Acquire) > 0
        {
            return false;
        }
        // Counted without a locked instruction: two spinners may count one pass, which
        // only moves the kernel's look a little.
        let pass = self.spins.load(Ordering::Relaxed);
        if pass.is_multiple_of(crate::KERNEL_EVERY) {
            return false;
        }
        if self
            .polled
            .with(|conns| conns.iter().any(|c| !c.is_paused() && c.wire.has_input()))
        {
            return false;
        }
        self.spins.store(pass.wrapping_add(1), Ordering::Relaxed);
        true
    }

    /// Reads a connection; closes it on error.
    pub(crate) fn read_or_close(&self, conn: &Conn) {
        match self.read_conn(conn) {
            Ok(()) => {
                let f = conn.flush(&self.mem);
                self.after_flush(conn, f);
            }
            Err(e) => self.close_conn(conn.peer, e),
        }
    }

    /// Goes on reading connections that still had data when their budget ran out.
    pub(crate) fn read_leftovers(&self) {
        // (Looked at first: an empty set's take, at every spinning pass, still moves a
        // vector of eight peers around the stack.)
        if self.unread.is_empty() {
            return;
        }
        let peers = self.unread.take();
        for p in peers {
            if let Ok(conn) = self.conn(p) {
                self.read_or_close(&conn);
            }
        }
    }

    pub(crate) fn conn_error(&self, conn: &Conn, e: io::Error) -> NaError {
        let who = conn
            .remote
            .get()
            .map_or_else(|| format!("peer {}", conn.peer.0), |a| a.to_string());
        if e.kind() == io::ErrorKind::InvalidData {
            NaError::PeerMisbehaved(format!("{who}: {e}"))
        } else if conn.is_connected() {
            NaError::Disconnected(format!("{who}: {e}"))
        } else {
            NaError::Unreachable(format!("{who}: {e}"))
        }
    }

    /// Reads and handles frames until the socket is drained or `READ_BUDGET` bytes were
    /// read; in the latter case the connection is remembered for the next progress call
    /// (epoll is edge-triggered), so that completions are delivered in between.
    /// Single copies requested are served afterwards, at most `COPY_BUDGET` bytes per
    /// pass, so that the messages behind them are not stuck behind their copying.
    pub(crate) fn read_conn(&self, conn: &Conn) -> NaResult<()> {
        let mut guard = lock(&conn.read);
        let rs = &mut *guard;
        self.read_frames(conn, rs)?;
        self.serve_copies(conn, rs);
        Ok(())
    }

    fn read_frames(&self, conn: &Conn, rs: &mut ReadState) -> NaResult<()> {
        let mut budget = READ_BUDGET;
        loop {
            // A peer that does not read its answers is not read either (its requests wait
            // in its socket); writing its backlog resumes reading (`after_flush`).
            if conn.verifying.load(Ordering::Acquire) {
                return Ok(()); // read again once the hello's verdict is in
            }
            if conn.pause_if_over(&self.cfg.backlog) {
                tracing::debug!(
                    peer = conn.peer.0,
                    backlog = conn.backlog(),
                    "paused: answers unread"
                );
                return Ok(());
            }
            if budget == 0 || rs.copies.len() >= MAX_COPIES_QUEUED {
                self.unread.insert(conn.peer);
                return Ok(());
            }
            if rs.direct.is_some() {
                match self.read_direct(conn, rs)? {
                    Some(n) => budget = budget.saturating_sub(n),
                    None => return Ok(()),
                }
                continue;
            }
            // Until the handshake is done a connection reads in small pieces: a crowd of
            // connections that never finish it holds little memory.
            let buf = rs
                .decoder
                .spare(if conn.is_shaken() { 64 * 1024 } else { 4096 });
            let buf_len = buf.len();
            match conn.wire.read(buf) {
                Ok(0) if rs.decoder.mid_frame() => {
                    return Err(NaError::PeerMisbehaved(
                        "connection closed in the middle of a frame".into(),
                    ));
                }
                Ok(0) => return Err(self.conn_error(conn, io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    rs.decoder.commit(n);
                    self.drain_frames(conn, rs)?;
                    if n < buf_len && rs.direct.is_none() {
                        // Drained: a stream socket that fills less than the buffer had no
                        // more (epoll(7): with EPOLLET, a short read is as good as the read
                        // that finds nothing), and what arrives after it raises a new edge.
                        // So no confirming read: it cost a syscall per message, and where it
                        // sat, between a message's arrival and its delivery, a microsecond
                        // of every round trip (strace of `qs-rate -t tcp -b`). A wire in
                        // memory is looked at by every pass anyway.
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.conn_error(conn, e)),
            }
        }
    }

    pub(crate) fn on_frame(&self, conn: &Conn, h: Header, p: &[u8]) -> NaResult<()> {
        let peer = conn.peer;
        let misbehaved = |why: &str| Err(NaError::PeerMisbehaved(why.into()));
        let known = conn.remote.get().is_some();
        if conn.outgoing && !conn.is_greeted() {
            return self.on_challenge(conn, h, p);
        }
        match h.kind {
            Kind::Refused if conn.outgoing => return self.on_challenge(conn, h, p),
            Kind::Hello | Kind::Challenge | Kind::Refused if known || conn.outgoing => {
                return misbehaved("unexpected handshake frame");
            }
            Kind::Hello => return self.on_hello(conn, p),
            _ if !known => return misbehaved("first frame is not a Hello"),
            Kind::Unexpected | Kind::Expected if p.len() > self.cfg.max_eager => {
                return misbehaved("message over the eager limit");
            }
            Kind::Unexpected => {
                self.push_events(
                    [Event::Unexpected {
                        peer,
                        tag: h.tag,
                        data: na::buf::copy_of(p),
                    }],
                    false,
                );
            }
            Kind::Expected => {
                // Matched to a posted receive, or handed on for the consumer to match
                // (`Caps::unposted_expected`).
                let op = match self.receives.load(Ordering::Acquire) {
                    0 => None,
                    _ => lock(&self.ops).match_recv(peer, h.tag),
                };
                let data = na::buf::copy_of(p);
                let ev = match op {
                    Some(op) => Event::Done {
                        op,
                        result: Ok(data),
                    },
                    None => Event::Expected {
                        peer,
                        tag: h.tag,
                        data,
                    },
                };
                self.push_events([ev], false);
            }
            Kind::GetReq => {
                // Checked now; the bytes go from registered memory to the socket when the
                // answer is written (a region deregistered meanwhile is copied first).
                let req = RmaReq::decode_get(p).filter(|r| r.len <= self.cfg.chunks.size);
                let pin = req.ok_or(RmaStatus::Malformed).and_then(|r| {
                    self.mem
                        .pin_remote_read(r.key, r.offset, r.len)
                        .map(|pin| (r, pin))
                });
                let body = match pin {
                    Ok((r, pin)) => Body::Region {
                        prefix: Prefix::from_slice(&[RmaStatus::Ok as u8]),
                        key: r.key,
                        offset: r.offset,
                        len: r.len as usize,
                        _pin: pin,
                    },
                    Err(st) => Body::Status(st as u8),
                };
                self.queue_frames(
                    conn,
                    [OutFrame::with_body(Kind::GetResp, h.tag, body, None)],
                );
            }
            Kind::PutReq => {
                let st = match RmaReq::decode_put(p) {
                    Some((r, data)) => self.mem.remote_write(r.key, r.offset, data),
                    None => RmaStatus::Malformed,
                };
                self.queue_frames(conn, [OutFrame::status(Kind::PutResp, h.tag, st as u8)]);
            }
            // Queued by drain_frames and served by serve_copies.
            Kind::GetCopy | Kind::PutCopy => return misbehaved("misrouted copy request"),
            Kind::Challenge | Kind::Refused => return misbehaved("unexpected handshake frame"),
            Kind::GetResp | Kind::PutResp => self.on_rma_resp(conn, h, p)?,
        }
        Ok(())
    }

    pub(crate) fn on_rma_resp(&self, conn: &Conn, h: Header, p: &[u8]) -> NaResult<()> {
        let (frames, evs) = {
            let mut ops = lock(&self.ops);
            // An unknown chunk belongs to a canceled or failed transfer: drop the answer.
            let Some(c) = ops.take_chunk(h.tag) else {
                return Ok(());
            };
            let Some(r) = ops.rma(c.op) else {
                return Ok(());
            };
            if r.is_get != (h.kind == Kind::GetResp) {
                return Err(NaError::PeerMisbehaved(
                    "RMA answer of the wrong kind".into(),
                ));
            }
            let (&st, data) = p
                .split_first()
                .ok_or_else(|| NaError::PeerMisbehaved("empty RMA answer".into()))?;
            let mut result = RmaStatus::from_u8(st)?.into_result();
            if result.is_ok() && r.is_get && !r.copy {
                if data.len() as u64 != c.len {
                    return Err(NaError::PeerMisbehaved(
                        "RMA answer of the wrong length".into(),
                    ));
                }
                result = self
                    .mem
                    .local_write(r.local_id, r.local_off + c.rel_off, data);
            }
            self.chunk_finished(&mut ops, c.op, result)
        };
        self.push_events(evs, false);
        self.queue_frames(conn, frames);
        Ok(())
    }

    pub(crate) fn close_conn(&self, peer: PeerId, err: NaError) {
        let conn = {
            let mut conns = lock(&self.conns);
            let Some(conn) = conns.remove(&peer) else {
                return;
            };
            self.conns_changed(&conns);
            // Recorded before the connection is seen missing: a call that finds it gone
            // learns why (conns, then gone: the order `conn()` takes them in).
            let mut gone = lock(&self.gone);
            if gone.len() >= crate::GONE_KEPT {
                gone.pop_front();
            }
            gone.push_back((peer, err.clone()));
            conn
        };
        tracing::debug!(peer = peer.0, error = %err, "{} connection closed", self.net.name());
        conn.close();
        for fd in conn.wire.fds() {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
        conn.wire.shutdown();
        self.linger_if_written(&conn);
        lock(&self.by_addr).retain(|_, p| *p != peer);
        let mut evs = lock(&self.ops).fail_peer(peer, &err);
        // Reported only once no tail copy of a failed transfer is under way (`tail.rs`).
        self.pass_tail_gate();
        evs.push(Event::PeerLost { peer, error: err });
        self.push_events(evs, false);
    }
}
