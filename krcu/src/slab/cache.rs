//! `SlabCache<T>` and its shared core: fields, counters, shrinking and
//! destruction (construction is `builder.rs`). The core ([`CacheCore`]) holds
//! everything that does not depend on `T` behind an `Arc`, so that an RCU
//! callback carrying a sheaf can reach the cache's barn and slabs whatever
//! happened to the `SlabCache` value (moved, or dropped while the sheaf
//! waited for its grace period). Its paths are in sibling files: sheaves
//! and the barn (`sheaf.rs`, `exchange.rs`), the thread-owned sheaves
//! (`thread.rs`), allocation (`alloc.rs`), freeing one object (`free.rs`),
//! bulk free (`bulk.rs`), `kfree_rcu` into sheaves (`rcu_free.rs`) and the
//! slab lists behind the node lock (`node.rs`).
//!
//! Uses the slab layout, the page allocator, the lock and per-CPU types.

use super::SlabStats;
use super::layout::{Layout, SlabHeader};
use super::sheaf::{Barn, CpuSheaves};
use crate::lock::SpinLock;
use crate::page::PageAllocator;
use crate::percpu::PerCpu;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use std::sync::Arc;

/// Objects a sheaf holds unless the builder says otherwise.
pub const DEFAULT_SHEAF_CAPACITY: usize = 64;
/// The largest sheaf capacity accepted (larger requests are clamped).
pub const MAX_SHEAF_CAPACITY: usize = 1024;

/// The cache's shared slab lists (`struct kmem_cache_node`): slabs with
/// available objects, doubly linked through their headers.
pub(super) struct Node {
    pub(super) partial: *mut SlabHeader,
    pub(super) nr_partial: usize,
    pub(super) nr_slabs: usize,
}

// SAFETY: the pointers are slab headers owned by the cache, only followed
// under the node lock.
unsafe impl Send for Node {}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) cpu_allocs: AtomicU64,
    pub(super) cpu_frees: AtomicU64,
    pub(super) refills: AtomicU64,
    pub(super) flushes: AtomicU64,
    pub(super) barn_gets: AtomicU64,
    pub(super) barn_puts: AtomicU64,
    /// `rcu_free` sheaves that received their first object: with
    /// `rcu_sheaves`, how many partly filled ones are out there.
    pub(super) rcu_started: AtomicU64,
    pub(super) rcu_sheaves: AtomicU64,
    pub(super) rcu_sheaves_done: AtomicU64,
    /// Sheaves a thread recycled itself after their grace period
    /// (`recycle.rs`), never submitted.
    pub(super) rcu_recycled: AtomicU64,
    /// Destructors that panicked while a thread recycled a sheaf.
    pub(super) destructor_panics: AtomicU64,
    pub(super) rcu_fallbacks: AtomicU64,
    pub(super) slabs_allocated: AtomicU64,
    pub(super) slabs_freed: AtomicU64,
    pub(super) trylock_failures: AtomicU64,
    pub(super) bulk_frees: AtomicU64,
    pub(super) bad_frees: AtomicU64,
    pub(super) deferred_frees: AtomicU64,
}

/// How a path that gives objects back to the slabs may wait.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    /// Task context: the node lock is taken for real, empty slabs go back
    /// with `free_pages`.
    Block,
    /// `NO_LOCKS` or a signal handler: the node lock is only trylocked
    /// (objects are deferred when it fails), empty slabs go back with
    /// `free_pages_nolock`.
    Try,
}

/// Whether the caller may sleep (task context, no lock, no reader).
fn may_sleep() -> bool {
    use crate::context;
    context::kind() == context::ContextKind::Task
        && !context::in_atomic()
        && !context::irqs_disabled()
        && context::rcu_read_depth() == 0
}

/// Whether the caller runs in hardirq (signal handler) or NMI context, where
/// a blocking lock self-deadlocks if the interrupted thread holds it.
#[inline]
pub(super) fn never_block() -> bool {
    crate::context::in_hardirq() || crate::context::in_nmi()
}

