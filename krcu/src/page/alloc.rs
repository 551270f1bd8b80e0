//! The allocation paths of [`PageAllocator`]: the per-CPU lists, the
//! buddy, reclaim and the `NO_LOCKS` path. The free paths are in `free.rs`.
//!
//! Uses: `asan`, `context`, `sync`; in this module `consts.rs`, `error.rs`,
//! `fault.rs`, `gfp.rs`, `meta.rs`, `mod.rs`, `pcp.rs`, `stats.rs`,
//! `zone.rs`.

use super::consts::{MAX_ORDER, PAGE_SIZE};
use super::error::AllocError;
use super::fault::FaultSites;
use super::gfp::{Gfp, Migratetype};
use super::meta::{Kind, State};
use super::pcp::{PcpLists, PcpSlot};
use super::stats::{bump, bump_locked};
use super::zone::LockMode;
use super::{Page, PageAllocator};
use crate::context::{self, PreemptModel};

/// Rounds of direct reclaim a sleeping allocation runs (while they make
/// progress) before it fails; `NORETRY` runs one.
const MAX_RECLAIM_ROUNDS: usize = 16;

/// What a zone-locked step came to: the zone trylock failed (`None`), the
/// buddy had nothing above the watermark (`Some(None)`), or a block.
#[inline]
fn zone_outcome<T>(r: Option<Option<T>>) -> Result<T, AllocError> {
    match r {
        None => Err(AllocError::Contended),
        Some(None) => Err(AllocError::NoMemory),
        Some(Some(t)) => Ok(t),
    }
}

impl PageAllocator {
    /// Allocates `2^order` contiguous pages (`alloc_pages`).
    ///
    /// What it may do depends on `gfp` (see [`Gfp`]): `NO_LOCKS` serves from
    /// this CPU's lists only; `NOWAIT`/`ATOMIC` may take the zone lock and
    /// wake kswapd but never sleep; `KERNEL` may sleep in direct reclaim
    /// (and tells the validator so first, with `might_sleep`).
    ///
    /// ```
    /// use krcu::page::{AllocError, Gfp, PageAllocator, PageConfig, MAX_ORDER};
    /// let domain = krcu::Domain::builder().cpus(1).build();
    /// let pages = PageAllocator::new(&domain, PageConfig::default().arena_size(4 << 20)).unwrap();
    /// // NO_LOCKS serves from this CPU's page lists only: empty at first.
    /// let err = pages.alloc_pages(Gfp::NO_LOCKS | Gfp::NOWARN, 0).unwrap_err();
    /// assert_eq!(err, AllocError::PcpEmpty);
    /// // A NOWAIT allocation refills the lists from the buddy allocator...
    /// let first = pages.alloc_pages(Gfp::NOWAIT, 0).unwrap();
    /// // ... so now NO_LOCKS finds a page there, taking no lock but a trylock.
    /// let second = pages.alloc_pages(Gfp::NO_LOCKS, 0).unwrap();
    /// assert_eq!(pages.stats().paths.no_locks_hits, 1);
    /// let zeroed = pages.alloc_pages(Gfp::KERNEL | Gfp::ZERO, 1).unwrap();
    /// // SAFETY: the block is ours and `len()` bytes long.
    /// let bytes = unsafe { std::slice::from_raw_parts(zeroed.as_ptr(), zeroed.len()) };
    /// assert!(bytes.iter().all(|&b| b == 0));
    /// let too_big = pages.alloc_pages(Gfp::KERNEL | Gfp::NOWARN, MAX_ORDER + 1);
    /// assert_eq!(too_big.unwrap_err(), AllocError::BadOrder);
    /// for page in [first, second, zeroed] {
    ///     pages.free(page);
    /// }
    /// ```
    ///
    /// # Errors
    /// An [`AllocError`] saying why no block was handed out: the order
    /// ([`BadOrder`](AllocError::BadOrder)), no memory above the watermark
    /// these flags may use after the reclaim they allow
    /// ([`NoMemory`](AllocError::NoMemory)), with `NO_LOCKS` an empty or
    /// locked per-CPU list ([`PcpEmpty`](AllocError::PcpEmpty),
    /// [`Contended`](AllocError::Contended)) or a context that forbids it
    /// ([`Context`](AllocError::Context)), or the fault injector
    /// ([`Injected`](AllocError::Injected)). Failure is normal, as a NULL
    /// from the kernel's allocator is: a warning is logged unless `gfp` has
    /// [`Gfp::NOWARN`].
    #[track_caller]
    #[inline]
    #[doc(alias = "__alloc_pages")]
    pub fn alloc_pages(&self, gfp: Gfp, order: u32) -> Result<Page, AllocError> {
        if gfp.contains(Gfp::NO_LOCKS) {
            return self.alloc_no_locks(gfp, order);
        }
        if gfp.may_sleep() {
            self.domain.might_sleep();
        }
        let site = if gfp.may_sleep() {
            FaultSites::SLEEPING
        } else {
            FaultSites::NON_SLEEPING
        };
        let result = if order > MAX_ORDER {
            Err(AllocError::BadOrder)
        } else if self.inject(site) {
            Err(AllocError::Injected)
        } else {
            self.alloc_normal(gfp, order)
        };
        match result {
            Ok(page) => Ok(self.finish(gfp, page)),
            Err(e) => {
                bump(&self.pcp.current().1.stats.alloc_failures);
                if !gfp.contains(Gfp::NOWARN) {
                    tracing::warn!(order, ?gfp, error = %e, "page allocation failure");
                }
                Err(e)
            }
        }
    }

