//! Frames waiting to be written, in two classes: messages and RMA requests go ahead of
//! bulk data (get answers, put requests), so that small RPCs are not stuck behind
//! transfers; a frame started is always finished first. Bulk data is not copied into the
//! queue: its body names registered memory, read straight into `writev` at write time.
//! Answers waiting here are charged to their connection's backlog ([`Backlog`]).

use std::collections::VecDeque;
use std::io::IoSlice;

use na::OpId;

use crate::frame::{HEADER_LEN, Header, Kind};
use crate::mr::{MemRead, Pin};

/// What a frame whose region went before it was materialized carries instead.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The body of a frame to write.
pub enum Body {
    /// Bytes owned by the frame.
    Owned(Vec<u8>),
    /// One status byte (an RMA answer that carries no data): no allocation.
    Status(u8),
    /// A small prefix, then `len` bytes of registered region `key` at `offset`, pinned
    /// while the frame lives.
    Region {
        prefix: Prefix,
        key: u64,
        offset: u64,
        len: usize,
        _pin: Pin,
    },
}

impl Body {
    pub(crate) fn len(&self) -> usize {
        match self {
            Body::Owned(v) => v.len(),
            Body::Status(_) => 1,
            Body::Region { prefix, len, .. } => prefix.len() + len,
        }
    }
}

/// What precedes a region's bytes in a frame (a status, or a put's key and offset).
pub type Prefix = smallvec::SmallVec<[u8; 16]>;

/// A frame waiting to be written.
pub struct OutFrame {
    hdr: [u8; HEADER_LEN],
    body: Body,
    pub(crate) op: Option<OpId>,
    bulk: bool,
    /// What the frame holds against its connection's backlog bound (answers only).
    pub(crate) charge: usize,
}

impl Drop for OutFrame {
    /// A message written (or dropped) gives its buffer back for this thread's next one.
    fn drop(&mut self) {
        if let Body::Owned(v) = &mut self.body {
            na::buf::give(std::mem::take(v));
        }
    }
}

/// The pieces of one `writev`: on the stack for a batch of message frames.
pub(crate) type Slices<'a> = smallvec::SmallVec<[IoSlice<'a>; 64]>;

/// Bookkeeping cost of a queued frame beyond its bytes.
const FRAME_OVERHEAD: usize = 64;

/// Bounds on the answers queued for peers that do not read them.
#[derive(Clone, Copy, Debug)]
pub struct Backlog {
    /// Per connection: past it, the connection is not read until half of it is written.
    pub per_conn: usize,
    /// All connections: past it, connections holding more than a fair share
    /// (`per_conn / 16`) are not read until half of that share is written.
    pub total: usize,
}

impl Backlog {
    pub(crate) fn fair(&self) -> usize {
        self.per_conn / 16
    }

    /// Whether a connection holding `mine` (of `total`) must not be read.
    pub fn over(&self, mine: usize, total: usize) -> bool {
        mine > self.per_conn || (total > self.total && mine > self.fair())
    }

    /// Whether a paused connection may be read again.
    pub fn under(&self, mine: usize, total: usize) -> bool {
        mine <= self.per_conn / 2 && (total <= self.total || mine <= self.fair() / 2)
    }
}

impl OutFrame {
    /// A frame of `kind` with `tag` and `body`, completing `op` once written.
    pub fn new(kind: Kind, tag: u64, body: Vec<u8>, op: Option<OpId>) -> Self {
        Self::with_body(kind, tag, Body::Owned(body), op)
    }

    /// An answer of one status byte.
    pub fn status(kind: Kind, tag: u64, status: u8) -> Self {
        Self::with_body(kind, tag, Body::Status(status), None)
    }

    /// The body a frame owns, given back (a message not sent); empty for a region's.
    pub fn into_owned(mut self) -> Vec<u8> {
        match &mut self.body {
            Body::Owned(v) => std::mem::take(v),
            Body::Status(_) | Body::Region { .. } => Vec::new(),
        }
    }

    /// A frame whose body may name registered memory.
    pub fn with_body(kind: Kind, tag: u64, body: Body, op: Option<OpId>) -> Self {
        let hdr = Header {
            kind,
            len: body.len() as u32,
            tag,
        }
        .encode();
        // Status-only answers (single copy, refusals) are as urgent as messages.
        let bulk = matches!(kind, Kind::GetResp | Kind::PutReq) && body.len() > 1;
        OutFrame {
            hdr,
            body,
            op,
            bulk,
            charge: 0,
        }
    }

    /// Whether the frame answers something the peer sent (and so counts against the
    /// peer's backlog): our own requests and data never do, so two busy peers cannot
    /// stop reading each other.
    pub(crate) fn is_answer(&self) -> bool {
        const ANSWERS: [u8; 5] = [
            Kind::Expected as u8,
            Kind::GetResp as u8,
            Kind::PutResp as u8,
            Kind::Challenge as u8,
            Kind::Refused as u8,
        ];
        ANSWERS.contains(&self.hdr[3])
    }

    /// Memory the frame holds (registered regions are the owner's, not the queue's): its
    /// allocation, not only its bytes (messages start with room to grow).
    pub(crate) fn held(&self) -> usize {
        FRAME_OVERHEAD
            + HEADER_LEN
            + match &self.body {
                Body::Owned(v) => v.capacity(),
                Body::Status(_) => 0,
                Body::Region { prefix, .. } => prefix.len(),
            }
    }

    pub(crate) fn len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Whether the body is read from registered memory when written.
    pub(crate) fn names_memory(&self) -> bool {
        matches!(self.body, Body::Region { .. })
    }

