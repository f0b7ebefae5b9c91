//! The I/O node as a posix-ship [`Backend`]: the protocol, the clients' handles, bounds
//! and bulk staging are posix-ship's [`posix_ship::server::Service`]; here each
//! operation goes to the node's write-behind, read-ahead and backends.

use std::sync::Arc;

use posix_ship::proto::*;
use posix_ship::server::Errno;
use posix_ship::server::{
    AttrChange, Backend, Begin, Change, Done, Found, On, Owned, Payload, Query, Who, set_attr,
};
use serde_bytes::ByteBuf;

use crate::node::{Handle, Node, Req};
use crate::virt;

type R<T> = Result<T, Errno>;

fn e<T>(r: Result<T, i32>) -> R<T> {
    r.map_err(Errno::from_raw_os_error)
}

fn req(who: &Who) -> Req {
    Req {
        user: who.principal(),
        inline: who.inline,
    }
}

fn buf(p: &[u8]) -> ByteBuf {
    ByteBuf::from(p.to_vec())
}

/// One attribute change made the blocking way (the node's own calls).
fn set_attr_by(n: &Node, who: &Who, t: &Owned<Handle>, c: AttrChange) -> R<()> {
    match c {
        AttrChange::Mode(m) => Backend::chmod(n, who, t.on(), m),
        AttrChange::Size(len) => Backend::truncate(n, who, t.on(), len),
        AttrChange::Owner(u, g) => Backend::chown(n, who, t.on(), u, g),
        AttrChange::Times(a, m, f) => Backend::utimens(n, who, t.on(), a, m, f),
    }
}

/// A call's target, owned.
fn owned(t: On<'_, Handle>) -> Owned<Handle> {
    match t {
        On::Path(p) => Owned::Path(buf(p)),
        On::File(h) => Owned::File(h.clone()),
    }
}

impl Node {
    /// A query made at once (the blocking way past what [`Node::shown`] answers).
    fn query_now(&self, who: &Who, q: Query<Handle>) -> R<Found> {
        let r = req(who);
        e(self
            .shown(&r, q)
            .unwrap_or_else(|q| self.query_blocking(&r, q)))
    }

    /// `Err(errno)` if `t` is a directory the node shows above its prefixes.
    fn not_virtual(&self, t: &On<'_, Handle>, errno: i32) -> R<()> {
        e(if virt::names(self, t) {
            Err(errno)
        } else {
            Ok(())
        })
    }
}

impl Backend for Node {
    type File = Handle;

    fn request_in(&self, rpc: &'static str) {
        self.stats.request_in(rpc);
    }

    fn stats(&self, s: ServerStats) -> ServerStats {
        ServerStats {
            requests: self.stats.requests_in(),
            ..s
        }
    }

    fn open(&self, who: &Who, r: &OpenReq) -> R<(Handle, Attr)> {
        e(self
            .open_virtual(r)
            .unwrap_or_else(|| Node::open(self, &req(who), r)))
    }

    fn open_then(self: Arc<Self>, who: Who, r: OpenReq, done: Done<(Handle, Attr)>) {
        if let Some(v) = self.open_virtual(&r) {
            return done(e(v));
        }
        Node::open_then(&self, req(&who), r, move |out| done(e(out)))
    }

    fn stat_then(self: Arc<Self>, who: Who, t: Owned<Handle>, follow: bool, done: Done<Attr>) {
        if let Some(a) = self.virtual_attr(&t.on()) {
            return done(Ok(a));
        }
        match t {
            Owned::Path(p) => Node::stat_then(&self, req(&who), p, follow, move |out| done(e(out))),
            Owned::File(h) => {
                let (node, who2, h2) = (self.clone(), who.clone(), h.clone());
                let blocking = move || {
                    Backend::stat(&*node, &who2, On::File(&h2), follow)
                        .map_err(|x| x.raw_os_error())
                };
                let done = move |out| done(e(out));
                Node::fstat_then(&self, req(&who), h, follow, blocking, done)
            }
        }
    }

    fn unlink_then(self: Arc<Self>, who: Who, p: ByteBuf, done: Done<()>) {
        if let Err(x) = self.not_virtual(&On::Path(&p), libc::EISDIR) {
            return done(Err(x));
        }
        Node::unlink_then(&self, req(&who), p, move |out| done(e(out)))
    }

    fn close(&self, _: &Who, h: Arc<Handle>) -> R<()> {
        if virt::of(&h).is_some() {
            return Ok(());
        }
        e(Node::close(self, h))
    }

    fn close_now(&self, _: &Who, h: &Arc<Handle>) -> Option<R<()>> {
        if virt::of(h).is_some() {
            return Some(Ok(()));
        }
        Node::close_now(self, h).map(e)
    }

