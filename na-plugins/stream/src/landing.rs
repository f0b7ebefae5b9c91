//! Receiving large bulk frames straight into registered memory: a put's data lands in the
//! owner's region and a get's answer in the requester's, read from the wire (`readv` on a socket)
//! into the region's segments, with no intermediate buffer.
//!
//! The decoder hands over a frame once its header and fixed prefix are in
//! ([`crate::frame::Decoder::next`]); the checks then happen before a byte lands:
//! a refused put, or a get canceled or deregistered meanwhile, is read into a scratch
//! buffer and dropped, so the stream stays in step and no memory is touched.

use std::io;

use na::{Event, NaError, NaResult, OpId};

use crate::conn::{Conn, OutFrame};
use crate::frame::{DirectStart, Header, Kind, Next, RmaStatus};
use crate::ops::{Chunk, Ops};
use crate::wire::{RawPiece, Wire};
use crate::{StreamPlugin, lock};

/// Bodies at least this large are received directly.
pub(crate) const DIRECT_MIN: usize = 64 * 1024;

/// Where the body of a bulk frame being received goes.
pub(crate) enum Sink {
    /// A remote put into our region `key` at `offset`; `status` is the answer (not `Ok`:
    /// the data is dropped).
    Put {
        key: u64,
        offset: u64,
        status: RmaStatus,
    },
    /// The landing of our get chunk into local region `local_id` at `local_off`; after a
    /// `failure` the rest is dropped and the chunk fails.
    Get {
        chunk: Chunk,
        local_id: u64,
        local_off: u64,
        failure: Option<NaError>,
    },
    /// Data nobody waits for any more (a canceled get): dropped.
    Discard,
}

/// A frame body being received directly.
pub(crate) struct Direct {
    tag: u64,
    sink: Sink,
    done: usize,
    len: usize,
}

/// Where the bytes come from.
enum Src<'a> {
    /// Already in the decoder's buffer.
    Buffered(&'a [u8]),
    /// Still in the wire.
    Wire(&'a dyn Wire),
}

impl Src<'_> {
    /// Moves bytes into `pieces` (raw registered memory), at most their total length.
    fn fill_pieces(&self, pieces: &[RawPiece]) -> io::Result<usize> {
        match self {
            Src::Buffered(data) => {
                let mut at = 0;
                for &(p, n) in pieces {
                    let k = n.min(data.len() - at);
                    // SAFETY: `p..p+n` lies in a live registered region whose read guard the
                    // caller holds (`MemTable::landing`); by the register contract it is
                    // valid for writes; `data` is our own buffer, distinct from it.
                    unsafe { std::ptr::copy_nonoverlapping(data[at..].as_ptr(), p, k) };
                    at += k;
                }
                Ok(at)
            }
            // SAFETY: as above for every piece; no Rust reference to that memory exists
            // meanwhile.
            Src::Wire(w) => unsafe { w.read_raw(pieces) },
        }
    }

    /// Drops at most `max` bytes.
    fn discard(&self, max: usize) -> io::Result<usize> {
        match self {
            Src::Buffered(data) => Ok(data.len().min(max)),
            Src::Wire(w) => {
                let mut scratch = vec![0u8; max.min(64 * 1024)];
                w.read(&mut scratch)
            }
        }
    }
}

impl StreamPlugin {
    /// Decides where a bulk frame's body goes, from its header and prefix.
    fn open_sink(&self, h: Header, prefix: &[u8], body_len: usize) -> NaResult<Sink> {
        if h.kind == Kind::PutReq {
            let mut k = [0u8; 8];
            k.copy_from_slice(&prefix[..8]);
            let mut o = [0u8; 8];
            o.copy_from_slice(&prefix[8..16]);
            let (key, offset) = (u64::from_le_bytes(k), u64::from_le_bytes(o));
            let status = self.mem.check_remote(key, offset, body_len as u64, true);
            return Ok(Sink::Put {
                key,
                offset,
                status,
            });
        }
        if RmaStatus::from_u8(prefix[0])? != RmaStatus::Ok {
            return Err(NaError::PeerMisbehaved(
                "refused RMA answer carries data".into(),
            ));
        }
        let mut ops = lock(&self.ops);
        let Some(c) = ops.take_chunk(h.tag) else {
            return Ok(Sink::Discard);
        };
        let Some(r) = ops.rma(c.op) else {
            return Ok(Sink::Discard);
        };
        if !r.is_get || body_len as u64 != c.len {
            return Err(NaError::PeerMisbehaved(
                "RMA answer of the wrong kind or length".into(),
            ));
        }
        Ok(Sink::Get {
            chunk: c,
            local_id: r.local_id,
            local_off: r.local_off + c.rel_off,
            failure: None,
        })
    }

