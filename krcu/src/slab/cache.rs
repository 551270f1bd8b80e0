//! `SlabCache<T>`: the object cache itself, its per-CPU caches and slab
//! lists, its construction, counters, shrinking and destruction. Its paths
//! are in sibling files, each an `impl` block of the cache: allocation
//! (`alloc.rs`), freeing one object (`free.rs`), bulk free (`bulk.rs`) and
//! the slab lists behind the node lock (`node.rs`).
//!
//! Uses the slab layout, the page allocator, the lock and per-CPU types.

use super::SlabStats;
use super::layout::{Layout, SlabHeader};
use crate::error::BuildError;
use crate::lock::SpinLock;
use crate::page::PageAllocator;
use crate::percpu::PerCpu;
use crate::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use std::sync::Arc;

/// Objects a per-CPU cache holds.
pub(super) const CPU_CAPACITY: usize = 64;
/// Objects moved per refill or flush of a per-CPU cache.
pub(super) const CPU_BATCH: usize = 32;

/// A CPU's cache of free objects (SLUB's per-CPU sheaf, SLAB's
/// `array_cache`): a stack of object addresses.
pub(super) struct CpuCache {
    pub(super) objs: [*mut u8; CPU_CAPACITY],
    pub(super) len: usize,
}

// SAFETY: the pointers are addresses of free slots in slabs owned by the
// cache; which thread holds the `CpuCache` (under its lock) does not matter.
unsafe impl Send for CpuCache {}

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
    pub(super) slabs_allocated: AtomicU64,
    pub(super) slabs_freed: AtomicU64,
    pub(super) trylock_failures: AtomicU64,
    pub(super) bulk_frees: AtomicU64,
    pub(super) bad_frees: AtomicU64,
    pub(super) deferred_frees: AtomicU64,
}

/// How a path that gives objects back to the slabs may wait.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Task context: the node lock is taken for real, empty slabs go back
    /// with `free_pages`.
    Block,
    /// `NO_LOCKS` or a signal handler: the node lock is only trylocked
    /// (objects are deferred when it fails), empty slabs go back with
    /// `free_pages_nolock`.
    Try,
}

/// Whether the caller runs in hardirq (signal handler) or NMI context, where
/// a blocking lock self-deadlocks if the interrupted thread holds it.
#[inline]
pub(super) fn never_block() -> bool {
    crate::context::in_hardirq() || crate::context::in_nmi()
}

/// Whether the caller may sleep (task context, no lock, no reader).
fn may_sleep() -> bool {
    use crate::context;
    context::kind() == context::ContextKind::Task
        && !context::in_atomic()
        && !context::irqs_disabled()
        && context::rcu_read_depth() == 0
}

/// A cache of `T` objects carved from page-allocator pages
/// (`struct kmem_cache`).
///
/// - `alloc` pops an object from this CPU's cache, taken with trylock;
///   an empty cache refills a batch from the partial slabs under the node
///   lock, allocating a new slab from the page allocator when none is left.
/// - `free` pushes onto this CPU's cache; a full cache flushes a batch back
///   to the slabs. A failed trylock takes the node lock instead.
/// - `free_bulk` sorts the pointers, which groups them by slab, and returns
///   each group under one node-lock acquisition; for a `T` without drop
///   glue it never touches the objects' memory, only the slab headers.
/// - Empty slabs go back to the page allocator at once.
/// - In a signal handler (hardirq or NMI context) and with `NO_LOCKS`, no
///   path waits for a lock: the node lock is only trylocked, and objects
///   that cannot go back are pushed on a lock-free deferred list that the
///   next node-lock holder (a refill, a flush, [`shrink`](Self::shrink))
///   gives back; under PREEMPT_RT a handler's free touches no lock at all.
///   Empty slabs go back with `free_pages_nolock` there.
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
/// # Lifetime of the memory
/// The cache's state lives in a core behind an `Arc`: the handle
/// holds one strong count and every slab allocated holds one more, taken
/// when the slab comes from the page allocator and dropped when it goes
/// back (once per slab, never per object). A [`SlabBox`](super::SlabBox)
/// finds the core through its slab's header, so a box outlives the handle
/// safely: dropping the handle shrinks the cache and marks it orphaned;
/// boxes dropped later still free into the core, which goes (with the
/// page allocator it holds) when its last slab does.
#[doc(alias = "kmem_cache")]
pub struct SlabCache<T> {
    pub(super) core: Arc<CacheCore<T>>,
}