    /// Allocates one page (`__get_free_page`).
    ///
    /// ```
    /// use krcu::page::{Gfp, PageAllocator, PageConfig, PAGE_SIZE};
    /// let pages = PageAllocator::new(krcu::Domain::global(), PageConfig::default().arena_size(4 << 20))
    ///     .unwrap();
    /// let page = pages.alloc_page(Gfp::KERNEL).unwrap();
    /// assert_eq!(page.len(), PAGE_SIZE);
    /// assert!(pages.owns(&page) && pages.contains(page.as_ptr()));
    /// pages.free(page);
    /// ```
    ///
    /// # Errors
    /// As [`alloc_pages`](Self::alloc_pages).
    #[track_caller]
    #[inline]
    #[doc(alias = "__get_free_page")]
    pub fn alloc_page(&self, gfp: Gfp) -> Result<Page, AllocError> {
        self.alloc_pages(gfp, 0)
    }

    /// Allocates without ever waiting on a lock or sleeping
    /// (`alloc_pages_nolock`): trylock this CPU's pcp lock (refilling an
    /// empty list only if the zone lock trylocks too), else trylock the zone
    /// lock; never wakes kswapd; uses the min watermark. Callable from any
    /// context, including under a raw spinlock and from a signal handler;
    /// under PREEMPT_RT it refuses hardirq and NMI context, as the kernel
    /// does, because a sleeping lock's trylock is not safe there. Unlike the
    /// kernel's, it does not zero the pages.
    ///
    /// ```
    /// use krcu::lock::RawSpinLock;
    /// use krcu::page::{PageAllocator, PageConfig};
    /// let domain = krcu::Domain::builder().cpus(1).build();
    /// let pages = PageAllocator::new(&domain, PageConfig::default().arena_size(4 << 20)).unwrap();
    /// let raw = RawSpinLock::new_in(&domain, ());
    /// let page = {
    ///     let _held = raw.lock(); // atomic: no sleeping, no spinlock_t
    ///     pages.alloc_pages_nolock(0).expect("the locks are free")
    /// };
    /// assert_eq!(pages.stats().paths.nolock_allocs, 1);
    /// pages.free_nolock(page);
    /// ```
    ///
    /// # Errors
    /// [`AllocError::Contended`] when a lock it needs is taken (it never
    /// waits), [`AllocError::NoMemory`] below the min watermark,
    /// [`AllocError::BadOrder`], [`AllocError::Context`] in hardirq or NMI
    /// context under PREEMPT_RT, and [`AllocError::Injected`].
    #[inline]
    #[doc(alias = "try_alloc_pages")]
    pub fn alloc_pages_nolock(&self, order: u32) -> Result<Page, AllocError> {
        let stats = &self.pcp.current().1.stats;
        let result = if order > MAX_ORDER {
            Err(AllocError::BadOrder)
        } else if let Some(e) = self.nolock_refusal(FaultSites::NOLOCK) {
            Err(e)
        } else {
            let min = self.zone.wmark.min;
            self.rmqueue(order, Migratetype::Unmovable, LockMode::Try, min)
                .map(|pfn| self.page(pfn, order))
        };
        match result {
            Ok(_) => bump(&stats.nolock_allocs),
            Err(_) => bump(&stats.nolock_failures),
        }
        result
    }

    /// Whether a failure is injected at `site` (counted when it is).
    #[inline]
    fn inject(&self, site: FaultSites) -> bool {
        let fail = self.faults.should_fail(site);
        if fail {
            bump(&self.shared.stats.injected_failures);
        }
        fail
    }

