//! Registered memory of this endpoint: the owner-side checks (key, bounds, access mode)
//! and the only code that touches registered bytes.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use na::{Access, MemHandle, NaError, NaResult, RemoteMem, Segment, random_key};

use crate::direct;
use crate::frame::RmaStatus;

struct Region {
    segs: Vec<Segment>,
    len: u64,
    access: Access,
    /// Being deregistered: refused to every new access, still readable by queued frames.
    revoked: bool,
    /// Its entry in the arena of direct copies ([`crate::direct`]), if peers may copy
    /// it themselves.
    entry: Option<u32>,
    /// Frames alive that read it when written ([`Pin`]).
    pins: Arc<AtomicUsize>,
}

/// A frame's hold on the region whose bytes it is written from, taken with the check that
/// let the frame be built: a deregistration that finds none held looks for no frame to
/// materialize (with thousands of connections, looking in each cost 40 ns per connection
/// per deregistration).
pub struct Pin(Arc<AtomicUsize>);

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl Region {
    fn pin(&self) -> Pin {
        self.pins.fetch_add(1, Ordering::Relaxed);
        Pin(self.pins.clone())
    }

    /// Calls `f(segment_bytes_ptr, range_in_data)` for each piece of `offset..offset+len`.
    fn walk(
        &self,
        mut offset: u64,
        len: usize,
        mut f: impl FnMut(*mut u8, std::ops::Range<usize>),
    ) {
        let mut done = 0usize;
        for s in &self.segs {
            if done == len {
                break;
            }
            let slen = s.len() as u64;
            if offset >= slen {
                offset -= slen;
                continue;
            }
            let n = ((slen - offset) as usize).min(len - done);
            // SAFETY: offset < slen, so the pointer stays inside the segment.
            let p = unsafe { s.ptr().add(offset as usize) };
            f(p, done..done + n);
            done += n;
            offset = 0;
        }
    }
}

/// The table of registrations, keyed by their random key (the OS's randomness, so a
/// hash without keys of its own suffices: a peer chooses which keys to look up, never
/// which are in the table).
#[derive(Default)]
pub struct MemTable {
    regions: RwLock<HashMap<u64, Region>>,
    /// Whether one-segment regions are offered to peers' direct copies.
    direct: bool,
}

fn checked_range(region_len: u64, offset: u64, len: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= region_len)
}

impl MemTable {
    /// A table that offers one-segment regions to peers' direct copies (as their access
    /// allows).
    pub fn with_direct_reads() -> Self {
        MemTable {
            direct: direct::SUPPORTED,
            ..MemTable::default()
        }
    }

    /// Registers segments.
    ///
    /// # Safety
    /// The contract of [`na::Plugin::register`].
    pub unsafe fn register(&self, segs: &[Segment], access: Access) -> NaResult<MemHandle> {
        let len = segs.iter().map(|s| s.len() as u64).sum();
        let mut map = self.regions.write().unwrap_or_else(|e| e.into_inner());
        let key = loop {
            let k = random_key()?;
            if k != 0 && !map.contains_key(&k) {
                break k;
            }
        };
        let peers = (u64::from(access.remote_read()) * direct::READ)
            | (u64::from(access.remote_write()) * direct::WRITE);
        let (entry, extra) = match segs {
            [s] if self.direct && peers != 0 && len >= direct::WHOLE_MIN => {
                let (arena, addr) = (direct::Arena::get(), s.ptr() as u64);
                match arena.take(key, addr, len, peers) {
                    Some((i, at)) => (Some(i), arena.extras(key, at, addr, len)),
                    None => (None, Vec::new()),
                }
            }
            _ => (None, Vec::new()),
        };
        map.insert(
            key,
            Region {
                segs: segs.to_vec(),
                len,
                access,
                revoked: false,
                entry,
                pins: Arc::default(),
            },
        );
        Ok(MemHandle {
            id: key,
            remote: RemoteMem {
                key,
                len,
                access,
                extra: extra.into(),
            },
        })
    }

