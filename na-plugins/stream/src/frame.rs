//! The wire format of the stream core, without I/O: a 16-byte frame header, the RMA
//! sub-headers, and an incremental decoder that turns a byte stream into frames.
//!
//! ```text
//! frame  = magic:u16 version:u8 kind:u8 len:u32 tag:u64 payload[len]   (little endian)
//! Hello / Challenge / Refused   the handshake: see [`crate::auth`]
//! Unexpected / Expected   payload = the message, tag = the message tag
//! GetReq   payload = key:u64 offset:u64 len:u64            tag = requester's chunk id
//! GetResp  payload = status:u8 data[...]                   tag = chunk id
//! PutReq   payload = key:u64 offset:u64 data[...]          tag = chunk id
//! PutResp  payload = status:u8                             tag = chunk id
//! GetCopy  payload = key:u64 offset:u64 len:u64 (addr:u64 len:u64)*   tag = chunk id
//! PutCopy  payload = as GetCopy
//! ```
//!
//! `GetCopy`/`PutCopy` are single-copy RMA between processes of one node: the owner checks
//! the request as for `GetReq`/`PutReq`, then copies straight between its registered memory
//! and the listed pieces of the requester's (`process_vm_writev`/`readv`), and answers with
//! a status-only `GetResp`/`PutResp`.

use na::NaError;

/// `"QS"` in ASCII.
pub const MAGIC: u16 = 0x5153;
/// The version of this wire format.
pub const VERSION: u8 = 1;
/// Length of the frame header.
pub const HEADER_LEN: usize = 16;

/// The kinds of frames.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// First frame on a connection: who is calling.
    Hello = 1,
    /// An unexpected message.
    Unexpected = 2,
    /// An expected message.
    Expected = 3,
    /// Read request for registered memory.
    GetReq = 4,
    /// Answer to a read request.
    GetResp = 5,
    /// Write request into registered memory.
    PutReq = 6,
    /// Answer to a write request.
    PutResp = 7,
    /// Single-copy read request: the owner copies into the requester's memory.
    GetCopy = 8,
    /// Single-copy write request: the owner copies from the requester's memory.
    PutCopy = 9,
    /// First frame of an accepting side: the proof it demands (see [`crate::auth`]).
    Challenge = 10,
    /// The accepting side refused the hello's credential; the payload says why.
    Refused = 11,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Unexpected,
            3 => Kind::Expected,
            4 => Kind::GetReq,
            5 => Kind::GetResp,
            6 => Kind::PutReq,
            7 => Kind::PutResp,
            8 => Kind::GetCopy,
            9 => Kind::PutCopy,
            10 => Kind::Challenge,
            11 => Kind::Refused,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The frame kind.
    pub kind: Kind,
    /// Payload length.
    pub len: u32,
    /// Message tag or RMA chunk id.
    pub tag: u64,
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = self.kind as u8;
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.tag.to_le_bytes());
        b
    }

    /// Decodes and validates a header; `max_len` bounds the announced payload.
    pub fn decode(b: &[u8; HEADER_LEN], max_len: usize) -> Result<Header, NaError> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(NaError::PeerMisbehaved(format!(
                "bad frame magic {magic:#06x}"
            )));
        }
        if b[2] != VERSION {
            return Err(NaError::PeerMisbehaved(format!(
                "unsupported wire version {} (this side speaks {VERSION})",
                b[2]
            )));
        }
        let kind = Kind::from_u8(b[3])
            .ok_or_else(|| NaError::PeerMisbehaved(format!("unknown frame kind {}", b[3])))?;
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        if len as usize > max_len {
            return Err(NaError::PeerMisbehaved(format!(
                "frame announces {len} bytes, limit is {max_len}"
            )));
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[8..16]);
        Ok(Header {
            kind,
            len,
            tag: u64::from_le_bytes(t),
        })
    }
}

/// Status byte of RMA answers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RmaStatus {
    /// Done.
    Ok = 0,
    /// No region has that key (never registered, or deregistered).
    BadKey = 1,
    /// Offset or length outside the region.
    OutOfBounds = 2,
    /// The region's access mode forbids it.
    Forbidden = 3,
    /// The request itself was malformed.
    Malformed = 4,
    /// The owner could not copy into or out of the requester's memory (single copy).
    CopyFailed = 5,
}

impl RmaStatus {
    /// Decodes a status byte; unknown values are a protocol error.
    pub fn from_u8(b: u8) -> Result<RmaStatus, NaError> {
        Ok(match b {
            0 => RmaStatus::Ok,
            1 => RmaStatus::BadKey,
            2 => RmaStatus::OutOfBounds,
            3 => RmaStatus::Forbidden,
            4 => RmaStatus::Malformed,
            5 => RmaStatus::CopyFailed,
            _ => return Err(NaError::PeerMisbehaved(format!("unknown RMA status {b}"))),
        })
    }

