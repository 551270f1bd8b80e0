//! A fixed-capacity, lock-free set of non-zero 64-bit keys (open addressing,
//! linear probing, insert-only).
//!
//! The validator keeps its class registry, its dependency edges and its
//! "already printed" set in these, so that no path through it takes a lock or
//! allocates: it may run in a signal handler that interrupted a thread in
//! the middle of the validator itself.
//!
//! Memory ordering: a slot goes from 0 to its key exactly once, by a
//! `compare_exchange` with `AcqRel`; readers load with `Acquire`, so data a
//! writer published (with `Release`) *before* inserting a key is visible to
//! whoever sees the key. Data published *after* the insert (as the class
//! info is) needs its own synchronisation; see `class.rs`.
//!
//! Uses nothing else of the crate.

use core::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct KeySet<const N: usize> {
    keys: [AtomicU64; N],
}

/// Where `insert` left a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// This call inserted the key at this index.
    Inserted(usize),
    /// The key was already there, at this index.
    Present(usize),
    /// The table is full.
    Full,
}

impl<const N: usize> KeySet<N> {
    pub(crate) const fn new() -> Self {
        KeySet {
            keys: [const { AtomicU64::new(0) }; N],
        }
    }

    fn start(key: u64) -> usize {
        // Fibonacci hashing spreads structured keys (class pairs) well.
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % N
    }

    /// Inserts `key` (which must not be 0).
    pub(crate) fn insert(&self, key: u64) -> Slot {
        debug_assert_ne!(key, 0);
        let mut i = Self::start(key);
        for _ in 0..N {
            let slot = &self.keys[i];
            match slot.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Slot::Inserted(i),
                Err(k) if k == key => return Slot::Present(i),
                Err(_) => i = (i + 1) % N,
            }
        }
        Slot::Full
    }

    /// The index of `key`, if present.
    #[cfg(test)]
    pub(crate) fn find(&self, key: u64) -> Option<usize> {
        let mut i = Self::start(key);
        for _ in 0..N {
            match self.keys[i].load(Ordering::Acquire) {
                0 => return None,
                k if k == key => return Some(i),
                _ => i = (i + 1) % N,
            }
        }
        None
    }

    /// Every key present now (a snapshot that may miss concurrent inserts).
    pub(crate) fn keys(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i, k.load(Ordering::Acquire)))
            .filter(|&(_, k)| k != 0)
    }
}

/// FNV-1a, usable in `const` context; never returns 0.
pub(crate) const fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
        i += 1;
    }
    if h == 0 { 1 } else { h }
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_once_and_finds() {
        let t: KeySet<8> = KeySet::new();
        let Slot::Inserted(i) = t.insert(42) else {
            panic!()
        };
        assert_eq!(t.insert(42), Slot::Present(i));
        assert_eq!(t.find(42), Some(i));
        assert_eq!(t.find(43), None);
        for k in 100..107 {
            assert!(matches!(t.insert(k), Slot::Inserted(_)));
        }
        assert_eq!(t.insert(999), Slot::Full);
        assert_eq!(t.keys().count(), 8);
    }
}
