//! Calls passed on as asked ([`Query`]: links, file systems, access, extended attributes,
//! directory pages), answered through [`Backend::query_then`]: a local file system makes
//! each at once; a backend that calls another server answers from that call's
//! completion, so that none holds a worker while the other server works.

use std::sync::Arc;

use rpc_core::{Engine, RpcError};
use rustix::io::Errno;
use serde_bytes::ByteBuf;

use super::answer::serve_then;
use super::backend::{Backend, Done, Owned, R, Who};
use super::service::{Service, owned};
use crate::proto::*;

/// A call passed on as asked ([`Backend::query_then`]); paths beneath the export.
pub enum Query<F> {
    /// `readlink`.
    Readlink(ByteBuf),
    /// `statfs` of the file system holding a path.
    Statfs(ByteBuf),
    /// `access` with a mode (`R_OK`, `W_OK`, `X_OK`, `F_OK`).
    Access(ByteBuf, i32),
    /// `getxattr` of a name.
    GetXattr(Owned<F>, ByteBuf),
    /// `listxattr`.
    ListXattr(Owned<F>),
    /// `setxattr` of a name to a value, with `XATTR_CREATE` or `XATTR_REPLACE` flags.
    SetXattr(Owned<F>, ByteBuf, ByteBuf, i32),
    /// `removexattr` of a name.
    RemoveXattr(Owned<F>, ByteBuf),
    /// A page of at most `max` entries of a directory open as `dir` (from its start if
    /// `restart`); with attributes when `plus` (`Some(xattrs)`, as
    /// [`Backend::readdir_plus`]).
    Readdir {
        /// The open directory.
        dir: Arc<F>,
        /// From the start.
        restart: bool,
        /// Entries at most.
        max: u32,
        /// With attributes, and whether each has extended attributes.
        plus: Option<bool>,
    },
}

impl<F> Query<F> {
    /// [`Query::Readdir`].
    pub fn readdir(dir: Arc<F>, restart: bool, max: u32, plus: Option<bool>) -> Query<F> {
        Query::Readdir {
            dir,
            restart,
            max,
            plus,
        }
    }
}

/// What a [`Query`] found.
#[derive(Debug)]
pub enum Found {
    /// Bytes: a link's target, an attribute's value.
    Bytes(ByteBuf),
    /// A file system's figures.
    Fs(FsStat),
    /// Attribute names.
    Names(Vec<ByteBuf>),
    /// A page of a directory.
    Page(DirPage),
    /// A page of a directory with attributes.
    PagePlus(DirPagePlus),
    /// Nothing but success.
    Done,
}

/// Makes `q` by `b`'s calls that answer at once ([`Backend::query_then`]'s default).
pub fn query<B: Backend + ?Sized>(b: &B, who: &Who, q: Query<B::File>) -> R<Found> {
    Ok(match q {
        Query::Readlink(p) => Found::Bytes(b.readlink(who, &p)?),
        Query::Statfs(p) => Found::Fs(b.statfs(who, &p)?),
        Query::Access(p, mode) => b.access(who, &p, mode).map(|()| Found::Done)?,
        Query::GetXattr(t, n) => Found::Bytes(b.getxattr(who, t.on(), &n)?),
        Query::ListXattr(t) => Found::Names(b.listxattr(who, t.on())?),
        Query::SetXattr(t, n, v, f) => b.setxattr(who, t.on(), &n, &v, f).map(|()| Found::Done)?,
        Query::RemoveXattr(t, n) => b.removexattr(who, t.on(), &n).map(|()| Found::Done)?,
        Query::Readdir {
            dir,
            restart,
            max,
            plus: None,
        } => Found::Page(b.readdir(who, &dir, restart, max)?),
        Query::Readdir {
            dir,
            restart,
            max,
            plus: Some(xattrs),
        } => Found::PagePlus(b.readdir_plus(who, &dir, restart, max, xattrs)?),
    })
}

/// `done`, for what a query finds: the answer `pick` takes out of it.
fn answer<T: 'static>(done: Done<T>, pick: fn(Found) -> R<T>) -> Done<Found> {
    Box::new(move |r| done(r.and_then(pick)))
}

/// What a query found, as its call answers it (`EIO` if the backend found something
/// else for that query).
impl Found {
    /// A link's target, an attribute's value.
    pub fn bytes(self) -> R<ByteBuf> {
        match self {
            Found::Bytes(b) => Ok(b),
            _ => Err(Errno::IO),
        }
    }
    /// A file system's figures.
    pub fn fs(self) -> R<FsStat> {
        match self {
            Found::Fs(f) => Ok(f),
            _ => Err(Errno::IO),
        }
    }
    /// Attribute names.
    pub fn names(self) -> R<Vec<ByteBuf>> {
        match self {
            Found::Names(n) => Ok(n),
            _ => Err(Errno::IO),
        }
    }
    /// A page of a directory.
    pub fn page(self) -> R<DirPage> {
        match self {
            Found::Page(p) => Ok(p),
            _ => Err(Errno::IO),
        }
    }
    /// A page of a directory with attributes.
    pub fn page_plus(self) -> R<DirPagePlus> {
        match self {
            Found::PagePlus(p) => Ok(p),
            _ => Err(Errno::IO),
        }
    }
    /// Success.
    pub fn done(self) -> R<()> {
        match self {
            Found::Done => Ok(()),
            _ => Err(Errno::IO),
        }
    }
}