    /// First step of deregistration: every new access to the region is refused, while
    /// frames already queued can still read it (until they are materialized). True if
    /// peers may have started writing it directly before (`crate::direct`: the caller
    /// waits for their leases before the memory goes).
    pub fn revoke(&self, id: u64) -> NaResult<bool> {
        let mut map = self.regions.write().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&id) {
            Some(r) if !r.revoked => {
                r.revoked = true;
                if let Some(i) = r.entry {
                    direct::Arena::get().revoke(i);
                }
                Ok(r.entry.is_some() && r.access.remote_write())
            }
            _ => Err(NaError::InvalidArgument(
                "memory handle is not registered".into(),
            )),
        }
    }

    /// Ends every region still registered (the table's plugin is going): their entries
    /// are revoked and given back once no peer declares a write into them (their memory
    /// is the owners' to free after).
    pub fn end_all(&self) {
        let map = std::mem::take(&mut *self.regions.write().unwrap_or_else(|e| e.into_inner()));
        let arena = direct::Arena::get();
        for (key, r) in map {
            if let Some(i) = r.entry {
                arena.revoke(i);
                if r.access.remote_write() {
                    crate::StreamPlugin::await_leases(key);
                }
                arena.give(i);
            }
        }
    }

    /// Whether frames built before `id` was revoked may still read it (taken after
    /// [`Self::revoke`], which no new pin passes).
    pub fn pinned(&self, id: u64) -> bool {
        let map = self.regions.read().unwrap_or_else(|e| e.into_inner());
        map.get(&id)
            .is_some_and(|r| r.pins.load(Ordering::Acquire) > 0)
    }

    /// Last step of deregistration: forgets the region.
    pub fn remove(&self, id: u64) {
        let gone = self
            .regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(i) = gone.and_then(|r| r.entry) {
            direct::Arena::get().give(i);
        }
    }

    /// Read access for building writes straight from registered memory.
    pub fn read(&self) -> MemRead<'_> {
        MemRead(self.regions.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn live(map: &HashMap<u64, Region>, id: u64) -> Option<&Region> {
        map.get(&id).filter(|r| !r.revoked)
    }

    /// Checks a local range before posting an operation on it.
    pub fn check_local(&self, id: u64, offset: u64, len: u64) -> NaResult<()> {
        let map = self.regions.read().unwrap_or_else(|e| e.into_inner());
        Self::local_region(&map, id, offset, len).map(drop)
    }

    /// [`Self::check_local`] for a frame to be written from the range: its pin.
    pub fn pin_local(&self, id: u64, offset: u64, len: u64) -> NaResult<Pin> {
        let map = self.regions.read().unwrap_or_else(|e| e.into_inner());
        Self::local_region(&map, id, offset, len).map(Region::pin)
    }

    /// A remote read of `(key, offset, len)` answered by a frame written from the range:
    /// its pin, or why it is refused.
    pub fn pin_remote_read(&self, key: u64, offset: u64, len: u64) -> Result<Pin, RmaStatus> {
        self.with_region(key, offset, len, false, Region::pin)
    }

    /// The live region a local range lies in.
    fn local_region(
        map: &HashMap<u64, Region>,
        id: u64,
        offset: u64,
        len: u64,
    ) -> NaResult<&Region> {
        let r = Self::live(map, id).ok_or_else(|| {
            NaError::InvalidArgument("local memory handle is not registered".into())
        })?;
        if !checked_range(r.len, offset, len) {
            return Err(NaError::InvalidArgument(format!(
                "local range {offset}+{len} outside region of {} bytes",
                r.len
            )));
        }
        Ok(r)
    }

    fn with_region<T>(
        &self,
        key: u64,
        offset: u64,
        len: u64,
        write: bool,
        f: impl FnOnce(&Region) -> T,
    ) -> Result<T, RmaStatus> {
        let map = self.regions.read().unwrap_or_else(|e| e.into_inner());
        Self::remote_region(&map, key, offset, len, write).map(f)
    }

    /// The region a remote access of `len` bytes at `offset` of `key` may use.
    fn remote_region(
        map: &HashMap<u64, Region>,
        key: u64,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<&Region, RmaStatus> {
        let r = Self::live(map, key).ok_or(RmaStatus::BadKey)?;
        if !checked_range(r.len, offset, len) {
            return Err(RmaStatus::OutOfBounds);
        }
        let allowed = if write {
            r.access.remote_write()
        } else {
            r.access.remote_read()
        };
        if !allowed {
            return Err(RmaStatus::Forbidden);
        }
        Ok(r)
    }

    /// Checks remote accesses `(key, offset, len)` and runs `f` with each one's pieces, or
    /// why it is refused, with the read lock held throughout (deregistration waits for it).
    pub fn with_many_remote_pieces<T>(
        &self,
        accesses: impl Iterator<Item = (u64, u64, u64)>,
        write: bool,
        f: impl FnOnce(Vec<Result<RawPieces, RmaStatus>>) -> T,
    ) -> T {
        let map = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let each = accesses
            .map(|(key, offset, len)| {
                Self::remote_region(&map, key, offset, len, write).map(|r| {
                    let mut pieces = RawPieces::new();
                    r.walk(offset, len as usize, |p, range| {
                        pieces.push((p, range.len()))
                    });
                    pieces
                })
            })
            .collect();
        f(each)
    }

    /// The addresses of a live local range as (address, length) pieces, for a peer that
    /// copies into or out of it directly.
    pub fn local_pieces(&self, id: u64, offset: u64, len: u64) -> NaResult<crate::frame::Pieces> {
        let map = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let r = Self::local_region(&map, id, offset, len)?;
        let mut out = crate::frame::Pieces::new();
        r.walk(offset, len as usize, |p, range| {
            out.push((p as u64, range.len() as u64))
        });
        Ok(out)
    }

    /// Whether a remote access of `len` bytes at `offset` of region `key` is allowed.
    pub fn check_remote(&self, key: u64, offset: u64, len: u64, write: bool) -> RmaStatus {
        self.with_region(key, offset, len, write, |_| ())
            .err()
            .unwrap_or(RmaStatus::Ok)
    }

    /// Serves a remote write of `data` at `offset` if key, bounds and access allow.
    pub fn remote_write(&self, key: u64, offset: u64, data: &[u8]) -> RmaStatus {
        self.with_region(key, offset, data.len() as u64, true, |r| {
            Self::copy_in(r, offset, data)
        })
        .err()
        .unwrap_or(RmaStatus::Ok)
    }

    fn copy_in(r: &Region, offset: u64, data: &[u8]) {
        r.walk(offset, data.len(), |p, range| {
            // SAFETY: as in remote_read; the bounds were checked against the region.
            unsafe { std::ptr::copy_nonoverlapping(data[range.clone()].as_ptr(), p, range.len()) }
        });
    }

    /// Writes `data` into a local registration (the landing of a get).
    pub fn local_write(&self, id: u64, offset: u64, data: &[u8]) -> NaResult<()> {
        let map = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let r = Self::live(&map, id).ok_or_else(|| {
            NaError::InvalidArgument("local memory handle was deregistered".into())
        })?;
        if !checked_range(r.len, offset, data.len() as u64) {
            return Err(NaError::InvalidArgument(
                "local range outside region".into(),
            ));
        }
        Self::copy_in(r, offset, data);
        Ok(())
    }
}

use crate::wire::RawPiece;

/// The pieces of one access of a region: few, kept inline.
pub type RawPieces = smallvec::SmallVec<[RawPiece; 2]>;

impl MemTable {
    /// The pieces of live region `key` at `offset..offset+len`, to receive `write`-side
    /// data into (`write`: a remote put, checked against the access mode; otherwise the
    /// landing of a local get), with the read lock that keeps them valid; `None` if the
    /// region is gone, revoked, or the range or mode does not fit.
    pub fn landing(
        &self,
        key: u64,
        offset: u64,
        len: usize,
        remote: bool,
    ) -> Option<(MemRead<'_>, Vec<RawPiece>)> {
        let guard = self.read();
        if remote && !Self::live(&guard.0, key).is_some_and(|r| r.access.remote_write()) {
            return None;
        }
        let mut out = Vec::with_capacity(4);
        guard
            .pieces(key, offset, len, &mut out)
            .then_some((guard, out))
    }
}

/// A read lock on the registrations, under which registered bytes can be borrowed.
pub struct MemRead<'a>(RwLockReadGuard<'a, HashMap<u64, Region>>);

