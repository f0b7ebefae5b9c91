//! Memory registration: one provider registration per segment, keys a peer cannot guess,
//! the provider's `mr_mode` honoured, and an optional cache of released registrations.

use std::collections::VecDeque;
use std::ptr;

use libfabric_sys as fi;
use na::{Access, MemHandle, NaError, RemoteMem, Segment};
use rustc_hash::FxHashMap;

use crate::fabric::{Domain, Ep, Mr, check, error};
use crate::wire::{RemoteSeg, encode_segs};

/// One registered segment.
pub struct LocalSeg {
    /// Start address.
    pub ptr: *mut u8,
    /// Length.
    pub len: u64,
    /// The provider registration.
    pub mr: Mr,
}

/// A registration: what `register` made for one `MemHandle`.
pub struct Region {
    /// Its segments in order.
    pub segs: Vec<LocalSeg>,
    /// The access it was registered with.
    pub access: Access,
    /// The descriptor handed to peers.
    pub remote: RemoteMem,
}

// SAFETY: the raw pointers are addresses of memory the caller keeps valid under the
// `Plugin::register` contract; the Mr handles are thread-safe libfabric objects.
unsafe impl Send for Region {}

impl Region {
    /// The total length.
    pub fn len(&self) -> u64 {
        self.remote.len
    }

    /// The local descriptor of segment `i` for data-path calls (NULL unless the provider
    /// requires `FI_MR_LOCAL`, where libfabric wants it).
    pub fn desc(&self, i: usize) -> *mut libc::c_void {
        // SAFETY: the MR is open while the region exists.
        unsafe { fi::fi_mr_desc(self.segs[i].mr.0) }
    }
}

/// Registrations by local id, and the cache of released ones.
pub struct MemTable {
    /// (Keys are this table's own ids and keys, never a peer's: a fast hash without DoS
    /// resistance is enough; a peer's key is only looked up.)
    regions: FxHashMap<u64, Region>,
    /// Live registrations by descriptor key, for owner-side checks.
    by_key: FxHashMap<u64, u64>,
    next_id: u64,
    mr_mode: u32,
    key_mask: u64,
    /// Released registrations kept for reuse (same addresses, lengths and access), oldest
    /// first; empty when the cache is off.
    cache: VecDeque<Region>,
    cache_cap: usize,
    /// Registrations made by the provider (`fi_mr_reg` calls), for counters and tests.
    pub provider_regs: u64,
    /// Registrations served from the cache.
    pub cache_hits: u64,
}

impl MemTable {
    /// An empty table for a domain with `mr_mode` and `key_size`-byte keys.
    pub fn new(mr_mode: u32, key_size: usize, cache_cap: usize) -> MemTable {
        let key_mask = if key_size >= 8 || key_size == 0 {
            u64::MAX
        } else {
            (1u64 << (8 * key_size)) - 1
        };
        MemTable {
            regions: FxHashMap::default(),
            by_key: FxHashMap::default(),
            next_id: 1,
            mr_mode,
            key_mask,
            cache: VecDeque::new(),
            cache_cap,
            provider_regs: 0,
            cache_hits: 0,
        }
    }

    /// The region registered as `id`.
    pub fn get(&self, id: u64) -> Option<&Region> {
        self.regions.get(&id)
    }

    /// Registers `segs` for `access` (or reuses a cached identical registration).
    ///
    /// # Safety
    /// As `Plugin::register`: the segments stay valid until deregistered.
    pub unsafe fn register(
        &mut self,
        domain: &Domain,
        ep: &Ep,
        segs: &[Segment],
        access: Access,
    ) -> Result<MemHandle, NaError> {
        let id = self.next_id;
        self.next_id += 1;
        let same = |r: &Region| {
            r.access == access
                && r.segs.len() == segs.len()
                && r.segs
                    .iter()
                    .zip(segs)
                    .all(|(a, b)| a.ptr == b.ptr() && a.len == b.len() as u64)
        };
        if let Some(i) = self.cache.iter().position(same) {
            let r = self.cache.remove(i).expect("position is in range");
            self.cache_hits += 1;
            let h = MemHandle {
                id,
                remote: r.remote.clone(),
            };
            self.by_key.insert(r.remote.key, id);
            self.regions.insert(id, r);
            return Ok(h);
        }
        let mut tries = 0;
        let region = loop {
            let base = na::random_key()? & self.key_mask;
            // SAFETY: forwarded from this function's contract.
            match unsafe { self.register_new(domain, ep, segs, access, base) } {
                Err(NaError::Os { msg, .. }) if msg.contains("key") && tries < 8 => tries += 1,
                r => break r?,
            }
        };
        let h = MemHandle {
            id,
            remote: region.remote.clone(),
        };
        self.by_key.insert(region.remote.key, id);
        self.regions.insert(id, region);
        Ok(h)
    }

    /// The owner's check of a peer's RMA: a live registration under `key` whose range and
    /// access allow it.
    pub fn allows(&self, key: u64, off: u64, len: u64, write: bool) -> bool {
        self.allowed(key, off, len, write).is_some()
    }

    /// As [`Self::allows`]; the registration's id when allowed.
    pub fn allowed(&self, key: u64, off: u64, len: u64, write: bool) -> Option<u64> {
        let id = *self.by_key.get(&key)?;
        let r = self.regions.get(&id)?;
        let mode = if write {
            r.access.remote_write()
        } else {
            r.access.remote_read()
        };
        (mode && off.checked_add(len).is_some_and(|end| end <= r.len())).then_some(id)
    }

