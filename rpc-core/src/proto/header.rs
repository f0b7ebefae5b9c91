//! The RPC header carried at the front of every message, and the answer's status.
//!
//! ```text
//! magic:u16 ("RQ") version:u8 kind:u8 status:u8 flags:u8 reserved:[u8;2] rpc_id:u64
//! ```
//! (little endian). A request's body is its rmp-encoded input; an answer's body is the
//! rmp-encoded output when the status is `Ok`, and a UTF-8 explanation otherwise.
//!
//! With [`FLAG_OVERFLOW`], the message was too large to send: the body is instead the
//! rmp-encoded [`bulk::Descriptor`] of the whole real message (header included), which the
//! receiver pulls; an answer's descriptor is followed by a release id that the caller sends
//! back in a [`MsgKind::Release`] message once it has pulled, so that the server can free it.

use crate::RpcError;

/// `"RQ"`.
pub const MAGIC: u16 = 0x5152;
/// The version of this header.
pub const VERSION: u8 = 1;
/// Encoded size of a header.
pub const HEADER_LEN: usize = 16;

/// The body is the descriptor of the real message, to be pulled.
pub const FLAG_OVERFLOW: u8 = 1;

/// What a message is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgKind {
    /// A request that expects an answer.
    Request = 1,
    /// A request that expects none.
    OneWay = 2,
    /// An answer.
    Response = 3,
    /// The caller has pulled an overflow answer; `rpc_id` holds the release id.
    Release = 4,
}

/// The outcome an answer reports.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The handler answered; the body is its output.
    Ok = 0,
    /// No handler is registered under the id.
    UnknownRpc = 1,
    /// The body did not decode as the handler's input type.
    BadInput = 2,
    /// The handler reported an error.
    HandlerError = 3,
    /// The handler panicked.
    HandlerPanicked = 4,
    /// The request's header was malformed.
    BadHeader = 5,
    /// The server's queue is full.
    Busy = 6,
    /// The handler's output does not fit in a message.
    OutputTooLarge = 7,
    /// The server is shutting down.
    ShuttingDown = 8,
}

impl Status {
    fn from_u8(b: u8) -> Option<Status> {
        use Status::*;
        [
            Ok,
            UnknownRpc,
            BadInput,
            HandlerError,
            HandlerPanicked,
            BadHeader,
            Busy,
            OutputTooLarge,
            ShuttingDown,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }
}

/// A malformed header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Fewer bytes than a header.
    #[error("message of {0} bytes is shorter than the RPC header")]
    Truncated(usize),
    /// Not our magic.
    #[error("bad RPC magic {0:#06x}")]
    BadMagic(u16),
    /// Another version.
    #[error("unsupported RPC header version {0}")]
    BadVersion(u8),
    /// Unknown kind.
    #[error("unknown message kind {0}")]
    BadKind(u8),
    /// Unknown status.
    #[error("unknown status {0}")]
    BadStatus(u8),
    /// Unknown flag bits.
    #[error("unknown flags {0:#04x}")]
    BadFlags(u8),
}

/// A decoded header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Request, one-way request or answer.
    pub kind: MsgKind,
    /// Answer status (`Ok` in requests).
    pub status: Status,
    /// `FLAG_OVERFLOW` or 0.
    pub flags: u8,
    /// The RPC id (the hash of its name).
    pub rpc_id: u64,
}

impl Header {
    /// A request header.
    pub fn request(rpc_id: u64, one_way: bool) -> Self {
        let kind = if one_way {
            MsgKind::OneWay
        } else {
            MsgKind::Request
        };
        Header {
            kind,
            status: Status::Ok,
            flags: 0,
            rpc_id,
        }
    }

    /// An answer header.
    pub fn response(rpc_id: u64, status: Status) -> Self {
        Header {
            kind: MsgKind::Response,
            status,
            flags: 0,
            rpc_id,
        }
    }

    /// The same header, marking an overflow message.
    pub fn overflow(self) -> Self {
        Header {
            flags: self.flags | FLAG_OVERFLOW,
            ..self
        }
    }

    /// Whether the body is the descriptor of the real message.
    pub fn is_overflow(&self) -> bool {
        self.flags & FLAG_OVERFLOW != 0
    }

