//! The one error type of the NA contract, classified by whose fault it is.

use std::io;

/// Shorthand for results of NA operations.
pub type NaResult<T> = Result<T, NaError>;

/// Who or what caused an [`NaError`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The local caller misused the API (bad argument, bad address, unsupported request).
    Caller,
    /// The remote peer sent something malformed or refused a remote access.
    Peer,
    /// The network or the peer's process failed (unreachable, connection lost).
    Network,
    /// Local resources or the operating system failed.
    Local,
    /// Not a failure: the operation was canceled or ran out of time.
    None,
}

/// Every error an NA plugin reports.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NaError {
    /// An address string that does not parse, or that names another plugin.
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument outside what the operation accepts (bounds, sizes, unknown handle).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The operation or capability is not available on this plugin.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The peer sent a malformed frame or broke the protocol; its connection was closed.
    #[error("peer misbehaved: {0}")]
    PeerMisbehaved(String),
    /// The peer refused: a memory access (wrong key, out of bounds, access mode,
    /// deregistered region; remote memory was not touched), or the connection itself (a
    /// credential it does not accept, no descriptors left); the text says which.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The peer could not be reached.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The connection to the peer was lost while the operation was pending.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The operation did not complete in time.
    #[error("timed out")]
    TimedOut,
    /// The operation was canceled.
    #[error("canceled")]
    Canceled,
    /// A local resource ran out (queue full, too many registrations).
    #[error("resource exhausted: {0}")]
    Exhausted(String),
    /// An operating-system call failed.
    #[error("os error ({kind:?}): {msg}")]
    Os {
        /// The error kind.
        kind: io::ErrorKind,
        /// The error text.
        msg: String,
    },
}

impl NaError {
    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            NaError::InvalidAddress { .. }
            | NaError::InvalidArgument(_)
            | NaError::Unsupported(_) => Fault::Caller,
            NaError::PeerMisbehaved(_) | NaError::AccessDenied(_) => Fault::Peer,
            NaError::Unreachable(_) | NaError::Disconnected(_) => Fault::Network,
            NaError::Exhausted(_) | NaError::Os { .. } => Fault::Local,
            NaError::TimedOut | NaError::Canceled => Fault::None,
        }
    }
}

impl From<io::Error> for NaError {
    fn from(e: io::Error) -> Self {
        NaError::Os {
            kind: e.kind(),
            msg: e.to_string(),
        }
    }
}
