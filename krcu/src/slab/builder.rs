//! [`SlabCacheBuilder`]: how a [`SlabCache`] is made (name, sheaf
//! capacity, consistency checks, RCU instance), and the constructors that
//! use it.
//!
//! Uses the cache's core (`cache.rs`), the barn (`sheaf.rs`), the thread
//! slots' registry (`thread.rs`), the layout.

use super::cache::{
    CacheCore, Counters, DEFAULT_SHEAF_CAPACITY, MAX_SHEAF_CAPACITY, Node, SlabCache,
};
use super::layout::Layout;
use super::sheaf::{Barn, CpuSheaves};
use crate::error::BuildError;
use crate::lock::SpinLock;
use crate::page::PageAllocator;
use crate::percpu::PerCpu;
use crate::sync::atomic::{AtomicBool, AtomicPtr, Ordering::*};
use core::marker::PhantomData;
use core::ptr;
use std::sync::Arc;

/// Builds a [`SlabCache`] ([`SlabCache::builder`]).
#[must_use = "a builder does nothing until `build`"]
pub struct SlabCacheBuilder<T> {
    pages: Arc<PageAllocator>,
    name: &'static str,
    checks: bool,
    sheaf_capacity: usize,
    #[cfg(not(loom))]
    rcu: Option<Arc<crate::rcu::Rcu>>,
    _objects: PhantomData<T>,
}

impl<T> core::fmt::Debug for SlabCacheBuilder<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlabCacheBuilder")
            .field("name", &self.name)
            .field("checks", &self.checks)
            .field("sheaf_capacity", &self.sheaf_capacity)
            .finish_non_exhaustive()
    }
}

impl<T> SlabCacheBuilder<T> {
    /// The cache's name (for reports and statistics); "slab" by default.
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Objects per sheaf (`kmem_cache_args.sheaf_capacity`), clamped to
    /// 1..=[`MAX_SHEAF_CAPACITY`]; [`DEFAULT_SHEAF_CAPACITY`] by default.
    pub fn sheaf_capacity(mut self, n: usize) -> Self {
        self.sheaf_capacity = n.clamp(1, MAX_SHEAF_CAPACITY);
        self
    }

    /// Per-object consistency checks (see [`SlabCache::with_checks`]); on
    /// in debug builds by default.
    pub fn checks(mut self, on: bool) -> Self {
        self.checks = on;
        self
    }

    /// The RCU instance whose grace periods objects retired into this
    /// cache's `rcu_free` sheaves wait for; the process-wide one (the one
    /// [`Krcu::global`](crate::Krcu::global) uses) by default.
    #[cfg(not(loom))]
    pub fn rcu(mut self, rcu: Arc<crate::rcu::Rcu>) -> Self {
        self.rcu = Some(rcu);
        self
    }

    /// The cache (`kmem_cache_create`).
    ///
    /// # Errors
    /// [`BuildError::SlabTooLarge`] when `T` does not fit a slab of at most
    /// 8 pages (with its header).
    #[doc(alias = "kmem_cache_create")]
    pub fn build(self) -> Result<SlabCache<T>, BuildError> {
        // A process-wide id source, not shared state of the model: std.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let layout = Layout::new(core::mem::size_of::<T>(), core::mem::align_of::<T>()).ok_or(
            BuildError::SlabTooLarge {
                size: core::mem::size_of::<T>(),
                align: core::mem::align_of::<T>(),
            },
        )?;
        let id = NEXT.fetch_add(1, Relaxed);
        let domain = self.pages.domain();
        let drop_fn: Option<unsafe fn(*mut u8)> = if core::mem::needs_drop::<T>() {
            Some(drop_obj::<T>)
        } else {
            None
        };
        #[cfg(not(loom))]
        let rcu = {
            let cell = std::sync::OnceLock::new();
            if let Some(r) = self.rcu {
                let _ = cell.set(r);
            }
            cell
        };
        let core = CacheCore {
            id,
            name: self.name,
            magic: 0x51ab_0000_0000_0000 | id,
            checks: self.checks,
            layout,
            obj_size: core::mem::size_of::<T>(),
            drop_fn,
            sheaf_capacity: self.sheaf_capacity,
            cpu: PerCpu::new(domain.cpus(), |_| {
                SpinLock::named(domain, "s->cpu_sheaves->lock", CpuSheaves::default())
            }),
            barn: Barn::new(domain, barn_limit(domain.cpus(), &layout, self.sheaf_capacity)),
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
            #[cfg(not(loom))]
            threads: super::thread::Registry::new(),
            #[cfg(not(loom))]
            rcu,
            counters: Counters::default(),
            orphaned: AtomicBool::new(false),
            pages: self.pages,
        };
        let core = Arc::new(core);
        #[cfg(not(loom))]
        {
            // Task context: what orphaned caches left in sheaves goes back
            // (with no kfree_rcu monitor running, this is when).
            super::by_rcu::tend_orphans();
            super::by_rcu::register(&core);
        }
        let (count, scan) = (Arc::downgrade(&core), Arc::downgrade(&core));
        let shrinker = core.pages.register_shrinker(
            "slab-sheaves",
            move || count.upgrade().map_or(0, |c| c.cached_objects()),
            move |_| scan.upgrade().map_or(0, |c| c.shrink()),
        );
        Ok(SlabCache {
            core,
            shrinker: Some(shrinker),
            _objects: PhantomData,
        })
    }
}

