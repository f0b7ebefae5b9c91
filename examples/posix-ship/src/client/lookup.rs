//! `stat` through the attribute cache ([`super::attrs`]), and the listings that fill it.

use std::io;
use std::time::Instant;

use super::RemoteFs;
use super::attrs::{Attrs, Ticket};
use crate::proto::*;

/// Pages of a directory listed for its misses at most: a stat in a huge directory costs
/// a few pages, not all of them.
const MISS_PAGES: usize = 16;

impl RemoteFs {
    /// The attribute cache, for this client's own calls (a forwarder's views ask).
    fn attrs(&self) -> Option<&Attrs> {
        self.inner
            .attrs
            .as_ref()
            .filter(|_| self.for_user.is_none())
    }

    /// `stat` of `t` (following a final link if `follow`): a path's from the attribute
    /// cache while it is trusted ([`super::ClientOptions::attr_timeout`]), else the
    /// server's; the second miss in a directory within the lifetime lists it first.
    pub fn stat(&self, t: Target, follow: bool) -> io::Result<Attr> {
        let (Some(a), Target::Path(p)) = (self.attrs(), &t) else {
            return self.call(STAT, &(t, follow));
        };
        if !super::attrs::plain(p) {
            return self.call(STAT, &(t, follow));
        }
        if let Some(hit) = a.get(p, follow, Instant::now()) {
            return Ok(hit);
        }
        if let Some(dir) = a.missed(p, Instant::now()) {
            self.list_for_stats(&dir);
            if let Some(hit) = a.get(p, follow, Instant::now()) {
                return Ok(hit);
            }
        }
        if a.absent(p, Instant::now()) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let ticket = a.ticket();
        let p = p.to_vec();
        let attr = self.call(STAT, &(t, follow))?;
        a.put(ticket, Instant::now(), [(p, follow, &attr)]);
        Ok(attr)
    }

    /// Lists up to [`MISS_PAGES`] pages of `dir` into the cache (failures leave it as
    /// it was: the stats ask one by one).
    fn list_for_stats(&self, dir: &[u8]) {
        let Some(ticket) = self.attrs().map(Attrs::ticket) else {
            return;
        };
        let Ok(o) = self.open_raw(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0) else {
            return;
        };
        let mut every = true;
        for i in 0..MISS_PAGES {
            let req = ReaddirReq {
                fh: o.fh,
                max: MAX_DIR_PLUS_PAGE,
                restart: i == 0,
            };
            match self.readdir_plus_page(&req, true) {
                Ok(page) => {
                    // Whole if it ends here and every entry came with its attributes
                    // (the ticket, the same for every page, keeps out a listing that
                    // overlapped a change).
                    every &= page.entries.iter().all(|(e, a)| {
                        a.is_some() || e.name.as_slice() == b"." || e.name.as_slice() == b".."
                    });
                    self.keep(ticket, dir, &page, page.end && every);
                    if page.end {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = self.close_raw(o.fh);
    }

    /// The cached attributes of `path`, if trusted now (nothing is asked).
    pub fn cached(&self, path: &[u8], follow: bool) -> Option<Attr> {
        self.attrs()?.get(path, follow, Instant::now())
    }

    /// Forgets every cached attribute (a child this process waited for may have changed
    /// anything).
    pub fn forget_attrs(&self) {
        if let Some(a) = &self.inner.attrs {
            a.forget();
        }
    }

    /// Keeps the attributes of a page of a listing of `dir` (read with `t`); `whole`:
    /// the listing ended with it and every page was kept.
    fn keep(&self, t: Ticket, dir: &[u8], page: &DirPagePlus, whole: bool) {
        let Some(a) = self.attrs() else { return };
        let entries = page.entries.iter().filter_map(|(e, attr)| {
            let name: &[u8] = &e.name;
            if name == b"." || name == b".." {
                return None;
            }
            let mut p = dir.to_vec();
            if p.last() != Some(&b'/') {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            Some((p, false, attr.as_ref()?))
        });
        a.put_listing(t, Instant::now(), dir, whole, entries);
    }
}
