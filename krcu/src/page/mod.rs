//! The page allocator: a zone of 4 KiB pages over one mmap'd arena, a buddy
//! allocator behind the zone lock, per-CPU page lists taken with trylock in
//! front of it, GFP modes (among them the lock-free ones the 2020 kfree_rcu
//! thread argued about: see docs/history.md), watermarks, a reclaim worker and shrinkers.
//!
//! # Design
//! ```text
//!  alloc_pages(gfp, order) ──► per-CPU lists (trylock pcp->lock) ──hit──► page
//!        │                          │ empty: rmqueue_bulk (zone->lock)
//!        │                          │ trylock failed / order > 3
//!        ▼                          ▼
//!   watermark low ─fail─► wake kswapd ─► watermark min (ATOMIC: min/2)
//!        ─fail─► KERNEL: direct reclaim (shrinkers, drain_all_pages), retry
//!
//!  NO_LOCKS  : trylock pcp->lock, pop from any migratetype list, else fail.
//!  nolock    : trylock pcp->lock, refill with trylock zone->lock; else
//!              trylock zone->lock; else fail. Never waits on a lock.
//!  Both refuse hardirq (signal handler) and NMI context under PREEMPT_RT,
//!  where the locks sleep; free_pages_nolock defers the block there.
//! ```
//! Pages are owned through [`Page`] handles (address, order, allocator);
//! their metadata lives in a side array indexed by page number (see
//! `zone.rs`), so free lists are intrusive lists of indices: no heap
//! allocation on any allocation or free path.
//!
//! The validator sees every lock: the zone lock is a [`SpinLock`](crate::lock::SpinLock)
//! (`spinlock_t`, wait type CONFIG), so a `NOWAIT` allocation that refills
//! under a [`RawSpinLock`](crate::lock::RawSpinLock) with
//! `prove_raw_lock_nesting` gives the kernel's `BUG: Invalid wait context`;
//! `NO_LOCKS` and `alloc_pages_nolock` take locks only with trylock, which
//! the validator exempts, and never sleep. A `KERNEL` allocation calls
//! [`Domain::might_sleep`] first.
//!
//! # Kernel map
//! | kernel (`mm/page_alloc.c`) | here |
//! |---|---|
//! | `struct zone`, `zone->lock`, `free_area[order].free_list[mt]` | `zone.rs`: `Zone`, `FreeArea` |
//! | `struct page` (flags, `private` = order, `lru`) | `zone.rs`: `PageMeta` in a side array |
//! | `__rmqueue_smallest`, `__rmqueue_fallback`, `expand`, `__free_one_page` | `Buddy::rmqueue`, `Buddy::free_one` |
//! | `struct per_cpu_pages`, `pcp->lock`, `count/high/batch` | `pcp.rs`: `PcpLists` |
//! | `__rmqueue_pcplist`, `rmqueue_bulk`, `rmqueue_buddy` | [`PageAllocator::alloc_pages`] paths |
//! | `free_unref_page`, `free_pcppages_bulk`, `free_one_page` | [`PageAllocator::free`], [`PageAllocator::free_pages`] paths |
//! | `drain_pages_zone`, `drain_all_pages` | [`PageAllocator::drain_cpu`], [`PageAllocator::drain_all`] |
//! | `gfp_t`, `__GFP_*`, `GFP_*` | [`Gfp`] |
//! | `__GFP_FAST_TRY` / `__GFP_NO_LOCKS` (the 2020 proposal) | [`Gfp::NO_LOCKS`] |
//! | `alloc_pages_nolock`, `free_pages_nolock` | [`PageAllocator::alloc_pages_nolock`], [`PageAllocator::free_nolock`], [`PageAllocator::free_pages_nolock`] |
//! | `_watermark[WMARK_MIN/LOW/HIGH]` | [`Watermarks`] |
//! | `kswapd`, `wakeup_kswapd`, `shrink_slab`, `register_shrinker` | `reclaim.rs` |
//! | `fail_page_alloc` | [`FaultInjector`] |
//!
//! # Defaults
//! Arena 256 MiB (`MAP_NORESERVE`: untouched pages cost nothing); per-CPU
//! `batch` 31 pages and `high` 6 × batch = 186 (the kernel computes
//! `batch` from zone size, about a quarter of a megabyte, and caps it at
//! 63; `high` is 6 × batch for the default `percpu_pagelist_high_fraction`);
//! watermarks from the kernel's `min_free_kbytes` formula ([`Watermarks`]).
//!
//! # Bad input
//! See [`PageError`] for the policy: `try_*` frees return a [`PageError`]; the
//! others panic in debug builds and count and report in release builds.
//!
//! Uses: `domain`, `fork`, `percpu`, `sync`.