    fn lost(&self, mut files: Vec<Arc<Handle>>) {
        files.retain(|h| virt::of(h).is_none());
        // Closing flushes and calls the backend: not on the progress thread, and not on
        // a thread per lost client (a peer connecting and leaving in a loop).
        if files.is_empty() {
            return;
        }
        let job = crate::behind::Behind::Lost(files);
        if let Err(std::sync::mpsc::SendError(crate::behind::Behind::Lost(files))) =
            crate::node::lock(&self.closer).send(job)
        {
            // The thread behind is gone (the node is stopping): here, one by one.
            for h in files {
                let _ = self.detach(&h);
                let _ = self.release(&h);
            }
        }
    }

    fn read(&self, _: &Who, h: &Arc<Handle>, off: u64, b: &mut [u8]) -> R<usize> {
        self.not_virtual(&On::File(h), libc::EISDIR)?;
        e(Node::read(self, h, off, b))
    }

    fn read_then(
        self: Arc<Self>,
        w: Who,
        h: Arc<Handle>,
        off: u64,
        len: usize,
        done: Done<Vec<u8>>,
    ) {
        if let Err(x) = self.not_virtual(&On::File(&h), libc::EISDIR) {
            return done(Err(x));
        }
        Node::read_then(&self, h, (off, len), w.inline, move |out| done(e(out)))
    }

    fn read_begins_now(&self, _: &Who, h: &Arc<Handle>, off: u64, len: u64) -> bool {
        // (Not with a journal: its writers hold a file's state while they write the log.)
        self.files.journal.is_none()
            && virt::of(h).is_none()
            && Node::miss_begins_now(self, h, off, len as usize)
    }

    fn write(&self, who: &Who, h: &Arc<Handle>, off: Option<u64>, d: Payload<'_>) -> R<Written> {
        self.not_virtual(&On::File(h), libc::EBADF)?;
        e(Node::write(self, &req(who), h, off, d))
    }

    fn write_then(
        self: Arc<Self>,
        who: Who,
        h: Arc<Handle>,
        off: Option<u64>,
        d: Payload<'_>,
        done: Done<Written>,
    ) {
        if let Err(x) = self.not_virtual(&On::File(&h), libc::EBADF) {
            return done(Err(x));
        }
        Node::write_then(&self, &req(&who), h, off, d, move |out| done(e(out)))
    }

    fn answers_now(&self) -> bool {
        true
    }

    fn begins_now(&self, _: &Who, what: Begin<'_>) -> bool {
        Node::begins_now(self, what)
    }

    fn read_now(&self, _: &Who, h: &Arc<Handle>, off: u64, buf: &mut [u8]) -> Option<usize> {
        if virt::of(h).is_some() {
            return None;
        }
        Node::read_now(self, h, off, buf)
    }

    fn write_now(&self, _: &Who, h: &Arc<Handle>, off: u64, data: &[u8]) -> Option<Written> {
        if virt::of(h).is_some() {
            return None;
        }
        Node::write_now(self, h, off, data)
    }

    fn fsync(&self, _: &Who, h: &Arc<Handle>, data_only: bool) -> R<()> {
        if virt::of(h).is_some() {
            return Ok(());
        }
        e(Node::fsync(self, h, data_only))
    }

    fn fsync_then(self: Arc<Self>, _: Who, h: Arc<Handle>, data_only: bool, done: Done<()>) {
        if virt::of(&h).is_some() {
            return done(Ok(()));
        }
        Node::fsync_then(&self, h, data_only, move |out| done(e(out)))
    }

    fn fallocate(&self, _: &Who, h: &Arc<Handle>, mode: i32, off: u64, len: u64) -> R<()> {
        self.not_virtual(&On::File(h), libc::EBADF)?;
        e(Node::fallocate(self, h, mode, off, len))
    }

    fn readdir(&self, who: &Who, h: &Arc<Handle>, restart: bool, max: u32) -> R<DirPage> {
        let q = Query::readdir(h.clone(), restart, max, None);
        self.query_now(who, q)?.page()
    }

    fn readdir_plus(
        &self,
        who: &Who,
        h: &Arc<Handle>,
        restart: bool,
        max: u32,
        xattrs: bool,
    ) -> R<DirPagePlus> {
        let q = Query::readdir(h.clone(), restart, max, Some(xattrs));
        self.query_now(who, q)?.page_plus()
    }

    fn stat(&self, who: &Who, t: On<'_, Handle>, follow: bool) -> R<Attr> {
        e(Node::stat(self, &req(who), t, follow))
    }

    fn truncate(&self, who: &Who, t: On<'_, Handle>, len: u64) -> R<()> {
        self.not_virtual(&t, libc::EISDIR)?;
        e(Node::truncate(self, &req(who), t, len))
    }

