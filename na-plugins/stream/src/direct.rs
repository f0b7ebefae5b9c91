//! Copies by the requester (Mercury's sm get and put), used for the tail of large
//! transfers (`crate::tail`): where the wire copies between processes
//! ([`crate::Wire::single_copy`]: sm between processes of one uid), a one-segment region's
//! descriptor carries the owner's pid, the region's address and the address of its
//! *entry* in the owner's [`Arena`], and a requester connected to that pid copies bytes
//! itself with one `process_vm_readv` or `process_vm_writev`: no request, no answer, no
//! work for the owner.
//!
//! Why the requester may copy: between processes of one uid, with ptrace allowed (the
//! single-copy probe), the kernel would let it read and write any of the owner's memory
//! anyway. What it may do to a region is what the owner let peers do (the entry's access
//! word, [`READ`] and [`WRITE`]).
//!
//! Why a write never lands in memory the owner has let go (a write, unlike a read, could
//! not be taken back): the requester declares the region's key in its *write lease* word,
//! a word of the link's shared memory only it writes, before it reads the entry, and
//! clears it after the write; the owner, deregistering, clears the entry's key and then
//! waits until no peer of its uid declares the key on any link of the process, of any
//! plugin, closed ones under a write included (`StreamPlugin::deregister`, `tail.rs`).
//! Both steps are a store, a sequentially consistent fence and a load, so one side sees
//! the other: either the requester reads a cleared entry and writes nothing, or the owner
//! sees the lease and waits for the write to end (model-checked: `na_sm::lease`). A
//! requester copies only over a link whose handshake is done (the owner watches every
//! link from before its first frame).
//!
//! Why it reads only what the owner exposed, whoever wrote the descriptor (a third party
//! may hand us a forged one, to make us read an owner of our uid for it): the entry must
//! lie in the arena the owner announced on the link itself (its own part of the link's
//! shared header, which only the two processes of the link can write), and must hold the
//! region's random key with the descriptor's address and length. An arena entry holds a
//! live registration's key or 0, so only a descriptor the owner made passes.
//!
//! Why the bytes are the region's: the entry holds the key while the region is registered
//! and is zeroed before deregistration returns (so before the memory can be freed). The
//! requester reads the entry first (nothing else unless it holds the key, address and
//! length), then, in one call and in this order, the data and the entry's key again (the
//! kernel copies the vectors in order, and x86-64 does not reorder loads): if the key is
//! still there, the data was read before the region could end. A key never comes back
//! to an entry (reused ones hold another), so an entry read half before a reuse and half
//! after fails one of the two checks. Entries are never unmapped. Anything else — another
//! pid, a bad encoding, an entry outside the arena, a short copy, a changed entry — falls
//! back to the owner's checked path, which gives the authoritative answer.
//!
//! Why a descriptor tells other users nothing: descriptors travel to peers of any uid (a
//! root server's large answers go to every client), so the extras are masked under a
//! random salt of the owner's process ([`Direct::encode`]), announced with the arena on
//! links to peers of its uid only. To others they are noise: no address of the owner's,
//! and no weakening of its address layout randomisation.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The encoding's first byte.
const MAGIC: u8 = b'D';
/// Its length: magic, then pid, entry address, region address and region length, each
/// as a masked 64-bit word.
const LEN: usize = 1 + 4 * 8;

/// Transfers from this long are shared by halves (the owner copies the head, the
/// requester the tail): shared from 64 KiB, 64 KiB transfers measured slower (two copy
/// calls of 32 KiB), 128 KiB ones faster than with 256 KiB here (`qs-bw -t sm`).
pub const SHARE_MIN: u64 = 128 << 10;

/// Transfers from this long up to [`SHARE_MIN`] are shared whole, every other one copied
/// by the requester (`crate::tail`), and regions shorter carry no extras (each costs the
/// owner a MAC): a copy call costs about a microsecond, so smaller transfers are the
/// owner's alone (each read copied whole by the requester measured slower from 4 KiB to
/// 64 KiB: the owner idled).
pub const WHOLE_MIN: u64 = 32 << 10;

/// Whether copies by the requester are sound on this target (see the module docs: the
/// entry read after the data must not pass the data's loads, nor the entry's read the
/// write lease's store and fence).
pub const SUPPORTED: bool = cfg!(target_arch = "x86_64");

