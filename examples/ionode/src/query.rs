//! Queries at the I/O node ([`Query`]: links, file systems, access, extended attributes,
//! directory pages): passed to the backend the path or handle routes to, made for the
//! client, and answered from that call's completion, so that no worker waits on the
//! backend (`Node::query_then`); the blocking way (`Node::query_blocking`) serves the
//! calls the service makes at once and the retries of a call the backend refused. The
//! directories the node shows above its prefixes are answered here (`Node::shown`).

use std::sync::Arc;

use posix_ship::proto::*;
use posix_ship::server::{Found, Owned, Query};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::node::{Handle, Node, Req};
use crate::ops::R;
use crate::targets::Effect;
use crate::virt;

type Done = Box<dyn FnOnce(R<Found>) + Send>;

const CHANGES: Effect = Effect::Changes;

/// What a call that answers nothing found.
fn ok((): ()) -> Found {
    Found::Done
}

impl Node {
    /// What `q` finds at a directory this node shows above its prefixes, or `q` to pass
    /// on (a `statfs` of such a directory asks for the file system of the first prefix
    /// beneath it).
    pub(crate) fn shown(&self, r: &Req, q: Query<Handle>) -> Result<R<Found>, Query<Handle>> {
        let above = |t: &Owned<Handle>| virt::names(self, &t.on());
        let path_above = |p: &[u8]| self.routes.above(p).is_some();
        match q {
            Query::Readlink(p) if path_above(&p) => Ok(Err(libc::EINVAL)),
            Query::Statfs(p) => match self.routes.above(&p).and_then(|n| n.into_iter().next()) {
                Some(first) => {
                    let below = [p.strip_suffix(b"/").unwrap_or(&p), b"/", &first].concat();
                    self.shown(r, Query::Statfs(below.into()))
                }
                None => Err(Query::Statfs(p)),
            },
            Query::Access(p, mode) if path_above(&p) => Ok(match mode & libc::W_OK {
                0 => Ok(Found::Done),
                _ => Err(libc::EROFS),
            }),
            Query::GetXattr(t, _) if above(&t) => Ok(Err(libc::ENODATA)),
            Query::ListXattr(t) if above(&t) => Ok(Ok(Found::Names(Vec::new()))),
            Query::SetXattr(t, ..) | Query::RemoveXattr(t, _) if above(&t) => Ok(Err(libc::EROFS)),
            Query::Readdir {
                dir,
                restart,
                max,
                plus,
            } => match virt::of(&dir) {
                Some(l) => Ok(self.list_virtual(r, l, restart, max).map(|p| match plus {
                    Some(_) => Found::PagePlus(p),
                    None => Found::Page(DirPage {
                        entries: p.entries.into_iter().map(|(d, _)| d).collect(),
                        end: p.end,
                    }),
                })),
                None => Err(Query::readdir(dir, restart, max, plus)),
            },
            q => Err(q),
        }
    }

    /// `q` (not one [`Node::shown`] answers), the blocking way.
    pub(crate) fn query_blocking(&self, r: &Req, q: Query<Handle>) -> R<Found> {
        Ok(match q {
            Query::Readlink(p) => Found::Bytes(self.on_path(r, READLINK, p)?),
            Query::Statfs(p) => Found::Fs(self.on_path(r, STATFS, p)?),
            Query::Access(p, m) => self.on_path_with(r, ACCESS, p, m).map(ok)?,
            Query::GetXattr(t, n) => Found::Bytes(self.on_target(r, GETXATTR, t.on(), |t| (t, n))?),
            Query::ListXattr(t) => Found::Names(self.on_target(r, LISTXATTR, t.on(), |t| t)?),
            Query::SetXattr(t, n, v, f) => {
                let with = |t| (t, n, v, f);
                self.on_target(r, SETXATTR, t.on(), with).map(ok)?
            }
            Query::RemoveXattr(t, n) => {
                let with = |t| (t, n);
                self.on_target(r, REMOVEXATTR, t.on(), with).map(ok)?
            }
            Query::Readdir {
                dir,
                restart,
                max,
                plus: None,
            } => Found::Page(self.readdir(&dir, restart, max)?),
            Query::Readdir {
                dir,
                restart,
                max,
                plus: Some(xattrs),
            } => Found::PagePlus(self.readdir_plus(&dir, restart, max, xattrs)?),
        })
    }