/// Registers the queries, each answered through [`Backend::query_then`], begun on a
/// worker (a backend may have to write out what it holds of a file first).
pub(super) fn register<B: Backend>(e: &Engine, s: &Arc<Service<B>>) -> Result<(), RpcError> {
    fn ask<B: Backend, T: 'static>(
        s: &Arc<Service<B>>,
        w: Who,
        q: R<Query<B::File>>,
        d: Done<T>,
        pick: fn(Found) -> R<T>,
    ) {
        match q {
            Ok(q) => s.backend.clone().query_then(w, q, answer(d, pick)),
            Err(x) => d(Err(x)),
        }
    }
    serve_then(
        e,
        s,
        READLINK,
        |_| None,
        |s, w, p, d| ask(s, w, Ok(Query::Readlink(p)), d, Found::bytes),
    )?;
    serve_then(
        e,
        s,
        STATFS,
        |_| None,
        |s, w, p, d| ask(s, w, Ok(Query::Statfs(p)), d, Found::fs),
    )?;
    serve_then(
        e,
        s,
        ACCESS,
        |_| None,
        |s, w, (p, m), d| ask(s, w, Ok(Query::Access(p, m)), d, Found::done),
    )?;
    serve_then(
        e,
        s,
        GETXATTR,
        |_| None,
        move |s, w, (t, n), d| {
            let q = owned(s, &w, t).map(|t| Query::GetXattr(t, n));
            ask(s, w, q, d, Found::bytes)
        },
    )?;
    serve_then(
        e,
        s,
        SETXATTR,
        |_| None,
        move |s, w, (t, n, v, f), d| {
            let q = owned(s, &w, t).map(|t| Query::SetXattr(t, n, v, f));
            ask(s, w, q, d, Found::done)
        },
    )?;
    serve_then(
        e,
        s,
        LISTXATTR,
        |_| None,
        move |s, w, t, d| {
            let q = owned(s, &w, t).map(Query::ListXattr);
            ask(s, w, q, d, Found::names)
        },
    )?;
    serve_then(
        e,
        s,
        REMOVEXATTR,
        |_| None,
        move |s, w, (t, n), d| {
            let q = owned(s, &w, t).map(|t| Query::RemoveXattr(t, n));
            ask(s, w, q, d, Found::done)
        },
    )?;
    serve_then(
        e,
        s,
        READDIR,
        |_| None,
        |s, w, r: ReaddirReq, d| {
            let q = s.file(&w, r.fh).map(|dir| Query::Readdir {
                dir,
                restart: r.restart,
                max: r.max,
                plus: None,
            });
            ask(s, w, q, d, Found::page)
        },
    )?;
    for (rpc, xattrs) in [(READDIR_PLUS, false), (READDIR_PLUS_XATTRS, true)] {
        serve_then(
            e,
            s,
            rpc,
            |_| None,
            move |s, w, r: ReaddirReq, d| {
                let q = s.file(&w, r.fh).map(|dir| Query::Readdir {
                    dir,
                    restart: r.restart,
                    max: r.max.min(MAX_DIR_PLUS_PAGE),
                    plus: Some(xattrs),
                });
                ask(s, w, q, d, Found::page_plus)
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each kind a backend may find.
    fn every() -> Vec<Found> {
        let page = DirPage {
            entries: Vec::new(),
            end: true,
        };
        let plus = DirPagePlus {
            entries: Vec::new(),
            end: true,
        };
        vec![
            Found::Bytes(ByteBuf::from(b"t".to_vec())),
            Found::Fs(FsStat::default()),
            Found::Names(vec![ByteBuf::from(b"user.a".to_vec())]),
            Found::Page(page),
            Found::PagePlus(plus),
            Found::Done,
        ]
    }

    #[test]
    fn a_query_answered_with_another_kind_fails_with_eio() {
        type Pick = fn(Found) -> R<()>;
        let picks: [(usize, Pick); 6] = [
            (0, |f| f.bytes().map(drop)),
            (1, |f| f.fs().map(drop)),
            (2, |f| f.names().map(drop)),
            (3, |f| f.page().map(drop)),
            (4, |f| f.page_plus().map(drop)),
            (5, Found::done),
        ];
        for (kind, pick) in picks {
            for (i, found) in every().into_iter().enumerate() {
                let r = pick(found);
                if i == kind {
                    assert!(r.is_ok(), "kind {kind} takes its own answer");
                } else {
                    assert_eq!(r.err(), Some(Errno::IO), "kind {kind} given kind {i}");
                }
            }
        }
    }

    #[test]
    fn a_mismatched_answer_reaches_the_caller_as_eio() {
        let (tx, rx) = std::sync::mpsc::channel();
        let done: Done<Vec<ByteBuf>> = Box::new(move |r| tx.send(r).expect("receiver"));
        answer(done, Found::names)(Ok(Found::Fs(FsStat::default())));
        assert_eq!(rx.recv().expect("answered").err(), Some(Errno::IO));
    }
}