mod alloc;
mod config;
mod consts;
mod error;
mod fault;
mod free;
mod gfp;
mod meta;
mod pcp;
mod reclaim;
mod release;
mod stats;
mod watermark;
mod zone;

pub use config::PageConfig;
pub use consts::{MAX_ORDER, NR_ORDERS, PAGE_SHIFT, PAGE_SIZE, RELEASE_ORDER};
pub use error::{AllocError, PageError};
pub use fault::{FaultInjector, FaultSites};
pub use gfp::{Gfp, Migratetype};
pub use pcp::PCP_MAX_ORDER;
pub use reclaim::{SHRINK_BATCH, ShrinkerHandle};
pub use stats::{GlobalStats, PageStats, PathStats};
pub use watermark::Watermarks;

use crate::domain::Domain;
use crate::error::BuildError;
use crate::percpu::PerCpu;
use core::ptr::NonNull;
use pcp::PcpSlot;
use reclaim::Shared;
use std::sync::Arc;
use zone::Zone;

/// An allocated block of `2^order` pages: its address and order, and which
/// allocator it came from. An owning handle: it is not `Copy` or `Clone`,
/// and [`PageAllocator::free`] takes it by value, so safe code cannot free a
/// block twice, or free a block that has since been handed to someone else
/// (a slab, kvfree's pointer blocks, another caller).
///
/// Dropping a `Page` without freeing it leaks the block (it stays allocated
/// until the allocator is dropped). Code that keeps raw addresses (kvfree's
/// blocks) turns the handle into one with [`into_raw`](Self::into_raw) and
/// back with [`from_raw`](Self::from_raw), or frees the address with the
/// `unsafe` [`PageAllocator::free_pages`].
///
/// A freed `Page` cannot be used again:
/// ```compile_fail,E0382
/// # use krcu::{Domain, page::{Gfp, PageAllocator, PageConfig}};
/// # let d = Domain::builder().cpus(1).build();
/// # let config = PageConfig { arena_size: 4 << 20, kswapd: false, ..PageConfig::default() };
/// # let pa = PageAllocator::new(&d, config).unwrap();
/// let page = pa.alloc_page(Gfp::KERNEL).unwrap();
/// pa.free(page);
/// pa.free(page); // error[E0382]: use of moved value: `page`
/// ```
/// nor copied so that a stale copy outlives the free:
/// ```compile_fail,E0382
/// # use krcu::{Domain, page::{Gfp, PageAllocator, PageConfig}};
/// # let d = Domain::builder().cpus(1).build();
/// # let config = PageConfig { arena_size: 4 << 20, kswapd: false, ..PageConfig::default() };
/// # let pa = PageAllocator::new(&d, config).unwrap();
/// let page = pa.alloc_page(Gfp::KERNEL).unwrap();
/// let stale = page;
/// pa.free(page); // error[E0382]: use of moved value: `page`
/// # pa.free(stale);
/// ```
/// and a free by address is `unsafe`: the sequence that let safe code free
/// a page kvfree had since taken for one of its blocks (which then crashed
/// inside kvfree) does not compile without an `unsafe` block:
/// ```compile_fail,E0133
/// # use krcu::{Krcu, page::Gfp};
/// let k = Krcu::builder().cpus(1).build().unwrap();
/// let pa = k.pages();
/// let page = pa.alloc_page(Gfp::KERNEL).unwrap();
/// let addr = page.addr();
/// pa.free(page);
/// k.kvfree_rcu_mightsleep(Box::new(1u64)).unwrap(); // takes that page for a block
/// pa.free_pages(addr, 0); // error[E0133]: call to unsafe function
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a Page owns its block: free it, or it leaks"]
pub struct Page {
    addr: NonNull<u8>,
    order: u32,
    /// The id of the allocator that handed it out.
    owner: u32,
}

// SAFETY: a `Page` owns a block of the arena, which any thread may use and
// free (the allocator is `Sync`); it holds no thread-bound state.
unsafe impl Send for Page {}
// SAFETY: shared `&Page` exposes only the address and order; reading or
// writing the block through them is `unsafe` and the caller's business.
unsafe impl Sync for Page {}

impl Page {
    /// The first byte of the block, page-aligned.
    #[inline]
    pub fn addr(&self) -> NonNull<u8> {
        self.addr
    }
    /// The first byte of the block as a raw pointer.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }
    /// The order: the block has `2^order` pages.
    #[inline]
    pub fn order(&self) -> u32 {
        self.order
    }
    /// The block's size in bytes.
    #[inline]
    #[allow(clippy::len_without_is_empty)] // a block is never empty
    pub fn len(&self) -> usize {
        PAGE_SIZE << self.order
    }