    /// Appends the frame's bytes from `skip` on to `out`.
    pub(crate) fn slices<'a>(
        &'a self,
        skip: usize,
        mem: Option<&'a MemRead<'_>>,
        out: &mut Slices<'a>,
    ) {
        let mut push = |part: &'a [u8], skip: &mut usize| {
            if *skip >= part.len() {
                *skip -= part.len();
            } else {
                out.push(IoSlice::new(&part[*skip..]));
                *skip = 0;
            }
        };
        let mut skip = skip;
        push(&self.hdr, &mut skip);
        match &self.body {
            Body::Owned(v) => push(v, &mut skip),
            Body::Status(b) => push(std::slice::from_ref(b), &mut skip),
            Body::Region {
                prefix,
                key,
                offset,
                len,
                ..
            } => {
                push(prefix, &mut skip);
                match mem.and_then(|m| m.slices(*key, *offset, *len)) {
                    Some(parts) => parts.into_iter().for_each(|p| push(p, &mut skip)),
                    // A frame built before its region was deregistered but queued after
                    // the deregistration looked in the queues (not materialized): zeros
                    // in its place, so that the stream stays in step.
                    None => {
                        let mut left = *len;
                        while left > 0 {
                            let n = left.min(ZEROS.len());
                            push(&ZEROS[..n], &mut skip);
                            left -= n;
                        }
                    }
                }
            }
        }
    }

    /// Copies region bytes into the frame, so that the region can go away; returns how
    /// much more the frame holds against its backlog.
    pub(crate) fn materialize(&mut self, key_gone: u64, mem: &MemRead<'_>) -> usize {
        if let Body::Region {
            prefix,
            key,
            offset,
            len,
            ..
        } = &mut self.body
            && *key == key_gone
        {
            let want = prefix.len() + *len;
            let mut v = Vec::with_capacity(want);
            v.extend_from_slice(prefix);
            for part in mem.slices(*key, *offset, *len).unwrap_or_default() {
                v.extend_from_slice(part);
            }
            v.resize(want, 0);
            let grown = *len;
            self.body = Body::Owned(v);
            if self.charge > 0 {
                self.charge += grown;
                return grown;
            }
        }
        0
    }
}

/// Write side state, owned by whichever thread is writing.
#[derive(Default)]
pub struct WriteQ {
    /// The frame being written, and how many of its bytes are out.
    pub(crate) head: Option<(OutFrame, usize)>,
    pub(crate) urgent: VecDeque<OutFrame>,
    pub(crate) bulk: VecDeque<OutFrame>,
}

impl WriteQ {
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none() && self.urgent.is_empty() && self.bulk.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.head = None;
        self.urgent.clear();
        self.bulk.clear();
    }

    /// Sorts newly posted frames into their classes.
    pub(crate) fn absorb(&mut self, inbox: &mut VecDeque<OutFrame>) {
        for f in inbox.drain(..) {
            self.push(f);
        }
    }

    pub(crate) fn push(&mut self, f: OutFrame) {
        if f.bulk {
            self.bulk.push_back(f)
        } else {
            self.urgent.push_back(f)
        }
    }

    pub(crate) fn frames_mut(&mut self) -> impl Iterator<Item = &mut OutFrame> {
        self.head
            .iter_mut()
            .map(|(f, _)| f)
            .chain(self.urgent.iter_mut())
            .chain(self.bulk.iter_mut())
    }

    /// Takes the next frame in write order (head, then urgent, then bulk).
    pub(crate) fn pop(&mut self) -> Option<(OutFrame, usize)> {
        self.head.take().or_else(|| {
            self.urgent
                .pop_front()
                .or_else(|| self.bulk.pop_front())
                .map(|f| (f, 0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mr::MemTable;
    use na::{Access, Segment};

    /// A frame built from a region that went before it was materialized (it was not yet
    /// queued when the deregistration looked) still writes its whole length, zeros for
    /// the region's bytes: the stream stays in step.
    #[test]
    fn a_frame_whose_region_went_unmaterialized_writes_zeros_of_its_length() {
        let t = MemTable::default();
        let mut a = vec![7u8; 100 << 10];
        // SAFETY: `a` outlives the registration (removed below).
        let h = unsafe { t.register(&[Segment::from_slice(&mut a)], Access::ReadOnly) }.unwrap();
        let body = |t: &MemTable| Body::Region {
            prefix: Prefix::from_slice(&[1, 2]),
            key: h.id,
            offset: 10,
            len: 90 << 10,
            _pin: t.pin_local(h.id, 10, 90 << 10).unwrap(),
        };
        let written = |f: &OutFrame, t: &MemTable| {
            let (mem, mut out) = (t.read(), Slices::new());
            f.slices(0, Some(&mem), &mut out);
            out.iter()
                .flat_map(|s| s.iter().copied())
                .collect::<Vec<u8>>()
        };
        let live = OutFrame::with_body(Kind::GetResp, 1, body(&t), None);
        let gone = OutFrame::with_body(Kind::GetResp, 1, body(&t), None);
        let bytes = written(&live, &t);
        assert_eq!(bytes.len(), live.len());
        assert!(bytes[HEADER_LEN + 2..].iter().all(|b| *b == 7));
        t.revoke(h.id).unwrap();
        t.remove(h.id);
        let bytes = written(&gone, &t);
        assert_eq!(bytes.len(), gone.len(), "its whole length");
        assert_eq!(bytes[HEADER_LEN..HEADER_LEN + 2], [1, 2]);
        assert!(bytes[HEADER_LEN + 2..].iter().all(|b| *b == 0));
    }
}
