//! What this plugin puts on the fabric besides user data: the header of unexpected
//! messages, the owner checks and carried transfers, and the segment table inside a
//! remote memory descriptor. Pure functions (sans I/O), tested here.
//!
//! Unexpected traffic (requests, probes, RMA checks) travels as *untagged* messages into
//! the pool of untagged receives; expected messages are tagged with the caller's tag, all
//! 64 bits of it, and matched exactly (ignore mask 0). Keeping the pool off the tagged
//! queue matters: libfabric 1.17's `shm` matches a receive against queued unexpected
//! tagged messages with a stale ignore mask left in its entry pool, so a wildcard pool
//! receive could miss queued requests for ever and an exact receive could take another
//! call's answer (seen: 30% of the requests of 64 busy clients lost).

use na::NaError;
use smallvec::SmallVec;

/// The longest header: version and kind, tag, address length, address.
pub const HEADER_MAX: usize = 1 + 8 + 1 + 255;

/// The version of this wire format, in the high four bits of an unexpected message's
/// first byte (the kind in the low four). A message of another version is refused whole
/// (`NaError::Unsupported`), never read as this one's layout: a node of another release
/// cannot have its checks or grants misread.
pub const VERSION: u8 = 2;

/// What an unexpected message is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A user message (an RPC request).
    Request = 0,
    /// A liveness probe: answer with a `Pong`.
    Ping = 1,
    /// The answer to a `Ping`.
    Pong = 2,
    /// Asks the owner whether an RMA may proceed (see [`Check`]).
    Check = 3,
    /// The owner's answer to a `Check`.
    Grant = 4,
    /// Asks the owner to perform a small transfer itself: a [`Check`] followed, for a
    /// write, by its `len` bytes (one message instead of a check, a grant and the RMA).
    Carry = 5,
    /// The owner's answer to a `Carry`: a grant followed, for an allowed read, by the bytes.
    Carried = 6,
    /// Control messages (checks, carries and their answers) to one peer sent as one
    /// message while writes to it were held (`Plugin::hold`): see [`bundle`].
    Bundle = 7,
    /// The initiator's word that granted transfers are over (their owner holds a lease on each
    /// until then, so that its deregistrations wait for them): their
    /// operations, as in their checks ([`encode_release`]).
    Release = 8,
}

/// An initiator's question to a region's owner, for providers whose own key checks are
/// missing (`shm`) or destructive (`tcp;ofi_rxm` closes the connection): may `len` bytes at
/// `off` of the region with descriptor key `key` be read (or written)?
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The initiator's operation, echoed in the grant.
    pub op: u64,
    /// The descriptor's key.
    pub key: u64,
    /// Offset in the region.
    pub off: u64,
    /// Length.
    pub len: u64,
    /// A put (true) or a get.
    pub write: bool,
}

impl Check {
    /// The payload after the header.
    pub fn encode(&self) -> [u8; 33] {
        let mut v = [0u8; 33];
        for (i, w) in [self.op, self.key, self.off, self.len]
            .into_iter()
            .enumerate()
        {
            v[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        v[32] = self.write as u8;
        v
    }

    /// Parses a payload.
    pub fn decode(b: &[u8]) -> Result<Check, NaError> {
        if b.len() != 33 || b[32] > 1 {
            return Err(NaError::PeerMisbehaved("malformed RMA check".into()));
        }
        Ok(Check {
            op: word(b, 0),
            key: word(b, 1),
            off: word(b, 2),
            len: word(b, 3),
            write: b[32] == 1,
        })
    }
}

/// A grant payload: the operation and whether the owner allows it.
pub fn encode_grant(op: u64, ok: bool) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&op.to_le_bytes());
    v[8] = ok as u8;
    v
}

/// Parses a grant payload.
pub fn decode_grant(b: &[u8]) -> Result<(u64, bool), NaError> {
    if b.len() != 9 || b[8] > 1 {
        return Err(NaError::PeerMisbehaved("malformed RMA grant".into()));
    }
    Ok((word(b, 0), b[8] == 1))
}

/// A `Release` payload: the operations, 8 bytes each.
pub fn encode_release(b: &mut Vec<u8>, ops: &[u64]) {
    for op in ops {
        b.extend_from_slice(&op.to_le_bytes());
    }
}

