//! What to do with an incoming request, decided from its bytes and what the engine knows
//! (which RPCs it serves, whether it stops), without I/O: the driver carries it out.

use super::{Header, MsgKind, Status};

/// What an incoming message asks of the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Answer `status` (with `why` as the body), unless the request was one-way, and
    /// count a bad request if `bad`.
    Refuse {
        /// The RPC the answer is for (0 if the header did not decode).
        rpc_id: u64,
        /// The caller awaits no answer (a one-way request): nothing is sent.
        one_way: bool,
        /// Why, for the caller.
        status: Status,
        /// Text for the caller.
        why: String,
        /// Whether the peer broke the protocol (counted in `bad_requests`).
        bad: bool,
    },
    /// An answer sent as a request: counted as bad and dropped (no answer to an answer).
    Drop,
    /// The caller has pulled the overflow answer with this release id.
    Release(u64),
    /// The real request is too large for a message: pull it, then decide again.
    Pull {
        /// No answer is awaited (a refusal goes nowhere either).
        one_way: bool,
    },
    /// Run the handler of `rpc_id`; `one_way`: its answer goes nowhere; `inline`: where it
    /// arrived (else on a worker).
    Run {
        /// The RPC.
        rpc_id: u64,
        /// No answer is awaited.
        one_way: bool,
        /// Registered to run where it is dispatched.
        inline: bool,
    },
}

/// Decides what `msg` asks. `served(rpc_id)` says whether a handler is registered and
/// whether it runs inline; `pulled`: `msg` is the body of an overflow request, pulled
/// already (its header may not ask for another pull); `stopping`: the engine refuses new
/// work.
pub fn classify(
    msg: &[u8],
    served: impl FnOnce(u64) -> Option<bool>,
    pulled: bool,
    stopping: bool,
) -> Verdict {
    let refuse = |rpc_id, one_way, status, why: &str, bad| Verdict::Refuse {
        rpc_id,
        one_way,
        status,
        why: why.to_owned(),
        bad,
    };
    let h = match Header::decode(msg) {
        Ok((h, _)) => h,
        Err(e) => return refuse(0, false, Status::BadHeader, &e.to_string(), true),
    };
    let one_way = match h.kind {
        MsgKind::Request => false,
        MsgKind::OneWay => true,
        MsgKind::Release if !pulled => return Verdict::Release(h.rpc_id),
        MsgKind::Release | MsgKind::Response => return Verdict::Drop,
    };
    if h.is_overflow() {
        if pulled {
            let why = "an overflow request's body is itself an overflow stub";
            return refuse(h.rpc_id, one_way, Status::BadInput, why, true);
        }
        return Verdict::Pull { one_way };
    }
    let Some(inline) = served(h.rpc_id) else {
        return refuse(h.rpc_id, one_way, Status::UnknownRpc, "", true);
    };
    if stopping {
        return refuse(h.rpc_id, one_way, Status::ShuttingDown, "", false);
    }
    Verdict::Run {
        rpc_id: h.rpc_id,
        one_way,
        inline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(h: Header) -> Vec<u8> {
        let mut m = Vec::new();
        h.write(&mut m);
        m.extend_from_slice(b"body");
        m
    }

    fn header(kind: MsgKind, rpc_id: u64) -> Header {
        Header {
            kind,
            status: Status::Ok,
            flags: 0,
            rpc_id,
        }
    }

    /// RPC 7 is served on a worker, 8 inline; nothing else.
    fn served(id: u64) -> Option<bool> {
        match id {
            7 => Some(false),
            8 => Some(true),
            _ => None,
        }
    }

    #[test]
    fn requests_run_where_they_are_registered_to() {
        let run = |kind, id| classify(&msg(header(kind, id)), served, false, false);
        assert_eq!(
            run(MsgKind::Request, 7),
            Verdict::Run {
                rpc_id: 7,
                one_way: false,
                inline: false
            }
        );
        assert_eq!(
            run(MsgKind::OneWay, 8),
            Verdict::Run {
                rpc_id: 8,
                one_way: true,
                inline: true
            }
        );
        // A pulled request runs like any other.
        let pulled = classify(&msg(header(MsgKind::Request, 7)), served, true, false);
        assert!(matches!(pulled, Verdict::Run { rpc_id: 7, .. }));
    }

    #[test]
    fn what_is_not_a_request_is_refused_dropped_or_released() {
        let bad = classify(b"not a header", served, false, false);
        assert!(matches!(
            bad,
            Verdict::Refuse {
                rpc_id: 0,
                status: Status::BadHeader,
                bad: true,
                ..
            }
        ));
        let unknown = classify(&msg(header(MsgKind::Request, 9)), served, false, false);
        assert!(matches!(
            unknown,
            Verdict::Refuse {
                rpc_id: 9,
                one_way: false,
                status: Status::UnknownRpc,
                bad: true,
                ..
            }
        ));
        let unknown = classify(&msg(header(MsgKind::OneWay, 9)), served, false, false);
        assert!(matches!(unknown, Verdict::Refuse { one_way: true, .. }));
        let answer = msg(header(MsgKind::Response, 7));
        assert_eq!(classify(&answer, served, false, false), Verdict::Drop);
        let release = msg(header(MsgKind::Release, 42));
        assert_eq!(
            classify(&release, served, false, false),
            Verdict::Release(42)
        );
        // Inside a pulled body a release means nothing.
        assert_eq!(classify(&release, served, true, false), Verdict::Drop);
    }

    #[test]
    fn overflow_is_pulled_once_and_stopping_refuses_work() {
        let stub = msg(header(MsgKind::Request, 7).overflow());
        assert_eq!(
            classify(&stub, served, false, false),
            Verdict::Pull { one_way: false }
        );
        assert!(matches!(
            classify(&stub, served, true, false),
            Verdict::Refuse {
                status: Status::BadInput,
                bad: true,
                ..
            }
        ));
        let req = msg(header(MsgKind::Request, 7));
        assert!(matches!(
            classify(&req, served, false, true),
            Verdict::Refuse {
                status: Status::ShuttingDown,
                bad: false,
                ..
            }
        ));
    }
}