/// Everything of a cache that does not depend on its type, shared (by
/// `Arc`) between the [`SlabCache`] and the sheaves in flight through RCU.
pub(crate) struct CacheCore {
    /// Unique per cache: thread slots are found by it.
    pub(super) id: u64,
    pub(super) name: &'static str,
    pub(super) pages: Arc<PageAllocator>,
    pub(super) magic: u64,
    /// Per-object free bits checked on every allocation and free (double
    /// frees caught): `SLAB_CONSISTENCY_CHECKS`.
    pub(super) checks: bool,
    pub(super) layout: Layout,
    /// `size_of::<T>()`: what is poisoned while free.
    pub(super) obj_size: usize,
    /// Drops a `T` in place; None if `T` has no drop glue.
    pub(super) drop_fn: Option<unsafe fn(*mut u8)>,
    pub(super) sheaf_capacity: usize,
    /// The per-CPU level: a `main` and a `spare` sheaf (and an `rcu_free`
    /// one) per CPU, under a local lock (trylocked in signal handlers).
    pub(super) cpu: PerCpu<SpinLock<CpuSheaves>>,
    pub(super) barn: Barn,
    pub(super) node: SpinLock<Node>,
    /// Objects freed where no lock could be had (a signal handler whose
    /// trylocks failed, or any under PREEMPT_RT): a lock-free stack linked
    /// through each object's first word, given back to the slabs by the
    /// next node-lock holder. Pushed with a Release compare-exchange, taken
    /// whole with an Acquire swap (no single pop, so no ABA); the objects
    /// stay counted in their slab's `inuse`, so their slabs stay allocated
    /// until they are given back.
    pub(super) deferred: AtomicPtr<u8>,
    /// The threads' own sheaves of this cache.
    #[cfg(not(loom))]
    pub(super) threads: super::thread::Registry,
    /// The RCU instance whose grace periods `kfree_rcu_sheaf` waits for
    /// (the global one unless the builder named one; set on first use).
    #[cfg(not(loom))]
    pub(super) rcu: std::sync::OnceLock<Arc<crate::rcu::Rcu>>,
    pub(super) counters: Counters,
    /// Set (SeqCst) when the handle is dropped: a box dropped afterwards
    /// also shrinks the cache, so that its slabs, and then the core, go.
    pub(super) orphaned: AtomicBool,
}