/// Parses a `Release` payload (at least one operation).
pub fn decode_release(b: &[u8]) -> Result<impl Iterator<Item = u64> + '_, NaError> {
    if b.is_empty() || !b.len().is_multiple_of(8) {
        return Err(NaError::PeerMisbehaved("malformed release".into()));
    }
    Ok((0..b.len() / 8).map(move |i| word(b, i)))
}

/// Splits a `Carry` payload into its check and the bytes that follow (which must be the
/// check's `len` for a write, none for a read).
pub fn decode_carry(b: &[u8]) -> Result<(Check, &[u8]), NaError> {
    let c = Check::decode(b.get(..33).unwrap_or(b))?;
    let data = &b[33..];
    let want = if c.write { c.len } else { 0 };
    if data.len() as u64 != want {
        return Err(NaError::PeerMisbehaved(
            "carried bytes do not match the check".into(),
        ));
    }
    Ok((c, data))
}

/// Appends a `Carried` payload to `b`: the grant of `op`, then what `serve` appends (the
/// bytes read; none for a write). `serve` says whether the owner allowed the transfer;
/// a refusal carries no bytes.
pub fn encode_carried(b: &mut Vec<u8>, op: u64, serve: impl FnOnce(&mut Vec<u8>) -> bool) {
    b.extend_from_slice(&encode_grant(op, false));
    let (ok_at, start) = (b.len() - 1, b.len());
    let ok = serve(b);
    if !ok {
        b.truncate(start);
    }
    b[ok_at] = ok as u8;
}

/// Parses a `Carried` payload.
pub fn decode_carried(b: &[u8]) -> Result<(u64, bool, &[u8]), NaError> {
    let (op, ok) = decode_grant(b.get(..9).unwrap_or(b))?;
    Ok((op, ok, &b[9..]))
}

fn word(c: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&c[i * 8..i * 8 + 8]);
    u64::from_le_bytes(b)
}

/// The header of every unexpected message: kind, the caller's tag (0 but for requests),
/// then the sender's own address (providers without `FI_SOURCE` cannot tell who sent a
/// message, and those with it need the sender in their address vector first), in a
/// buffer with `room` bytes more for the payload.
pub fn header(kind: Kind, tag: u64, self_raw: &[u8], room: usize) -> Vec<u8> {
    let mut h = na::buf::take(header_len(self_raw) + room);
    header_into(&mut h, kind, tag, self_raw);
    h
}

/// The length of a header from `self_raw`.
pub fn header_len(self_raw: &[u8]) -> usize {
    10 + self_raw.len()
}

/// Appends a [`header`] to `b`.
pub fn header_into(b: &mut Vec<u8>, kind: Kind, tag: u64, self_raw: &[u8]) {
    b.push(VERSION << 4 | kind as u8);
    b.extend_from_slice(&tag.to_le_bytes());
    b.push(self_raw.len() as u8);
    b.extend_from_slice(self_raw);
}

/// The bytes a message adds to a bundle.
pub const BUNDLED: usize = 4;

/// Appends whole control message `msg` to bundle payload `b` (after a [`Kind::Bundle`]
/// header): its length, then it.
pub fn bundle(b: &mut Vec<u8>, msg: &[u8]) {
    b.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    b.extend_from_slice(msg);
}

/// The messages of a bundle's payload, each whole; an empty one, or one that runs past the
/// end, makes the bundle malformed.
pub fn unbundle(mut data: &[u8]) -> Result<Vec<&[u8]>, NaError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let bad = || NaError::PeerMisbehaved("malformed bundle".into());
        let (n, rest) = data.split_first_chunk::<BUNDLED>().ok_or_else(bad)?;
        let n = u32::from_le_bytes(*n) as usize;
        if n == 0 || rest.len() < n {
            return Err(bad());
        }
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    Ok(out)
}

/// A received unexpected message, split.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// What it is.
    pub kind: Kind,
    /// The caller's tag.
    pub tag: u64,
    /// The sender's raw address.
    pub from: &'a [u8],
    /// The payload.
    pub data: &'a [u8],
}

