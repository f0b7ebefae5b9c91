//! Which shared files a path names, without a scan of every file: `stat`, `truncate`,
//! `rename` and truncating opens look a path up on each call (scanning all files, each
//! under its lock, made the metadata shape through the node 0.12x direct with 4 096
//! files). Entries hold weak references; dead ones are dropped when their path is looked
//! up, and all of them whenever the index has doubled since it was last swept.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Weak};

/// Files by a key (here: backend and path), weakly.
pub struct Index<K, T> {
    map: HashMap<K, Vec<Weak<T>>>,
    /// Entries after the last sweep.
    swept: usize,
}

impl<K, T> Default for Index<K, T> {
    fn default() -> Self {
        Index {
            map: HashMap::new(),
            swept: 0,
        }
    }
}

impl<K: Hash + Eq, T> Index<K, T> {
    /// Records that `key` names `f` (once).
    pub fn add(&mut self, key: K, f: &Arc<T>) {
        let v = self.map.entry(key).or_default();
        if !v.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(f))) {
            v.retain(|w| w.strong_count() > 0);
            v.push(Arc::downgrade(f));
        }
        sweep_if_grown(&mut self.map, &mut self.swept, |_, v| {
            v.retain(|w| w.strong_count() > 0);
            !v.is_empty()
        });
    }

    /// The live files `key` names.
    pub fn get(&mut self, key: &K) -> Vec<Arc<T>> {
        let Some(v) = self.map.get_mut(key) else {
            return Vec::new();
        };
        let live: Vec<Arc<T>> = v.iter().filter_map(Weak::upgrade).collect();
        if live.len() < v.len() {
            v.retain(|w| w.strong_count() > 0);
        }
        if v.is_empty() {
            self.map.remove(key);
        }
        live
    }

    /// Entries held (live or not yet swept).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// Keeps only the entries of `map` that `keep` says, once `map` has doubled (and holds at
/// least 1 024 entries) since the last such sweep, whose size `swept` remembers: dead
/// entries cost a sweep per doubling, not a scan per insert.
pub fn sweep_if_grown<K, V>(
    map: &mut HashMap<K, V>,
    swept: &mut usize,
    keep: impl FnMut(&K, &mut V) -> bool,
) {
    if map.len() >= (2 * *swept).max(1024) {
        map.retain(keep);
        *swept = map.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_found_by_path_while_they_live_and_dead_ones_are_swept() {
        let mut ix: Index<u32, u8> = Index::default();
        let (a, b) = (Arc::new(1u8), Arc::new(2u8));
        ix.add(7, &a);
        ix.add(7, &a);
        ix.add(7, &b);
        assert_eq!(ix.get(&7).len(), 2, "each file once");
        drop(a);
        assert_eq!(ix.get(&7).iter().map(|f| **f).collect::<Vec<_>>(), [2]);
        drop(b);
        assert!(ix.get(&7).is_empty());
        assert_eq!(ix.len(), 0, "an empty entry is dropped when looked up");
        // Paths never looked up again are swept as the index grows.
        for k in 0..5000 {
            ix.add(k, &Arc::new(0u8));
        }
        assert!(ix.len() < 2048, "{} entries held", ix.len());
    }
}