    /// Appends the encoded header to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[
            VERSION,
            self.kind as u8,
            self.status as u8,
            self.flags,
            0,
            0,
        ]);
        out.extend_from_slice(&self.rpc_id.to_le_bytes());
    }

    /// Decodes the header at the front of `msg`, returning it and the body.
    pub fn decode(msg: &[u8]) -> Result<(Header, &[u8]), ProtoError> {
        if msg.len() < HEADER_LEN {
            return Err(ProtoError::Truncated(msg.len()));
        }
        let magic = u16::from_le_bytes([msg[0], msg[1]]);
        if magic != MAGIC {
            return Err(ProtoError::BadMagic(magic));
        }
        if msg[2] != VERSION {
            return Err(ProtoError::BadVersion(msg[2]));
        }
        let kind = match msg[3] {
            1 => MsgKind::Request,
            2 => MsgKind::OneWay,
            3 => MsgKind::Response,
            4 => MsgKind::Release,
            k => return Err(ProtoError::BadKind(k)),
        };
        let status = Status::from_u8(msg[4]).ok_or(ProtoError::BadStatus(msg[4]))?;
        let flags = msg[5];
        if flags & !FLAG_OVERFLOW != 0 {
            return Err(ProtoError::BadFlags(flags));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&msg[8..16]);
        Ok((
            Header {
                kind,
                status,
                flags,
                rpc_id: u64::from_le_bytes(id),
            },
            &msg[HEADER_LEN..],
        ))
    }
}

/// Interprets an answer: the output body on `Ok`, the caller's typed error otherwise.
pub fn decode_answer(msg: &[u8]) -> Result<&[u8], RpcError> {
    let (h, body) = Header::decode(msg).map_err(|e| RpcError::Protocol(e.to_string()))?;
    if h.kind != MsgKind::Response {
        return Err(RpcError::Protocol(format!(
            "expected an answer, got {:?}",
            h.kind
        )));
    }
    if h.is_overflow() {
        return Err(RpcError::Protocol(
            "overflow answer reached the caller unpulled".into(),
        ));
    }
    let text = || String::from_utf8_lossy(body).into_owned();
    Err(match h.status {
        Status::Ok => return Ok(body),
        Status::UnknownRpc => RpcError::UnknownRpc {
            rpc: String::new(),
            id: h.rpc_id,
        },
        Status::BadInput => RpcError::BadInput(text()),
        Status::HandlerError => RpcError::Handler(text()),
        Status::HandlerPanicked => RpcError::HandlerPanicked(text()),
        Status::BadHeader => RpcError::Protocol(format!("server rejected our header: {}", text())),
        Status::Busy => RpcError::Busy(text()),
        Status::OutputTooLarge => RpcError::OutputTooLarge(text()),
        Status::ShuttingDown => RpcError::Shutdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips() {
        for h in [
            Header::request(42, false),
            Header::request(7, true),
            Header::response(9, Status::Busy),
        ] {
            let mut v = h.clone_bytes();
            v.extend_from_slice(b"body");
            assert_eq!(Header::decode(&v).unwrap(), (h, &b"body"[..]));
        }
    }

    impl Header {
        fn clone_bytes(&self) -> Vec<u8> {
            let mut v = Vec::new();
            self.write(&mut v);
            v
        }
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let good = Header::request(1, false).clone_bytes();
        assert_eq!(Header::decode(&good[..15]), Err(ProtoError::Truncated(15)));
        let mut b = good.clone();
        b[0] = 0;
        assert!(matches!(Header::decode(&b), Err(ProtoError::BadMagic(_))));
        let mut b = good.clone();
        b[2] = 2;
        assert_eq!(Header::decode(&b), Err(ProtoError::BadVersion(2)));
        let mut b = good.clone();
        b[3] = 0;
        assert_eq!(Header::decode(&b), Err(ProtoError::BadKind(0)));
        let mut b = good.clone();
        b[4] = 200;
        assert_eq!(Header::decode(&b), Err(ProtoError::BadStatus(200)));
        let mut b = good;
        b[5] = 0x80;
        assert_eq!(Header::decode(&b), Err(ProtoError::BadFlags(0x80)));
    }

    #[test]
    fn answers_map_to_the_callers_errors() {
        let mut v = Header::response(5, Status::UnknownRpc).clone_bytes();
        assert_eq!(
            decode_answer(&v),
            Err(RpcError::UnknownRpc {
                rpc: String::new(),
                id: 5
            })
        );
        v = Header::response(5, Status::HandlerError).clone_bytes();
        v.extend_from_slice(b"disk full");
        assert_eq!(
            decode_answer(&v),
            Err(RpcError::Handler("disk full".into()))
        );
        v = Header::request(5, false).clone_bytes();
        assert!(matches!(decode_answer(&v), Err(RpcError::Protocol(_))));
    }

    proptest! {
        /// The header codec never panics, and what it accepts re-encodes to the same bytes.
        #[test]
        fn header_codec_fuzz(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((h, body)) = Header::decode(&bytes) {
                let mut again = h.clone_bytes();
                again.extend_from_slice(body);
                // Reserved bytes are ignored on decode and written as zero.
                prop_assert_eq!(&again[..6], &bytes[..6]);
                prop_assert_eq!(&again[8..], &bytes[8..]);
            }
            let _ = decode_answer(&bytes);
        }
    }
}
