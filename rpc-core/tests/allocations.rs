//! What a small RPC allocates, counted: both engines in this thread with manual progress,
//! the allocations this thread makes over a run of calls (other threads' are not counted).
//! Messages and arrivals reuse the thread's buffers (`na::buf`); what remains is the call's
//! completion slot. A change that allocates per message again fails this.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use rpc_core::{Engine, ProgressMode, Rpc};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the count is a const-initialized thread-local
// `Cell` (no allocation, no destructor), and `try_with` fails quietly during teardown.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as the caller's contract.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as the caller's contract.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as the caller's contract.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SUM: Rpc<(u64, u64), u64> = Rpc::new("sum");

fn per_rpc(transport: &str) -> f64 {
    let engine = || {
        Engine::builder()
            .listen(transport)
            .progress_mode(ProgressMode::Manual)
            .workers(0)
            .build()
            .unwrap()
    };
    let (server, client) = (engine(), engine());
    server.register_infallible(SUM, |(a, b)| a + b).unwrap();
    let peer = client.lookup(&server.self_addr().to_string()).unwrap();
    let run = |n: u64| {
        for i in 0..n {
            let call = client.call(&peer, SUM, &(i, 1));
            while !call.is_done() {
                for e in [&server, &client] {
                    e.progress(Some(Duration::ZERO)).unwrap();
                    e.trigger();
                }
            }
            assert_eq!(call.wait().unwrap(), i + 1);
        }
    };
    run(200);
    let before = ALLOCS.with(Cell::get);
    run(1000);
    (ALLOCS.with(Cell::get) - before) as f64 / 1000.0
}

#[test]
fn a_small_rpc_allocates_its_completion_slot_and_little_else() {
    for t in ["sm", "tcp"] {
        let n = per_rpc(t);
        assert!(n <= 1.5, "{t}: {n} allocations per RPC");
    }
}