/// The state of a [`SlabCache`], reached through it by `Deref` (its
/// fields are the crate's own). Kept alive by the cache's handle and by
/// each of its slabs (see the cache's "Lifetime of the memory").
#[doc(hidden)]
pub struct CacheCore<T> {
    pub(super) name: &'static str,
    pub(super) pages: Arc<PageAllocator>,
    pub(super) magic: u64,
    /// Per-object free bits checked on every allocation and free (double
    /// frees caught): `SLAB_CONSISTENCY_CHECKS`.
    pub(super) checks: bool,
    pub(super) layout: Layout,
    pub(super) cpu: PerCpu<SpinLock<CpuCache>>,
    pub(super) node: SpinLock<Node>,
    /// Objects freed where no lock could be had (a signal handler whose
    /// trylocks failed, or any under PREEMPT_RT): a lock-free stack linked
    /// through each object's first word, given back to the slabs by the
    /// next node-lock holder. Pushed with a Release compare-exchange, taken
    /// whole with an Acquire swap (no single pop, so no ABA); the objects
    /// stay counted in their slab's `inuse`, so their slabs stay allocated
    /// until they are given back.
    pub(super) deferred: AtomicPtr<u8>,
    pub(super) counters: Counters,
    /// The RCU whose grace periods objects retired into this cache wait
    /// for; `None`: the process-wide one.
    #[cfg(not(loom))]
    pub(super) rcu: Option<Arc<crate::rcu::Rcu>>,
    /// Set (SeqCst) when the handle is dropped: a box dropped afterwards
    /// also shrinks the cache, so that its slabs, and then the core, go.
    pub(super) orphaned: AtomicBool,
    pub(super) _objects: PhantomData<T>,
}

// SAFETY: the cache hands out `T`s to whichever thread asks and drops them
// (in `free`) on whichever thread frees, so `T: Send` is required; all its
// own state is behind locks or atomics.
unsafe impl<T: Send> Send for CacheCore<T> {}
// SAFETY: as for Send: shared access only goes through locks and atomics.
unsafe impl<T: Send> Sync for CacheCore<T> {}

impl<T> core::ops::Deref for SlabCache<T> {
    type Target = CacheCore<T>;
    #[inline(always)]
    fn deref(&self) -> &CacheCore<T> {
        &self.core
    }
}

