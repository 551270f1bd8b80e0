//! Per-CPU page lists (`struct per_cpu_pages`): orders 0..=3, one list per
//! order and migratetype, each CPU's behind its own `SpinLock`.
//!
//! As in Mel Gorman's 2022 series ("protect PCP lists with a spinlock"), the
//! allocation and free fast paths take the CPU's pcp lock with **trylock**:
//! a userspace thread can be preempted or migrated anywhere, or interrupted
//! by a signal handler that allocates, so the lock may be taken by another
//! thread "on this CPU"; the fast path then falls back to the buddy (or, in
//! the lock-free modes, fails) instead of waiting. Remote drains
//! (`drain_pages_zone`) take the lock for real, with `lock_irqsave`, as the
//! seed ends up doing.
//!
//! `count` is in pages. An empty list refills `batch` pages' worth of blocks
//! from the buddy under the zone lock (`rmqueue_bulk`); a free that brings
//! `count` to `high` returns `batch` pages to the buddy
//! (`free_pcppages_bulk`). Lists are LIFO stacks linked through the side
//! array, so the most recently freed (cache-hot) page is reused first; the
//! bulk free takes pages round-robin across the lists, from their heads.
//!
//! Uses: `domain`, `lock`, `sync`; in this module `gfp.rs`, `meta.rs`,
//! `stats.rs`, `zone.rs`.

use super::gfp::Migratetype;
use super::meta::{Kind, NONE, PageMeta, State};
use super::stats::CpuStats;
use super::zone::Buddy;
use crate::domain::Domain;
use crate::lock::SpinLock;
use crate::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The highest order kept on per-CPU lists (`PAGE_ALLOC_COSTLY_ORDER`).
#[doc(alias = "PAGE_ALLOC_COSTLY_ORDER")]
pub const PCP_MAX_ORDER: u32 = 3;
const PCP_ORDERS: usize = PCP_MAX_ORDER as usize + 1;

/// One CPU's lists (`struct per_cpu_pages`), protected by its pcp lock.
#[derive(Debug)]
#[doc(alias = "per_cpu_pages")]
pub(crate) struct PcpLists {
    heads: [[u32; Migratetype::COUNT]; PCP_ORDERS],
    /// Pages on all lists.
    pub(crate) count: u32,
    /// At this count a free returns `batch` pages to the buddy.
    pub(crate) high: u32,
    /// Pages moved per refill or bulk free.
    pub(crate) batch: u32,
    /// Where the next bulk free starts, so that lists drain evenly.
    cursor: u8,
}

impl PcpLists {
    pub(crate) fn new(high: u32, batch: u32) -> Self {
        PcpLists {
            heads: [[NONE; Migratetype::COUNT]; PCP_ORDERS],
            count: 0,
            high,
            batch,
            cursor: 0,
        }
    }

    /// Pushes a block whose head is not on any list.
    #[inline]
    pub(crate) fn push(&mut self, meta: &[PageMeta], pfn: u32, order: u32, mt: Migratetype) {
        let head = &mut self.heads[order as usize][mt.index()];
        let m = &meta[pfn as usize];
        m.set_next(*head);
        m.set_state(State::new(Kind::Pcp, order, mt));
        *head = pfn;
        self.count += 1 << order;
    }

    /// Pops a block of `order` from the `mt` list (`__rmqueue_pcplist`
    /// without the refill). The caller sets the head's new state.
    #[inline]
    pub(crate) fn pop(&mut self, meta: &[PageMeta], order: u32, mt: Migratetype) -> Option<u32> {
        let head = &mut self.heads[order as usize][mt.index()];
        let pfn = *head;
        if pfn == NONE {
            return None;
        }
        *head = meta[pfn as usize].next();
        self.count -= 1 << order;
        Some(pfn)
    }

    /// Pops from `mt`'s list, then from every other migratetype's: the
    /// `__GFP_FAST_TRY` loop of Uladzislau Rezki's 2020 prototype.
    #[inline]
    pub(crate) fn pop_any_type(
        &mut self,
        meta: &[PageMeta],
        order: u32,
        mt: Migratetype,
    ) -> Option<u32> {
        if let Some(pfn) = self.pop(meta, order, mt) {
            return Some(pfn);
        }
        Migratetype::ALL
            .into_iter()
            .filter(|&other| other != mt)
            .find_map(|other| self.pop(meta, order, other))
    }

    /// Refills the `order`/`mt` list with up to `batch` pages' worth of
    /// blocks from the buddy (`rmqueue_bulk`), then pops one. The buddy
    /// must allow an order-`order` allocation above `mark`.
    #[doc(alias = "rmqueue_bulk")]
    pub(crate) fn refill(
        &mut self,
        buddy: &mut Buddy<'_>,
        meta: &[PageMeta],
        order: u32,
        mt: Migratetype,
        mark: usize,
    ) -> Option<(u32, usize)> {
        if !buddy.watermark_ok(order, mark) {
            return None;
        }
        let blocks = (self.batch >> order).max(2);
        let mut moved = 0usize;
        for _ in 0..blocks {
            let Some(pfn) = buddy.rmqueue(order, mt) else {
                break;
            };
            self.push(meta, pfn, order, mt);
            moved += 1 << order;
        }
        self.pop(meta, order, mt).map(|pfn| (pfn, moved))
    }

    /// Returns up to `pages` pages to the buddy, round-robin over the lists
    /// (`free_pcppages_bulk`). Returns the pages moved.
    #[doc(alias = "free_pcppages_bulk")]
    pub(crate) fn free_bulk(
        &mut self,
        buddy: &mut Buddy<'_>,
        meta: &[PageMeta],
        pages: u32,
    ) -> u32 {
        let lists = PCP_ORDERS * Migratetype::COUNT;
        let mut moved = 0;
        let mut empty_in_a_row = 0;
        while moved < pages && self.count > 0 && empty_in_a_row < lists {
            let i = self.cursor as usize % lists;
            self.cursor = ((i + 1) % lists) as u8;
            let (order, mt) = ((i / Migratetype::COUNT) as u32, Migratetype::from_index(i));
            match self.pop(meta, order, mt) {
                Some(pfn) => {
                    buddy.free_one(pfn, order, mt);
                    moved += 1 << order;
                    empty_in_a_row = 0;
                }
                None => empty_in_a_row += 1,
            }
        }
        moved
    }
}

/// One CPU's pcp state: its lists behind the pcp lock, a lock-free mirror
/// of its page count, and its statistics.
#[derive(Debug)]
pub(crate) struct PcpSlot {
    pub(crate) lists: SpinLock<PcpLists>,
    /// `lists.count`, stored under the lock for lock-free readers.
    pub(crate) pages: AtomicUsize,
    pub(crate) stats: CpuStats,
}

impl PcpSlot {
    pub(crate) fn new(domain: &Domain, high: u32, batch: u32) -> Self {
        PcpSlot {
            lists: SpinLock::named(domain, "pcp->lock", PcpLists::new(high, batch)),
            pages: AtomicUsize::new(0),
            stats: CpuStats::default(),
        }
    }

    /// Publishes the locked count to the mirror. Call with the lock held.
    #[inline]
    pub(crate) fn publish(&self, lists: &PcpLists) {
        self.pages.store(lists.count as usize, Relaxed);
    }
}