    /// Moves the next bytes of `d` from `src` to where they go.
    fn receive(&self, d: &mut Direct, src: Src<'_>) -> io::Result<usize> {
        let left = d.len - d.done;
        let n = match &mut d.sink {
            Sink::Put {
                key,
                offset,
                status,
            } if *status == RmaStatus::Ok => {
                match self.mem.landing(*key, *offset + d.done as u64, left, true) {
                    Some((_guard, pieces)) => src.fill_pieces(&pieces)?,
                    None => {
                        // Deregistered in the middle of the frame.
                        *status = RmaStatus::BadKey;
                        src.discard(left)?
                    }
                }
            }
            Sink::Get {
                chunk,
                local_id,
                local_off,
                failure,
            } if failure.is_none() => {
                // The ops lock keeps `cancel` from returning while bytes land.
                let ops = lock(&self.ops);
                if ops.rma(chunk.op).is_none() {
                    d.sink = Sink::Discard;
                    src.discard(left)?
                } else {
                    match self
                        .mem
                        .landing(*local_id, *local_off + d.done as u64, left, false)
                    {
                        Some((_guard, pieces)) => src.fill_pieces(&pieces)?,
                        None => {
                            *failure = Some(NaError::InvalidArgument(
                                "local memory deregistered during a get".into(),
                            ));
                            src.discard(left)?
                        }
                    }
                }
            }
            _ => src.discard(left)?,
        };
        d.done += n;
        Ok(n)
    }

    /// A directly received frame is complete: answer the put, or finish the get chunk.
    fn finish_direct(&self, conn: &Conn, d: Direct) {
        match d.sink {
            Sink::Put { status, .. } => {
                self.queue_frames(conn, [OutFrame::status(Kind::PutResp, d.tag, status as u8)])
            }
            Sink::Get { chunk, failure, .. } => {
                let mut ops = lock(&self.ops);
                let (frames, evs) =
                    self.chunk_finished(&mut ops, chunk.op, failure.map_or(Ok(()), Err));
                drop(ops);
                self.push_events(evs, false);
                self.queue_frames(conn, frames);
            }
            Sink::Discard => {}
        }
    }

    /// Records a chunk's outcome and builds the next requests of its transfer.
    pub(crate) fn chunk_finished(
        &self,
        ops: &mut Ops,
        op: OpId,
        result: NaResult<()>,
    ) -> (crate::rma::Frames, impl Iterator<Item = Event> + use<>) {
        let done = ops.chunk_done(op, result);
        let (frames, more) = self.issue_chunks(ops, op);
        (frames, done.into_iter().chain(more))
    }

    /// Handles the frames the decoder holds, switching to direct reception for a large
    /// bulk body (then `direct` is set and the caller reads the rest of it).
    pub(crate) fn drain_frames(
        &self,
        conn: &Conn,
        rs: &mut crate::conn::ReadState,
    ) -> NaResult<()> {
        loop {
            // Frames behind a hello being checked wait for its verdict.
            if conn.verifying.load(std::sync::atomic::Ordering::Acquire) {
                return Ok(());
            }
            match rs.decoder.next(DIRECT_MIN)? {
                Some(Next::Direct(DirectStart {
                    header: h,
                    prefix,
                    body: here,
                    rest,
                })) => {
                    if conn.remote.get().is_none() {
                        return Err(NaError::PeerMisbehaved("first frame is not a Hello".into()));
                    }
                    let sink = self.open_sink(h, prefix, here.len() + rest)?;
                    let mut d = Direct {
                        tag: h.tag,
                        sink,
                        done: 0,
                        len: here.len() + rest,
                    };
                    self.receive(&mut d, Src::Buffered(here))
                        .map_err(NaError::from)?;
                    if rest == 0 {
                        self.finish_direct(conn, d);
                        continue;
                    }
                    rs.direct = Some(d);
                    return Ok(());
                }
                Some(Next::Frame(h, p)) if matches!(h.kind, Kind::GetCopy | Kind::PutCopy) => {
                    if conn.remote.get().is_none() {
                        return Err(NaError::PeerMisbehaved("first frame is not a Hello".into()));
                    }
                    rs.copies
                        .push_back((h, crate::conn::CopyReq::from_slice(p)));
                }
                Some(Next::Frame(h, p)) => self.on_frame(conn, h, p)?,
                None => return Ok(()),
            }
        }
    }

    /// Reads the next bytes of the body being received directly; `Ok(None)`: would block.
    pub(crate) fn read_direct(
        &self,
        conn: &Conn,
        rs: &mut crate::conn::ReadState,
    ) -> NaResult<Option<usize>> {
        let Some(d) = rs.direct.as_mut() else {
            return Ok(Some(0));
        };
        match self.receive(d, Src::Wire(&*conn.wire)) {
            Ok(0) => Err(NaError::PeerMisbehaved(
                "connection closed in the middle of a frame".into(),
            )),
            Ok(n) => {
                if d.done == d.len
                    && let Some(d) = rs.direct.take()
                {
                    self.finish_direct(conn, d);
                }
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Some(0)),
            Err(e) => Err(self.conn_error(conn, e)),
        }
    }
}
