//! What a posted libfabric operation carries (its context, handed to libfabric as the
//! operation's `void *context` and returned with its completion), and the contexts kept
//! per thread for reuse.

use std::cell::RefCell;

use libfabric_sys as fi;
use na::PeerId;

/// What a posted libfabric operation is for; `fi` must stay first (libfabric's scratch).
#[repr(C)]
pub(crate) struct Ctx {
    fi: fi::fi_context2,
    pub(crate) what: What,
    /// The bytes sent, or the space received into.
    pub(crate) buf: Vec<u8>,
    /// Bytes sent after `buf` in the same message (`fi_sendv`: a request's payload behind
    /// its header, not copied to join it), or none.
    pub(crate) tail: Vec<u8>,
}

/// What a completion is for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum What {
    /// One receive of the unexpected pool (reposted after use).
    Pool,
    /// A message operation.
    Op(u64),
    /// A piece of a transfer, of this many bytes.
    Rma(u64, usize),
    /// A liveness probe to this peer.
    Ping(PeerId),
    /// A message nobody waits on (`Plugin::send_quiet`): its failure is the loss of this
    /// peer.
    Quiet(PeerId),
    /// A control message: a probe's answer, an RMA check or grant (its completion only
    /// gives the buffer back; a lost peer shows up through its operations and probes).
    Control,
}

impl What {
    /// The user operation a message operation is a part of.
    pub(crate) fn op(self) -> Option<u64> {
        match self {
            What::Op(id) => Some(id),
            _ => None,
        }
    }
}

/// Contexts kept for reuse, per thread, at most this many.
const SPARE_CTXS: usize = 64;

thread_local! {
    /// Spare contexts: every message, receive and RMA piece needs one, and a `malloc` and
    /// `free` each cost more than reusing one (callgrind of `qs-rate -c -t ofi+shm`).
    // Boxes, not contexts: what is reused is the allocation libfabric is handed.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Ctx>>> = const { RefCell::new(Vec::new()) };
}

impl Ctx {
    pub(crate) fn new(what: What, buf: Vec<u8>) -> *mut Ctx {
        let ctx = Ctx {
            fi: fi::fi_context2::default(),
            what,
            buf,
            tail: Vec::new(),
        };
        let spare = SPARE
            .try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
            .ok()
            .flatten();
        match spare {
            Some(mut b) => {
                *b = ctx;
                Box::into_raw(b)
            }
            None => Box::into_raw(Box::new(ctx)),
        }
    }

    /// Keeps a finished context (libfabric done with it, its buffer taken) for this
    /// thread's next [`Ctx::new`].
    pub(crate) fn recycle(mut b: Box<Ctx>) {
        b.buf = Vec::new();
        b.tail = Vec::new();
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut()
                && s.len() < SPARE_CTXS
            {
                s.push(b);
            }
        });
    }
}
