//! Bulk handles: memory registered for as long as the handle lives.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::BytesMut;
use na::{Access, MemHandle, NaError, Plugin, Segment};

use crate::Descriptor;

/// Bulk errors, by whose fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BulkError {
    /// A local range or access mode the handle does not allow (the caller's fault).
    #[error("invalid bulk use: {0}")]
    Invalid(String),
    /// The transport refused or failed.
    #[error(transparent)]
    Transport(#[from] NaError),
}

/// One segment of a bulk handle: borrowed (mutable or read-only) or owned memory.
pub enum Seg<'a> {
    /// Borrowed writable memory.
    Mut(&'a mut [u8]),
    /// Borrowed read-only memory: the handle can only be read (by peers or pushes).
    Ref(&'a [u8]),
    /// Owned memory.
    Vec(Box<[u8]>),
    /// Owned `bytes` buffer.
    Bytes(BytesMut),
}

impl<'a> From<&'a mut [u8]> for Seg<'a> {
    fn from(s: &'a mut [u8]) -> Self {
        Seg::Mut(s)
    }
}
impl<'a> From<&'a [u8]> for Seg<'a> {
    fn from(s: &'a [u8]) -> Self {
        Seg::Ref(s)
    }
}
impl From<Vec<u8>> for Seg<'_> {
    fn from(v: Vec<u8>) -> Self {
        Seg::Vec(v.into_boxed_slice())
    }
}
impl From<BytesMut> for Seg<'_> {
    fn from(b: BytesMut) -> Self {
        Seg::Bytes(b)
    }
}

impl Seg<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Seg::Mut(s) => s,
            Seg::Ref(s) => s,
            Seg::Vec(v) => v,
            Seg::Bytes(b) => b,
        }
    }

    fn raw(&mut self) -> Segment {
        match self {
            Seg::Mut(s) => Segment::from_slice(s),
            // Only ever read through: handles with a Ref segment are ReadOnly, and local
            // writes (`write_at`, pulls) check for it.
            Seg::Ref(s) => Segment::new(s.as_ptr().cast_mut(), s.len()),
            Seg::Vec(v) => Segment::from_slice(v),
            Seg::Bytes(b) => Segment::from_slice(b),
        }
    }
}

/// Memory registered with a transport. Remote access is revoked when the handle drops.
/// Its memory cannot move or be freed while registered: borrowed segments are borrowed for
/// the handle's lifetime `'a`, owned ones are owned by it. Transfers borrow the handle
/// (`&mut` to land data in it, `&` to send from it), so local code cannot race with them.
pub struct Bulk<'a> {
    plugin: Arc<dyn Plugin>,
    handle: MemHandle,
    segs: Vec<Seg<'a>>,
    len: u64,
    inline_max: usize,
    registered: bool,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> Bulk<'a> {
    /// Registers `segs`, in order, as one linear region with `access` for peers.
    pub fn new(
        plugin: &Arc<dyn Plugin>,
        mut segs: Vec<Seg<'a>>,
        access: Access,
    ) -> Result<Self, BulkError> {
        if access != Access::ReadOnly && segs.iter().any(|s| matches!(s, Seg::Ref(_))) {
            return Err(BulkError::Invalid(
                "read-only memory can only be registered ReadOnly".into(),
            ));
        }
        let raw: Vec<Segment> = segs.iter_mut().map(Seg::raw).collect();
        // SAFETY: each segment's memory is either borrowed for 'a (outliving the handle)
        // or owned by `segs`, which the handle keeps without moving the heap blocks; the
        // handle deregisters in Drop before that memory is released. Local access goes
        // through `&self`/`&mut self` methods, which cannot overlap a transfer, since
        // transfers borrow the handle for their whole duration.
        let handle = unsafe { plugin.register(&raw, access)? };
        let len = handle.len();
        Ok(Bulk {
            plugin: plugin.clone(),
            handle,
            segs,
            len,
            inline_max: 0,
            registered: true,
            _borrow: PhantomData,
        })
    }

    /// Lets [`Bulk::descriptor`] carry the bytes of a readable region of at most `n` bytes
    /// (eager bulk): a peer's pull then needs no round trip. Default 0 (never).
    pub fn inline_up_to(mut self, n: usize) -> Self {
        self.inline_max = n;
        self
    }

    /// The descriptor to send to peers. With [`Bulk::inline_up_to`], it carries a copy of
    /// the bytes as they are now.
    pub fn descriptor(&self) -> Descriptor {
        let inline = (self.len as usize <= self.inline_max
            && self.handle.remote.access.remote_read())
        .then(|| self.to_vec());
        Descriptor {
            owner: self.plugin.self_addr().clone(),
            mem: self.handle.remote.clone(),
            inline,
        }
    }

    /// The transport registration, for posting transfers.
    pub fn mem(&self) -> &MemHandle {
        &self.handle
    }

    /// The registered length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the handle is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether local writes (and pulls into the handle) are allowed.
    pub fn writable(&self) -> bool {
        !self.segs.iter().any(|s| matches!(s, Seg::Ref(_)))
    }

    /// The segments' bytes, in order.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> {
        self.segs.iter().map(Seg::bytes)
    }

    /// All bytes, concatenated.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len as usize);
        self.segments().for_each(|s| v.extend_from_slice(s));
        v
    }

    /// Copies `data` into the region at `offset` (across segments).
    pub fn write_at(&mut self, mut offset: u64, data: &[u8]) -> Result<(), BulkError> {
        if !self.writable() {
            return Err(BulkError::Invalid("handle has read-only segments".into()));
        }
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(BulkError::Invalid(format!(
                "{offset}+{} outside {} bytes",
                data.len(),
                self.len
            )));
        }
        let mut rest = data;
        for s in &mut self.segs {
            let buf: &mut [u8] = match s {
                Seg::Mut(s) => s,
                Seg::Vec(v) => v,
                Seg::Bytes(b) => b,
                Seg::Ref(_) => unreachable!("checked by writable()"),
            };
            let n = buf.len() as u64;
            if offset >= n {
                offset -= n;
                continue;
            }
            let k = rest.len().min((n - offset) as usize);
            buf[offset as usize..offset as usize + k].copy_from_slice(&rest[..k]);
            rest = &rest[k..];
            offset = 0;
            if rest.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Revokes remote access and returns the bytes, concatenated (without a copy when
    /// the handle is one owned `Vec`).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.revoke();
        match self.segs.as_mut_slice() {
            [Seg::Vec(v)] => std::mem::take(v).into_vec(),
            _ => self.to_vec(),
        }
    }

    fn revoke(&mut self) {
        if std::mem::replace(&mut self.registered, false) {
            let _ = self.plugin.deregister(&self.handle);
        }
    }
}

