//! Quicksilver bulk data: memory registered with a transport ([`Bulk`]), the descriptors
//! that let a peer reach it ([`Descriptor`]), and the plan that splits a transfer into
//! pipelined chunks ([`Chunker`], the NA layer's one chunker, re-exported). Transfers themselves are posted by `rpc-core`'s engine
//! (`Engine::pull`, `Engine::push`), which drives the plan.
//!
//! ```
//! use std::sync::Arc;
//! use bulk::{Bulk, Seg};
//! use na::{Access, Plugin};
//!
//! let p: Arc<dyn Plugin> = Arc::new(na_tcp::TcpPlugin::new(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap());
//! let mut header = [0u8; 16];
//! let body = vec![7u8; 4096];
//! let b = Bulk::new(&p, vec![Seg::from(&mut header[..]), Seg::from(body)], Access::ReadWrite).unwrap();
//! assert_eq!(b.len(), 4112);
//! let d = b.descriptor();
//! assert_eq!((d.mem.len, &d.owner), (4112, p.self_addr()));
//! ```
#![deny(missing_docs)]

mod descriptor;
mod handle;

pub use descriptor::Descriptor;
pub use handle::{Bulk, BulkError, Seg};
pub use na::{ChunkConfig, Chunker};