    fn setattr_then(self: Arc<Self>, who: Who, t: Owned<Handle>, a: SetAttr, done: Done<Attr>) {
        // The node's own directories answer here, as each call would.
        if virt::names(&self, &t.on()) {
            return done(set_attr(&*self, &who, t.on(), a));
        }
        // A backend built before `posix.setattr`: the calls it names, one by one.
        let (node, who2, t2) = (self.clone(), who.clone(), t.clone());
        let by_parts = move || set_attr(&*node, &who2, t2.on(), a).map_err(|x| x.raw_os_error());
        Node::setattr_then(&self, req(&who), t, a, by_parts, move |out| done(e(out)))
    }

    fn attr_then(self: Arc<Self>, who: Who, t: Owned<Handle>, c: AttrChange, done: Done<()>) {
        // The node's own directories answer here, as each call would.
        if virt::names(&self, &t.on()) {
            return done(set_attr_by(&self, &who, &t, c));
        }
        let (node, who2, t2) = (self.clone(), who.clone(), t.clone());
        let blocking = move || set_attr_by(&node, &who2, &t2, c).map_err(|x| x.raw_os_error());
        Node::attr_then(&self, req(&who), t, c, blocking, move |out| done(e(out)))
    }

    fn chmod(&self, who: &Who, t: On<'_, Handle>, m: u32) -> R<()> {
        self.not_virtual(&t, libc::EROFS)?;
        e(self.on_target(&req(who), CHMOD, t, |t| (t, m)))
    }

    fn utimens(&self, who: &Who, t: On<'_, Handle>, a: SetTime, m: SetTime, f: bool) -> R<()> {
        self.not_virtual(&t, libc::EROFS)?;
        e(self.on_target(&req(who), UTIMENS, t, |t| (t, a, m, f)))
    }

    fn chown(&self, who: &Who, t: On<'_, Handle>, u: Option<u32>, g: Option<u32>) -> R<()> {
        self.not_virtual(&t, libc::EROFS)?;
        e(self.on_target(&req(who), CHOWN, t, |t| (t, u, g)))
    }

    fn getxattr(&self, who: &Who, t: On<'_, Handle>, name: &[u8]) -> R<ByteBuf> {
        self.query_now(who, Query::GetXattr(owned(t), buf(name)))?
            .bytes()
    }

    fn setxattr(&self, who: &Who, t: On<'_, Handle>, k: &[u8], v: &[u8], f: i32) -> R<()> {
        self.query_now(who, Query::SetXattr(owned(t), buf(k), buf(v), f))?
            .done()
    }

    fn listxattr(&self, who: &Who, t: On<'_, Handle>) -> R<Vec<ByteBuf>> {
        self.query_now(who, Query::ListXattr(owned(t)))?.names()
    }

    fn removexattr(&self, who: &Who, t: On<'_, Handle>, name: &[u8]) -> R<()> {
        self.query_now(who, Query::RemoveXattr(owned(t), buf(name)))?
            .done()
    }

    fn unlink(&self, who: &Who, p: &[u8]) -> R<()> {
        self.not_virtual(&On::Path(p), libc::EISDIR)?;
        e(self.on_path(&req(who), UNLINK, buf(p)))
    }

    fn change_then(self: Arc<Self>, who: Who, c: Change, done: Done<()>) {
        // The directories the node shows above its prefixes are not the backends' to
        // change: the errno each call gives for a name it may not touch.
        let shown = |p: &[u8], errno: i32| self.not_virtual(&On::Path(p), errno);
        let allowed = match &c {
            Change::Mkdir(p, _) => shown(p, libc::EEXIST),
            Change::Rmdir(p) => shown(p, libc::EBUSY),
            Change::Rename(a, b, _) => shown(a, libc::EBUSY).and(shown(b, libc::EBUSY)),
            Change::Link(a, b) => shown(a, libc::EPERM).and(shown(b, libc::EEXIST)),
            Change::Symlink(_, p) => shown(p, libc::EEXIST),
        };
        if let Err(x) = allowed {
            return done(Err(x));
        }
        Node::change_then(&self, req(&who), c, move |out| done(e(out)))
    }

    fn readlink(&self, who: &Who, p: &[u8]) -> R<ByteBuf> {
        self.query_now(who, Query::Readlink(buf(p)))?.bytes()
    }

    fn statfs(&self, who: &Who, p: &[u8]) -> R<FsStat> {
        self.query_now(who, Query::Statfs(buf(p)))?.fs()
    }

    fn access(&self, who: &Who, p: &[u8], mode: i32) -> R<()> {
        self.query_now(who, Query::Access(buf(p), mode))?.done()
    }

    fn query_then(self: Arc<Self>, who: Who, q: Query<Handle>, done: Done<Found>) {
        let r = req(&who);
        match self.shown(&r, q) {
            Ok(found) => done(e(found)),
            Err(q) => Node::query_then(&self, r, q, Box::new(move |out| done(e(out)))),
        }
    }
}
