//! Memory exposed to peers, and the engine's pulls and pushes of it.

use std::sync::Arc;

use bulk::{Bulk, Descriptor, Seg};
use na::{Access, PeerId};

use crate::RpcError;
use crate::call::Transfer;
use crate::engine::Engine;
use crate::proto::Route;
use crate::slot::Slot;
use crate::transfer::Then;

impl Engine {
    /// Registers memory for peers to reach (segments in order form one linear region):
    /// `vec![Seg::from(&mut buf[..])]`, a `Vec<u8>`, a `BytesMut`, or a mix. `access` is
    /// what the **peer** may do with it: [`Access::ReadOnly`] for data you send (the peer
    /// pulls it), [`Access::WriteOnly`] for a buffer the peer fills (it pushes into it),
    /// [`Access::ReadWrite`] for both. Small readable regions carry their bytes in their
    /// descriptor ([`crate::EngineBuilder::inline_bulk`]).
    pub fn expose<'a>(&self, segs: Vec<Seg<'a>>, access: Access) -> Result<Bulk<'a>, RpcError> {
        Ok(Bulk::new(&self.shared.plugin, segs, access)?.inline_up_to(self.shared.inline_bulk))
    }

    /// Pulls `len` bytes of the peer's `remote` region at `remote_off` into `local` at
    /// `local_off`. The transfer borrows `local` until it ends.
    ///
    /// The data moves with whatever process the descriptor names as its owner (dialled if
    /// need be): use it with descriptors from peers you trust to name a third party. A
    /// handler serving a request uses [`crate::Caller::pull`] (see
    /// [`Engine::register_with_caller`]), which moves data only with the caller.
    pub fn pull<'b>(
        &self,
        local: &'b mut Bulk<'_>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) -> Transfer<'b> {
        self.pull_via(None, local, local_off, remote, remote_off, len)
    }

    /// As [`Engine::pull`], over connection `via` when given.
    pub(crate) fn pull_via<'b>(
        &self,
        via: Option<PeerId>,
        local: &'b mut Bulk<'_>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) -> Transfer<'b> {
        match pull_now(local, local_off, remote, remote_off, len) {
            Some(r) => self.finished(r),
            None => self.transfer(via, true, local, local_off, remote, remote_off, len),
        }
    }

    /// Pushes `len` bytes of `local` at `local_off` into the peer's `remote` region at
    /// `remote_off`. The transfer borrows `local` until it ends. The data goes to whatever
    /// process the descriptor names (see [`Engine::pull`]; handlers use
    /// [`crate::Caller::push`]).
    pub fn push<'b>(
        &self,
        local: &'b Bulk<'_>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) -> Transfer<'b> {
        self.transfer(None, false, local, local_off, remote, remote_off, len)
    }

    /// Plans and posts a transfer with the descriptor's owner, or over connection `via`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn transfer<'b>(
        &self,
        via: Option<PeerId>,
        is_get: bool,
        local: &Bulk<'_>,
        local_off: u64,
        remote: &Descriptor,
        remote_off: u64,
        len: u64,
    ) -> Transfer<'b> {
        let slot = Arc::new(Slot::default());
        let posted = self.post(
            via,
            is_get,
            local,
            (local_off, remote, remote_off, len),
            Then::Done,
            Some(slot.clone()),
        );
        match posted {
            Ok(tag) => Transfer::new(self.shared.clone(), tag, slot),
            Err(e) => self.finished(Err(e)),
        }
    }

    /// Checks and posts a transfer whose outcome goes through `then` (and `slot`); `Err`:
    /// why it was not posted (`then` is dropped unrun). `at`: local offset, remote region,
    /// remote offset, length.
    pub(crate) fn post(
        &self,
        via: Option<PeerId>,
        is_get: bool,
        local: &Bulk<'_>,
        at: (u64, &Descriptor, u64, u64),
        then: Then,
        slot: Option<Arc<Slot<crate::slot::Answer>>>,
    ) -> Result<u64, RpcError> {
        let (local_off, remote, remote_off, len) = at;
        // (A stopping engine's transfers end with `Shutdown` in `Shared::post_transfer`,
        // which looks under its table's lock.)
        range(local_off, len, local.len())?;
        range(remote_off, len, remote.len())?;
        let peer = match via {
            Some(p) => p,
            None => self.shared.plugin.lookup(&remote.owner)?,
        };
        let route = Route {
            peer,
            is_get,
            local: local.mem().clone(),
            local_off,
            remote: remote.mem.clone(),
            remote_off,
        };
        let timeout = self.shared.default_timeout;
        Ok(self.shared.post_transfer((route, len), then, slot, timeout))
    }

    fn finished<'b>(&self, r: Result<(), RpcError>) -> Transfer<'b> {
        let slot = Arc::new(Slot::default());
        slot.complete(r.map(|()| Vec::new()));
        Transfer::new(self.shared.clone(), 0, slot)
    }
}

/// The outcome of a pull that needs no transfer: one whose bytes came with the
/// descriptor (eager bulk), or one into memory that cannot take them.
pub(crate) fn pull_now(
    local: &mut Bulk<'_>,
    local_off: u64,
    remote: &Descriptor,
    remote_off: u64,
    len: u64,
) -> Option<Result<(), RpcError>> {
    if let Some(data) = &remote.inline {
        let r = range(remote_off, len, data.len() as u64)
            .and_then(|r| local.write_at(local_off, &data[r]).map_err(RpcError::from));
        return Some(r);
    }
    (!local.writable()).then(|| {
        Err(RpcError::InvalidArgument(
            "cannot pull into read-only memory".into(),
        ))
    })
}

/// `off..off+len` as a range within `total` bytes, or the caller's error.
fn range(off: u64, len: u64, total: u64) -> Result<std::ops::Range<usize>, RpcError> {
    match off.checked_add(len) {
        Some(end) if end <= total => Ok(off as usize..end as usize),
        _ => Err(RpcError::InvalidArgument(format!(
            "range {off}+{len} outside {total} bytes"
        ))),
    }
}