    /// The error a requester sees for a refused access.
    pub fn into_result(self) -> Result<(), NaError> {
        let why = match self {
            RmaStatus::Ok => return Ok(()),
            RmaStatus::BadKey => "no region with that key",
            RmaStatus::OutOfBounds => "offset or length outside the region",
            RmaStatus::Forbidden => "region's access mode forbids it",
            RmaStatus::Malformed => "malformed request",
            RmaStatus::CopyFailed => {
                return Err(NaError::Unsupported(
                    "the owner could not copy to or from our memory (single-copy RMA \
                     refused by the kernel?)"
                        .into(),
                ));
            }
        };
        Err(NaError::AccessDenied(why.into()))
    }
}

/// The (address, length) pieces of a single-copy request: few, kept inline.
pub type Pieces = smallvec::SmallVec<[(u64, u64); 4]>;

/// The fixed part of a GetReq or PutReq payload.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RmaReq {
    /// Region key.
    pub key: u64,
    /// Offset within the region.
    pub offset: u64,
    /// Length (GetReq only; a PutReq's length is its data).
    pub len: u64,
}

impl RmaReq {
    /// Encoded size of a GetReq payload.
    pub const GET_LEN: usize = 24;
    /// Encoded size of the fixed part of a PutReq payload.
    pub const PUT_LEN: usize = 16;

    /// Encodes a GetReq payload.
    pub fn encode_get(&self) -> Vec<u8> {
        // A copy request's fixed part is a GetReq.
        self.encode_copy(&[])
    }

    /// Encodes the fixed part of a PutReq payload (the data follows).
    pub fn encode_put_prefix(key: u64, offset: u64) -> [u8; Self::PUT_LEN] {
        let mut b = [0u8; Self::PUT_LEN];
        b[..8].copy_from_slice(&key.to_le_bytes());
        b[8..].copy_from_slice(&offset.to_le_bytes());
        b
    }

    /// Encodes a GetCopy/PutCopy payload: the request, then the requester's pieces.
    pub fn encode_copy(&self, pieces: &[(u64, u64)]) -> Vec<u8> {
        // From this thread's kept buffers: the frame gives it back once written.
        let mut v = na::buf::take(Self::GET_LEN + 16 * pieces.len());
        for x in [self.key, self.offset, self.len] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for (addr, len) in pieces {
            v.extend_from_slice(&addr.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
        }
        v
    }

    /// Decodes a GetCopy/PutCopy payload; the pieces must add up to the length.
    pub fn decode_copy(p: &[u8]) -> Option<(RmaReq, Pieces)> {
        let req = Self::decode_get(p.get(..Self::GET_LEN)?)?;
        let rest = &p[Self::GET_LEN..];
        if !rest.len().is_multiple_of(16) {
            return None;
        }
        let pieces: Pieces = rest
            .chunks_exact(16)
            .map(|c| (le64(&c[..8]), le64(&c[8..])))
            .collect();
        let total = pieces
            .iter()
            .try_fold(0u64, |t, &(_, n)| t.checked_add(n))?;
        (total == req.len).then_some((req, pieces))
    }

    /// Decodes a GetReq payload.
    pub fn decode_get(p: &[u8]) -> Option<RmaReq> {
        if p.len() != Self::GET_LEN {
            return None;
        }
        Some(RmaReq {
            key: le64(&p[0..8]),
            offset: le64(&p[8..16]),
            len: le64(&p[16..24]),
        })
    }

    /// Decodes a PutReq payload into its request and data.
    pub fn decode_put(p: &[u8]) -> Option<(RmaReq, &[u8])> {
        if p.len() < Self::PUT_LEN {
            return None;
        }
        let data = &p[Self::PUT_LEN..];
        Some((
            RmaReq {
                key: le64(&p[0..8]),
                offset: le64(&p[8..16]),
                len: data.len() as u64,
            },
            data,
        ))
    }
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

/// A bulk frame handed over for direct reception by [`Decoder::next`].
pub struct DirectStart<'a> {
    /// The frame header.
    pub header: Header,
    /// The fixed prefix of the body (the put's key and offset, or the answer's status).
    pub prefix: &'a [u8],
    /// Body bytes already buffered.
    pub body: &'a [u8],
    /// Body bytes still in the socket.
    pub rest: usize,
}

/// Turns a byte stream into frames. Read into [`Decoder::spare`], [`Decoder::commit`] what
/// was read, then take frames out with [`Decoder::next`]. The buffer is allocated at
/// the first read and grows only to fit the largest frame seen.
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_len: usize,
}