/// What a descriptor says about reaching its region directly (one segment only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Direct {
    /// The owner's pid, as it sees itself.
    pub pid: u32,
    /// The address of the region's entry in the owner's arena.
    pub entry: u64,
    /// The region's address in the owner.
    pub addr: u64,
    /// The region's length.
    pub len: u64,
}

/// The words that mask region `key`'s extras under the owner's `salt`: addresses of a
/// process are for peers of its uid only (those the salt is announced to); to any other
/// the extras are noise, and a descriptor does not weaken the owner's address layout
/// randomisation.
fn pads(salt: u64, key: u64) -> [u64; 4] {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&salt.to_le_bytes())
        .expect("HMAC takes any key length");
    m.update(b"qs-direct");
    m.update(&key.to_le_bytes());
    let out = m.finalize().into_bytes();
    std::array::from_fn(|i| {
        u64::from_le_bytes(out[i * 8..i * 8 + 8].try_into().unwrap_or_default())
    })
}

impl Direct {
    /// Encodes for [`na::RemoteMem::extra`] of region `key`, masked under `salt`.
    pub fn encode(&self, key: u64, salt: u64) -> Vec<u8> {
        let p = pads(salt, key);
        let mut out = Vec::with_capacity(LEN);
        out.push(MAGIC);
        let words = [u64::from(self.pid), self.entry, self.addr, self.len];
        for (w, p) in words.iter().zip(p) {
            out.extend_from_slice(&(w ^ p).to_le_bytes());
        }
        out
    }

    /// Decodes a peer's extras for region `key` of `len` bytes under its `salt`: `None`
    /// unless well formed, of that length, and within the address space.
    pub fn decode(extra: &[u8], key: u64, len: u64, salt: u64) -> Option<Direct> {
        if extra.len() != LEN || extra[0] != MAGIC {
            return None;
        }
        let p = pads(salt, key);
        let w = |i: usize| {
            u64::from_le_bytes(extra[1 + i * 8..9 + i * 8].try_into().unwrap_or_default()) ^ p[i]
        };
        let d = Direct {
            pid: u32::try_from(w(0)).ok()?,
            entry: w(1),
            addr: w(2),
            len: w(3),
        };
        let fits = d.addr.checked_add(d.len).is_some() && d.entry.checked_add(32).is_some();
        (fits && d.len == len).then_some(d)
    }

    /// Whether the entry lies on an entry boundary of the arena `(base, len)`.
    pub fn entry_in(&self, (base, len): (u64, u64)) -> bool {
        self.entry
            .checked_sub(base)
            .is_some_and(|off| off % ENTRY as u64 == 0 && off + ENTRY as u64 <= len)
    }

    /// Whether the entry, as read (key, address, length, access), is region `key`'s,
    /// live, and lets peers do `want` ([`READ`] or [`WRITE`]).
    pub fn confirms(&self, key: u64, read: &[u64; 4], want: u64) -> bool {
        key != 0 && read[..3] == [key, self.addr, self.len] && read[3] & want == want
    }
}

/// What a link announces to a peer of its uid: its process's arena and salt.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    /// The arena's (address, length).
    pub arena: (u64, u64),
    /// The salt its extras are masked under.
    pub salt: u64,
}

/// Bytes of one entry: key, address, length, and what peers may do ([`READ`], [`WRITE`]).
pub const ENTRY: usize = 32;
/// An entry's access bit: peers may read the region.
pub const READ: u64 = 1;
/// An entry's access bit: peers may write the region.
pub const WRITE: u64 = 2;
/// Entries in the arena: live registrations past it get no direct copies.
const ENTRIES: usize = 16 * 1024;

/// This process's entries of registrations that peers may copy directly: one fixed
/// allocation, never freed (a requester may read an entry at any time after its region
/// is gone), whose bounds each link announces to its peer. An entry holds its region's
/// key while the region is registered and 0 otherwise.
pub struct Arena {
    words: &'static [AtomicU64],
    /// The mask of this process's extras, announced to peers of its uid only.
    salt: u64,
    /// Entries free for reuse, and the first never used.
    free: Mutex<(Vec<u32>, u32)>,
}

