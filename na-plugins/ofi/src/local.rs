//! The process's own shm endpoints as each other's peers. libfabric's shm maps a peer
//! that is an endpoint of the same process by pointer to that endpoint's own region
//! (`smr_map_to_region` finds its name in the provider's list of the process's
//! endpoints), so closing one while another still has it as a peer leaves that one a
//! dangling region: its next send to it crashed the process (SIGSEGV in `fi_inject`,
//! taking the region's lock; libfabric 1.17).
//!
//! So an endpoint that another open endpoint of this process has inserted as a peer is
//! not closed when it is dropped: it lingers (never progressed again, its registrations
//! released, the contexts it had posted kept until it closes) with its region's name
//! unlinked, which is how its peers' liveness checks see it gone
//! (`provider::certainly_dead`), until the last open endpoint that inserted it is dropped
//! too. An endpoint that lingers is no longer counted as another's
//! user: it sends nothing more. A long-lived endpoint keeps the endpoints of this process
//! it reached, once dropped, open until it is dropped itself.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fabric::{Av, Cq, Domain, Ep, Fabric};

/// An endpoint's libfabric objects, declared in the order they close (endpoint first,
/// then the contexts of what it still had posted, freed once it can write none of them).
pub(crate) struct Fids {
    pub(crate) ep: Ep,
    pub(crate) posted: Posted,
    pub(crate) av: Av,
    pub(crate) cq: Cq,
    pub(crate) domain: Domain,
    pub(crate) fabric: Fabric,
}

/// Contexts (`Ctx`) an endpoint had posted (its unexpected pool, receives, sends, RMA
/// pieces): a provider may write into a context until the endpoint is closed, so they
/// are freed after it.
pub(crate) struct Posted(pub(crate) Vec<usize>);

impl Drop for Posted {
    fn drop(&mut self) {
        for p in self.0.drain(..) {
            // SAFETY: each was made by Ctx::new, is freed once (drained from the state's
            // `live` set into this), and its endpoint is closed: nothing writes it.
            drop(unsafe { Box::from_raw(p as *mut crate::ctx::Ctx) });
        }
    }
}

struct Entry {
    id: u64,
    /// Its raw address, as peers insert it.
    raw: Vec<u8>,
    /// The open endpoints that inserted it as a peer.
    inserted_by: Vec<u64>,
    /// Its objects, once dropped while inserted by an open endpoint.
    lingering: Option<Fids>,
}

static LOCAL: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);

fn local() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    LOCAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new shm endpoint at `raw`; its id among the process's.
pub(crate) fn opened(raw: &[u8]) -> u64 {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    local().push(Entry {
        id,
        raw: raw.to_vec(),
        inserted_by: Vec::new(),
        lingering: None,
    });
    id
}

/// Endpoint `by` inserted `raw` as a peer: if that is another endpoint of this process,
/// it now lingers past its drop until `by` is dropped.
pub(crate) fn inserted(by: u64, raw: &[u8]) {
    let mut l = local();
    if let Some(e) = l.iter_mut().find(|e| e.raw == raw && e.id != by)
        && !e.inserted_by.contains(&by)
    {
        e.inserted_by.push(by);
    }
}

/// Endpoint `id` is dropped: its objects back to close now, or `None` if it lingers.
/// Endpoints that lingered for it alone are closed here.
pub(crate) fn closing(id: u64, fids: Fids) -> Option<Fids> {
    let (mine, freed) = {
        let mut l = local();
        for e in l.iter_mut() {
            e.inserted_by.retain(|b| *b != id);
        }
        let freed: Vec<Entry> = l
            .extract_if(.., |e| e.lingering.is_some() && e.inserted_by.is_empty())
            .collect();
        let mine = match l.iter().position(|e| e.id == id) {
            Some(i) if !l[i].inserted_by.is_empty() => {
                unlink(&l[i].raw);
                l[i].lingering = Some(fids);
                None
            }
            Some(i) => {
                l.swap_remove(i);
                Some(fids)
            }
            None => Some(fids),
        };
        (mine, freed)
    };
    // Closed outside the registry's lock (closing takes libfabric's).
    drop(freed);
    mine
}

/// Removes the region file of the endpoint at `raw` (its mapping stays, the lingering
/// endpoint's and its peers').
fn unlink(raw: &[u8]) {
    let name = crate::provider::region_name(raw);
    if crate::provider::shm_region_exists(&name) {
        let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(&name));
    }
}

/// Whether the endpoint at `raw` lingers (for tests).
#[cfg(test)]
pub(crate) fn lingers(raw: &[u8]) -> bool {
    local()
        .iter()
        .any(|e| e.raw == raw && e.lingering.is_some())
}

#[cfg(test)]
mod tests {
    use na::Plugin;

    use crate::OfiPlugin;

    fn shm() -> OfiPlugin {
        OfiPlugin::new(&"ofi+shm://auto".parse().unwrap()).unwrap()
    }

    /// An endpoint dropped while another of this process has it as a peer lingers, its
    /// region file gone (so the liveness check sees it dead); sends to it are harmless
    /// (they crashed the process before); it closes when the last endpoint that had it as
    /// a peer is dropped. Without a peer that had it, an endpoint closes at once.
    #[test]
    fn a_dropped_peer_of_this_process_lingers_until_its_last_user_goes() {
        let (a, b) = (shm(), shm());
        let (a_raw, b_raw) = (a.self_raw.clone(), b.self_raw.clone());
        let pb = a.lookup(b.self_addr()).unwrap();
        let pa = b.lookup(a.self_addr()).unwrap();
        b.send_unexpected(pa, 1, vec![1; 64]).unwrap();
        drop(b);
        assert!(super::lingers(&b_raw), "b lingers: a has it as a peer");
        let name = crate::provider::region_name(&b_raw);
        assert!(
            !crate::provider::shm_region_exists(&name),
            "its region file is gone"
        );
        assert!(crate::provider::certainly_dead(
            crate::provider::DeathCheck::Pid,
            &b_raw
        ));
        for i in 0..256 {
            // Injected or backlogged: into a region that is still mapped.
            let _ = a.send_unexpected(pb, i, vec![2; 4096]);
            let _ = a.progress(Some(std::time::Duration::ZERO));
        }
        drop(a);
        assert!(!super::lingers(&b_raw), "closed with its last user");
        assert!(!super::lingers(&a_raw), "a had no user left");
        let c = shm();
        let c_raw = c.self_raw.clone();
        drop(c);
        assert!(!super::lingers(&c_raw));
    }
}