impl Decoder {
    /// A decoder accepting payloads up to `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_len,
        }
    }

    /// Space to read into, at least `min` bytes. For a large frame in progress the buffer
    /// grows with what has arrived (at most doubling what the frame has delivered so far),
    /// not to what its header announces: a peer that announces 512 KiB and stalls costs
    /// `min`, not 512 KiB.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let arrived = self.end - self.start;
        let want = self.pending_need().min(arrived.max(min)).max(min);
        if self.buf.len() - self.end < want {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < want {
                self.buf.resize(self.end + want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that the first `n` bytes of the last [`Decoder::spare`] were filled.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Appends bytes (for tests and fuzzing).
    pub fn feed(&mut self, data: &[u8]) {
        self.spare(data.len())[..data.len()].copy_from_slice(data);
        self.commit(data.len());
    }

    /// Bytes still needed to complete the frame in progress (0 if none is started).
    fn pending_need(&self) -> usize {
        let have = self.end - self.start;
        if have < HEADER_LEN {
            return 0;
        }
        let b = &self.buf[self.start + 4..self.start + 8];
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        (HEADER_LEN + len.min(self.max_len)).saturating_sub(have)
    }

    /// The header of the next frame, once its 16 bytes are buffered (validated).
    fn peek_header(&self) -> Result<Option<Header>, NaError> {
        if self.end - self.start < HEADER_LEN {
            return Ok(None);
        }
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        Header::decode(&hb, self.max_len).map(Some)
    }

    /// Whether a frame is partly received (a peer closing now closes mid-frame).
    pub fn mid_frame(&self) -> bool {
        self.end > self.start
    }

    /// The next frame, its header decoded once: a large bulk frame (a `PutReq` or
    /// `GetResp` whose body is at least `min_body` bytes) as soon as its header and fixed
    /// prefix are buffered, to be received directly into its destination (its header,
    /// prefix and the body bytes already buffered are consumed; the rest is to be read
    /// from the socket by the caller, bypassing this buffer); any other frame once it is
    /// whole. `Ok(None)` if more bytes are needed; an error for a malformed header (after
    /// which the stream cannot be trusted).
    pub fn next(&mut self, min_body: usize) -> Result<Option<Next<'_>>, NaError> {
        let Some(h) = self.peek_header()? else {
            return Ok(None);
        };
        let have = self.end - self.start;
        let len = h.len as usize;
        let p = self.start + HEADER_LEN;
        let prefix = match h.kind {
            Kind::PutReq => Some(RmaReq::PUT_LEN),
            Kind::GetResp => Some(1),
            _ => None,
        };
        if let Some(prefix) = prefix
            && len >= prefix.saturating_add(min_body)
            && have >= HEADER_LEN + prefix
        {
            let body_here = (have - HEADER_LEN - prefix).min(len - prefix);
            self.start = p + prefix + body_here;
            return Ok(Some(Next::Direct(DirectStart {
                header: h,
                prefix: &self.buf[p..p + prefix],
                body: &self.buf[p + prefix..p + prefix + body_here],
                rest: len - prefix - body_here,
            })));
        }
        if have < HEADER_LEN + len {
            return Ok(None);
        }
        self.start = p + len;
        Ok(Some(Next::Frame(h, &self.buf[p..p + len])))
    }

    /// The next whole frame, none received directly (tests and fuzzing).
    pub fn next_frame(&mut self) -> Result<Option<(Header, &[u8])>, NaError> {
        match self.next(usize::MAX)? {
            Some(Next::Frame(h, p)) => Ok(Some((h, p))),
            _ => Ok(None),
        }
    }
}

/// What [`Decoder::next`] found.
pub enum Next<'a> {
    /// A large bulk frame to receive directly.
    Direct(DirectStart<'a>),
    /// A whole frame: its header and payload.
    Frame(Header, &'a [u8]),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: Kind, tag: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = Header {
            kind,
            len: payload.len() as u32,
            tag,
        }
        .encode()
        .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            kind: Kind::PutReq,
            len: 77,
            tag: u64::MAX - 3,
        };
        assert_eq!(Header::decode(&h.encode(), 100).unwrap(), h);
    }

    #[test]
    fn bad_magic_version_kind_and_length_are_peer_errors() {
        let good = Header {
            kind: Kind::Expected,
            len: 8,
            tag: 1,
        }
        .encode();
        let mut b = good;
        b[0] ^= 0xff;
        assert!(matches!(
            Header::decode(&b, 100),
            Err(NaError::PeerMisbehaved(_))
        ));
        let mut b = good;
        b[2] = 9;
        assert!(matches!(
            Header::decode(&b, 100),
            Err(NaError::PeerMisbehaved(_))
        ));
        let mut b = good;
        b[3] = 0;
        assert!(matches!(
            Header::decode(&b, 100),
            Err(NaError::PeerMisbehaved(_))
        ));
        let mut b = good;
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Header::decode(&b, 100),
            Err(NaError::PeerMisbehaved(_))
        ));
    }

    #[test]
    fn decoder_reassembles_frames_split_anywhere() {
        let mut stream = frame(Kind::Unexpected, 5, b"hello");
        stream.extend(frame(Kind::Expected, 6, b""));
        stream.extend(frame(Kind::GetResp, 7, &[0u8; 300]));
        for cut in 0..stream.len() {
            let mut d = Decoder::new(1024);
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.feed(part);
                while let Some((h, p)) = d.next_frame().unwrap() {
                    got.push((h.tag, p.len()));
                }
            }
            assert_eq!(got, vec![(5, 5), (6, 0), (7, 300)], "cut at {cut}");
            assert!(!d.mid_frame());
        }
    }

    #[test]
    fn a_stalled_large_frame_does_not_reserve_what_it_announces() {
        let mut d = Decoder::new(1 << 20);
        let hdr = Header {
            kind: Kind::Unexpected,
            len: 1 << 20,
            tag: 1,
        }
        .encode();
        d.feed(&hdr);
        assert!(
            d.spare(4096).len() <= 64 * 1024,
            "reserved the announced length"
        );
        // As bytes arrive, the buffer keeps up with them, doubling at most.
        let mut sent = 0;
        while sent < 1 << 20 {
            let n = d.spare(4096).len().min((1 << 20) - sent);
            assert!(n <= (sent + HEADER_LEN).max(64 * 1024) + 4096);
            d.commit(n);
            sent += n;
        }
        assert_eq!(d.next_frame().unwrap().unwrap().1.len(), 1 << 20);
    }

    #[test]
    fn large_bulk_frames_are_handed_over_for_direct_reception() {
        let mut d = Decoder::new(1 << 20);
        let mut put = RmaReq::encode_put_prefix(7, 9).to_vec();
        put.extend_from_slice(&[5u8; 1000]);
        let mut stream = frame(Kind::PutReq, 3, &put);
        stream.extend(frame(Kind::Expected, 4, b"after"));
        // Small bodies and other kinds are not handed over.
        d.feed(&frame(Kind::GetResp, 1, &[0u8; 10]));
        assert!(matches!(d.next(100), Ok(Some(Next::Frame(h, _))) if h.tag == 1));
        d.feed(&stream[..HEADER_LEN + 16 + 300]);
        let Ok(Some(Next::Direct(s))) = d.next(100) else {
            panic!("handed over once header and prefix are in")
        };
        assert_eq!(
            (
                s.header.kind,
                s.header.tag,
                s.prefix.len(),
                s.body.len(),
                s.rest
            ),
            (Kind::PutReq, 3, 16, 300, 700)
        );
        // The caller reads the other 700 bytes itself; the decoder goes on after them.
        d.feed(&stream[HEADER_LEN + 16 + 1000..]);
        assert_eq!(d.next_frame().unwrap().unwrap().1, b"after");
    }

    #[test]
    fn rma_requests_round_trip_and_reject_wrong_sizes() {
        let r = RmaReq {
            key: 1,
            offset: 2,
            len: 3,
        };
        assert_eq!(RmaReq::decode_get(&r.encode_get()), Some(r));
        assert_eq!(RmaReq::decode_get(&[0; 23]), None);
        let mut p = RmaReq::encode_put_prefix(9, 10).to_vec();
        p.extend_from_slice(b"abc");
        let (q, d) = RmaReq::decode_put(&p).unwrap();
        assert_eq!((q.key, q.offset, q.len, d), (9, 10, 3, &b"abc"[..]));
        assert!(RmaReq::decode_put(&[0; 15]).is_none());
    }

    proptest! {
        /// Random bytes never panic the decoder: they yield frames or a typed error.
        #[test]
        fn decoder_never_panics_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut d = Decoder::new(2048);
            d.feed(&data);
            loop {
                match d.next_frame() {
                    Ok(Some((h, p))) => prop_assert_eq!(h.len as usize, p.len()),
                    Ok(None) => break,
                    Err(e) => { prop_assert!(matches!(e, NaError::PeerMisbehaved(_))); break }
                }
            }
        }

        /// Random headers decode to a header that re-encodes to the same bytes, or an error.
        #[test]
        fn header_decode_is_exact(b in proptest::array::uniform16(any::<u8>())) {
            if let Ok(h) = Header::decode(&b, usize::MAX) {
                prop_assert_eq!(h.encode(), b);
            }
        }
    }
}