/// Splits a received unexpected message into kind, tag, sender address and payload.
pub fn parse(msg: &[u8]) -> Result<Parsed<'_>, NaError> {
    let bad = |why: &str| NaError::PeerMisbehaved(format!("unexpected message: {why}"));
    let (&k, rest) = msg.split_first().ok_or_else(|| bad("empty"))?;
    if k >> 4 != VERSION {
        return Err(NaError::Unsupported(format!(
            "a message of ofi wire version {} (this side speaks {VERSION})",
            k >> 4
        )));
    }
    let (tag, rest) = rest.split_first_chunk::<8>().ok_or_else(|| bad("no tag"))?;
    let kind = match k & 0xf {
        0 => Kind::Request,
        1 => Kind::Ping,
        2 => Kind::Pong,
        3 => Kind::Check,
        4 => Kind::Grant,
        5 => Kind::Carry,
        6 => Kind::Carried,
        7 => Kind::Bundle,
        8 => Kind::Release,
        _ => return Err(bad("unknown kind")),
    };
    let (&n, rest) = rest.split_first().ok_or_else(|| bad("no address length"))?;
    let n = n as usize;
    if n == 0 || rest.len() < n {
        return Err(bad("truncated sender address"));
    }
    Ok(Parsed {
        kind,
        tag: u64::from_le_bytes(*tag),
        from: &rest[..n],
        data: &rest[n..],
    })
}

/// One registered segment as a peer sees it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RemoteSeg {
    /// The base the provider expects in RMA calls: the virtual address with
    /// `FI_MR_VIRT_ADDR`, else 0 (offsets).
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// XORed with the descriptor's key to give this segment's provider key (0 for the
    /// first): a forged key in the descriptor forges every segment's key.
    pub key_delta: u64,
}

const SEG: usize = 24;

/// Encodes the segment table for `RemoteMem::extra`.
pub fn encode_segs(segs: &[RemoteSeg]) -> Vec<u8> {
    let mut v = Vec::with_capacity(segs.len() * SEG);
    for s in segs {
        v.extend_from_slice(&s.base.to_le_bytes());
        v.extend_from_slice(&s.len.to_le_bytes());
        v.extend_from_slice(&s.key_delta.to_le_bytes());
    }
    v
}

/// Decodes a segment table from a peer's descriptor.
pub fn decode_segs(extra: &[u8]) -> Result<SmallVec<[RemoteSeg; 2]>, NaError> {
    if extra.is_empty() || !extra.len().is_multiple_of(SEG) {
        return Err(NaError::AccessDenied(
            "the descriptor's segment table is malformed (not an ofi region)".into(),
        ));
    }
    Ok(extra
        .chunks_exact(SEG)
        .map(|c| RemoteSeg {
            base: word(c, 0),
            len: word(c, 1),
            key_delta: word(c, 2),
        })
        .collect())
}

/// A piece of a transfer that is contiguous on both sides.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Index of the local segment.
    pub lseg: usize,
    /// Offset within it.
    pub loff: u64,
    /// Index of the remote segment.
    pub rseg: usize,
    /// Offset within it.
    pub roff: u64,
    /// Bytes.
    pub len: u64,
}

