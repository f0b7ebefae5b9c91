//! What a handler reaches beyond its answer: the engine that received the request, and
//! bulk transfers with the caller over the connection the request came on.

use bulk::{Bulk, Descriptor};
use na::PeerId;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::call::Transfer;
use crate::engine::Engine;
use crate::handler::Responder;
use crate::{Rpc, RpcError};

impl Engine {
    /// Registers a handler that moves bulk data with its caller: as [`Engine::register`],
    /// with the [`Caller`] through which transfers go over the request's own connection
    /// (see [`Engine::pull`] for why a handler should not follow a descriptor's address).
    pub fn register_with_caller<In, Out, E, F>(
        &self,
        rpc: Rpc<In, Out>,
        f: F,
    ) -> Result<(), RpcError>
    where
        In: DeserializeOwned + 'static,
        Out: Serialize + 'static,
        E: std::fmt::Display,
        F: Fn(In, &Caller) -> Result<Out, E> + Send + Sync + 'static,
    {
        self.register_responder(rpc, move |input, r: Responder<Out>| {
            match f(input, &r.caller()) {
                Ok(out) => r.respond(&out),
                Err(e) => r.fail(e),
            }
        })
    }
}

impl<Out: Serialize> Responder<Out> {
    /// A non-owning handle on the engine that received the request, for handlers that
    /// pull or push bulk data, or call other servers, before answering.
    pub fn engine(&self) -> Engine {
        Engine::non_owning(self.shared.clone())
    }

    /// The caller's side of bulk transfers: data moves only over the connection the
    /// request came on.
    pub fn caller(&self) -> Caller {
        Caller {
            engine: self.engine(),
            peer: self.peer(),
        }
    }
}

/// Bulk transfers with the process that made a request, over the connection it came on,
/// whatever address a descriptor names: a caller cannot make a server reach a third party,
/// nor can another process answer in its place. From [`Responder::caller`].
#[derive(Clone)]
pub struct Caller {
    pub(crate) engine: Engine,
    pub(crate) peer: Option<PeerId>,
}

impl Caller {
    /// Pulls from the caller's `remote` region (as [`Engine::pull`] does from the
    /// descriptor's owner; for a call to oneself, the owner).
    pub fn pull<'b>(
        &self,
        local: &'b mut Bulk<'_>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) -> Transfer<'b> {
        self.engine
            .pull_via(self.peer, local, local_off, remote, remote_off, len)
    }

    /// Pushes into the caller's `remote` region (see [`Caller::pull`]).
    pub fn push<'b>(
        &self,
        local: &'b Bulk<'_>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) -> Transfer<'b> {
        self.engine
            .transfer(self.peer, false, local, local_off, remote, remote_off, len)
    }

    /// The engine, to expose memory for the transfers.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Transfers with the caller started together: their requests leave in as few
    /// writes as the transport can, so that many small ones cost the peer and the
    /// network one round of work instead of one each (`qs-bw`'s 64 transfers of 4 KiB).
    ///
    /// ```no_run
    /// # fn f(caller: &rpc_core::Caller, bufs: &mut [rpc_core::Bulk<'static>],
    /// #      d: &rpc_core::Descriptor) -> Result<(), rpc_core::RpcError> {
    /// let mut batch = caller.batch();
    /// for b in bufs.iter_mut() {
    ///     batch.pull(b, 0, d, 0, 4096);
    /// }
    /// for t in batch.start() {
    ///     t.wait()?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn batch(&self) -> Batch<'_> {
        if let Some(p) = self.peer {
            self.engine.shared.plugin.hold(p, true);
        }
        Batch {
            caller: self,
            transfers: Vec::new(),
        }
    }
}

/// Transfers with a caller posted together ([`Caller::batch`]). Nothing is waited for
/// until [`Batch::start`] (or drop) lets their requests go.
pub struct Batch<'b> {
    caller: &'b Caller,
    transfers: Vec<Transfer<'b>>,
}

impl<'b> Batch<'b> {
    /// Adds a pull (as [`Caller::pull`]).
    pub fn pull(
        &mut self,
        local: &'b mut Bulk<'_>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) {
        let t = self.caller.pull(local, local_off, remote, remote_off, len);
        self.transfers.push(t);
    }

    /// Adds a push (as [`Caller::push`]).
    pub fn push(
        &mut self,
        local: &'b Bulk<'_>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) {
        let t = self.caller.push(local, local_off, remote, remote_off, len);
        self.transfers.push(t);
    }

    /// Lets the requests go; the transfers, in the order added, to wait for.
    pub fn start(mut self) -> Vec<Transfer<'b>> {
        std::mem::take(&mut self.transfers)
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.caller.peer {
            self.caller.engine.shared.plugin.hold(p, false);
        }
    }
}
