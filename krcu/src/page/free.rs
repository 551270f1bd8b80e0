//! The free paths of [`PageAllocator`]: checking a block back in
//! (`__free_pages`, `free_pages_nolock`), the buddy or per-CPU list it goes
//! to, and draining the per-CPU lists.
//!
//! Uses the page metadata, the zone and the per-CPU lists, as the
//! allocation paths (`alloc.rs`) do.

use super::consts::{MAX_ORDER, PAGE_SIZE};
use super::error::PageError;
use super::gfp::Migratetype;
use super::meta::{Kind, State};
use super::stats::{bump, bump_locked};
use super::zone::LockMode;
use super::{Page, PageAllocator};
use crate::context::{self};
use core::ptr::NonNull;

impl PageAllocator {
    /// Frees a block handed out as `page` (`__free_pages`). A `Page` of
    /// another allocator is bad input (see [`PageError`]): it
    /// panics in debug builds and is counted and reported (and leaked) in
    /// release builds.
    ///
    /// # Panics
    /// In builds with debug assertions, for a `Page` of another allocator
    /// (outside a signal handler; [`try_free`](Self::try_free) returns the
    /// error instead).
    #[inline]
    #[track_caller]
    #[doc(alias = "__free_pages")]
    #[doc(alias = "free_pages")]
    pub fn free(&self, page: Page) {
        if let Err(e) = self.try_free(page) {
            self.bad_free(e);
        }
    }

    /// As [`free`](Self::free), but a `Page` of another allocator is
    /// returned as an error (the page is then leaked, not freed).
    ///
    /// ```
    /// use krcu::page::{Gfp, PageAllocator, PageConfig, PageError};
    /// let config = PageConfig::default().arena_size(4 << 20).kswapd(false);
    /// let ours = PageAllocator::new(krcu::Domain::global(), config.clone()).unwrap();
    /// let theirs = PageAllocator::new(krcu::Domain::global(), config).unwrap();
    /// let page = theirs.alloc_page(Gfp::KERNEL).unwrap();
    /// let addr = page.as_ptr() as usize;
    /// assert_eq!(ours.try_free(page), Err(PageError::OutsideArena { addr }));
    /// ```
    ///
    /// # Errors
    /// [`PageError::OutsideArena`] for a page of another allocator. (A
    /// `Page` of this allocator is always freed: the handle is the proof.)
    #[inline]
    pub fn try_free(&self, page: Page) -> Result<(), PageError> {
        self.check_owner(&page)?;
        // SAFETY: `page` is an owning handle of this allocator (checked),
        // consumed here: the block is allocated with its order and no one
        // else holds it.
        unsafe { self.try_free_pages(page.addr, page.order) }
    }

    /// Frees a block handed out as `page` without waiting on any lock (see
    /// [`free_pages_nolock`](Self::free_pages_nolock)). A `Page` of another
    /// allocator as [`free`](Self::free).
    #[inline]
    #[track_caller]
    #[doc(alias = "free_pages_nolock")]
    pub fn free_nolock(&self, page: Page) {
        match self.check_owner(&page) {
            // SAFETY: as in `try_free`.
            Ok(()) => unsafe { self.free_pages_nolock(page.addr, page.order) },
            Err(e) => self.bad_free(e),
        }
    }

    /// Whether `page` was handed out by this allocator.
    #[inline]
    pub fn owns(&self, page: &Page) -> bool {
        page.owner == self.id
    }

    #[inline]
    fn check_owner(&self, page: &Page) -> Result<(), PageError> {
        if self.owns(page) {
            Ok(())
        } else {
            Err(PageError::OutsideArena {
                addr: page.addr.as_ptr() as usize,
            })
        }
    }

    /// Frees a block by address and order (`__free_pages`). Bad input (see
    /// [`PageError`]) panics in debug builds and is counted and
    /// reported in release builds.
    ///
    /// # Safety
    /// `addr` must be the start of an order-`order` block allocated from
    /// this allocator and owned by the caller (a [`Page`] given up with
    /// [`Page::into_raw`]), which gives it up here: nothing uses the block
    /// afterwards. Passing an address this allocator never handed out, the
    /// wrong order, or a block that was freed and *not reallocated since* is
    /// detected and refused as bad input; passing a block that was freed and
    /// has since been handed to someone else frees *their* block, which is
    /// undefined behaviour.
    #[inline]
    #[track_caller]
    pub unsafe fn free_pages(&self, addr: NonNull<u8>, order: u32) {
        // SAFETY: forwarded from the caller.
        if let Err(e) = unsafe { self.try_free_pages(addr, order) } {
            self.bad_free(e);
        }
    }

