//! Giving free memory back to the OS (the kernel's free page reporting):
//! free buddy blocks of order [`RELEASE_ORDER`] and above, beyond the
//! zone's `high` watermark, are taken off the free lists, given back with
//! `madvise(MADV_DONTNEED)` outside the zone lock, and put back marked
//! released. A bit per page remembers that until the page is allocated
//! again (then the OS maps it back, zero-filled, on first touch), so a
//! block is given back once, and counted once.
//!
//! Runs where sleeping is allowed only: after the shrinkers of a reclaim
//! run (whole slabs they freed merge into such blocks) and from
//! [`PageAllocator::release_free_memory`]; never on an allocation or free
//! path (those make no system call).
//!
//! Uses the zone (`zone.rs`) and the allocator's counters.

use super::PageAllocator;
use super::consts::{MAX_ORDER, PAGE_SIZE, RELEASE_ORDER};
use super::gfp::Migratetype;
use super::meta::{Kind, NONE, State};
use super::zone::{Buddy, LockMode, Zone, for_words};
use crate::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Blocks isolated per zone-lock acquisition.
const BATCH: usize = 16;

/// Marks the pages of a block released; returns how many were not yet.
fn set_released(bits: &[AtomicU64], pfn: u32, order: u32) -> usize {
    let mut newly = 0;
    for_words(pfn, order, |w, mask| {
        let v = bits[w].load(Relaxed);
        newly += (mask & !v).count_ones() as usize;
        bits[w].store(v | mask, Relaxed);
    });
    newly
}

/// Whether every page of the block is released already.
fn all_released(bits: &[AtomicU64], pfn: u32, order: u32) -> bool {
    let mut all = true;
    for_words(pfn, order, |w, mask| {
        all &= bits[w].load(Relaxed) & mask == mask
    });
    all
}

impl Buddy<'_> {
    /// Takes up to `out.len()` free blocks of order `RELEASE_ORDER` or
    /// above that are not all released off the lists (marked allocated,
    /// so no merge touches them), keeping at least `keep` free pages on
    /// the lists.
    fn isolate_unreleased(&mut self, keep: usize, out: &mut [(u32, u32, Migratetype)]) -> usize {
        let mut n = 0;
        for order in (RELEASE_ORDER..=MAX_ORDER).rev() {
            for mt in Migratetype::ALL {
                let mut pfn = self.area.heads[order as usize][mt.index()];
                while pfn != NONE && n < out.len() {
                    let next = self.meta[pfn as usize].next();
                    if self.area.free_pages < keep + (1usize << order) {
                        return n;
                    }
                    if !all_released(self.released, pfn, order) {
                        self.list_del(pfn, order, mt);
                        self.meta[pfn as usize].set_state(State::new(Kind::Allocated, order, mt));
                        out[n] = (pfn, order, mt);
                        n += 1;
                    }
                    pfn = next;
                }
            }
        }
        n
    }
}

impl Zone {
    /// Gives free blocks back to the OS (see the module); returns the
    /// pages newly given back.
    pub(super) fn release_free(&self, keep: usize) -> usize {
        let mut released = 0;
        // Bounded: each round marks what it isolates released, and the
        // next isolates only blocks not all released.
        for _ in 0..self.pages() {
            let mut blocks = [(0u32, 0u32, Migratetype::Movable); BATCH];
            let n = self
                .with_lock(LockMode::Block, |b| b.isolate_unreleased(keep, &mut blocks))
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            for &(pfn, order, _) in &blocks[..n] {
                let addr = self.addr_of(pfn);
                // SAFETY: the block is off the free lists and marked
                // allocated: ours alone until it is put back below; its
                // range lies inside the arena mapping. MADV_DONTNEED only
                // drops its contents (free memory: nobody reads them).
                let r = unsafe {
                    libc::madvise(
                        addr.as_ptr().cast(),
                        PAGE_SIZE << order,
                        libc::MADV_DONTNEED,
                    )
                };
                debug_assert_eq!(r, 0, "madvise of a block of the arena");
            }
            released += self
                .with_lock(LockMode::Block, |b| {
                    let mut newly = 0;
                    for &(pfn, order, mt) in &blocks[..n] {
                        newly += set_released(b.released, pfn, order);
                        b.free_one(pfn, order, mt);
                    }
                    newly
                })
                .unwrap_or(0);
        }
        released
    }

    /// Pages given back and not allocated since.
    pub(super) fn released_pages(&self) -> usize {
        self.released
            .iter()
            .map(|w| w.load(Relaxed).count_ones() as usize)
            .sum()
    }
}

impl PageAllocator {
    /// Gives free memory back to the OS: free blocks of order
    /// [`RELEASE_ORDER`] and above, beyond the `high` watermark's worth of
    /// free pages, with `madvise(MADV_DONTNEED)` (the kernel's free page
    /// reporting). Returns the pages newly given back (also counted in
    /// [`GlobalStats::released_pages`](super::GlobalStats)). The pages stay
    /// in the arena, free: the next allocation of them costs a page fault.
    /// Runs after the shrinkers of every reclaim run too. Sleeps (takes
    /// the zone lock).
    #[doc(alias = "page_reporting")]
    pub fn release_free_memory(&self) -> usize {
        self.domain().might_sleep();
        // Per-CPU lists first: their pages may complete blocks.
        self.drain_all();
        let keep = self.zone.wmark.high;
        let n = self.zone.release_free(keep);
        self.shared.stats.release_passes.fetch_add(1, Relaxed);
        self.shared
            .stats
            .released_pages
            .fetch_add(n as u64, Relaxed);
        n
    }

    /// Pages given back to the OS and not allocated since.
    pub fn released_pages_now(&self) -> usize {
        self.zone.released_pages()
    }
}