    /// Gives up the handle and returns the block's address; the block stays
    /// allocated. Free it later with the `unsafe`
    /// [`PageAllocator::free_pages`] (with this page's order), or turn it
    /// back into a `Page` with [`from_raw`](Self::from_raw).
    #[inline]
    pub fn into_raw(self) -> NonNull<u8> {
        self.addr
    }

    /// Rebuilds the handle of a block of `pages`.
    ///
    /// # Safety
    /// `addr` must be the address of an order-`order` block allocated from
    /// `pages` (a [`Page`] given up with [`into_raw`](Self::into_raw)),
    /// owned by the caller and handed over to the new `Page`: no other
    /// handle, raw address kept for freeing, or user of the block remains.
    #[inline]
    pub unsafe fn from_raw(pages: &PageAllocator, addr: NonNull<u8>, order: u32) -> Page {
        Page {
            addr,
            order,
            owner: pages.id,
        }
    }
}

/// The page allocator instance: zone, per-CPU lists, kswapd, shrinkers,
/// statistics and fault injector. Build it with [`PageAllocator::new`];
/// dropping it stops and joins kswapd and unmaps the arena.
///
/// ```
/// use krcu::page::{Gfp, PageAllocator, PageConfig, PAGE_SIZE};
///
/// let domain = krcu::Domain::builder().cpus(1).build();
/// let pages = PageAllocator::new(&domain, PageConfig::default().arena_size(4 << 20)).unwrap();
/// assert_eq!(pages.total_pages(), (4 << 20) / PAGE_SIZE);
///
/// let block = pages.alloc_pages(Gfp::KERNEL, 2).expect("4 contiguous pages");
/// assert_eq!((block.order(), block.len()), (2, 4 * PAGE_SIZE));
/// assert_eq!(block.as_ptr() as usize % (4 * PAGE_SIZE), 0, "aligned to its size");
/// assert_eq!(pages.stats().allocated_pages(), 4);
/// pages.free(block);
/// assert_eq!(pages.stats().allocated_pages(), 0);
/// ```
pub struct PageAllocator {
    domain: Domain,
    config: PageConfig,
    zone: Arc<Zone>,
    pcp: PerCpu<PcpSlot>,
    /// Orders below this use the per-CPU lists: `PCP_MAX_ORDER + 1`, or 0
    /// when they are disabled.
    pcp_orders: u32,
    shared: Arc<Shared>,
    faults: FaultInjector,
    /// Process-unique: the owner id of every [`Page`] handed out, checked on
    /// [`free`](Self::free) so that a `Page` of a dropped allocator whose
    /// arena address range this one reuses is refused, not freed.
    id: u32,
    kswapd: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl core::fmt::Debug for PageAllocator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageAllocator")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PageAllocator {
    /// Builds an allocator in `domain` (its locks are that domain's, so its
    /// validator and preemption model apply).
    ///
    /// ```
    /// use krcu::page::{PageAllocator, PageConfig};
    /// let domain = krcu::Domain::global();
    /// let pages = PageAllocator::new(domain, PageConfig::default().arena_size(8 << 20)).unwrap();
    /// let marks = pages.watermarks(); // computed from the arena size
    /// assert!(marks.min <= marks.low && marks.low <= marks.high);
    /// // Not a multiple of the page size: refused, with the value.
    /// let err = PageAllocator::new(domain, PageConfig::default().arena_size(5000)).unwrap_err();
    /// assert!(matches!(err, krcu::BuildError::ArenaSize(5000)));
    /// ```
    ///
    /// # Errors
    /// [`BuildError::ArenaSize`] for an arena that is not a positive
    /// multiple of [`PAGE_SIZE`] (or too large for 32-bit page numbers),
    /// [`BuildError::PcpSizes`] for a zero `pcp_batch` or a `pcp_high`
    /// below it, [`BuildError::Watermarks`] or [`BuildError::ArenaTooSmall`]
    /// for watermarks out of order or above half the arena,
    /// [`BuildError::Mmap`] when the arena cannot be mapped, and
    /// [`BuildError::Thread`] when kswapd cannot be started.
    pub fn new(domain: &Domain, config: PageConfig) -> Result<Arc<PageAllocator>, BuildError> {
        let size = config.arena_size;
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || size / PAGE_SIZE >= u32::MAX as usize {
            return Err(BuildError::ArenaSize(size));
        }
        if config.pcp_batch == 0 || config.pcp_high < config.pcp_batch {
            return Err(BuildError::PcpSizes {
                batch: config.pcp_batch,
                high: config.pcp_high,
            });
        }
        let wmark = config
            .watermarks
            .unwrap_or_else(|| Watermarks::for_arena(size));
        wmark.validate(size / PAGE_SIZE)?;
        let zone = Arc::new(Zone::new(domain, size, wmark)?);
        let shared = Arc::new(Shared::new(domain));
        let pcp = PerCpu::new(domain.cpus(), |_| {
            PcpSlot::new(domain, config.pcp_high, config.pcp_batch)
        });
        let worker = if config.kswapd {
            Some(spawn_kswapd(&zone, &shared).map_err(BuildError::Thread)?)
        } else {
            None
        };
        let me = Arc::new(PageAllocator {
            domain: domain.clone(),
            pcp_orders: if config.pcp_lists {
                PCP_MAX_ORDER + 1
            } else {
                0
            },
            config,
            zone,
            pcp,
            shared,
            faults: FaultInjector::default(),
            id: next_id(),
            kswapd: std::sync::Mutex::new(worker),
        });
        let weak: std::sync::Weak<dyn crate::fork::Participant> = Arc::downgrade(&me) as _;
        crate::fork::register(weak);
        Ok(me)
    }