    /// Frees a block by address and order, or says why not (changing
    /// nothing). May take the zone lock (to merge, or to return a batch
    /// when this CPU's lists are over `high`).
    ///
    /// # Errors
    /// A [`PageError`] naming the bad input: an address outside the arena,
    /// misaligned for `order`, an order above the maximum, a block already
    /// free, not the start of an allocated block, or allocated with another
    /// order.
    ///
    /// # Safety
    /// As for [`free_pages`](Self::free_pages); bad input is returned
    /// instead of reported.
    #[inline]
    pub unsafe fn try_free_pages(&self, addr: NonNull<u8>, order: u32) -> Result<(), PageError> {
        let (pfn, mt) = self.claim(addr, order)?;
        self.free_claimed(pfn, order, mt, LockMode::Block);
        Ok(())
    }

    /// Frees without waiting on any lock (`free_pages_nolock`): trylock the
    /// pcp lock, else trylock the zone lock, else push the block on a
    /// lock-free deferred list that the next zone-lock holder merges. Under
    /// PREEMPT_RT in hardirq (signal handler) or NMI context it touches no
    /// lock at all and defers the block at once (see
    /// [`alloc_pages_nolock`](Self::alloc_pages_nolock)). Bad input as
    /// [`free_pages`](Self::free_pages).
    ///
    /// # Safety
    /// As for [`free_pages`](Self::free_pages).
    #[inline]
    #[track_caller]
    pub unsafe fn free_pages_nolock(&self, addr: NonNull<u8>, order: u32) {
        match self.claim(addr, order) {
            Ok((pfn, mt)) if self.sleeping_locks_forbidden() => {
                self.zone.defer_free(pfn, order, mt);
                bump(&self.pcp.current().1.stats.deferred_frees);
            }
            Ok((pfn, mt)) => self.free_claimed(pfn, order, mt, LockMode::Try),
            Err(e) => self.bad_free(e),
        }
    }

    /// Checks a free against the side array and wins the block for this
    /// free (allocated → freeing), or names what is wrong.
    fn claim(&self, addr: NonNull<u8>, order: u32) -> Result<(u32, Migratetype), PageError> {
        let a = addr.as_ptr() as usize;
        if order > MAX_ORDER {
            return Err(PageError::BadOrder { addr: a, order });
        }
        let pfn = self
            .zone
            .pfn_of(a)
            .ok_or(PageError::OutsideArena { addr: a })?;
        if !a.is_multiple_of(PAGE_SIZE) || !pfn.is_multiple_of(1 << order) {
            return Err(PageError::Misaligned { addr: a, order });
        }
        let m = &self.zone.meta[pfn as usize];
        loop {
            let s = m.state();
            match s.kind() {
                Kind::Allocated if s.order() != order => {
                    return Err(PageError::WrongOrder {
                        addr: a,
                        given: order,
                        allocated: s.order(),
                    });
                }
                Kind::Allocated => {
                    if m.transition(s, State::new(Kind::Freeing, order, s.mt())) {
                        // Ours to free, and on no list yet: poisoned for
                        // AddressSanitizer before anyone can take it again.
                        crate::asan::poison(addr.as_ptr(), PAGE_SIZE << order);
                        return Ok((pfn, s.mt()));
                    }
                    // Lost a race with another free of this block: look
                    // again, and report the double free.
                }
                Kind::Tail => return Err(PageError::NotAllocated { addr: a }),
                Kind::Buddy | Kind::Pcp | Kind::Freeing | Kind::Deferred => {
                    return Err(PageError::DoubleFree { addr: a });
                }
            }
        }
    }

