//! Statistics per path, readable at any time.
//!
//! Counters live per CPU ([`CpuStats`], one cache line set per CPU in the
//! allocator's `PerCpu`) so that counting does not bounce lines between
//! CPUs. Two kinds of update:
//! - counters bumped only while holding that CPU's pcp lock use a relaxed
//!   load and store ([`bump_locked`]): the lock serialises the writers, so
//!   no read-modify-write instruction is needed on the fast path;
//! - counters bumped without that lock (fallbacks, failures) use a relaxed
//!   `fetch_add` ([`bump`]).
//!
//! Readers sum relaxed loads: a snapshot may be a few events behind a
//! concurrent writer but never sees a torn or decreasing counter.
//!
//! Uses: `sync`; in this module `consts.rs`.

use super::consts::NR_ORDERS;
use crate::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bumps a counter whose writers are serialised by a lock the caller holds.
#[inline(always)]
pub(crate) fn bump_locked(c: &AtomicU64) {
    c.store(c.load(Relaxed) + 1, Relaxed);
}

/// Bumps a counter that may have concurrent writers.
#[inline(always)]
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

macro_rules! counters {
    ($(#[$sm:meta])* $snap:ident / $(#[$cm:meta])* $cell:ident {
        $($(#[$fm:meta])* $field:ident,)*
    }) => {
        $(#[$cm])*
        #[derive(Debug, Default)]
        pub(crate) struct $cell {
            $(pub(crate) $field: AtomicU64,)*
        }

        $(#[$sm])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct $snap {
            $($(#[$fm])* pub $field: u64,)*
        }

        impl $cell {
            pub(crate) fn add_to(&self, s: &mut $snap) {
                $(s.$field += self.$field.load(Relaxed);)*
            }
        }
    };
}

counters! {
    /// Per-path allocation and free counts, summed over CPUs.
    PathStats /
    /// One CPU's counters.
    CpuStats {
        /// Allocations served from a per-CPU list (any mode but `NO_LOCKS`).
        pcp_hits,
        /// `NO_LOCKS` allocations served from a per-CPU list.
        no_locks_hits,
        /// Per-CPU list refills from the buddy (`rmqueue_bulk` calls).
        refills,
        /// Pages moved from the buddy into per-CPU lists by refills.
        refill_pages,
        /// Allocations served by the buddy directly (`rmqueue_buddy`):
        /// orders above the per-CPU ones, or a per-CPU trylock that failed.
        buddy_allocs,
        /// Per-CPU trylocks that failed (alloc or free).
        pcp_trylock_failures,
        /// `NO_LOCKS` allocations that failed.
        no_locks_failures,
        /// `alloc_pages_nolock` calls that succeeded.
        nolock_allocs,
        /// `alloc_pages_nolock` calls that failed.
        nolock_failures,
        /// Other allocations that failed (after any reclaim).
        alloc_failures,
        /// Frees onto a per-CPU list.
        pcp_frees,
        /// Frees straight to the buddy.
        buddy_frees,
        /// Frees deferred to the next zone-lock holder (`free_pages_nolock`
        /// that found both locks taken).
        deferred_frees,
        /// Batches returned to the buddy because a list went over `high`
        /// (`free_pcppages_bulk` calls).
        high_drains,
    }
}

counters! {
    /// Allocator-wide counters.
    GlobalStats /
    /// The allocator-wide cells.
    GlobalCells {
        /// kswapd wake-ups.
        kswapd_wakeups,
        /// kswapd balancing runs (each runs the shrinkers until `high`).
        reclaim_runs,
        /// Direct-reclaim rounds run by sleeping allocations.
        direct_reclaims,
        /// Objects the shrinkers reported freed. Added once per round,
        /// after every shrinker of the round returned: a snapshot taken
        /// meanwhile may see the round's pages free but not yet counted.
        shrinker_freed,
        /// Drains of a CPU's lists (`drain_pages_zone`), local or remote.
        cpu_drains,
        /// Allocations failed by fault injection.
        injected_failures,
        /// Frees refused as bad input (release builds count them).
        bad_frees,
        /// Of `bad_frees`, those made in hardirq (signal handler) or NMI
        /// context: counted there, never panicked on nor logged, and
        /// reported from task context by the next
        /// [`drain_all`](super::PageAllocator::drain_all).
        handler_bad_frees,
        /// Passes that gave free memory back to the OS
        /// ([`release_free_memory`](super::PageAllocator::release_free_memory)).
        release_passes,
        /// Pages given back to the OS with `madvise` (each counted once
        /// until it is allocated again).
        released_pages,
    }
}

/// A snapshot of every statistic ([`PageAllocator::stats`](super::PageAllocator::stats)).
///
/// ```
/// use krcu::page::{Gfp, PageAllocator, PageConfig};
/// let domain = krcu::Domain::builder().cpus(1).build();
/// let pages = PageAllocator::new(&domain, PageConfig::default().arena_size(4 << 20)).unwrap();
/// let a = pages.alloc_page(Gfp::KERNEL).unwrap(); // refills this CPU's list
/// let b = pages.alloc_page(Gfp::KERNEL).unwrap(); // a hit on it
/// let s = pages.stats();
/// assert_eq!((s.paths.refills, s.paths.pcp_hits), (1, 1));
/// assert_eq!(s.paths.refill_pages, 31, "a batch (PageConfig::pcp_batch)");
/// assert_eq!(s.allocated_pages(), 2);
/// assert_eq!(s.free_pages + s.pcp_pages + 2, s.total_pages);
/// pages.free(a);
/// pages.free(b);
/// assert_eq!(pages.stats().paths.pcp_frees, 2, "back on this CPU's list");
/// pages.drain_all(); // the lists back to the buddy allocator
/// assert_eq!(pages.stats().pcp_pages, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageStats {
    /// Per-path counts, summed over CPUs.
    pub paths: PathStats,
    /// Allocator-wide counts.
    pub global: GlobalStats,
    /// Pages free in the buddy.
    pub free_pages: usize,
    /// Free buddy blocks per order.
    pub free_blocks: [usize; NR_ORDERS],
    /// Pages sitting on per-CPU lists.
    pub pcp_pages: usize,
    /// Pages in the arena.
    pub total_pages: usize,
}

impl PageStats {
    /// Pages handed out and not yet freed (`total - buddy - pcp`; deferred
    /// frees count as allocated until merged).
    pub fn allocated_pages(&self) -> usize {
        self.total_pages - self.free_pages - self.pcp_pages
    }

    /// Pages in free blocks of order `order` and above.
    pub fn free_pages_at_or_above(&self, order: u32) -> usize {
        (order as usize..NR_ORDERS)
            .map(|o| self.free_blocks[o] << o)
            .sum()
    }
}
