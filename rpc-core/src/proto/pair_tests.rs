//! Two endpoints driven in memory with virtual time: a client's call table and a server
//! that answers by the protocol, exchanging messages through queues we control (delay,
//! reorder, drop). Deterministic: no sockets, threads or clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;
use crate::RpcError;

/// A server that answers `double` (id 1) and knows nothing else.
fn serve(req: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match Header::decode(req) {
        Ok((h, body)) if h.rpc_id == 1 => match rmp_serde::from_slice::<u32>(body) {
            Ok(x) => {
                Header::response(1, Status::Ok).write(&mut out);
                out.extend(rmp_serde::to_vec(&(x * 2)).unwrap());
            }
            Err(e) => {
                Header::response(1, Status::BadInput).write(&mut out);
                out.extend(e.to_string().bytes());
            }
        },
        Ok((h, _)) => Header::response(h.rpc_id, Status::UnknownRpc).write(&mut out),
        Err(e) => {
            Header::response(0, Status::BadHeader).write(&mut out);
            out.extend(e.to_string().bytes());
        }
    }
    out
}

struct Pair {
    now: Instant,
    calls: CallTable<&'static str>,
    wire: VecDeque<(u64, Vec<u8>)>,
    results: Vec<(&'static str, Result<Vec<u8>, RpcError>)>,
}

impl Pair {
    fn new() -> Self {
        Pair {
            now: Instant::now(),
            calls: CallTable::default(),
            wire: VecDeque::new(),
            results: Vec::new(),
        }
    }

    fn call(&mut self, name: &'static str, id: u64, body: &[u8], timeout: u64) -> u64 {
        let tag = self
            .calls
            .insert(self.now, Some(Duration::from_millis(timeout)), name);
        let mut req = Vec::new();
        Header::request(id, false).write(&mut req);
        req.extend_from_slice(body);
        self.wire.push_back((tag, serve(&req)));
        tag
    }

    fn deliver_one(&mut self) {
        if let Some((tag, answer)) = self.wire.pop_front() {
            // A late answer finds no call and is dropped.
            if let Some(name) = self.calls.finish(tag) {
                self.results
                    .push((name, decode_answer(&answer).map(<[u8]>::to_vec)));
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        for (_, name) in self.calls.expire(self.now) {
            self.results.push((name, Err(RpcError::timeout())));
        }
    }
}

#[test]
fn answers_reach_their_callers_in_any_order() {
    let mut p = Pair::new();
    p.call("a", 1, &rmp_serde::to_vec(&21u32).unwrap(), 100);
    p.call("b", 1, &rmp_serde::to_vec(&5u32).unwrap(), 100);
    p.wire.swap(0, 1);
    p.deliver_one();
    p.deliver_one();
    let out: Vec<_> = p
        .results
        .iter()
        .map(|(n, r)| {
            (
                *n,
                rmp_serde::from_slice::<u32>(r.as_ref().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(out, [("b", 10), ("a", 42)]);
    assert!(p.calls.is_empty());
}

#[test]
fn a_late_answer_is_dropped_after_the_timeout() {
    let mut p = Pair::new();
    p.call("slow", 1, &rmp_serde::to_vec(&1u32).unwrap(), 50);
    p.advance(49);
    assert!(p.results.is_empty());
    p.advance(1);
    p.deliver_one();
    assert_eq!(p.results, vec![("slow", Err(RpcError::timeout()))]);
    assert!(p.calls.is_empty());
}

#[test]
fn unknown_ids_and_bad_input_come_back_typed() {
    let mut p = Pair::new();
    p.call("unknown", 99, &[], 100);
    p.call("bad", 1, b"\xc1", 100);
    p.deliver_one();
    p.deliver_one();
    assert_eq!(
        p.results[0],
        (
            "unknown",
            Err(RpcError::UnknownRpc {
                rpc: String::new(),
                id: 99
            })
        )
    );
    assert!(matches!(p.results[1], ("bad", Err(RpcError::BadInput(_)))));
}
