//! Metadata calls at the I/O node: passed to the backend the path routes to, made for
//! the client, after a barrier that flushes the files they could observe; the attribute
//! cache forgets what they change.

use posix_ship::proto::*;
use posix_ship::server::On;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use crate::node::{Handle, Node, Req};
use crate::ops::{R, errno};

impl Node {
    pub(crate) fn on_path<Out: DeserializeOwned>(
        &self,
        r: &Req,
        rpc: rpc_core::Rpc<ByteBuf, Reply<Out>>,
        p: ByteBuf,
    ) -> R<Out> {
        let (b, fs, p) = self.route(r, &p)?;
        let out = self.call(&fs, rpc, p.clone());
        self.after(rpc.name(), b, &p);
        out
    }

    /// After an operation on `path`: forget what the node knew of it if it changes it.
    pub(crate) fn after(&self, op: &str, b: usize, path: &[u8]) {
        const READS: [&str; 6] = [
            "posix.readlink",
            "posix.statfs",
            "posix.access",
            "posix.getxattr",
            "posix.listxattr",
            "posix.stat",
        ];
        if !READS.contains(&op) {
            self.attrs.changed(b, path);
        }
    }

    pub(crate) fn on_path_with<A: Serialize + Clone + 'static, Out: DeserializeOwned>(
        &self,
        r: &Req,
        rpc: rpc_core::Rpc<(ByteBuf, A), Reply<Out>>,
        p: ByteBuf,
        a: A,
    ) -> R<Out> {
        let (b, fs, p) = self.route(r, &p)?;
        let out = self.call(&fs, rpc, (p.clone(), a));
        self.after(rpc.name(), b, &p);
        out
    }

    pub(crate) fn readdir(&self, h: &Handle, restart: bool, max: u32) -> R<DirPage> {
        self.on_fh(h, READDIR, |fh| ReaddirReq { fh, max, restart })
    }

    /// As the backend lists them, with the sizes of files holding buffered writes here
    /// grown to their buffered end (a listing's attributes are a snapshot: exact ones,
    /// after a flush, are the caller's `stat`; a listing must not flush the files of
    /// every directory it lists).
    pub(crate) fn readdir_plus(
        &self,
        h: &Handle,
        restart: bool,
        max: u32,
        xattrs: bool,
    ) -> R<DirPagePlus> {
        let rpc = if xattrs {
            READDIR_PLUS_XATTRS
        } else {
            READDIR_PLUS
        };
        let mut page = h
            .backing
            .with(|fh| {
                self.stats.request_out(rpc.name());
                let req = ReaddirReq { fh, max, restart };
                h.backing.fs.readdir_plus_page(&req, xattrs)
            })
            .map_err(errno)?;
        self.grow_sizes(h, &mut page);
        Ok(page)
    }

    /// The sizes of a listing's files that hold buffered writes here, grown to their
    /// buffered end.
    pub(crate) fn grow_sizes(&self, h: &Handle, page: &mut DirPagePlus) {
        for (e, a) in &mut page.entries {
            let mut path = h.path.clone();
            if !path.ends_with(b"/") {
                path.push(b'/');
            }
            path.extend_from_slice(&e.name);
            let end = (self.files.by_path(h.backend, &path).iter())
                .map(|f| f.buffered_end())
                .max();
            if let (Some(a), Some(end)) = (a.as_mut(), end) {
                a.size = a.size.max(end);
            }
        }
    }

    /// A call on a path or handle: the backend's path or handle put in its place by
    /// `with`. Buffered writes of the file are flushed first (its times and size).
    pub(crate) fn on_target<In: Serialize + Clone + 'static, Out: DeserializeOwned>(
        &self,
        r: &Req,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        t: On<'_, Handle>,
        with: impl FnOnce(Target) -> In,
    ) -> R<Out> {
        let (fs, t, b, path) = match t {
            On::Path(p) => {
                let (b, fs, p) = self.route(r, p)?;
                self.barrier(b, &p);
                (fs, Target::Path(p.clone()), b, p.into_vec())
            }
            On::File(h) => {
                if let Some(f) = &h.file {
                    self.flush(f);
                }
                // (Not reopened: the next data call on the handle does that.)
                let fh = h.backing.fh();
                (
                    h.backing.fs.clone(),
                    Target::Handle(fh),
                    h.backend,
                    h.path.clone(),
                )
            }
        };
        let out = self.call(&fs, rpc, with(t));
        self.after(rpc.name(), b, &path);
        out
    }
}