/// Splits `len` bytes at `loff` in the local segments (their lengths) and `roff` in the
/// remote ones into pieces contiguous on both sides: the transfer is cut into chunks of at
/// most `chunk` bytes by the one chunker ([`na::Chunker`]), and each chunk is cut again
/// where a segment ends on either side. The caller has checked both ranges against the
/// totals.
pub fn pieces(
    local: &[u64],
    loff: u64,
    remote: &[u64],
    roff: u64,
    len: u64,
    chunk: u64,
) -> SmallVec<[Piece; 2]> {
    let locate = |segs: &[u64], mut off: u64| {
        let mut i = 0;
        while i < segs.len() && off >= segs[i] {
            off -= segs[i];
            i += 1;
        }
        (i, off)
    };
    let (mut li, mut lo) = locate(local, loff);
    let (mut ri, mut ro) = locate(remote, roff);
    // Every piece is posted at once (the plugin's RMA window bounds the bytes in flight
    // over all transfers), so no depth here.
    let all = na::ChunkConfig {
        size: chunk,
        depth: usize::MAX,
    };
    let mut plan = na::Chunker::new(len, all);
    let mut out = SmallVec::new();
    while let Some((_, mut left)) = plan.next_chunk() {
        while left > 0 {
            if li >= local.len() || ri >= remote.len() {
                return out;
            }
            let n = left.min(local[li] - lo).min(remote[ri] - ro);
            if n > 0 {
                out.push(Piece {
                    lseg: li,
                    loff: lo,
                    rseg: ri,
                    roff: ro,
                    len: n,
                });
            }
            left -= n;
            lo += n;
            ro += n;
            if lo == local[li] {
                li += 1;
                lo = 0;
            }
            if ro == remote[ri] {
                ri += 1;
                ro = 0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {

    proptest::proptest! {
        /// Any bytes: a bundle's parser answers, never panics, and what it yields lies
        /// within them; bundles made of any messages split back into them.
        #[test]
        fn bundles_of_any_bytes_parse_or_are_refused(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            msgs in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 1..50), 0..8),
        ) {
            if let Ok(parts) = unbundle(&raw) {
                proptest::prop_assert!(parts.iter().map(|p| p.len() + BUNDLED).sum::<usize>() == raw.len());
            }
            let mut b = Vec::new();
            for m in &msgs {
                bundle(&mut b, m);
            }
            let back: Vec<Vec<u8>> = unbundle(&b).unwrap().iter().map(|p| p.to_vec()).collect();
            proptest::prop_assert_eq!(back, msgs);
        }
    }

    #[test]
    fn bundles_split_into_their_messages_and_malformed_ones_are_refused() {
        let mut b = Vec::new();
        let msgs: [&[u8]; 3] = [b"one", &[7u8; 300], b"x"];
        for m in msgs {
            bundle(&mut b, m);
        }
        assert_eq!(unbundle(&b).unwrap(), msgs);
        assert_eq!(unbundle(&[]).unwrap(), Vec::<&[u8]>::new());
        assert!(unbundle(&b[..b.len() - 1]).is_err(), "truncated");
        assert!(unbundle(&b[..2]).is_err(), "a cut length");
        assert!(unbundle(&[0, 0, 0, 0]).is_err(), "an empty message");
        assert!(
            unbundle(&[0xff, 0xff, 0xff, 0xff, 1]).is_err(),
            "a length past the end"
        );
        let mut h = header(Kind::Bundle, 0, b"addr", b.len());
        h.extend_from_slice(&b);
        let p = parse(&h).unwrap();
        assert_eq!((p.kind, p.from), (Kind::Bundle, &b"addr"[..]));
        assert_eq!(unbundle(p.data).unwrap().len(), 3);
    }

    use super::*;

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        let h = header(Kind::Request, u64::MAX - 1, b"abc", 4);
        let mut m = h.clone();
        m.extend_from_slice(b"data");
        let want = Parsed {
            kind: Kind::Request,
            tag: u64::MAX - 1,
            from: &b"abc"[..],
            data: &b"data"[..],
        };
        assert_eq!(parse(&m).unwrap(), want);
        let z = [0u8; 8];
        let v = VERSION << 4;
        for bad in [
            &[][..],
            &[v, 1, 2, 3][..],
            &[[v | 9].as_slice(), &z, &[1, 0]].concat()[..],
            &[[v].as_slice(), &z].concat()[..],
            &[[v].as_slice(), &z, &[5, 1]].concat()[..],
            &[[v].as_slice(), &z, &[0]].concat()[..],
        ] {
            assert!(
                matches!(parse(bad), Err(NaError::PeerMisbehaved(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn messages_of_another_wire_version_are_refused_whole() {
        let mut m = header(Kind::Check, 7, b"abc", 33);
        m.extend_from_slice(
            &Check {
                op: 1,
                key: 2,
                off: 0,
                len: 8,
                write: true,
            }
            .encode(),
        );
        assert_eq!(m[0], VERSION << 4 | Kind::Check as u8);
        assert!(parse(&m).is_ok());
        // Version 0 (the releases before the version existed), 1 (before `Release`: its
        // owners would wait for releases that never come) and a later one alike.
        for version in [0u8, 1, VERSION + 1, 15] {
            m[0] = version << 4 | Kind::Check as u8;
            match parse(&m) {
                Err(NaError::Unsupported(why)) => {
                    assert!(why.contains(&format!("version {version}")), "{why}")
                }
                other => panic!("version {version}: {other:?}"),
            }
        }
    }

    #[test]
    fn releases_round_trip_and_ragged_ones_are_refused() {
        let mut m = header(Kind::Release, 0, b"abc", 16);
        encode_release(&mut m, &[7, u64::MAX]);
        let p = parse(&m).unwrap();
        assert_eq!(p.kind, Kind::Release);
        assert_eq!(
            decode_release(p.data).unwrap().collect::<Vec<_>>(),
            [7, u64::MAX]
        );
        for bad in [&[][..], &[1u8; 7][..], &[1u8; 9][..]] {
            assert!(decode_release(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn carries_round_trip_and_lies_are_refused() {
        let w = Check {
            op: 3,
            key: 9,
            off: 4096,
            len: 4,
            write: true,
        };
        let mut b = w.encode().to_vec();
        b.extend_from_slice(b"abcd");
        assert_eq!(decode_carry(&b).unwrap(), (w, &b"abcd"[..]));
        let r = Check { write: false, ..w };
        assert_eq!(decode_carry(&r.encode()).unwrap(), (r, &[][..]));
        for bad in [&b[..36], &b[..20], &[&r.encode()[..], b"x"].concat()[..]] {
            assert!(matches!(decode_carry(bad), Err(NaError::PeerMisbehaved(_))));
        }
        let carried = |op, ok, data: &[u8]| {
            let mut v = Vec::new();
            encode_carried(&mut v, op, |b| {
                b.extend_from_slice(data);
                ok
            });
            v
        };
        let a = carried(3, true, b"data");
        assert_eq!(decode_carried(&a).unwrap(), (3, true, &b"data"[..]));
        assert_eq!(
            decode_carried(&carried(4, false, b"dropped")).unwrap(),
            (4, false, &[][..])
        );
        for bad in [
            &a[..5],
            &[0u8; 9][..8],
            &[[0u8; 8].as_slice(), &[2]].concat()[..],
        ] {
            assert!(matches!(
                decode_carried(bad),
                Err(NaError::PeerMisbehaved(_))
            ));
        }
    }

    #[test]
    fn checks_and_grants_round_trip() {
        let c = Check {
            op: 7,
            key: u64::MAX,
            off: 3,
            len: 9,
            write: true,
        };
        assert_eq!(Check::decode(&c.encode()).unwrap(), c);
        assert!(Check::decode(&[0; 32]).is_err());
        assert_eq!(decode_grant(&encode_grant(5, false)).unwrap(), (5, false));
        assert!(decode_grant(&[0; 9][..8]).is_err());
    }

    #[test]
    fn segment_tables_round_trip() {
        let s = vec![
            RemoteSeg {
                base: 1,
                len: 2,
                key_delta: 0,
            },
            RemoteSeg {
                base: u64::MAX,
                len: 5,
                key_delta: 7,
            },
        ];
        assert_eq!(decode_segs(&encode_segs(&s)).unwrap().to_vec(), s);
        assert!(decode_segs(&[1, 2, 3]).is_err());
        assert!(decode_segs(&[]).is_err());
    }

    #[test]
    fn pieces_cover_the_range_once() {
        let local = [3u64, 1, 4096, 10];
        let remote = [4110u64];
        for (lo, ro, len) in [(0, 0, 4110), (1, 5, 4100), (3, 0, 1), (4099, 0, 11)] {
            let ps = pieces(&local, lo, &remote, ro, len, 1000);
            assert_eq!(ps.iter().map(|p| p.len).sum::<u64>(), len);
            assert!(
                ps.iter()
                    .all(|p| p.len <= 1000 && p.loff + p.len <= local[p.lseg])
            );
        }
        let ps = pieces(&[0, 5], 0, &[5, 0], 0, 5, 100);
        assert_eq!(
            ps.to_vec(),
            vec![Piece {
                lseg: 1,
                loff: 0,
                rseg: 0,
                roff: 0,
                len: 5
            }]
        );
    }
}