/// A cache of `T` objects carved from page-allocator pages
/// (`struct kmem_cache`), with sheaves of free objects in front of the
/// slabs (Linux 6.18's slab sheaves).
///
/// - `alloc` pops an object from the calling thread's own `main` sheaf of
///   this cache: plain loads and stores, no atomic read-modify-write, no
///   lock. An empty sheaf is exchanged (under this CPU's lock) for a
///   non-empty `main` or `spare` sheaf of the CPU, else at the barn (under
///   its lock) for a full one, else refilled from the slabs in bulk.
/// - `free` pushes onto that sheaf; a full one is exchanged for one with
///   room at the CPU, else at the barn for an empty one, else flushed to
///   the slabs in bulk.
/// - `free_bulk` gives objects back to their slabs, building one detached
///   list per slab; for a `T` without drop glue it never touches the
///   objects' memory, only the slab headers.
/// - Empty slabs go back to the page allocator at once;
///   [`shrink`](Self::shrink) also takes back every thread's sheaf (idle
///   and exited threads' too), the CPUs' and the barn's.
/// - In a signal handler (hardirq or NMI context) and with `NO_LOCKS`, no
///   path waits for a lock: the CPU's sheaves and the barn are trylocked,
///   the node lock is only trylocked, and objects that cannot go back are
///   pushed on a lock-free deferred list that the next node-lock holder
///   gives back; under PREEMPT_RT a handler's free touches no lock at all.
///
/// Every free is checked (the slab is this cache's, the address is a slot,
/// the object is allocated); bad input follows the page allocator's policy:
/// panic in debug builds, counted and reported in release builds, and a
/// `Result` from [`try_free`](Self::try_free). In a signal handler (hardirq
/// or NMI context) it is only counted (`SlabStats::bad_frees`).
///
/// Objects are handed out as raw pointers, so every free is `unsafe`: safe
/// code cannot free an object twice or free one another user holds.
/// ```compile_fail,E0133
/// # use krcu::{Domain, page::{Gfp, PageAllocator, PageConfig}, slab::SlabCache};
/// # let d = Domain::builder().cpus(1).build();
/// # let config = PageConfig { arena_size: 4 << 20, kswapd: false, ..PageConfig::default() };
/// # let pa = PageAllocator::new(&d, config).unwrap();
/// let cache = SlabCache::<u64>::new(&pa, "u64").unwrap();
/// let obj = cache.alloc(Gfp::KERNEL, 1).unwrap();
/// cache.free(obj); // error[E0133]: call to unsafe function
/// ```
///
/// Allocate, free one, free in bulk, shrink:
/// ```
/// use krcu::page::{Gfp, PageAllocator, PageConfig};
/// use krcu::slab::SlabCache;
/// use std::ptr::NonNull;
///
/// let domain = krcu::Domain::builder().cpus(1).build();
/// let pages = PageAllocator::new(&domain, PageConfig::default().arena_size(4 << 20)).unwrap();
/// let cache = SlabCache::<u64>::new(&pages, "u64").unwrap();
/// let one = cache.alloc(Gfp::KERNEL, 41).unwrap();
/// // SAFETY: `one` is allocated from `cache` and initialised; not used after.
/// unsafe {
///     assert_eq!(*one.as_ref() + 1, 42);
///     cache.free(one);
/// }
/// let mut many: Vec<NonNull<u64>> =
///     (0..1000).map(|i| cache.alloc(Gfp::KERNEL, i).unwrap()).collect();
/// assert!(cache.stats().slabs >= 2, "1000 objects need more than one slab");
/// // SAFETY: every pointer is from `cache`, initialised, freed only here.
/// unsafe { cache.free_bulk(&mut many) };
/// cache.shrink(); // this CPU's cached objects back, empty slabs to the pages
/// let stats = cache.stats();
/// assert_eq!((stats.bulk_frees, stats.slabs), (1, 0));
/// assert_eq!(pages.stats().allocated_pages(), 0);
/// ```
///
/// # Lifetime of the memory
/// The cache's state lives in a core behind an `Arc`: the handle
/// holds one strong count, every slab allocated holds one more, taken
/// when the slab comes from the page allocator and dropped when it goes
/// back (once per slab, never per object), and every `rcu_free` sheaf in
/// flight holds one. A [`SlabBox`](super::SlabBox) finds the core through
/// its slab's header, so a box outlives the handle safely: dropping the
/// handle shrinks the cache and marks it orphaned; boxes dropped later
/// still free into the core, which goes (with the page allocator it
/// holds) when its last slab does.
#[doc(alias = "kmem_cache")]
pub struct SlabCache<T> {
    pub(super) core: Arc<CacheCore>,
    /// The page allocator's shrinker that empties this cache's sheaves
    /// and barn under memory pressure; unregistered (dropped) first, in
    /// the cache's own drop, never from inside reclaim.
    pub(super) shrinker: Option<crate::page::ShrinkerHandle>,
    pub(super) _objects: PhantomData<T>,
}

// SAFETY: the cache hands out `T`s to whichever thread asks and drops them
// (in `free`, or after a grace period on the RCU worker) on whichever
// thread frees, so `T: Send` is required; all its own state is behind
// locks, atomics or the thread slots' handshake.
unsafe impl<T: Send> Send for SlabCache<T> {}
// SAFETY: as for Send: shared access only goes through locks and atomics.
unsafe impl<T: Send> Sync for SlabCache<T> {}
// SAFETY: the core's raw pointers (slab headers, sheaves, deferred objects)
// are only followed under its locks, atomics or the thread slots'
// handshake; it holds no `T`.
unsafe impl Send for CacheCore {}
// SAFETY: as for Send.
unsafe impl Sync for CacheCore {}

