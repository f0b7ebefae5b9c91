//! Quicksilver bulk data: memory registered with a transport, and the descriptors that let
//! a peer reach it.
//!
//! This is the first piece: a [`BulkBuf`] owns its memory, so that it cannot be freed or
//! moved while registered, and revokes remote access when dropped. Transfers (pull and
//! push with offsets, chunking, pipelining) build on it.
//!
//! ```
//! use std::sync::Arc;
//! use bulk::BulkBuf;
//! use na::{Access, Plugin};
//!
//! let p: Arc<dyn Plugin> = Arc::new(na_tcp::TcpPlugin::new(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap());
//! let buf = BulkBuf::new(p.clone(), vec![7u8; 4096], Access::ReadOnly).unwrap();
//! let desc = buf.descriptor();
//! assert_eq!((desc.mem.len, &desc.owner), (4096, p.self_addr()));
//! assert_eq!(buf.into_inner(), vec![7u8; 4096]);
//! ```
#![deny(missing_docs)]

use std::sync::Arc;

use na::{Access, Address, MemHandle, NaResult, Plugin, RemoteMem, Segment};
use serde::{Deserialize, Serialize};

/// What a peer needs to reach registered memory: its owner and the remote key, bounds and
/// access mode. Put it inside any RPC argument.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Descriptor {
    /// The address of the process that owns the memory.
    pub owner: Address,
    /// The owner's registration.
    pub mem: RemoteMem,
}

/// A buffer registered with a transport for as long as it lives.
pub struct BulkBuf {
    plugin: Arc<dyn Plugin>,
    handle: MemHandle,
    // Boxed slice: its heap block never moves while the handle is registered.
    data: Box<[u8]>,
    registered: bool,
}

impl BulkBuf {
    /// Registers `data` with `access`.
    pub fn new(plugin: Arc<dyn Plugin>, data: Vec<u8>, access: Access) -> NaResult<BulkBuf> {
        let mut data = data.into_boxed_slice();
        let seg = Segment::from_slice(&mut data);
        // SAFETY: the boxed slice is owned by the BulkBuf, never reallocated, and only
        // handed out again (`into_inner`, `Drop`) after `deregister`.
        let handle = unsafe { plugin.register(&[seg], access)? };
        Ok(BulkBuf {
            plugin,
            handle,
            data,
            registered: true,
        })
    }

    /// The descriptor to send to peers.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            owner: self.plugin.self_addr().clone(),
            mem: self.handle.remote.clone(),
        }
    }

    /// The local registration, for transfers posted on this side.
    pub fn handle(&self) -> &MemHandle {
        &self.handle
    }

    /// Revokes remote access and returns the bytes.
    pub fn into_inner(mut self) -> Vec<u8> {
        self.revoke();
        std::mem::take(&mut self.data).into_vec()
    }

    fn revoke(&mut self) {
        if std::mem::replace(&mut self.registered, false)
            && let Err(e) = self.plugin.deregister(&self.handle)
        {
            debug_assert!(false, "deregister failed: {e}");
        }
    }
}

impl Drop for BulkBuf {
    fn drop(&mut self) {
        self.revoke();
    }
}