impl Arena {
    /// The process's arena.
    pub fn get() -> &'static Arena {
        static ARENA: OnceLock<Arena> = OnceLock::new();
        ARENA.get_or_init(|| {
            let n = ENTRIES * ENTRY / 8;
            let layout = Layout::array::<AtomicU64>(n).unwrap_or_else(|_| Layout::new::<u64>());
            // Zeroed memory this large is mapped lazily: untouched entries cost nothing.
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<AtomicU64>();
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            // SAFETY: `p` is a fresh allocation of `n` zeroed words (zero is a valid
            // AtomicU64), never freed, so it lives for the rest of the process.
            let words: &'static [AtomicU64] = unsafe { std::slice::from_raw_parts(p, n) };
            let mut salt = [0u8; 8];
            // Without randomness the salt is fixed, and extras hide nothing from other
            // users (as plain Mercury handles): reads still work.
            let _ = getrandom::fill(&mut salt);
            Arena {
                words,
                salt: u64::from_le_bytes(salt),
                free: Mutex::new((Vec::new(), 0)),
            }
        })
    }

    /// What links announce to peers of this process's uid.
    pub fn announced(&self) -> Announced {
        Announced {
            arena: (
                self.words.as_ptr() as u64,
                std::mem::size_of_val(self.words) as u64,
            ),
            salt: self.salt,
        }
    }

    /// The extras of region `key` (entry `at`, `len` bytes at `addr`) for its descriptor.
    pub fn extras(&self, key: u64, at: u64, addr: u64, len: u64) -> Vec<u8> {
        let d = Direct {
            pid: std::process::id(),
            entry: at,
            addr,
            len,
        };
        d.encode(key, self.salt)
    }

    fn entry(&self, i: u32) -> &[AtomicU64] {
        let w = i as usize * ENTRY / 8;
        &self.words[w..w + 4]
    }

    /// An entry for live region `key` at `addr` of `len` bytes that peers may `access`
    /// ([`READ`], [`WRITE`] or both), or `None` if all are in use. Returns the entry's
    /// number and address.
    pub fn take(&self, key: u64, addr: u64, len: u64, access: u64) -> Option<(u32, u64)> {
        let i = {
            let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
            match f.0.pop() {
                Some(i) => i,
                None if (f.1 as usize) < ENTRIES => {
                    f.1 += 1;
                    f.1 - 1
                }
                None => return None,
            }
        };
        let e = self.entry(i);
        // The key last: a requester that reads it sees the rest with it.
        e[1].store(addr, Ordering::Relaxed);
        e[2].store(len, Ordering::Relaxed);
        e[3].store(access, Ordering::Relaxed);
        e[0].store(key, Ordering::Release);
        Some((i, e.as_ptr() as u64))
    }

    /// Ends entry `i`'s region: from now on no requester keeps what it read, nor starts a
    /// write (one that declared its lease before may still be writing: see the module
    /// docs).
    pub fn revoke(&self, i: u32) {
        self.entry(i)[0].store(0, Ordering::SeqCst);
    }

    /// Gives back entry `i` (revoked already).
    pub fn give(&self, i: u32) {
        self.revoke(i);
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        f.0.push(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Direct {
        Direct {
            pid: 4242,
            entry: 0x7f00_0000_1020,
            addr: 0x9000,
            len: 7,
        }
    }

    const KEY: u64 = 0x1234_5678_9abc_def0;
    const SALT: u64 = 77;

    #[test]
    fn round_trips_and_checks_the_length() {
        let d = sample();
        let e = d.encode(KEY, SALT);
        assert_eq!(Direct::decode(&e, KEY, 7, SALT), Some(d.clone()));
        assert_eq!(Direct::decode(&e, KEY, 8, SALT), None, "lengths must agree");
        let mut cut = e.clone();
        cut.pop();
        assert_eq!(Direct::decode(&cut, KEY, 7, SALT), None);
        assert_eq!(Direct::decode(&[], KEY, 0, SALT), None);
        let mut other = e.clone();
        other[0] = b'X';
        assert_eq!(Direct::decode(&other, KEY, 7, SALT), None);
    }

    #[test]
    fn without_the_salt_the_extras_say_nothing_and_decode_to_nothing() {
        let d = sample();
        let e = d.encode(KEY, SALT);
        assert_eq!(Direct::decode(&e, KEY, 7, SALT + 1), None, "another salt");
        assert_eq!(Direct::decode(&e, KEY + 1, 7, SALT), None, "another region");
        // No field appears in clear, nor do two regions of one owner share a mask.
        for w in [u64::from(d.pid), d.entry, d.addr, d.len] {
            assert!(
                !e.windows(8).any(|x| x == w.to_le_bytes()),
                "{w:#x} in clear"
            );
        }
        assert_ne!(e[1..], d.encode(KEY + 1, SALT)[1..]);
    }

    #[test]
    fn regions_that_wrap_are_refused() {
        let wrap = Direct {
            addr: u64::MAX - 1,
            len: 4,
            ..sample()
        };
        assert_eq!(Direct::decode(&wrap.encode(KEY, SALT), KEY, 4, SALT), None);
        let entry = Direct {
            entry: u64::MAX - 8,
            ..sample()
        };
        assert_eq!(Direct::decode(&entry.encode(KEY, SALT), KEY, 7, SALT), None);
    }

    #[test]
    fn entries_must_lie_on_the_announced_arena_boundaries() {
        let d = sample();
        let base = 0x7f00_0000_1000;
        assert!(d.entry_in((base, 64)));
        assert!(!d.entry_in((base, 32)), "past the end");
        assert!(!d.entry_in((base + 0x40, 4096)), "before the start");
        assert!(!d.entry_in((base + 8, 4096)), "not on a boundary");
    }

    #[test]
    fn an_entry_confirms_only_its_own_live_region() {
        let d = sample();
        assert!(d.confirms(5, &[5, 0x9000, 7, READ], READ));
        assert!(d.confirms(5, &[5, 0x9000, 7, READ | WRITE], WRITE));
        assert!(!d.confirms(5, &[5, 0x9000, 7, READ], WRITE), "read-only");
        assert!(!d.confirms(5, &[5, 0x9000, 7, WRITE], READ), "write-only");
        assert!(!d.confirms(5, &[0, 0x9000, 7, READ], READ), "ended");
        assert!(!d.confirms(5, &[6, 0x9000, 7, READ], READ), "reused");
        assert!(
            !d.confirms(5, &[5, 0x9008, 7, READ], READ),
            "another region"
        );
        assert!(
            !d.confirms(5, &[5, 0x9000, 8, READ], READ),
            "another length"
        );
        assert!(
            !d.confirms(0, &[0, 0x9000, 7, READ], READ),
            "an unused entry"
        );
    }

    #[test]
    fn entries_hold_their_key_until_revoked_and_are_reused_with_another() {
        let a = Arena::get();
        let (i, at) = a.take(11, 0x1000, 64, READ).unwrap();
        let (base, len) = a.announced().arena;
        let d = Direct {
            pid: 1,
            entry: at,
            addr: 0x1000,
            len: 64,
        };
        assert!(d.entry_in((base, len)));
        let read = |at: u64| {
            // SAFETY: `at` is an entry of the arena, which is never freed.
            let e = unsafe { std::slice::from_raw_parts(at as *const AtomicU64, 4) };
            [0, 1, 2, 3].map(|k| e[k].load(Ordering::Acquire))
        };
        assert!(d.confirms(11, &read(at), READ));
        assert!(!d.confirms(11, &read(at), WRITE), "read-only region");
        a.give(i);
        assert!(!d.confirms(11, &read(at), READ));
        let again: Vec<_> = (0..4)
            .map(|k| a.take(20 + k, 0x1000, 64, READ | WRITE).unwrap())
            .collect();
        assert!(again.iter().all(|&(_, e)| !d.confirms(11, &read(e), READ)));
        again.into_iter().for_each(|(i, _)| a.give(i));
    }

    proptest! {
        /// Peer bytes never panic the decoder, and what decodes lies within the address
        /// space.
        #[test]
        fn decoding_random_extras_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..40), len in 0u64..64) {
            if let Some(d) = Direct::decode(&bytes, KEY, len, SALT) {
                prop_assert_eq!(d.len, len);
                prop_assert!(d.addr.checked_add(d.len).is_some());
            }
        }
    }
}