impl<T> core::fmt::Debug for SlabCache<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlabCache")
            .field("name", &self.core.name)
            .field("order", &self.core.layout.order)
            .field("objects_per_slab", &self.core.layout.objects)
            .field("sheaf_capacity", &self.core.sheaf_capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T> SlabCache<T> {
    /// The cache's name.
    pub fn name(&self) -> &'static str {
        self.core.name
    }

    /// Objects per slab.
    pub fn objects_per_slab(&self) -> usize {
        self.core.layout.objects
    }

    /// Objects per sheaf.
    pub fn sheaf_capacity(&self) -> usize {
        self.core.sheaf_capacity
    }

    /// The page order of each slab.
    pub fn slab_order(&self) -> u32 {
        self.core.layout.order
    }

    /// The page allocator the slabs come from.
    pub fn page_allocator(&self) -> &Arc<PageAllocator> {
        &self.core.pages
    }

    /// The RCU instance this cache's `rcu_free` sheaves wait on (read by
    /// the instance's `kfree_rcu` of slab objects).
    #[cfg(not(loom))]
    #[allow(dead_code)]
    pub(crate) fn rcu(&self) -> &Arc<crate::rcu::Rcu> {
        self.core.rcu()
    }

    /// Returns every sheaf's objects to the slabs (every thread's, idle
    /// and exited ones included, every CPU's and the barn's), and so empty
    /// slabs to the page allocator (`kmem_cache_shrink`). A thread caught
    /// inside its own sheaf section keeps its sheaf. Retired objects a
    /// thread keeps waiting for their grace period (to recycle them
    /// itself) go to `call_rcu`, and come back to the cache after it.
    /// Returns the objects moved.
    #[doc(alias = "kmem_cache_shrink")]
    pub fn shrink(&self) -> usize {
        self.core.shrink()
    }

    /// A snapshot of the cache's statistics.
    pub fn stats(&self) -> SlabStats {
        self.core.stats()
    }
}

impl CacheCore {
    /// See [`SlabCache::shrink`].
    pub(super) fn shrink(&self) -> usize {
        let slabs_freed = self.counters.slabs_freed.load(Relaxed);
        let mut moved = 0;
        #[cfg(not(loom))]
        {
            // Every thread's `main` sheaf; exited threads' `rcu_free`
            // sheaves are submitted.
            moved +=
                self.threads
                    .take_where(false, |w| w == super::thread::Which::Main, super::thread::Chains::All, &mut |s, w| {
                        self.reclaim_sheaf(s, w)
                    });
            moved += self
                .threads
                .take_where(true, |_| true, super::thread::Chains::All, &mut |s, w| self.reclaim_sheaf(s, w));
        }
        for (_, cpu) in self.cpu.iter() {
            let taken = {
                let mut cs = cpu.lock();
                [
                    core::mem::replace(&mut cs.main, ptr::null_mut()),
                    core::mem::replace(&mut cs.spare, ptr::null_mut()),
                ]
            };
            for s in taken.into_iter().filter(|s| !s.is_null()) {
                moved += super::sheaf::len(s);
                self.flush_and_free_sheaf(s, Mode::Block);
            }
        }
        moved += self.barn_shrink();
        // Frees deferred from signal handlers.
        self.return_to_slabs(&mut [], Mode::Block);
        if self.counters.slabs_freed.load(Relaxed) != slabs_freed && may_sleep() {
            // Slabs went back: free memory beyond the page allocator's
            // `high` watermark goes back to the OS.
            self.pages.release_free_memory();
        }
        moved
    }

    /// Whether any slab is allocated (objects still out, or in sheaves).
    pub(super) fn has_slabs(&self) -> bool {
        self.node.lock().nr_slabs > 0
    }

    /// Objects held in the barn and the CPUs' sheaves now, and at most a
    /// sheaf's worth per registered thread (what the shrinker's `scan`,
    /// a [`shrink`](Self::shrink), could give back). A thread's own sheaf
    /// is counted at its capacity: its length is the owner's to read
    /// (only a steal, with a `membarrier`, could read it), and an idle
    /// thread's sheaf pins slabs through reclaim unless it is counted.
    pub(super) fn cached_objects(&self) -> usize {
        #[cfg(not(loom))]
        let mut n = self.threads.len() * self.sheaf_capacity;
        #[cfg(loom)]
        let mut n = 0;
        for (_, cpu) in self.cpu.iter() {
            let cs = cpu.lock();
            n += super::sheaf::len(cs.main) + super::sheaf::len(cs.spare);
        }
        let (full, _) = self.barn.counts();
        n + full * self.sheaf_capacity
    }

    /// The RCU instance of `kfree_rcu_sheaf` (the global one by default).
    #[cfg(not(loom))]
    pub(super) fn rcu(&self) -> &Arc<crate::rcu::Rcu> {
        self.rcu
            .get_or_init(|| Arc::clone(crate::rcu::global_arc()))
    }

