//! The callers of an engine that serves nothing sleep in the transport's poll themselves
//! (one at a time; the others on their slots, their answers completed by its passes; the
//! progress thread stands aside and takes the poll back when the holder leaves while
//! others wait). Several threads and a future calling through one such engine at once
//! each get their own answers, over each transport, with and without a spin window.

use std::time::Duration;

use qs_tests::block_on;
use rpc_core::{Engine, Rpc};

const TWICE: Rpc<u64, u64> = Rpc::new("poll.twice");

fn round(transport: &str, spin: Duration) {
    let server = Engine::new(transport).unwrap();
    server.register_infallible(TWICE, |x: u64| x * 2).unwrap();
    let client = Engine::builder()
        .listen(transport)
        .spin_window(spin)
        .build()
        .unwrap();
    let to = client.lookup(&server.self_addr().to_string()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (client, to) = (&client, &to);
            s.spawn(move || {
                for i in 0..300 {
                    let x = t * 1000 + i;
                    assert_eq!(client.call(to, TWICE, &x).wait().unwrap(), 2 * x);
                }
            });
        }
        let (client, to) = (&client, &to);
        s.spawn(move || {
            for i in 0..300u64 {
                assert_eq!(
                    block_on(client.call(to, TWICE, &(i + 7))).unwrap(),
                    2 * (i + 7)
                );
            }
        });
    });
    // Then one caller alone, the progress thread having stood aside for the others.
    for i in 0..100u64 {
        assert_eq!(client.call(&to, TWICE, &i).wait().unwrap(), 2 * i);
    }
}

#[test]
fn callers_sleeping_in_the_poll_get_their_own_answers_over_sm() {
    round("sm", Duration::ZERO);
    round("sm", Duration::from_micros(200));
}

#[test]
fn callers_sleeping_in_the_poll_get_their_own_answers_over_tcp() {
    round("tcp://127.0.0.1:0", Duration::ZERO);
    round("tcp://127.0.0.1:0", Duration::from_micros(200));
}
