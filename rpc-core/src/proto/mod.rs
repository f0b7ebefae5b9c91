//! The RPC wire protocol without I/O (after quinn-proto): the header codec, the status
//! codes an answer carries, the table of calls awaiting answers with their deadlines, the
//! overflow answers exposed for their callers, and the per-peer budgets of what peers may
//! hold.
//! Nothing here touches a socket, a thread or the clock: time comes in as arguments.

mod budget;
mod calls;
mod exposed;
mod header;

pub use budget::{Budget, Over};
pub use calls::{CallTable, Phase};
pub use exposed::Exposed;
pub use header::{HEADER_LEN, Header, MsgKind, ProtoError, Status, decode_answer};

#[cfg(test)]
mod pair_tests;