    pub(super) fn stats(&self) -> SlabStats {
        let c = &self.counters;
        #[cfg(not(loom))]
        let (alloc_hits, free_hits) = self.threads.hits();
        #[cfg(loom)]
        let (alloc_hits, free_hits) = (0, 0);
        let (full, empty) = self.barn.counts();
        let node = self.node.lock();
        SlabStats {
            cpu_allocs: c.cpu_allocs.load(Relaxed),
            cpu_frees: c.cpu_frees.load(Relaxed),
            sheaf_alloc_hits: alloc_hits,
            sheaf_free_hits: free_hits,
            refills: c.refills.load(Relaxed),
            flushes: c.flushes.load(Relaxed),
            barn_gets: c.barn_gets.load(Relaxed),
            barn_puts: c.barn_puts.load(Relaxed),
            barn_full: full,
            barn_empty: empty,
            rcu_sheaves: c.rcu_sheaves.load(Relaxed),
            rcu_sheaves_done: c.rcu_sheaves_done.load(Relaxed),
            rcu_sheaves_recycled: c.rcu_recycled.load(Relaxed),
            destructor_panics: c.destructor_panics.load(Relaxed),
            rcu_fallbacks: c.rcu_fallbacks.load(Relaxed),
            slabs_allocated: c.slabs_allocated.load(Relaxed),
            slabs_freed: c.slabs_freed.load(Relaxed),
            trylock_failures: c.trylock_failures.load(Relaxed),
            bulk_frees: c.bulk_frees.load(Relaxed),
            bad_frees: c.bad_frees.load(Relaxed),
            deferred_frees: c.deferred_frees.load(Relaxed),
            slabs: node.nr_slabs,
            partial_slabs: node.nr_partial,
        }
    }
}

impl<T> Drop for SlabCache<T> {
    /// Takes every thread's sheaves back for good (a thread that uses the
    /// cache later cannot: the cache is gone), waits for the `rcu_free`
    /// sheaves in flight, and returns cached objects, and so empty slabs,
    /// to the page allocator. Slabs with objects still allocated stay
    /// allocated (leaked, with a warning), as `kmem_cache_destroy` leaves
    /// them, and they keep the core (see the type's "Lifetime of the
    /// memory"): they stay valid, and freeing them later gives the slabs
    /// back.
    #[doc(alias = "kmem_cache_destroy")]
    fn drop(&mut self) {
        // SeqCst, before the shrink: a box dropped concurrently either sees
        // the flag (and shrinks itself) or freed before this shrink's locks.
        self.core.orphaned.store(true, SeqCst);
        drop(self.shrinker.take());
        #[cfg(not(loom))]
        {
            // Nobody else holds the cache now: every section has ended.
            let core = &*self.core;
            core.threads.retire(|s, w| {
                core.reclaim_sheaf(s, w);
            });
            core.submit_rcu_sheaves_all(super::thread::Chains::All);
            core.rcu_sheaf_barrier_if_safe();
        }
        self.core.shrink();
        let slabs = self.core.node.lock().nr_slabs;
        if slabs > 0 {
            tracing::debug!(
                cache = self.core.name,
                slabs,
                "slab cache dropped with objects still allocated: they keep its memory"
            );
        }
    }
}

impl Drop for CacheCore {
    /// The last `rcu_free` sheaf came back after the `SlabCache` was
    /// dropped (its drop ran on the RCU worker, which cannot wait for
    /// itself): whatever the barn holds goes back now.
    fn drop(&mut self) {
        self.barn_shrink();
        self.return_to_slabs(&mut [], Mode::Block);
    }
}

/// Drops the `T` at `obj` in place, catching a panic of its destructor
/// (returned, for the caller to resume once the memory is back).
///
/// # Safety
/// `obj` must hold an initialised `T` that nothing uses afterwards.
#[inline]
pub(super) unsafe fn drop_catching<T>(obj: NonNull<T>) -> std::thread::Result<()> {
    if !core::mem::needs_drop::<T>() {
        return Ok(());
    }
    // SAFETY: per the contract; after a panic the value counts as dropped
    // (as `drop_in_place` leaves it), and it is never touched again.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        ptr::drop_in_place(obj.as_ptr())
    }))
}

#[inline(always)]
pub(super) fn bump_locked(c: &AtomicU64) {
    c.store(c.load(Relaxed) + 1, Relaxed);
}
