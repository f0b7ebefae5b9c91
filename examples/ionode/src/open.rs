//! Opens at the I/O node: routed, a truncating open's buffered bytes written out first,
//! served by a backend handle the same user opened alike (`crate::opens`) or by a
//! backend open, and registered with the shared file's writers. Split in a beginning,
//! the backend's answer and an end, so that the answer may come from the backend call's
//! completion (`crate::then`) or from a waiting worker (`Node::open`).

use std::sync::Arc;

use posix_ship::client::RemoteFs;
use posix_ship::proto::*;

use crate::backing::Backing;
use crate::files::Writer;
use crate::node::{Handle, Node, Req};
use crate::opens::{Lead, Opens};
use crate::ops::R;
use crate::stats::Counters;

/// An open under way (`Node::open_begin`), for its end.
pub(crate) struct Opening {
    user: Option<Principal>,
    /// The attribute cache's change count when it began.
    pub epoch: u64,
    /// The request, its path the backend's.
    pub o: OpenReq,
    b: usize,
    /// The backend, acting for the caller.
    pub fs: RemoteFs,
    follow: bool,
    trunc: bool,
    token: u64,
    /// The key it may share a handle under.
    pub key: Option<crate::opens::Key>,
    /// The opens alike waiting on this one's backend open (`Opens::ask`).
    pub lead: Option<Lead>,
}

/// Where an open stands once begun.
pub(crate) enum Begun {
    /// Served by a shared backend handle: nothing to ask.
    Shared(Opening, Attr, Arc<Backing>),
    /// The backend is to be asked.
    Ask(Opening),
}

impl Node {
    pub(crate) fn open(&self, r: &Req, o: &OpenReq) -> R<(Handle, Attr)> {
        match self.open_begin(r, o)? {
            Begun::Shared(op, attr, backing) => Ok(self.open_end(&op, attr, backing)),
            Begun::Ask(op) => {
                let opened = self.call(&op.fs, OPEN, op.o.clone());
                self.open_answered(op, opened)
            }
        }
    }

    /// An open up to its backend call: written-out bytes a truncating open cuts, the
    /// handle's token, and a shared backend handle if one serves it (`crate::opens`).
    pub(crate) fn open_begin(&self, r: &Req, o: &OpenReq) -> R<Begun> {
        let mut o = o.clone();
        let (b, fs, path) = self.route(r, &o.path)?;
        let trunc = o.flags & libc::O_TRUNC != 0;
        // (Begun inline, the file was open nowhere here when `begins_now` looked: an open
        // since, and its writes, are concurrent with this truncation.)
        if trunc && !r.inline {
            // Written out first (the truncating open then cuts them, as it would have);
            // nothing is dropped before the backend has checked this caller may truncate.
            for f in self.files.by_path(b, &path) {
                self.before_change(&f);
            }
        }
        o.path = path.clone();
        let follow = o.flags & libc::O_NOFOLLOW == 0;
        // (Before a shared handle gains this user: nothing fails after that.)
        let mut token = [0u8; 8];
        getrandom::fill(&mut token).map_err(|_| libc::EIO)?;
        let token = u64::from_le_bytes(token);
        let op = Opening {
            user: r.user.clone(),
            epoch: self.attrs.epoch(),
            key: Opens::key(b, &path, o.flags, &r.user),
            o,
            b,
            fs,
            follow,
            trunc,
            token,
            lead: None,
        };
        Ok(match self.shared_open(&op) {
            Some((attr, backing)) => Begun::Shared(op, attr, backing),
            None => Begun::Ask(op),
        })
    }

    /// An open after the backend's answer.
    pub(crate) fn open_answered(&self, mut op: Opening, opened: R<Opened>) -> R<(Handle, Attr)> {
        let (b, path, flags) = (op.b, &op.o.path, op.o.flags);
        if flags & (libc::O_CREAT | libc::O_TRUNC) != 0 {
            self.attrs.changed(b, path);
        }
        let opened = opened?;
        let epoch = if flags & (libc::O_CREAT | libc::O_TRUNC) != 0 {
            self.attrs.epoch()
        } else {
            op.epoch
        };
        self.attrs
            .put(epoch, b, path, op.follow, &op.user, Ok(opened.attr));
        let id = (opened.attr.dev, opened.attr.ino);
        let backing = Arc::new(Backing::new(op.fs.clone(), path, flags, opened.fh, id));
        if let Some(k) = op.key.clone()
            && opened.attr.is_file()
        {
            self.opens.put(k, &backing, op.epoch);
            if let Some(lead) = op.lead.take() {
                lead.share(&self.opens, opened.attr, &backing);
            }
        }
        Ok(self.open_end(&op, opened.attr, backing))
    }

    /// The client's handle on `backing`, and the attributes it is answered with.
    pub(crate) fn open_end(
        &self,
        op: &Opening,
        attr: Attr,
        backing: Arc<Backing>,
    ) -> (Handle, Attr) {
        let (b, path, flags) = (op.b, &op.o.path, op.o.flags);
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let file = attr.is_file().then(|| {
            let f = self.files.get((b, attr.dev, attr.ino));
            // An O_APPEND handle writes where the file ends: never a flush's way in.
            let w = (writable && flags & libc::O_APPEND == 0).then(|| Writer {
                token: op.token,
                backing: backing.clone(),
            });
            self.files.opened(&f, w, path);
            if op.trunc {
                self.files.truncate(&f, 0);
            }
            f
        });
        let h = Handle {
            backend: b,
            wrote: std::sync::atomic::AtomicBool::new(false),
            path: path.to_vec(),
            backing,
            file,
            writable,
            append: flags & libc::O_APPEND != 0,
            token: op.token,
            seq: std::sync::Mutex::new((0, 0)),
            listing: None,
        };
        let mut attr = attr;
        attr.size = attr
            .size
            .max(h.file.as_ref().map_or(0, |f| f.buffered_end()));
        (h, attr)
    }

    /// An open served by a backend handle another client of the same user opened alike
    /// (`crate::opens`): its attributes from the cache, which must name the same file.
    pub(crate) fn shared_open(&self, op: &Opening) -> Option<(Attr, Arc<Backing>)> {
        let key = op.key.as_ref()?;
        let epoch = self.attrs.epoch();
        let attr = self
            .attrs
            .get(op.b, &op.o.path, op.follow, &op.user)?
            .ok()?;
        let backing = self.opens.take(key, epoch)?;
        if backing.id() != (attr.dev, attr.ino) || !attr.is_file() {
            if self.opens.release(&backing) {
                // Not here: this may run on the thread completing another open.
                let (fs, fh) = (backing.fs.clone(), backing.fh());
                self.retry(Box::new(move || {
                    let _ = fs.call(CLOSE, &fh);
                }));
            }
            return None;
        }
        Counters::add(&self.stats.shared_opens, 1);
        Some((attr, backing))
    }
}
