//! Registered memory of this endpoint: the owner-side checks (key, bounds, access mode)
//! and the only code that touches registered bytes.

use std::collections::HashMap;
use std::sync::RwLock;

use na::{Access, MemHandle, NaError, NaResult, RemoteMem, Segment, random_key};

use crate::frame::RmaStatus;

struct Region {
    segs: Vec<Segment>,
    len: u64,
    access: Access,
}

impl Region {
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

/// The table of registrations, keyed by their random key.
#[derive(Default)]
pub struct MemTable {
    regions: RwLock<HashMap<u64, Region>>,
}

fn checked_range(region_len: u64, offset: u64, len: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= region_len)
}

impl MemTable {
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
        map.insert(
            key,
            Region {
                segs: segs.to_vec(),
                len,
                access,
            },
        );
        Ok(MemHandle {
            id: key,
            remote: RemoteMem {
                key,
                len,
                access,
                extra: Vec::new(),
            },
        })
    }

    /// Removes a registration; remote requests for it fail from now on.
    pub fn deregister(&self, id: u64) -> NaResult<()> {
        let mut map = self.regions.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&id)
            .map(|_| ())
            .ok_or_else(|| NaError::InvalidArgument("memory handle is not registered".into()))
    }

    /// Checks a local range before posting an operation on it.
    pub fn check_local(&self, id: u64, offset: u64, len: u64) -> NaResult<()> {
        let map = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let r = map.get(&id).ok_or_else(|| {
            NaError::InvalidArgument("local memory handle is not registered".into())
        })?;
        if !checked_range(r.len, offset, len) {
            return Err(NaError::InvalidArgument(format!(
                "local range {offset}+{len} outside region of {} bytes",
                r.len
            )));
        }
        Ok(())
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
        let r = map.get(&key).ok_or(RmaStatus::BadKey)?;
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
        Ok(f(r))
    }

    /// Serves a remote read: appends the bytes to `out` if key, bounds and access allow.
    pub fn remote_read(&self, key: u64, offset: u64, len: u64, out: &mut Vec<u8>) -> RmaStatus {
        self.with_region(key, offset, len, false, |r| {
            let base = out.len();
            out.resize(base + len as usize, 0);
            r.walk(offset, len as usize, |p, range| {
                // SAFETY: the region is registered (we hold the table's read lock, and
                // deregistration takes the write lock), so `p..p+range.len()` is valid
                // memory by the register contract; `out` is a distinct Vec.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        p,
                        out[base + range.start..].as_mut_ptr(),
                        range.len(),
                    )
                }
            });
        })
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
        let r = map.get(&id).ok_or_else(|| {
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

    /// Appends local registered bytes to `out` (the source of a put).
    pub fn local_read(&self, id: u64, offset: u64, len: u64, out: &mut Vec<u8>) -> NaResult<()> {
        let map = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let r = map.get(&id).ok_or_else(|| {
            NaError::InvalidArgument("local memory handle was deregistered".into())
        })?;
        if !checked_range(r.len, offset, len) {
            return Err(NaError::InvalidArgument(
                "local range outside region".into(),
            ));
        }
        let base = out.len();
        out.resize(base + len as usize, 0);
        r.walk(offset, len as usize, |p, range| {
            // SAFETY: as in remote_read.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    p,
                    out[base + range.start..].as_mut_ptr(),
                    range.len(),
                )
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_checks_key_bounds_and_mode_across_segments() {
        let t = MemTable::default();
        let mut a = vec![1u8, 2, 3];
        let mut b = vec![4u8, 5, 6, 7];
        let h = unsafe {
            t.register(
                &[Segment::from_slice(&mut a), Segment::from_slice(&mut b)],
                Access::ReadOnly,
            )
        }
        .unwrap();
        let key = h.remote.key;
        let mut out = Vec::new();
        assert_eq!(t.remote_read(key, 1, 4, &mut out), RmaStatus::Ok);
        assert_eq!(out, [2, 3, 4, 5]);
        assert_eq!(t.remote_read(key ^ 1, 0, 1, &mut out), RmaStatus::BadKey);
        assert_eq!(t.remote_read(key, 5, 3, &mut out), RmaStatus::OutOfBounds);
        assert_eq!(
            t.remote_read(key, u64::MAX, 2, &mut out),
            RmaStatus::OutOfBounds
        );
        assert_eq!(t.remote_write(key, 0, b"x"), RmaStatus::Forbidden);
        assert_eq!(a, [1, 2, 3]);
        t.deregister(key).unwrap();
        assert_eq!(t.remote_read(key, 0, 1, &mut out), RmaStatus::BadKey);
    }

    #[test]
    fn writes_span_segments() {
        let t = MemTable::default();
        let mut a = vec![0u8; 2];
        let mut b = vec![0u8; 3];
        let h = unsafe {
            t.register(
                &[Segment::from_slice(&mut a), Segment::from_slice(&mut b)],
                Access::WriteOnly,
            )
        }
        .unwrap();
        assert_eq!(t.remote_write(h.id, 1, b"xyz"), RmaStatus::Ok);
        let mut out = Vec::new();
        assert_eq!(t.remote_read(h.id, 0, 1, &mut out), RmaStatus::Forbidden);
        t.deregister(h.id).unwrap();
        assert_eq!((a, b), (vec![0, b'x'], vec![b'y', b'z', 0]));
    }
}