    /// Why a lock-free path (`alloc_pages_nolock`, `NO_LOCKS`) refuses
    /// before it looks at any list: a context where even a trylock is not
    /// safe, else a failure injected at `site`.
    #[inline]
    fn nolock_refusal(&self, site: FaultSites) -> Option<AllocError> {
        if self.sleeping_locks_forbidden() {
            Some(AllocError::Context)
        } else if self.inject(site) {
            Some(AllocError::Injected)
        } else {
            None
        }
    }

    /// Whether this context may not touch the allocator's locks even with
    /// trylock: hardirq (a signal handler) or NMI context under PREEMPT_RT.
    /// There the pcp and zone locks are sleeping locks, and the unlock after
    /// a successful trylock may wake a sleeper (`unpark_one`, which takes
    /// the parking lot's bucket lock): not async-signal-safe. The kernel's
    /// `alloc_pages_nolock` refuses these contexts for the same reason, and
    /// its `free_pages_nolock` defers the page to a lock-free list.
    #[inline]
    pub(crate) fn sleeping_locks_forbidden(&self) -> bool {
        self.domain.preempt_model() == PreemptModel::Rt
            && (context::in_hardirq() || context::in_nmi())
    }

    /// `NO_LOCKS` (Uladzislau Rezki's 2020 `__GFP_FAST_TRY`): this CPU's lists only, the
    /// requested migratetype first and then every other; never refills,
    /// never takes the zone lock, never wakes kswapd. Under PREEMPT_RT it
    /// refuses hardirq (signal handler) and NMI context with
    /// [`AllocError::Context`], as [`alloc_pages_nolock`](Self::alloc_pages_nolock)
    /// does: even a trylock of a sleeping lock is not safe there.
    #[inline]
    #[doc(alias = "__GFP_FAST_TRY")]
    fn alloc_no_locks(&self, gfp: Gfp, order: u32) -> Result<Page, AllocError> {
        let (_, slot) = self.pcp.current();
        let result = if order >= self.pcp_orders {
            Err(AllocError::BadOrder)
        } else if let Some(e) = self.nolock_refusal(FaultSites::NO_LOCKS) {
            Err(e)
        } else if let Some(mut lists) = slot.lists.try_lock() {
            let meta = &self.zone.meta;
            match lists.pop_any_type(meta, order, gfp.migratetype()) {
                Some(pfn) => {
                    let mt = meta[pfn as usize].state().mt();
                    meta[pfn as usize].set_state(State::new(Kind::Allocated, order, mt));
                    bump_locked(&slot.stats.no_locks_hits);
                    slot.publish(&lists);
                    Ok(self.page(pfn, order))
                }
                None => Err(AllocError::PcpEmpty),
            }
        } else {
            bump(&slot.stats.pcp_trylock_failures);
            Err(AllocError::Contended)
        };
        match result {
            Ok(page) => Ok(self.zero_if(gfp, page)),
            Err(e) => {
                bump(&slot.stats.no_locks_failures);
                Err(e)
            }
        }
    }

    /// The normal modes: low watermark, then wake kswapd and retry at min
    /// (half of min for ATOMIC), then direct reclaim if the flags allow.
    #[inline]
    fn alloc_normal(&self, gfp: Gfp, order: u32) -> Result<Page, AllocError> {
        let mt = gfp.migratetype();
        let wmark = self.zone.wmark;
        let kswapd = gfp.contains(Gfp::KSWAPD_RECLAIM);
        if let Ok(pfn) = self.rmqueue(order, mt, LockMode::Block, wmark.low) {
            if kswapd && self.zone.free_pages() < wmark.low {
                self.shared.wake_kswapd();
            }
            return Ok(self.page(pfn, order));
        }
        self.alloc_slow(gfp, order, mt)
    }

    #[cold]
    #[doc(alias = "__alloc_pages_slowpath")]
    fn alloc_slow(&self, gfp: Gfp, order: u32, mt: Migratetype) -> Result<Page, AllocError> {
        if gfp.contains(Gfp::KSWAPD_RECLAIM) {
            self.shared.wake_kswapd();
        }
        let min = self.zone.wmark.min_for(gfp.may_use_reserve());
        if let Ok(pfn) = self.rmqueue(order, mt, LockMode::Block, min) {
            return Ok(self.page(pfn, order));
        }
        if !gfp.may_sleep() {
            return Err(AllocError::NoMemory);
        }
        for round in 1..=MAX_RECLAIM_ROUNDS {
            let progress = self.direct_reclaim();
            if let Ok(pfn) = self.rmqueue(order, mt, LockMode::Block, min) {
                return Ok(self.page(pfn, order));
            }
            if gfp.contains(Gfp::NORETRY) || !progress || round == MAX_RECLAIM_ROUNDS {
                break;
            }
            std::thread::yield_now();
        }
        Err(AllocError::NoMemory)
    }