impl Drop for Bulk<'_> {
    fn drop(&mut self) {
        self.revoke();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin() -> Arc<dyn Plugin> {
        Arc::new(na_tcp::TcpPlugin::new(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap())
    }

    #[test]
    fn writes_span_mixed_segments() {
        let p = plugin();
        let mut a = [0u8; 3];
        let mut b = Bulk::new(
            &p,
            vec![
                Seg::from(&mut a[..]),
                Seg::from(vec![0u8; 2]),
                Seg::from(BytesMut::zeroed(4)),
            ],
            Access::ReadWrite,
        )
        .unwrap();
        b.write_at(2, b"wxyz").unwrap();
        assert_eq!(b.to_vec(), b"\0\0wxyz\0\0\0");
        assert!(b.write_at(8, b"ab").is_err());
        assert!(b.write_at(u64::MAX, b"a").is_err());
        drop(b);
        assert_eq!(a, [0, 0, b'w']);
    }

    #[test]
    fn read_only_memory_stays_read_only() {
        let p = plugin();
        let data = [1u8; 8];
        assert!(Bulk::new(&p, vec![Seg::from(&data[..])], Access::ReadWrite).is_err());
        let mut b = Bulk::new(&p, vec![Seg::from(&data[..])], Access::ReadOnly).unwrap();
        assert!(!b.writable() && b.write_at(0, b"x").is_err());
    }

    #[test]
    fn descriptors_inline_small_readable_regions_only() {
        let p = plugin();
        let b = Bulk::new(&p, vec![Seg::from(vec![5u8; 64])], Access::ReadOnly)
            .unwrap()
            .inline_up_to(64);
        let d = b.descriptor();
        assert_eq!(d.inline.as_deref(), Some(&[5u8; 64][..]));
        let enc = rmp_serde::to_vec(&d).unwrap();
        assert_eq!(rmp_serde::from_slice::<Descriptor>(&enc).unwrap(), d);
        let w = Bulk::new(&p, vec![Seg::from(vec![5u8; 64])], Access::WriteOnly)
            .unwrap()
            .inline_up_to(64);
        assert!(w.descriptor().inline.is_none());
        let big = Bulk::new(&p, vec![Seg::from(vec![5u8; 65])], Access::ReadOnly)
            .unwrap()
            .inline_up_to(64);
        assert!(big.descriptor().inline.is_none());
        assert_eq!(b.into_vec(), vec![5u8; 64]);
    }
}
