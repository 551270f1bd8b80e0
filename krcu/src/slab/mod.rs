//! Typed object caches over the page allocator (`kmem_cache`), with bulk
//! free.
//!
//! A [`SlabCache<T>`] carves slabs (blocks of 1..8 pages from the
//! [`PageAllocator`](crate::page::PageAllocator)) into slots for `T`.
//! Allocation and free go through a per-CPU cache of free objects taken
//! with trylock, as the page allocator's per-CPU lists are; the slabs
//! themselves sit behind the cache's node lock. Slab bookkeeping lives in a
//! header at the start of each slab, never in the objects, so that
//! [`SlabCache::free_bulk`] frees objects of a type without drop glue
//! without touching their memory: the property kvfree_rcu's arrays of
//! pointers rely on (Uladzislau Rezki, 2020: "reduces the number of cache-misses").
//!
//! | kernel | here |
//! |---|---|
//! | `kmem_cache_create`, `kmem_cache_alloc`, `kmem_cache_free` | [`SlabCache::new`], [`SlabCache::alloc`], [`SlabCache::free`] |
//! | `kmem_cache_free_bulk` | [`SlabCache::free_bulk`] |
//! | per-CPU sheaves / `array_cache` | a per-CPU stack of 64 free objects |
//! | `kmem_cache_node`, `n->list_lock`, partial slabs | the node lock and partial list |
//! | `kmem_cache_shrink` | [`SlabCache::shrink`] |
//!
//! Uses nothing else of the crate.

mod alloc;
mod boxed;
mod bulk;
mod cache;
mod free;
mod layout;
mod node;
mod rcu_free;

pub use boxed::SlabBox;
#[cfg(not(loom))]
pub(crate) use boxed::{Pin, borrow_cache, core_of, hidden_head, object_of_head};
#[cfg(not(loom))]
pub(crate) use cache::CacheCore;
pub use cache::SlabCache;

/// A free the slab cache refused, naming the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlabError {
    /// The address is not inside a slab of this cache.
    #[error("free of {addr:#x}: not an object of this cache")]
    NotFromCache {
        /// The address passed.
        addr: usize,
    },
    /// The address is inside one of this cache's slabs but not at the start
    /// of an object.
    #[error("free of {addr:#x}: not the start of an object")]
    NotAnObject {
        /// The address passed.
        addr: usize,
    },
    /// The object is free already.
    #[error("free of {addr:#x}: double free")]
    DoubleFree {
        /// The address passed.
        addr: usize,
    },
}

/// A snapshot of a cache's statistics ([`SlabCache::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlabStats {
    /// Allocations served by a per-CPU cache.
    pub cpu_allocs: u64,
    /// Frees onto a per-CPU cache.
    pub cpu_frees: u64,
    /// Per-CPU cache refills from the slabs.
    pub refills: u64,
    /// Per-CPU cache flushes to the slabs.
    pub flushes: u64,
    /// Slabs taken from the page allocator.
    pub slabs_allocated: u64,
    /// Empty slabs given back.
    pub slabs_freed: u64,
    /// Per-CPU trylocks that failed (the slab path was taken instead).
    pub trylock_failures: u64,
    /// `free_bulk` calls.
    pub bulk_frees: u64,
    /// Frees refused as bad input.
    pub bad_frees: u64,
    /// Frees deferred to a lock-free list because no lock could be had
    /// without waiting (in a signal handler, or `NO_LOCKS` surplus); the
    /// next node-lock holder gives them back.
    pub deferred_frees: u64,
    /// Slabs held now.
    pub slabs: usize,
    /// Slabs with available objects now.
    pub partial_slabs: usize,
}