    /// Serves a peer's small transfer in place of the provider (a `Carry`): writes `data`
    /// at `off` of the region under `key`, or (`data` None) appends the `len` bytes there
    /// to `out` (the answer being built), if [`Self::allows`] it. False when refused.
    pub fn carry(
        &self,
        key: u64,
        off: u64,
        len: u64,
        data: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> bool {
        if !self.allows(key, off, len, data.is_some())
            || data.is_some_and(|d| d.len() as u64 != len)
        {
            return false;
        }
        let Some(r) = self.by_key.get(&key).and_then(|id| self.regions.get(id)) else {
            return false;
        };
        if data.is_none() {
            out.reserve(len as usize);
        }
        let (mut start, mut done, end) = (0u64, 0usize, off + len);
        for s in &r.segs {
            let (lo, hi) = (off.max(start), end.min(start + s.len));
            if lo < hi {
                let n = (hi - lo) as usize;
                // SAFETY: [lo, hi) lies inside this segment (bounds checked by `allows`),
                // whose memory the registrant keeps valid while it is registered, as it is
                // (it is in the table); `done + n <= len`, the length of `data` and of the
                // room reserved in `out`, whose length grows by exactly what is copied.
                unsafe {
                    let p = s.ptr.add((lo - start) as usize);
                    match data {
                        Some(d) => ptr::copy_nonoverlapping(d.as_ptr().add(done), p, n),
                        None => {
                            ptr::copy_nonoverlapping(p, out.as_mut_ptr().add(out.len()), n);
                            out.set_len(out.len() + n);
                        }
                    }
                }
                done += n;
            }
            start += s.len;
        }
        true
    }

    /// # Safety
    /// As `register`.
    unsafe fn register_new(
        &mut self,
        domain: &Domain,
        ep: &Ep,
        segs: &[Segment],
        access: Access,
        base_key: u64,
    ) -> Result<Region, NaError> {
        let mut flags = (fi::FI_READ | fi::FI_WRITE | fi::FI_SEND | fi::FI_RECV) as u64;
        if access.remote_read() {
            flags |= fi::FI_REMOTE_READ as u64;
        }
        if access.remote_write() {
            flags |= fi::FI_REMOTE_WRITE as u64;
        }
        let prov_key = self.mr_mode & fi::FI_MR_PROV_KEY != 0;
        let mut out: Vec<LocalSeg> = Vec::with_capacity(segs.len());
        let mut table = Vec::with_capacity(segs.len());
        let mut key0 = base_key;
        for (i, s) in segs.iter().enumerate() {
            let requested = (base_key ^ i as u64) & self.key_mask;
            let mut mr: *mut fi::fid_mr = ptr::null_mut();
            // A zero-length segment still gets a (one-byte) registration so that every
            // segment has a key; it is never accessed.
            let len = s.len().max(1);
            // SAFETY: the caller keeps the memory valid; out pointer is a local.
            let rc = unsafe {
                fi::fi_mr_reg(
                    domain.0,
                    s.ptr() as *const libc::c_void,
                    len,
                    flags,
                    0,
                    if prov_key { 0 } else { requested },
                    0,
                    &mut mr,
                    ptr::null_mut(),
                )
            };
            if rc != 0 {
                return Err(if rc as i64 == -(fi::FI_ENOKEY as i64) {
                    NaError::Os {
                        kind: std::io::ErrorKind::AlreadyExists,
                        msg: "fi_mr_reg: key in use".into(),
                    }
                } else {
                    error("fi_mr_reg", rc as i64)
                });
            }
            let mr = Mr(mr);
            self.provider_regs += 1;
            if self.mr_mode & fi::FI_MR_ENDPOINT != 0 {
                // SAFETY: both objects are open.
                unsafe {
                    check("fi_mr_bind", fi::fi_mr_bind(mr.0, ep.fid(), 0) as i64)?;
                    check("fi_mr_enable", fi::fi_mr_enable(mr.0) as i64)?;
                }
            }
            // SAFETY: the MR is open.
            let key = if prov_key {
                unsafe { fi::fi_mr_key(mr.0) }
            } else {
                requested
            };
            if i == 0 {
                key0 = key;
            }
            let base = if self.mr_mode & fi::FI_MR_VIRT_ADDR != 0 {
                s.ptr() as u64
            } else {
                0
            };
            table.push(RemoteSeg {
                base,
                len: s.len() as u64,
                key_delta: key ^ key0,
            });
            out.push(LocalSeg {
                ptr: s.ptr(),
                len: s.len() as u64,
                mr,
            });
        }
        let total = segs.iter().map(|s| s.len() as u64).sum();
        Ok(Region {
            segs: out,
            access,
            remote: RemoteMem {
                key: key0,
                len: total,
                access,
                extra: encode_segs(&table).into(),
            },
        })
    }

    /// Refuses new checks of registration `id` (it stays open for the transfers granted
    /// already); false if there is no such registration.
    pub fn revoke(&mut self, id: u64) -> bool {
        let Some(r) = self.regions.get(&id) else {
            return false;
        };
        self.by_key.remove(&r.remote.key);
        true
    }

    /// Releases a registration: closed at once (peers lose access), or kept in the cache
    /// when it is on.
    pub fn deregister(&mut self, id: u64) -> Result<(), NaError> {
        let r = self
            .regions
            .remove(&id)
            .ok_or_else(|| NaError::InvalidArgument(format!("unknown registration {id}")))?;
        self.by_key.remove(&r.remote.key);
        if self.cache_cap > 0 {
            self.cache.push_back(r);
            while self.cache.len() > self.cache_cap {
                self.cache.pop_front();
            }
        }
        Ok(())
    }

    /// Closes every registration (before the endpoint and domain close).
    pub fn clear(&mut self) {
        self.regions.clear();
        self.by_key.clear();
        self.cache.clear();
    }
}
