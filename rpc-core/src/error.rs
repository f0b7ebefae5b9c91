//! The errors a caller or a registrant sees, classified by whose fault they are.

use na::{Fault, NaError};

/// An RPC failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// A bad address or argument from the caller.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The encoded input is larger than a message can carry.
    #[error("encoded input of {size} bytes exceeds the eager limit of {limit} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Largest payload accepted.
        limit: usize,
    },
    /// The input could not be encoded.
    #[error("cannot encode input: {0}")]
    Encode(String),
    /// An RPC with this name is already registered.
    #[error("RPC {0:?} is already registered")]
    AlreadyRegistered(String),
    /// Two different names hash to the same id.
    #[error("RPC {name:?} has id {id:#x}, already taken by {other:?}")]
    IdCollision {
        /// The new name.
        name: String,
        /// The registered name.
        other: String,
        /// The id.
        id: u64,
    },
    /// The server has no handler for the RPC.
    #[error("server has no RPC {rpc:?} (id {id:#x})")]
    UnknownRpc {
        /// The RPC's name, as the caller knows it (empty where unknown).
        rpc: String,
        /// Its id.
        id: u64,
    },
    /// The server could not decode the input as its handler's input type.
    #[error("server could not decode the input: {0}")]
    BadInput(String),
    /// The handler returned an error.
    #[error("handler failed: {0}")]
    Handler(String),
    /// The handler panicked.
    #[error("handler panicked: {0}")]
    HandlerPanicked(String),
    /// The handler's output does not fit in a message.
    #[error("handler output too large: {0}")]
    OutputTooLarge(String),
    /// The server refused the request because its queue is full.
    #[error("server busy: {0}")]
    Busy(String),
    /// The answer was malformed, or the peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The answer did not decode as the output type.
    #[error("cannot decode output: {0}")]
    Decode(String),
    /// The call did not complete within its timeout.
    #[error("{}", timed_out(.rpc, .peer))]
    Timeout {
        /// The RPC (or "bulk transfer"); empty where unknown.
        rpc: String,
        /// The peer's address; empty where unknown.
        peer: String,
    },
    /// The call was canceled.
    #[error("canceled")]
    Canceled,
    /// The engine (local or remote) is shutting down.
    #[error("engine shutting down")]
    Shutdown,
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] NaError),
}

fn timed_out(rpc: &str, peer: &str) -> String {
    match (rpc, peer) {
        ("", "") => "timed out".into(),
        (r, "") => format!("{r} timed out"),
        (r, p) => format!("{r} to {p} timed out"),
    }
}

impl RpcError {
    /// A timeout not yet named (the engine's internal form).
    pub(crate) fn timeout() -> RpcError {
        RpcError::Timeout {
            rpc: String::new(),
            peer: String::new(),
        }
    }

    /// Names the call an error came from: the RPC and the peer where the error lacks them,
    /// and the expected type for an answer that did not decode.
    pub(crate) fn in_call(self, rpc: &str, peer: &na::Address, out_type: &str) -> RpcError {
        match self {
            RpcError::Timeout { rpc: r, peer: p } if r.is_empty() && p.is_empty() => {
                RpcError::Timeout {
                    rpc: rpc.into(),
                    peer: peer.to_string(),
                }
            }
            RpcError::UnknownRpc { rpc: r, id } if r.is_empty() => RpcError::UnknownRpc {
                rpc: rpc.into(),
                id,
            },
            RpcError::Decode(why) => {
                RpcError::Decode(format!("answer of {rpc} from {peer} as {out_type}: {why}"))
            }
            e => e,
        }
    }
}

impl From<bulk::BulkError> for RpcError {
    fn from(e: bulk::BulkError) -> Self {
        match e {
            bulk::BulkError::Transport(e) => RpcError::Transport(e),
            other => RpcError::InvalidArgument(other.to_string()),
        }
    }
}

impl RpcError {
    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        use RpcError::*;
        match self {
            InvalidArgument(_)
            | TooLarge { .. }
            | Encode(_)
            | AlreadyRegistered(_)
            | IdCollision { .. } => Fault::Caller,
            UnknownRpc { .. } | BadInput(_) | Decode(_) => Fault::Caller,
            Handler(_) | HandlerPanicked(_) | OutputTooLarge(_) | Protocol(_) => Fault::Peer,
            Busy(_) => Fault::Local,
            Timeout { .. } | Canceled | Shutdown => Fault::None,
            Transport(e) => e.fault(),
        }
    }
}