    /// Puts a claimed block back: onto this CPU's lists if its order is kept
    /// there and the trylock succeeds (returning a batch if that brings the
    /// count to `high`), else to the buddy (`free_one_page`), else (trylock
    /// mode, zone lock taken) onto the deferred list.
    #[inline]
    #[doc(alias = "free_unref_page")]
    #[doc(alias = "free_frozen_pages")]
    fn free_claimed(&self, pfn: u32, order: u32, mt: Migratetype, mode: LockMode) {
        let meta = &self.zone.meta;
        let (_, slot) = self.pcp.current();
        if order < self.pcp_orders {
            if let Some(mut lists) = slot.lists.try_lock() {
                lists.push(meta, pfn, order, mt);
                bump_locked(&slot.stats.pcp_frees);
                if lists.count >= lists.high {
                    let batch = lists.batch;
                    let drained = self
                        .zone
                        .with_lock(mode, |buddy| lists.free_bulk(buddy, meta, batch));
                    if drained.is_some() {
                        bump_locked(&slot.stats.high_drains);
                    }
                }
                slot.publish(&lists);
                return;
            }
            bump(&slot.stats.pcp_trylock_failures);
        }
        match self
            .zone
            .with_lock(mode, |buddy| buddy.free_one(pfn, order, mt))
        {
            Some(()) => bump(&slot.stats.buddy_frees),
            None => {
                self.zone.defer_free(pfn, order, mt);
                bump(&slot.stats.deferred_frees);
            }
        }
    }

    #[cold]
    #[track_caller]
    fn bad_free(&self, e: PageError) {
        bump(&self.shared.stats.bad_frees);
        if context::in_hardirq() || context::in_nmi() {
            // No panic (an abort in a handler) and no `tracing` (it may
            // allocate and lock): counted, reported by `drain_all`.
            bump(&self.shared.stats.handler_bad_frees);
            self.shared.handler_bad_frees.record(&e);
            return;
        }
        if cfg!(debug_assertions) {
            panic!("krcu page allocator: {e}");
        }
        tracing::error!(addr = e.addr(), "krcu page allocator: {e}");
    }

    // ------------------------------------------------------------------
    // Drains.

    /// Returns every page on `cpu`'s lists to the buddy
    /// (`drain_pages_zone`): for a remote CPU too, so it takes that CPU's
    /// pcp lock for real (`lock_irqsave`, as Mel Gorman's 2022 series settles on). Returns
    /// the pages moved.
    #[doc(alias = "drain_pages_zone")]
    #[doc(alias = "drain_pages")]
    #[doc(alias = "drain_local_pages")]
    pub fn drain_cpu(&self, cpu: usize) -> usize {
        let slot = self.pcp.get(cpu);
        let mut lists = slot.lists.lock_irqsave();
        if lists.count == 0 {
            return 0;
        }
        let meta = &self.zone.meta;
        let moved = self
            .zone
            .with_lock(LockMode::Block, |buddy| {
                lists.free_bulk(buddy, meta, u32::MAX)
            })
            .unwrap_or(0);
        slot.publish(&lists);
        bump(&self.shared.stats.cpu_drains);
        moved as usize
    }

    /// Drains every CPU's lists and merges deferred frees
    /// (`drain_all_pages`). Returns the pages moved.
    #[doc(alias = "drain_all_pages")]
    ///
    /// Also reports (`tracing::error!`) the bad frees made in signal
    /// handlers since the last drain, which could not be reported there
    /// (see [`PageError`]).
    pub fn drain_all(&self) -> usize {
        let moved = (0..self.pcp.cpus()).map(|cpu| self.drain_cpu(cpu)).sum();
        self.zone.flush_deferred();
        if let Some((n, addr)) = self.shared.handler_bad_frees.take() {
            tracing::error!(
                count = n,
                last_addr = addr,
                "krcu page allocator: {n} bad free(s) in signal handlers, the last of {addr:#x}"
            );
        }
        moved
    }

    /// The block of order `order` containing `addr`, if that block is
    /// allocated with exactly that order (for the slab allocator's checks).
    pub(crate) fn allocated_block(&self, addr: usize, order: u32) -> Option<NonNull<u8>> {
        let pfn = self.zone.pfn_of(addr)? & !((1u32 << order) - 1);
        let s = self.zone.meta[pfn as usize].state();
        (s.kind() == Kind::Allocated && s.order() == order).then(|| self.zone.addr_of(pfn))
    }

    /// The start of the order-`order` block containing `addr`, an address
    /// inside the arena (for the slab allocator's own objects).
    #[inline]
    pub(crate) fn block_base(&self, addr: usize, order: u32) -> NonNull<u8> {
        let pfn = self.zone.pfn_of(addr).expect("address inside the arena");
        self.zone.addr_of(pfn & !((1u32 << order) - 1))
    }
}
