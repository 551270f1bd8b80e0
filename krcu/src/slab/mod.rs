//! Typed object caches over the page allocator (`kmem_cache`), with slab
//! sheaves in front of them, `kfree_rcu` into sheaves, and bulk free.
//!
//! A [`SlabCache<T>`] carves slabs (blocks of 1..8 pages from the
//! [`PageAllocator`](crate::page::PageAllocator)) into slots for `T`.
//! Allocation and free go through sheaves (arrays of free objects): the
//! calling thread's own, then its CPU's `main` and `spare` under a local
//! lock, then the cache's barn of full and empty sheaves; the slabs
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
//! | `kmalloc_nolock`, `kfree_nolock` | [`SlabCache::alloc_nolock`], [`SlabCache::free_nolock`] |
//! | `kmem_cache_prefill_sheaf`, `kmem_cache_alloc_from_sheaf`, `kmem_cache_return_sheaf` | [`SlabCache::prefill_sheaf`], [`PrefilledSheaf::alloc`], [`PrefilledSheaf::return_sheaf`] |
//! | `slab_sheaf`, `slub_percpu_sheaves` (`main`, `spare`, `rcu_free`) | a thread's own `main` and `rcu_free` sheaf, and each CPU's three |
//! | `node_barn` | the cache's barn |
//! | `kmem_cache_args.sheaf_capacity` | [`SlabCacheBuilder::sheaf_capacity`] |
//! | `kfree_rcu_sheaf`, `rcu_free_sheaf` | `SlabCache::kfree_rcu_sheaf` (crate-internal) |
//! | `kmem_cache_node`, `n->list_lock`, partial slabs | the node lock and partial list |
//! | `kmem_cache_shrink` | [`SlabCache::shrink`] |
//!
//! Uses the page allocator, the locks, per-CPU data, and (for
//! `rcu_free` sheaves) an RCU instance.

mod alloc;
mod boxed;
mod builder;
mod by_rcu;
mod bulk;
mod cache;
mod exchange;
mod free;
mod layout;
mod node;
mod nolock;
mod prefill;
mod rcu_free;
mod recycle;
mod sheaf;
#[cfg(test)]
mod tests;
mod thread;

pub use boxed::SlabBox;
#[cfg(not(loom))]
pub(crate) use boxed::{Pin, borrow_cache, core_of, hidden_head, object_of_head};
pub use builder::SlabCacheBuilder;
#[cfg(not(loom))]
pub(crate) use by_rcu::{any_partial as any_partial_rcu_sheaves, submit_all as submit_rcu_sheaves_of, submit_idle as submit_idle_rcu_sheaves_of, wait_recycles as wait_slab_recycles_of};
#[cfg(not(loom))]
pub(crate) use cache::CacheCore;
#[cfg(not(loom))]
pub(crate) use recycle::{Helping, in_recycle};
pub use cache::{DEFAULT_SHEAF_CAPACITY, MAX_SHEAF_CAPACITY, SlabCache};
pub use nolock::NolockError;
pub use prefill::PrefilledSheaf;

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
    /// Allocations served by a CPU's sheaves (signal handlers, threads
    /// without thread-locals, `alloc_nolock`).
    pub cpu_allocs: u64,
    /// Frees onto a CPU's sheaves.
    pub cpu_frees: u64,
    /// Allocations served by the calling thread's own sheaf (the fast
    /// path: sheaf hits).
    pub sheaf_alloc_hits: u64,
    /// Frees onto the calling thread's own sheaf (sheaf hits).
    pub sheaf_free_hits: u64,
    /// Sheaves refilled from the slabs.
    pub refills: u64,
    /// Sheaves flushed to the slabs.
    pub flushes: u64,
    /// Sheaves taken from the barn (a full one for an allocation, an empty
    /// one for a free or `kfree_rcu_sheaf`).
    pub barn_gets: u64,
    /// Sheaves given to the barn.
    pub barn_puts: u64,
    /// Full sheaves in the barn now.
    pub barn_full: usize,
    /// Empty sheaves in the barn now.
    pub barn_empty: usize,
    /// `rcu_free` sheaves submitted to RCU.
    pub rcu_sheaves: u64,
    /// `rcu_free` sheaves back from their grace period.
    pub rcu_sheaves_done: u64,
    /// `rcu_free` sheaves their own thread recycled once their grace
    /// period had ended: destructors run on that thread, the sheaf kept
    /// as its spare for the next allocation (never submitted to
    /// `call_rcu`).
    pub rcu_sheaves_recycled: u64,
    /// Destructors that panicked while their thread recycled a sheaf
    /// (caught; the other objects were dropped and freed).
    pub destructor_panics: u64,
    /// `kfree_rcu_sheaf` calls that handed the object back (no sheaf
    /// without blocking, NMI, a failed trylock in a signal handler).
    pub rcu_fallbacks: u64,
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