    /// `q` (not one [`Node::shown`] answers), answered through `done` from the backend's
    /// completion. Begun on a worker: what the node buffers of a file named is written
    /// out first, as the blocking way does.
    pub(crate) fn query_then(self: &Arc<Self>, r: Req, q: Query<Handle>, done: Done) {
        match q {
            Query::Readlink(p) => self.path_then(&r, READLINK, p, |p| p, Found::Bytes, done),
            Query::Statfs(p) => self.path_then(&r, STATFS, p, |p| p, Found::Fs, done),
            Query::Access(p, m) => self.path_then(&r, ACCESS, p, move |p| (p, m), ok, done),
            Query::GetXattr(t, n) => self.xattr_then(
                r,
                Effect::Reads,
                GETXATTR,
                t,
                move |t| (t, n),
                Found::Bytes,
                done,
            ),
            Query::ListXattr(t) => {
                self.xattr_then(r, Effect::Reads, LISTXATTR, t, |t| t, Found::Names, done)
            }
            Query::SetXattr(t, n, v, f) => {
                let with = move |t| (t, n, v, f);
                self.xattr_then(r, CHANGES, SETXATTR, t, with, ok, done)
            }
            Query::RemoveXattr(t, n) => {
                let with = move |t| (t, n);
                self.xattr_then(r, CHANGES, REMOVEXATTR, t, with, ok, done)
            }
            Query::Readdir {
                dir,
                restart,
                max,
                plus,
            } => self.readdir_then(r, dir, restart, max, plus, done),
        }
    }

    /// `rpc` on path `p` (its input made by `with`), answered through `done`.
    fn path_then<In, Out>(
        self: &Arc<Self>,
        r: &Req,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        p: serde_bytes::ByteBuf,
        with: impl FnOnce(serde_bytes::ByteBuf) -> In,
        found: fn(Out) -> Found,
        done: Done,
    ) where
        In: Serialize + Clone + Send + 'static,
        Out: DeserializeOwned + Send + 'static,
    {
        let (b, fs, p) = match self.route(r, &p) {
            Ok(x) => x,
            Err(e) => return done(Err(e)),
        };
        self.call_then(&fs, rpc, with(p.clone()), move |n, out| {
            n.after(rpc.name(), b, &p);
            done(out.map(found))
        });
    }

    /// `rpc` on `t` (its input made by `with`), answered through `done`
    /// ([`Node::target_then`]; what the handle names is not opened again for it, as the
    /// blocking way does not).
    #[allow(clippy::too_many_arguments)]
    fn xattr_then<In, Out>(
        self: &Arc<Self>,
        r: Req,
        effect: Effect,
        rpc: rpc_core::Rpc<In, Reply<Out>>,
        t: Owned<Handle>,
        with: impl FnOnce(Target) -> In,
        found: fn(Out) -> Found,
        done: Done,
    ) where
        In: Serialize + Clone + Send + 'static,
        Out: DeserializeOwned + Send + 'static,
    {
        let done = move |out: R<Out>| done(out.map(found));
        self.target_then(r, t, effect, rpc, with, None, done);
    }

    /// A page of directory `h`, answered through `done`. A handle the backend forgot
    /// (restarted: `EBADF`), or a listing with extended attributes a backend built
    /// before it refused (`ENOSYS`), is made again the blocking way, on the retry
    /// thread (which opens the directory again, or lists without).
    fn readdir_then(
        self: &Arc<Self>,
        r: Req,
        h: Arc<Handle>,
        restart: bool,
        max: u32,
        plus: Option<bool>,
        done: Done,
    ) {
        let (fs, fh) = (h.backing.fs.clone(), h.backing.fh());
        let req = ReaddirReq { fh, max, restart };
        let again = {
            let (node, h) = (self.clone(), h.clone());
            move |done: Done| {
                let q = Query::readdir(h, restart, max, plus);
                let n = node.clone();
                node.retry(Box::new(move || done(n.query_blocking(&r, q))));
            }
        };
        let Some(xattrs) = plus else {
            return self.call_then(&fs, READDIR, req, move |_, page| match page {
                Err(libc::EBADF) => again(done),
                page => done(page.map(Found::Page)),
            });
        };
        self.call_then(
            &fs,
            fs.readdir_plus_rpc(xattrs),
            req,
            move |n, page| match page {
                Err(libc::EBADF | libc::ENOSYS) => again(done),
                Ok(mut page) => {
                    n.grow_sizes(&h, &mut page);
                    done(Ok(Found::PagePlus(page)))
                }
                Err(e) => done(Err(e)),
            },
        );
    }
}
