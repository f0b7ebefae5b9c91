//! A test client: `qs-test-client SERVER_ADDRESS CALLS IN_FLIGHT`. Its own transport comes
//! from `RPC_TRANSPORT` only. Calls `sum` and `echo` alternately, checks every answer, and
//! prints `OK <calls>`; exits non-zero on the first wrong or failed answer.

use std::collections::VecDeque;
use std::process::ExitCode;

use qs_tests::rpcs::{ECHO, SUM};
use rpc_core::Engine;
use serde_bytes::ByteBuf;

fn main() -> ExitCode {
    qs_tests::init_logging();
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(calls), Some(window)) = (
        args.get(1),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
        args.get(3).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: qs-test-client SERVER_ADDRESS CALLS IN_FLIGHT");
        return ExitCode::from(2);
    };
    match run(addr, calls, window) {
        Ok(()) => {
            println!("OK {calls}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qs-test-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(addr: &str, calls: u64, window: usize) -> Result<(), String> {
    let e = Engine::from_env().map_err(|e| e.to_string())?;
    let peer = e.lookup(addr).map_err(|e| e.to_string())?;
    let mut sums = VecDeque::new();
    let mut echoes = VecDeque::new();
    let check = |sums: &mut VecDeque<_>, echoes: &mut VecDeque<_>| -> Result<(), String> {
        if let Some((i, c)) = sums.pop_front() {
            let c: rpc_core::Call<u64> = c;
            let got = c.wait().map_err(|e| format!("sum {i}: {e}"))?;
            if got != i + 1000 {
                return Err(format!("sum {i}: got {got}"));
            }
        }
        if let Some((i, c)) = echoes.pop_front() {
            let c: rpc_core::Call<ByteBuf> = c;
            let got = c.wait().map_err(|e| format!("echo {i}: {e}"))?;
            if got.as_ref() != payload(i).as_slice() {
                return Err(format!("echo {i}: wrong bytes"));
            }
        }
        Ok(())
    };
    for i in 0..calls {
        if i % 2 == 0 {
            sums.push_back((i, e.call(&peer, SUM, &(i, 1000))));
        } else {
            echoes.push_back((i, e.call(&peer, ECHO, &ByteBuf::from(payload(i)))));
        }
        if sums.len() + echoes.len() >= window {
            check(&mut sums, &mut echoes)?;
        }
    }
    while !sums.is_empty() || !echoes.is_empty() {
        check(&mut sums, &mut echoes)?;
    }
    Ok(())
}

fn payload(i: u64) -> Vec<u8> {
    (0..(i % 97) as u8).map(|b| b ^ (i as u8)).collect()
}