impl<T> core::fmt::Debug for SlabCache<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlabCache")
            .field("name", &self.name)
            .field("order", &self.layout.order)
            .field("objects_per_slab", &self.layout.objects)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<T> SlabCache<T> {
    /// A cache of `T` over `pages` (`kmem_cache_create`), with consistency
    /// checks in debug builds only (see [`with_checks`](Self::with_checks)).
    #[doc(alias = "kmem_cache_create")]
    pub fn new(pages: &Arc<PageAllocator>, name: &'static str) -> Result<Self, BuildError> {
        Self::with_checks(pages, name, cfg!(debug_assertions))
    }

    /// A cache of `T` over `pages`, choosing whether per-object consistency
    /// checks run (`SLAB_CONSISTENCY_CHECKS`, slub_debug's `F`). With them,
    /// every allocation and free flips the object's free bit in its slab
    /// header with an atomic instruction, so a double free is refused with
    /// its address. Without them, a free still checks that the pointer is a
    /// slot of one of this cache's slabs (no atomic instruction), but a
    /// double free of a valid object goes unnoticed, as in the kernel with
    /// slub_debug off: the atomic costs about as much as the rest of the
    /// fast path.
    #[doc(alias = "SLAB_CONSISTENCY_CHECKS")]
    pub fn with_checks(
        pages: &Arc<PageAllocator>,
        name: &'static str,
        checks: bool,
    ) -> Result<Self, BuildError> {
        // A process-wide id source, not shared state of the model: std.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let layout = Layout::new(core::mem::size_of::<T>(), core::mem::align_of::<T>()).ok_or(
            BuildError::SlabTooLarge {
                size: core::mem::size_of::<T>(),
                align: core::mem::align_of::<T>(),
            },
        )?;
        let domain = pages.domain();
        let core = CacheCore {
            name,
            pages: Arc::clone(pages),
            magic: 0x51ab_0000_0000_0000 | NEXT.fetch_add(1, Relaxed),
            checks,
            layout,
            cpu: PerCpu::new(domain.cpus(), |_| {
                SpinLock::named(
                    domain,
                    "s->cpu_slab->lock",
                    CpuCache {
                        objs: [ptr::null_mut(); CPU_CAPACITY],
                        len: 0,
                    },
                )
            }),
            node: SpinLock::named(
                domain,
                "n->list_lock",
                Node {
                    partial: ptr::null_mut(),
                    nr_partial: 0,
                    nr_slabs: 0,
                },
            ),
            deferred: AtomicPtr::new(ptr::null_mut()),
            counters: Counters::default(),
            #[cfg(not(loom))]
            rcu: None,
            orphaned: AtomicBool::new(false),
            _objects: PhantomData,
        };
        Ok(SlabCache {
            core: Arc::new(core),
        })
    }

    /// The cache's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Objects per slab.
    pub fn objects_per_slab(&self) -> usize {
        self.layout.objects
    }

    /// The page order of each slab.
    pub fn slab_order(&self) -> u32 {
        self.layout.order
    }

    /// The page allocator the slabs come from.
    pub fn page_allocator(&self) -> &Arc<PageAllocator> {
        &self.pages
    }

    /// Returns every CPU's cached objects to the slabs, and so
    /// empty slabs to the page allocator (`kmem_cache_shrink`). Returns the
    /// objects moved.
    #[doc(alias = "kmem_cache_shrink")]
    ///
    /// When slabs went back, free memory beyond the page allocator's
    /// `high` watermark goes back to the OS
    /// ([`PageAllocator::release_free_memory`]), where sleeping is allowed.
    pub fn shrink(&self) -> usize {
        let slabs_freed = self.counters.slabs_freed.load(Relaxed);
        let mut moved = 0;
        for (_, cpu) in self.cpu.iter() {
            let mut cc = cpu.lock();
            moved += cc.len;
            let n = cc.len;
            self.flush(&mut cc, n);
        }
        // Frees deferred from signal handlers.
        self.return_to_slabs(&mut [], Mode::Block);
        if self.counters.slabs_freed.load(Relaxed) != slabs_freed && may_sleep() {
            self.pages.release_free_memory();
        }
        moved
    }

    /// A snapshot of the cache's statistics.
    pub fn stats(&self) -> SlabStats {
        let c = &self.counters;
        let node = self.node.lock();
        SlabStats {
            cpu_allocs: c.cpu_allocs.load(Relaxed),
            cpu_frees: c.cpu_frees.load(Relaxed),
            refills: c.refills.load(Relaxed),
            flushes: c.flushes.load(Relaxed),
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

    // ------------------------------------------------------------------
}

impl<T> Drop for SlabCache<T> {
    /// Returns cached objects, and so empty slabs, to the page allocator.
    /// Slabs with objects still allocated stay allocated (leaked, with a
    /// warning), as `kmem_cache_destroy` leaves them.
    #[doc(alias = "kmem_cache_destroy")]
    /// Objects still allocated keep their slabs, and those the core (see
    /// the type's "Lifetime of the memory"): they stay valid, and freeing
    /// them later gives the slabs back.
    fn drop(&mut self) {
        // SeqCst, before the shrink: a box dropped concurrently either sees
        // the flag (and shrinks itself) or freed before this shrink's locks.
        self.orphaned.store(true, SeqCst);
        self.shrink();
        let slabs = self.node.lock().nr_slabs;
        if slabs > 0 {
            tracing::debug!(
                cache = self.name,
                slabs,
                "slab cache dropped with objects still allocated: they keep its memory"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Domain;
    use crate::page::{Gfp, PageConfig, Watermarks};
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// A free in a signal handler whose per-CPU trylock fails must not wait
    /// for the node lock: the thread it interrupted may hold it (here
    /// another thread holds both, as long as the free has not returned, or
    /// 5 s). The object is deferred, and the next task-context node-lock
    /// holder gives it back.
    #[test]
    fn hardirq_free_never_waits_for_the_node_lock() {
        let d = Domain::builder().cpus(1).build();
        let pa = PageAllocator::new(
            &d,
            PageConfig {
                arena_size: 4 << 20,
                watermarks: Some(Watermarks::NONE),
                kswapd: false,
                ..PageConfig::default()
            },
        )
        .unwrap();
        let cache = SlabCache::<u64>::new(&pa, "hardirq").unwrap();
        let obj = cache.alloc(Gfp::KERNEL, 5).unwrap();
        let held = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        let waited = std::thread::scope(|s| {
            s.spawn(|| {
                let _cpu = cache.cpu.get(0).lock();
                let _node = cache.node.lock();
                held.store(true, SeqCst);
                let t = Instant::now();
                while !done.load(SeqCst) && t.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            while !held.load(SeqCst) {
                std::thread::yield_now();
            }
            let t = Instant::now();
            {
                let _hardirq = crate::context::enter_hardirq();
                // SAFETY: allocated above, freed once, not used again.
                unsafe { cache.free(obj) };
            }
            let waited = t.elapsed();
            done.store(true, SeqCst);
            waited
        });
        assert!(
            waited < Duration::from_secs(2),
            "the handler's free waited {waited:?} for the node lock"
        );
        assert_eq!(cache.stats().deferred_frees, 1);
        cache.shrink();
        assert_eq!(cache.stats().slabs, 0);
    }
}