    /// The domain the allocator's locks belong to.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PageConfig {
        &self.config
    }

    /// The watermarks in force.
    pub fn watermarks(&self) -> Watermarks {
        self.zone.wmark
    }

    /// Pages in the arena.
    pub fn total_pages(&self) -> usize {
        self.zone.pages()
    }

    /// Whether `addr` lies inside the arena.
    pub fn contains(&self, addr: *const u8) -> bool {
        self.zone.pfn_of(addr as usize).is_some()
    }

    /// The page frame number of `addr` (its page's index in the arena), if
    /// it lies inside the arena.
    #[doc(alias = "virt_to_pfn")]
    pub fn pfn_of(&self, addr: *const u8) -> Option<usize> {
        self.zone.pfn_of(addr as usize).map(|pfn| pfn as usize)
    }

    /// The fault injector: make allocations fail on purpose, to exercise
    /// the paths that handle it.
    ///
    /// ```
    /// use krcu::page::{AllocError, FaultSites, Gfp, PageAllocator, PageConfig};
    /// let pages = PageAllocator::new(
    ///     krcu::Domain::global(),
    ///     PageConfig::default().arena_size(4 << 20).kswapd(false),
    /// )
    /// .unwrap();
    /// pages.faults().fail_next(1, FaultSites::SLEEPING);
    /// let failed = pages.alloc_page(Gfp::KERNEL | Gfp::NOWARN);
    /// assert_eq!(failed.unwrap_err(), AllocError::Injected);
    /// let page = pages.alloc_page(Gfp::KERNEL).expect("only the next one failed");
    /// assert_eq!(pages.stats().global.injected_failures, 1);
    /// pages.free(page);
    /// ```
    pub fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    /// Registers a shrinker (`register_shrinker`): `count()` says how many
    /// objects it could free, `scan(n)` frees up to `n` and returns how
    /// many it freed. kswapd and direct reclaim call them under the
    /// shrinker mutex; they must not register or unregister shrinkers.
    /// Unregistered when the handle drops. A shrinker that needs the
    /// allocator should hold a `Weak` of it, or the allocator never drops.
    ///
    /// ```
    /// use krcu::page::{Gfp, PageAllocator, PageConfig};
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let pages = PageAllocator::new(
    ///     krcu::Domain::global(),
    ///     PageConfig::default().arena_size(4 << 20).kswapd(false),
    /// )
    /// .unwrap();
    /// let cached = Arc::new(AtomicUsize::new(100)); // objects of a cache of ours
    /// let c = cached.clone();
    /// let s = cached.clone();
    /// let handle = pages.register_shrinker(
    ///     "my-cache",
    ///     move || c.load(Ordering::Relaxed),
    ///     move |n| {
    ///         let freed = n.min(s.load(Ordering::Relaxed));
    ///         s.fetch_sub(freed, Ordering::Relaxed);
    ///         freed
    ///     },
    /// );
    /// // Use up the arena: sleeping allocations run direct reclaim, which
    /// // asks the shrinkers to give memory back before it gives up.
    /// let mut held = Vec::new();
    /// while let Ok(page) = pages.alloc_page(Gfp::KERNEL | Gfp::NOWARN) {
    ///     held.push(page);
    /// }
    /// assert!(pages.stats().global.direct_reclaims >= 1);
    /// assert!(cached.load(Ordering::Relaxed) < 100, "the shrinker was asked");
    /// drop(handle); // unregistered
    /// held.into_iter().for_each(|page| pages.free(page));
    /// ```
    #[doc(alias = "shrinker_register")]
    pub fn register_shrinker(
        &self,
        name: &'static str,
        count: impl Fn() -> usize + Send + Sync + 'static,
        scan: impl Fn(usize) -> usize + Send + Sync + 'static,
    ) -> ShrinkerHandle {
        self.shared.register(name, Box::new(count), Box::new(scan))
    }

    /// Whether the calling thread is running shrinkers (direct reclaim or
    /// kswapd, the kernel's `PF_MEMALLOC`): it holds the shrinker mutex, so
    /// it must not unregister a shrinker nor wait for a thread that may be
    /// in reclaim.
    pub(crate) fn in_reclaim() -> bool {
        reclaim::in_reclaim()
    }

    /// A snapshot of the statistics; lock-free, callable at any time.
    pub fn stats(&self) -> PageStats {
        let mut s = PageStats {
            total_pages: self.zone.pages(),
            free_pages: self.zone.free_pages(),
            free_blocks: self.zone.nr_free(),
            ..PageStats::default()
        };
        for (_, slot) in self.pcp.iter() {
            slot.stats.add_to(&mut s.paths);
            s.pcp_pages += slot.pages.load(crate::sync::atomic::Ordering::Relaxed);
        }
        self.shared.stats.add_to(&mut s.global);
        s
    }

    /// Pages on `cpu`'s per-CPU lists (a snapshot).
    pub fn pcp_pages(&self, cpu: usize) -> usize {
        self.pcp
            .get(cpu)
            .pages
            .load(crate::sync::atomic::Ordering::Relaxed)
    }

    /// How many CPUs have per-CPU lists.
    pub fn cpus(&self) -> usize {
        self.pcp.cpus()
    }
}

