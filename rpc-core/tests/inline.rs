//! Handlers that run where their request is dispatched, and hand what would wait to a
//! worker (`register_responder_inline`, `Responder::defer`).

use std::time::Duration;

use rpc_core::{Engine, Rpc, RpcError};

/// Answers the name of the thread that answered; `true` defers to a worker first.
const WHERE: Rpc<bool, String> = Rpc::new("inline.where");
/// Defers a job that sleeps this many ms.
const SLOW: Rpc<u64, ()> = Rpc::new("inline.slow");
/// Defers a job that answers, then goes on working this many ms.
const LINGER: Rpc<u64, ()> = Rpc::new("inline.linger");
/// Defers a job that panics.
const PANICS: Rpc<(), ()> = Rpc::new("inline.panics");
/// Answers the name of the thread that answered, for an input of any size.
const BIG: Rpc<rpc_core::ByteBuf, String> = Rpc::new("inline.big");

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

fn server(b: rpc_core::EngineBuilder) -> Engine {
    let s = b.listen("tcp://127.0.0.1:0").build().unwrap();
    s.register_responder_inline(WHERE, |defer, r| match defer {
        false => r.respond(&thread_name()),
        true => r.defer(|r| r.respond(&thread_name())),
    })
    .unwrap();
    s.register_responder_inline(SLOW, |ms, r| {
        r.defer(move |r| {
            std::thread::sleep(Duration::from_millis(ms));
            r.respond(&())
        })
    })
    .unwrap();
    s.register_responder_inline(LINGER, |ms, r| {
        r.defer(move |r| {
            r.respond(&());
            std::thread::sleep(Duration::from_millis(ms));
        })
    })
    .unwrap();
    s.register_responder_inline(PANICS, |(), r| {
        r.defer(|_r| panic!("deferred job fell over"))
    })
    .unwrap();
    s.register_responder_inline(BIG, |_, r| r.respond(&thread_name()))
        .unwrap();
    s
}

fn client_of(s: &Engine) -> (Engine, rpc_core::Endpoint) {
    let c = Engine::new("tcp://127.0.0.1:0").unwrap();
    let p = c.lookup(&s.self_addr().to_string()).unwrap();
    (c, p)
}

#[test]
fn inline_handlers_answer_on_the_progress_thread_and_deferred_ones_on_a_worker() {
    let s = server(Engine::builder().workers(2));
    let (c, p) = client_of(&s);
    for _ in 0..20 {
        assert_eq!(c.call(&p, WHERE, &false).wait().unwrap(), "qs-progress");
        let worker = c.call(&p, WHERE, &true).wait().unwrap();
        assert!(worker.starts_with("qs-worker"), "{worker}");
    }
}

#[test]
fn an_inline_handler_does_not_wait_behind_busy_workers() {
    let s = server(Engine::builder().workers(1).max_stand_ins(0));
    let (c, p) = client_of(&s);
    let held = c.call(&p, SLOW, &1000);
    std::thread::sleep(Duration::from_millis(100));
    let t = std::time::Instant::now();
    assert_eq!(c.call(&p, WHERE, &false).wait().unwrap(), "qs-progress");
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "answered behind the busy worker: {:?}",
        t.elapsed()
    );
    assert_eq!(held.wait(), Ok(()));
}

/// A server with one worker, no stand-ins, and `places` queued requests per client.
fn one_worker(places: u64) -> Engine {
    server(
        Engine::builder()
            .workers(1)
            .max_stand_ins(0)
            .max_queued_per_peer(places),
    )
}

#[test]
fn deferred_jobs_keep_the_queue_bounds() {
    let s = one_worker(2);
    let (c, p) = client_of(&s);
    let held: Vec<_> = (0..2).map(|_| c.call(&p, SLOW, &300)).collect();
    std::thread::sleep(Duration::from_millis(100));
    assert!(matches!(
        c.call(&p, SLOW, &0).wait(),
        Err(RpcError::Busy(why)) if why.contains("this client")
    ));
    held.into_iter().for_each(|h| assert_eq!(h.wait(), Ok(())));
    assert_eq!(c.call(&p, SLOW, &0).wait(), Ok(()), "places given back");
}

#[test]
fn a_queue_place_goes_back_as_the_answer_leaves() {
    // One place per client, counted from the first request.
    let s = one_worker(1);
    let (c, p) = client_of(&s);
    assert_eq!(c.call(&p, LINGER, &300).wait(), Ok(()));
    // Called as soon as the answer is in, while that job still works: its place went
    // back with its answer, so this one waits for the worker instead of being refused.
    assert_eq!(c.call(&p, LINGER, &0).wait(), Ok(()));
}

#[test]
fn a_deferred_job_that_panics_answers_and_the_worker_goes_on() {
    let s = server(Engine::builder().workers(1));
    let (c, p) = client_of(&s);
    for _ in 0..3 {
        assert!(matches!(
            c.call(&p, PANICS, &()).wait(),
            Err(RpcError::HandlerPanicked(_))
        ));
    }
    let worker = c.call(&p, WHERE, &true).wait().unwrap();
    assert!(worker.starts_with("qs-worker"), "{worker}");
}

#[test]
fn a_pulled_request_runs_on_a_worker_even_if_its_handler_is_inline() {
    // (Its memory stays counted against the overflow budget until the handler is done,
    // which an inline handler that defers would end early.)
    let s = server(Engine::builder().workers(1));
    let (c, p) = client_of(&s);
    let small = rpc_core::ByteBuf::from(vec![1u8; 16]);
    assert_eq!(c.call(&p, BIG, &small).wait().unwrap(), "qs-progress");
    let big = rpc_core::ByteBuf::from(vec![1u8; 4 << 20]);
    let worker = c.call(&p, BIG, &big).wait().unwrap();
    assert!(worker.starts_with("qs-worker"), "{worker}");
}
