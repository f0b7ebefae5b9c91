//! What one peer may hold of a server is bounded before it is allocated, and what it
//! leaves behind is freed on time.

use std::time::{Duration, Instant};

use rpc_core::{Engine, Rpc, RpcError};
use serde_bytes::ByteBuf;

const SLOW: Rpc<u64, ()> = Rpc::new("bounds.slow");
const ECHO: Rpc<ByteBuf, usize> = Rpc::new("bounds.echo");
const BIG: Rpc<(u64, u64), ByteBuf> = Rpc::new("bounds.big");

fn server(b: rpc_core::EngineBuilder) -> Engine {
    let s = b.listen("tcp://127.0.0.1:0").build().unwrap();
    s.register(SLOW, |ms| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(())
    })
    .unwrap();
    s.register(ECHO, |b: ByteBuf| Ok::<_, String>(b.len()))
        .unwrap();
    s.register(BIG, |(len, ms)| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(ByteBuf::from(vec![7u8; len as usize]))
    })
    .unwrap();
    s
}

#[test]
fn one_peer_cannot_take_the_whole_queue() {
    let s = server(Engine::builder().workers(1).max_queued_per_peer(2));
    let (greedy, fair) = (
        Engine::new("tcp://127.0.0.1:0").unwrap(),
        Engine::new("tcp://127.0.0.1:0").unwrap(),
    );
    let addr = s.self_addr().to_string();
    let (g, f) = (greedy.lookup(&addr).unwrap(), fair.lookup(&addr).unwrap());
    let held: Vec<_> = (0..2).map(|_| greedy.call(&g, SLOW, &200)).collect();
    std::thread::sleep(Duration::from_millis(50));
    assert!(matches!(
        greedy.call(&g, SLOW, &0).wait(),
        Err(RpcError::Busy(why)) if why.contains("this client")
    ));
    // Another peer is queued, not refused.
    assert_eq!(fair.call(&f, SLOW, &0).wait(), Ok(()));
    held.into_iter().for_each(|c| assert_eq!(c.wait(), Ok(())));
}

#[test]
fn overflow_past_the_budget_is_refused_before_allocation() {
    let s = server(Engine::builder().overflow_budget(1 << 20, 4 << 20));
    let c = Engine::new("tcp://127.0.0.1:0").unwrap();
    let p = c.lookup(&s.self_addr().to_string()).unwrap();
    let small = ByteBuf::from(vec![1u8; 512 << 10]);
    assert_eq!(c.call(&p, ECHO, &small).wait(), Ok(512 << 10));
    let large = ByteBuf::from(vec![1u8; 2 << 20]);
    assert!(matches!(
        c.call(&p, ECHO, &large).wait(),
        Err(RpcError::Busy(why)) if why.contains("this client")
    ));
    // An answer past the budget was made already: not `Busy` (trying again would run the
    // handler twice), but a failed call.
    assert!(matches!(
        c.call(&p, BIG, &(2 << 20, 0)).wait(),
        Err(RpcError::OutputTooLarge(why)) if why.contains("made and dropped")
    ));
    assert_eq!(
        c.call(&p, BIG, &(900 << 10, 0)).wait().unwrap().len(),
        900 << 10
    );
    assert_eq!(
        c.call(&p, ECHO, &small).wait(),
        Ok(512 << 10),
        "budget given back"
    );
}

#[test]
fn an_answer_never_pulled_is_freed_at_its_deadline_without_other_traffic() {
    let s = server(Engine::builder().timeout(Some(Duration::from_millis(300))));
    // The caller gives up before the answer comes, so nobody pulls it.
    let c = Engine::builder()
        .listen("tcp://127.0.0.1:0")
        .timeout(Some(Duration::from_millis(20)))
        .build()
        .unwrap();
    let p = c.lookup(&s.self_addr().to_string()).unwrap();
    assert!(matches!(
        c.call(&p, BIG, &(4 << 20, 100)).wait(),
        Err(RpcError::Timeout { .. })
    ));
    let until = Instant::now() + Duration::from_secs(2);
    while s.counters().answers_exposed == 0 {
        assert!(Instant::now() < until, "the answer was never exposed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let exposed_at = Instant::now();
    while s.counters().answers_exposed > 0 {
        assert!(
            exposed_at.elapsed() < Duration::from_secs(2),
            "the unpulled answer is still held"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(exposed_at.elapsed() < Duration::from_millis(600));
}

#[test]
fn a_handler_at_its_own_bound_answers_busy() {
    const GATE: Rpc<u64, u64> = Rpc::new("bounds.gate");
    let s = Engine::new("tcp://127.0.0.1:0").unwrap();
    s.register_responder(GATE, |n, r: rpc_core::Responder<u64>| {
        if n > 1 {
            r.busy(format_args!("{n} is past the gate"));
        } else {
            r.respond(&n);
        }
    })
    .unwrap();
    let c = Engine::new("tcp://127.0.0.1:0").unwrap();
    let p = c.lookup(&s.self_addr().to_string()).unwrap();
    assert_eq!(c.call(&p, GATE, &1).wait(), Ok(1));
    assert_eq!(
        c.call(&p, GATE, &7).wait(),
        Err(RpcError::Busy("7 is past the gate".into())),
        "the caller sees the transport's Busy, with the handler's reason"
    );
}