impl MemRead<'_> {
    /// Appends the pieces of live region `key` at `offset..offset+len` to `out` (no
    /// access check: our own copies); false, appending nothing, if the region is gone,
    /// revoked, or the range does not fit.
    pub fn pieces(&self, key: u64, offset: u64, len: usize, out: &mut Vec<RawPiece>) -> bool {
        let Some(r) =
            MemTable::live(&self.0, key).filter(|r| checked_range(r.len, offset, len as u64))
        else {
            return false;
        };
        r.walk(offset, len, |p, range| out.push((p, range.len())));
        true
    }

    /// The bytes `offset..offset+len` of region `key` as slices in order (revoked regions
    /// included: their memory stays valid until they are removed), or `None`.
    pub fn slices(
        &self,
        key: u64,
        offset: u64,
        len: usize,
    ) -> Option<smallvec::SmallVec<[&[u8]; 2]>> {
        let r = self
            .0
            .get(&key)
            .filter(|r| checked_range(r.len, offset, len as u64))?;
        let mut out = smallvec::SmallVec::new();
        r.walk(offset, len, |p, range| {
            // SAFETY: the region is registered, and stays so while this read guard lives
            // (removal takes the write lock); by the register contract its memory is valid
            // for reads, and `walk` keeps `p..p+range.len()` inside one segment.
            out.push(unsafe { std::slice::from_raw_parts(p.cast_const(), range.len()) })
        });
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(t: &MemTable, key: u64, off: u64, len: usize) -> Vec<u8> {
        t.read().slices(key, off, len).unwrap().concat()
    }

    #[test]
    fn owner_checks_key_bounds_and_mode_across_segments() {
        let t = MemTable::default();
        let mut a = vec![1u8, 2, 3];
        let mut b = vec![4u8, 5, 6, 7];
        let segs = [Segment::from_slice(&mut a), Segment::from_slice(&mut b)];
        let h = unsafe { t.register(&segs, Access::ReadOnly) }.unwrap();
        let key = h.remote.key;
        assert_eq!(t.check_remote(key, 1, 4, false), RmaStatus::Ok);
        assert_eq!(bytes(&t, key, 1, 4), [2, 3, 4, 5]);
        assert_eq!(t.check_remote(key ^ 1, 0, 1, false), RmaStatus::BadKey);
        assert_eq!(t.check_remote(key, 5, 3, false), RmaStatus::OutOfBounds);
        assert_eq!(
            t.check_remote(key, u64::MAX, 2, false),
            RmaStatus::OutOfBounds
        );
        assert_eq!(t.remote_write(key, 0, b"x"), RmaStatus::Forbidden);
        assert_eq!(a, [1, 2, 3]);
    }

    #[test]
    fn revoked_regions_refuse_new_access_but_stay_readable_until_removed() {
        let t = MemTable::default();
        let mut a = vec![9u8; 8];
        let h = unsafe { t.register(&[Segment::from_slice(&mut a)], Access::ReadWrite) }.unwrap();
        t.revoke(h.id).unwrap();
        assert_eq!(t.check_remote(h.id, 0, 1, false), RmaStatus::BadKey);
        assert!(t.check_local(h.id, 0, 1).is_err());
        assert!(
            t.revoke(h.id).is_err(),
            "revoking twice is the caller's error"
        );
        assert_eq!(bytes(&t, h.id, 0, 8), [9u8; 8]);
        t.remove(h.id);
        assert!(t.read().slices(h.id, 0, 1).is_none());
    }

    #[test]
    fn a_region_is_pinned_while_frames_built_from_it_live_and_none_pin_it_once_revoked() {
        let t = MemTable::default();
        let mut a = vec![9u8; 8];
        let h = unsafe { t.register(&[Segment::from_slice(&mut a)], Access::ReadOnly) }.unwrap();
        assert!(!t.pinned(h.id));
        let (local, remote) = (
            t.pin_local(h.id, 0, 8).unwrap(),
            t.pin_remote_read(h.id, 4, 4),
        );
        let remote = remote.unwrap_or_else(|st| panic!("{st:?}"));
        assert!(t.pin_local(h.id, 4, 5).is_err(), "out of bounds: no pin");
        assert!(matches!(
            t.pin_remote_read(h.id ^ 1, 0, 1),
            Err(RmaStatus::BadKey)
        ));
        drop(local);
        t.revoke(h.id).unwrap();
        assert!(
            t.pinned(h.id),
            "a frame built before the revocation still reads it"
        );
        assert!(t.pin_local(h.id, 0, 1).is_err());
        assert!(matches!(
            t.pin_remote_read(h.id, 0, 1),
            Err(RmaStatus::BadKey)
        ));
        drop(remote);
        assert!(
            !t.pinned(h.id),
            "nothing reads it: deregistration looks at no connection"
        );
        t.remove(h.id);
    }

    #[test]
    fn writes_span_segments() {
        let t = MemTable::default();
        let mut a = vec![0u8; 2];
        let mut b = vec![0u8; 3];
        let segs = [Segment::from_slice(&mut a), Segment::from_slice(&mut b)];
        let h = unsafe { t.register(&segs, Access::WriteOnly) }.unwrap();
        assert_eq!(t.remote_write(h.id, 1, b"xyz"), RmaStatus::Ok);
        assert_eq!(t.check_remote(h.id, 0, 1, false), RmaStatus::Forbidden);
        t.revoke(h.id).unwrap();
        t.remove(h.id);
        assert_eq!((a, b), (vec![0, b'x'], vec![b'y', b'z', 0]));
    }
}