    /// One round of direct reclaim: the shrinkers, then every CPU's lists
    /// back to the buddy. Whether anything came free.
    #[doc(alias = "__alloc_pages_direct_reclaim")]
    fn direct_reclaim(&self) -> bool {
        bump(&self.shared.stats.direct_reclaims);
        let freed = self.shared.shrink_round();
        let drained = self.drain_all();
        freed > 0 || drained > 0
    }

    /// Takes an order-`order` block: from this CPU's lists when the order is
    /// kept there and the pcp trylock succeeds (refilling an empty list from
    /// the buddy), else from the buddy (`rmqueue`). The zone lock is taken
    /// as `mode` says; the buddy must stay above `mark`. Sets the head's
    /// state to allocated.
    #[inline]
    #[doc(alias = "__rmqueue_pcplist")]
    fn rmqueue(
        &self,
        order: u32,
        mt: Migratetype,
        mode: LockMode,
        mark: usize,
    ) -> Result<u32, AllocError> {
        let meta = &self.zone.meta;
        let allocated = State::new(Kind::Allocated, order, mt);
        if order < self.pcp_orders {
            let (_, slot) = self.pcp.current();
            if let Some(mut lists) = slot.lists.try_lock() {
                let result = match lists.pop(meta, order, mt) {
                    Some(pfn) => {
                        bump_locked(&slot.stats.pcp_hits);
                        Ok(pfn)
                    }
                    None => self.refill(slot, &mut lists, order, mt, mode, mark),
                };
                if let Ok(pfn) = result {
                    meta[pfn as usize].set_state(allocated);
                    slot.publish(&lists);
                }
                return result;
            }
            bump(&slot.stats.pcp_trylock_failures);
        }
        let pfn = self.rmqueue_buddy(order, mt, mode, mark)?;
        bump(&self.pcp.current().1.stats.buddy_allocs);
        Ok(pfn)
    }

    #[doc(alias = "rmqueue_bulk")]
    fn refill(
        &self,
        slot: &PcpSlot,
        lists: &mut PcpLists,
        order: u32,
        mt: Migratetype,
        mode: LockMode,
        mark: usize,
    ) -> Result<u32, AllocError> {
        let meta = &self.zone.meta;
        let (pfn, moved) = zone_outcome(
            self.zone
                .with_lock(mode, |buddy| lists.refill(buddy, meta, order, mt, mark)),
        )?;
        bump_locked(&slot.stats.refills);
        let pages = &slot.stats.refill_pages;
        pages.store(
            pages.load(crate::sync::atomic::Ordering::Relaxed) + moved as u64,
            crate::sync::atomic::Ordering::Relaxed,
        );
        Ok(pfn)
    }

    fn rmqueue_buddy(
        &self,
        order: u32,
        mt: Migratetype,
        mode: LockMode,
        mark: usize,
    ) -> Result<u32, AllocError> {
        zone_outcome(self.zone.with_lock(mode, |buddy| {
            buddy
                .watermark_ok(order, mark)
                .then(|| buddy.rmqueue(order, mt))
                .flatten()
        }))
    }

    /// The handle of a block just taken off the free lists; unpoisons it
    /// for AddressSanitizer.
    #[inline]
    fn page(&self, pfn: u32, order: u32) -> Page {
        let addr = self.zone.addr_of(pfn);
        crate::asan::unpoison(addr.as_ptr(), PAGE_SIZE << order);
        Page {
            addr,
            order,
            owner: self.id,
        }
    }

    #[inline]
    fn finish(&self, gfp: Gfp, page: Page) -> Page {
        self.zero_if(gfp, page)
    }

    #[inline]
    fn zero_if(&self, gfp: Gfp, page: Page) -> Page {
        if gfp.contains(Gfp::ZERO) {
            // SAFETY: the block was just taken off the free lists and its
            // head marked allocated: no one else owns these `page.len()`
            // bytes, which lie inside the arena's writable mapping.
            unsafe { core::ptr::write_bytes(page.as_ptr(), 0, page.len()) };
        }
        page
    }

    // ------------------------------------------------------------------
}
