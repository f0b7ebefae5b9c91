//! Conveniences for servers: handlers that cannot fail, and serving until a signal.

use serde::Serialize;
use serde::de::DeserializeOwned;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::engine::Engine;
use crate::mode::ProgressMode;
use crate::{Responder, Rpc, RpcError};

impl Engine {
    /// Registers a handler that cannot fail: it returns the output itself.
    ///
    /// ```
    /// # use rpc_core::{Engine, Rpc};
    /// const SUM: Rpc<(u64, u64), u64> = Rpc::new("sum");
    /// let server = Engine::new("tcp://127.0.0.1:0")?;
    /// server.register_infallible(SUM, |(a, b)| a + b)?;
    /// # Ok::<(), rpc_core::RpcError>(())
    /// ```
    pub fn register_infallible<In, Out, F>(&self, rpc: Rpc<In, Out>, f: F) -> Result<(), RpcError>
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        F: Fn(In) -> Out + Send + Sync + 'static,
    {
        self.register_responder(rpc, move |input: In, r: Responder<Out>| {
            r.respond(&f(input))
        })
    }

    /// Serves until the process receives SIGINT or SIGTERM, and returns which. With a
    /// progress thread the calling thread just waits; in the manual and busy modes it
    /// drives progress itself meanwhile. The signals are caught for the whole process
    /// from the first call on (no library thread can be killed by them instead).
    ///
    /// The first call replaces handlers that were installed for the two signals before
    /// (signal-hook would run them after its own): a library loaded with the transport may
    /// have one that ends the process. libinfinipath, which libfabric pulls in, installs
    /// one at load that exits with status 1, so that over an `ofi` build a SIGTERM ended
    /// an I/O node without its flush.
    pub fn serve_until_signal(&self) -> Result<i32, RpcError> {
        static FIRST: std::sync::Once = std::sync::Once::new();
        FIRST.call_once(|| {
            for sig in [SIGINT, SIGTERM] {
                // SAFETY: sets a signal's disposition to the default, before any handler
                // of this crate is installed for it.
                unsafe { libc::signal(sig, libc::SIG_DFL) };
            }
        });
        let mut signals = Signals::new([SIGINT, SIGTERM])
            .map_err(|e| RpcError::InvalidArgument(format!("cannot catch signals: {e}")))?;
        if self.shared.mode == ProgressMode::Thread {
            return Ok(signals.forever().next().unwrap_or(SIGTERM));
        }
        loop {
            if let Some(sig) = signals.pending().next() {
                return Ok(sig);
            }
            self.progress(Some(std::time::Duration::from_millis(50)))?;
            self.trigger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn serves_calls_until_a_signal() {
        const ADD: Rpc<(u64, u64), u64> = Rpc::new("serve.add");
        let server = Engine::new("tcp://127.0.0.1:0").unwrap();
        server.register_infallible(ADD, |(a, b)| a + b).unwrap();
        let addr = server.self_addr().to_string();
        let client = std::thread::spawn(move || {
            let c = Engine::new("tcp://127.0.0.1:0").unwrap();
            let p = c.lookup(&addr).unwrap();
            let r = c.call(&p, ADD, &(2, 3)).wait();
            std::thread::sleep(Duration::from_millis(50));
            signal_hook::low_level::raise(SIGTERM).unwrap();
            r
        });
        assert_eq!(server.serve_until_signal(), Ok(SIGTERM));
        assert_eq!(client.join().unwrap(), Ok(5));
    }
}
