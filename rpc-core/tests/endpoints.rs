//! An endpoint keeps the transport's peer its engine resolved, so that a call does not
//! look the address up again. Peers are numbered per engine: an endpoint used with
//! another engine must reach the address it names, not whatever that engine numbered
//! alike.

use rpc_core::{Engine, Rpc};

const WHO: Rpc<(), String> = Rpc::new("endpoints.who");

fn server(name: &'static str) -> Engine {
    let e = Engine::new("tcp://127.0.0.1:0").unwrap();
    e.register_infallible(WHO, move |()| name.to_string())
        .unwrap();
    e
}

#[test]
fn an_endpoint_used_with_another_engine_reaches_its_own_address() {
    let (s1, s2) = (server("one"), server("two"));
    let (a, b) = (
        Engine::new("tcp://127.0.0.1:0").unwrap(),
        Engine::new("tcp://127.0.0.1:0").unwrap(),
    );
    // Each client's first connection: the same peer number in each engine.
    let one_via_a = a.lookup(&s1.self_addr().to_string()).unwrap();
    let two_via_b = b.lookup(&s2.self_addr().to_string()).unwrap();
    assert_eq!(b.call(&two_via_b, WHO, &()).wait().unwrap(), "two");
    assert_eq!(a.call(&one_via_a, WHO, &()).wait().unwrap(), "one");
    // `b` calls with the endpoint `a` resolved: it goes to server one.
    assert_eq!(b.call(&one_via_a, WHO, &()).wait().unwrap(), "one");
    assert_eq!(one_via_a, b.lookup(&s1.self_addr().to_string()).unwrap());
}

#[test]
fn an_endpoint_of_an_engine_itself_calls_it_locally_from_that_engine_only() {
    let (s1, s2) = (server("one"), server("two"));
    let me = s1.lookup(&s1.self_addr().to_string()).unwrap();
    assert_eq!(s1.call(&me, WHO, &()).wait().unwrap(), "one");
    // Another engine calls it over the transport, still reaching server one.
    assert_eq!(s2.call(&me, WHO, &()).wait().unwrap(), "one");
    assert_eq!(s1.counters().rpcs_received, 2);
}
