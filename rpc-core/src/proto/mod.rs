//! The RPC wire protocol without I/O (after quinn-proto): the header codec, the status
//! codes an answer carries, the table of calls awaiting answers with their deadlines, what
//! the engine waits on (calls and transfers' chunk windows, see `flight`), the
//! overflow answers exposed for their callers, and the per-peer budgets of what peers may
//! hold.
//! Nothing here touches a socket, a thread or the clock: time comes in as arguments.

mod budget;
mod calls;
mod dispatch;
mod exposed;
mod flight;
mod header;

pub use budget::{Budget, Over};
pub use calls::CallTable;
pub use dispatch::{Verdict, classify};
pub use exposed::Exposed;
pub use flight::{Entry, Flight, Owner, Post, Route};
pub use header::{HEADER_LEN, Header, MsgKind, ProtoError, Status, decode_answer};

#[cfg(test)]
mod pair_tests;