/// A process-unique allocator id. Never reused: panics rather than wrap
/// (after four billion allocators), since a reused id would let a `Page` of
/// a dropped allocator pass the owner check of a new one.
fn next_id() -> u32 {
    // A process-wide id source, not shared state of the model: std.
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_update(Relaxed, Relaxed, |id| id.checked_add(1))
        .expect("krcu: page allocator ids exhausted")
}

/// Starts kswapd.
fn spawn_kswapd(
    zone: &Arc<Zone>,
    shared: &Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (z, s) = (Arc::clone(zone), Arc::clone(shared));
    let token = crate::fork::WorkerToken::new();
    let handle = std::thread::Builder::new()
        .name("kswapd".into())
        .spawn(move || token.run(|| reclaim::kswapd(z, s)))?;
    shared.set_thread(handle.thread().clone());
    Ok(handle)
}

/// Across `fork` (see `crate::fork`): kswapd parks at the top of its loop,
/// holding no lock, and the child gets a new one. The zone and per-CPU list
/// locks are not taken: only an application thread could hold one then.
impl crate::fork::Participant for PageAllocator {
    fn lock_before_park(self: Arc<Self>, _: &mut Vec<Box<dyn std::any::Any>>) {}

    fn kick(&self) {
        self.shared.unpark();
    }

    fn lock_after_park(self: Arc<Self>, _: usize, _: &mut Vec<Box<dyn std::any::Any>>) {}

    fn restart_in_child(self: Arc<Self>) {
        let mut kswapd = self.kswapd.lock().unwrap_or_else(|e| e.into_inner());
        let Some(old) = kswapd.take() else {
            return; // no kswapd, or the allocator is being dropped
        };
        // The old thread does not exist here: its handle must never be
        // joined (glibc may hand its descriptor to a new thread).
        core::mem::forget(old);
        match spawn_kswapd(&self.zone, &self.shared) {
            Ok(h) => *kswapd = Some(h),
            Err(e) => tracing::error!("krcu: cannot restart kswapd after fork: {e}"),
        }
    }
}

impl Drop for PageAllocator {
    fn drop(&mut self) {
        self.shared.stop();
        let worker = self
            .kswapd
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = worker {
            if crate::fork::on_worker_thread() {
                // Dropped on a krcu worker thread (a shrinker kswapd runs,
                // an RCU callback, a kfree_rcu destructor): a worker never
                // joins a worker (a fork's prepare handler may have parked
                // that one and waits for this one). kswapd is detached: it
                // sees `stop` and exits by itself, and its own Arcs keep
                // the zone (the arena) and its shared state alive until
                // then.
                drop(handle);
            } else {
                let _ = handle.join();
            }
        }
    }
}