/// The barn's limit per list (`MAX_FULL_SHEAVES`, `MAX_EMPTY_SHEAVES`):
/// the kernel's 10, or two per CPU, or as many sheaves as hold 1 MiB of
/// objects, whichever is most. Sheaves back from a grace period beyond it
/// are flushed to the slabs, and allocations then refill from them one
/// object at a time: with grace periods of a few milliseconds a busy
/// cache has hundreds of sheaves in flight, so 10 would flush nearly all.
/// The shrinker and `shrink` empty the barn.
fn barn_limit(cpus: usize, layout: &Layout, capacity: usize) -> usize {
    const BARN_BYTES: usize = 1 << 20;
    let by_bytes = BARN_BYTES / (layout.stride * capacity).max(1);
    (2 * cpus).max(10).max(by_bytes)
}

/// Drops the `T` at `p` (a `drop_fn`).
///
/// # Safety
/// `p` must hold an initialised `T` that nothing uses afterwards.
unsafe fn drop_obj<T>(p: *mut u8) {
    // SAFETY: per the contract.
    unsafe { ptr::drop_in_place(p.cast::<T>()) }
}

impl<T> SlabCache<T> {
    /// A builder for a cache of `T` over `pages`: name, sheaf capacity,
    /// consistency checks, RCU instance.
    pub fn builder(pages: &Arc<PageAllocator>) -> SlabCacheBuilder<T> {
        SlabCacheBuilder {
            pages: Arc::clone(pages),
            name: "slab",
            checks: cfg!(debug_assertions),
            sheaf_capacity: DEFAULT_SHEAF_CAPACITY,
            #[cfg(not(loom))]
            rcu: None,
            _objects: PhantomData,
        }
    }

    /// A cache of `T` over `pages` (`kmem_cache_create`), with consistency
    /// checks in debug builds only (see [`with_checks`](Self::with_checks))
    /// and the default sheaf capacity.
    ///
    /// ```
    /// use krcu::page::{PageAllocator, PageConfig};
    /// use krcu::slab::SlabCache;
    /// let pages = PageAllocator::new(krcu::Domain::global(), PageConfig::default().arena_size(4 << 20))
    ///     .unwrap();
    /// let cache = SlabCache::<u64>::new(&pages, "u64").unwrap();
    /// assert_eq!(cache.name(), "u64");
    /// // 8 bytes, and a hidden 16-byte RcuHead per slot for kfree_rcu's last
    /// // resort: 24-byte slots.
    /// assert!(cache.objects_per_slab() >= 160, "a 4 KiB slab holds many");
    /// let huge = SlabCache::<[u8; 1 << 20]>::new(&pages, "1 MiB");
    /// assert!(matches!(huge, Err(krcu::BuildError::SlabTooLarge { .. })));
    /// ```
    ///
    /// # Errors
    /// [`BuildError::SlabTooLarge`] when `T` does not fit a slab of at most
    /// 8 pages (with its header).
    #[doc(alias = "kmem_cache_create")]
    pub fn new(pages: &Arc<PageAllocator>, name: &'static str) -> Result<Self, BuildError> {
        Self::builder(pages).name(name).build()
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
    ///
    /// # Errors
    /// As [`new`](Self::new).
    #[doc(alias = "SLAB_CONSISTENCY_CHECKS")]
    pub fn with_checks(
        pages: &Arc<PageAllocator>,
        name: &'static str,
        checks: bool,
    ) -> Result<Self, BuildError> {
        Self::builder(pages).name(name).checks(checks).build()
    }
}
