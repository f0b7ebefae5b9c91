//! A deregistered RPC is answered as by an engine that never had it, and may be
//! registered again.

use rpc_core::{Engine, Rpc, RpcError};

const PING: Rpc<u32, u32> = Rpc::new("deregister.ping");
const OTHER: Rpc<u32, u32> = Rpc::new("deregister.other");

#[test]
fn a_deregistered_rpc_is_unknown_to_callers_until_registered_again() {
    let server = Engine::new("tcp://127.0.0.1:0").unwrap();
    server.register_infallible(PING, |x| x + 1).unwrap();
    let client = Engine::new("tcp://127.0.0.1:0").unwrap();
    let to = client.lookup(&server.self_addr().to_string()).unwrap();
    assert_eq!(client.call(&to, PING, &1).wait(), Ok(2));

    assert!(!server.deregister(OTHER), "never registered");
    assert!(server.deregister(PING));
    assert!(!server.deregister(PING), "once");
    assert_eq!(
        client.call(&to, PING, &1).wait(),
        Err(RpcError::UnknownRpc {
            rpc: PING.name().into(),
            id: PING.id()
        })
    );
    server.register_infallible(PING, |x| x + 10).unwrap();
    assert_eq!(client.call(&to, PING, &1).wait(), Ok(11));
}
