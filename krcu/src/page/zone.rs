//! The zone: one mmap'd arena of 4 KiB pages, the side array of page
//! metadata (`meta.rs`), and the buddy allocator's free lists behind the
//! zone lock.
//!
//! # Ownership and memory ordering
//! Which lock owns a page's links, and how its state word is changed, is
//! described in `meta.rs`. The deferred-free list (frees by
//! `free_pages_nolock` that found every lock taken) is a Treiber stack
//! pushed with `Release` CAS and emptied whole with an `Acquire` swap, so
//! the pushed links are visible to the thread that drains it; popping the
//! whole list at once has no ABA.
//!
//! Uses the page sizes, the page metadata, the watermarks and the zone
//! lock; not the allocator's paths (`alloc.rs`, `pcp.rs`), which use it.

use super::consts::{MAX_ORDER, NR_ORDERS, PAGE_SHIFT, PAGE_SIZE};
use super::gfp::Migratetype;
use super::meta::{Kind, NONE, PageMeta, State};
use super::watermark::Watermarks;
use crate::domain::Domain;
use crate::error::BuildError;
use crate::lock::{SpinLock, SpinLockGuard};
use crate::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use core::ptr::NonNull;

/// The arena: one private anonymous mapping, reserved but not committed
/// (`MAP_NORESERVE`), unmapped on drop.
#[derive(Debug)]
pub(crate) struct Arena {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the arena is plain memory owned by the allocator; which thread may
// touch which page is decided by the allocator's own protocol (a page is
// owned by exactly one of: the buddy, a per-CPU list, its allocator's
// caller), not by the thread that mapped it.
unsafe impl Send for Arena {}
// SAFETY: as for Send; `Arena` itself only exposes its base and length.
unsafe impl Sync for Arena {}

impl Arena {
    /// Maps `len` bytes aligned to the largest block (`PAGE_SIZE <<
    /// MAX_ORDER`), so that every block of order `k` is aligned to its own
    /// size in the address space, as physical memory is in the kernel: code
    /// holding a pointer into a block finds the block's start by masking
    /// (the slab uses it to find a slab's header from an object).
    fn map(len: usize) -> Result<Arena, BuildError> {
        let align = PAGE_SIZE << MAX_ORDER;
        let padded = len + align - PAGE_SIZE;
        // SAFETY: a fresh anonymous private mapping at an address the kernel
        // chooses; no existing memory is affected. MAP_NORESERVE: the slack
        // costs nothing, and is unmapped below.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                padded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BuildError::Mmap {
                size: len,
                source: std::io::Error::last_os_error(),
            });
        }
        let start = p as usize;
        let base = start.next_multiple_of(align);
        let (head, tail) = (base - start, start + padded - (base + len));
        // SAFETY: both ranges lie inside the mapping just made and outside
        // `base..base+len`; unmapping them leaves exactly the arena mapped.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((base + len) as *mut libc::c_void, tail);
            }
        }
        // Every page starts free: poisoned under AddressSanitizer.
        crate::asan::poison(base as *const u8, len);
        Ok(Arena {
            base: NonNull::new(base as *mut u8).expect("mmap returned null"),
            len,
        })
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // The range may be mapped again for something else: leave no poison.
        crate::asan::unpoison(self.base.as_ptr(), self.len);
        // SAFETY: `base..base+len` is exactly the mapping made in `map`, and
        // nothing uses it after the allocator that owns it is dropped.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The buddy free lists (`struct free_area` per order and migratetype),
/// protected by the zone lock.
#[derive(Debug)]
pub(crate) struct FreeArea {
    pub(super) heads: [[u32; Migratetype::COUNT]; NR_ORDERS],
    nr_free: [usize; NR_ORDERS],
    pub(super) free_pages: usize,
}

/// The free lists together with the side array: what code under the zone
/// lock works on.
pub(crate) struct Buddy<'a> {
    pub(super) area: &'a mut FreeArea,
    pub(super) meta: &'a [PageMeta],
    /// One bit per page: given back to the OS and not allocated since
    /// (`release.rs`).
    pub(super) released: &'a [AtomicU64],
}

impl Buddy<'_> {
    fn list_add(&mut self, pfn: u32, order: u32, mt: Migratetype) {
        let head = &mut self.area.heads[order as usize][mt.index()];
        let m = &self.meta[pfn as usize];
        m.set_next(*head);
        m.set_prev(NONE);
        if *head != NONE {
            self.meta[*head as usize].set_prev(pfn);
        }
        *head = pfn;
        m.set_state(State::new(Kind::Buddy, order, mt));
        self.area.nr_free[order as usize] += 1;
        self.area.free_pages += 1 << order;
    }

    pub(super) fn list_del(&mut self, pfn: u32, order: u32, mt: Migratetype) {
        let m = &self.meta[pfn as usize];
        let (next, prev) = (m.next(), m.prev());
        if prev == NONE {
            self.area.heads[order as usize][mt.index()] = next;
        } else {
            self.meta[prev as usize].set_next(next);
        }
        if next != NONE {
            self.meta[next as usize].set_prev(prev);
        }
        self.area.nr_free[order as usize] -= 1;
        self.area.free_pages -= 1 << order;
    }

    /// Splits the order-`high` block at `pfn` down to order `low`, putting
    /// the upper halves on the `mt` lists (`expand`).
    fn expand(&mut self, pfn: u32, low: u32, mut high: u32, mt: Migratetype) {
        while high > low {
            high -= 1;
            self.list_add(pfn + (1 << high), high, mt);
        }
    }

    /// Takes an order-`order` block off the lists: the smallest that fits
    /// on `mt`'s lists, else (stealing) the largest of another migratetype
    /// (`__rmqueue_smallest`, `__rmqueue_fallback`). The head leaves marked
    /// allocated, before the zone lock is dropped: a head still marked
    /// `Buddy` off the lists would be "merged" by a concurrent free of its
    /// buddy.
    #[doc(alias = "__rmqueue")]
    pub(crate) fn rmqueue(&mut self, order: u32, mt: Migratetype) -> Option<u32> {
        let pfn = self.take_block(order, mt)?;
        self.meta[pfn as usize].set_state(State::new(Kind::Allocated, order, mt));
        // Its pages are in use again (the OS maps them back on first touch).
        clear_released(self.released, pfn, order);
        Some(pfn)
    }

    fn take_block(&mut self, order: u32, mt: Migratetype) -> Option<u32> {
        for o in order..=MAX_ORDER {
            let pfn = self.area.heads[o as usize][mt.index()];
            if pfn != NONE {
                self.list_del(pfn, o, mt);
                self.expand(pfn, order, o, mt);
                return Some(pfn);
            }
        }
        // Steal the largest block of another type, as the kernel does to
        // keep the types apart: the remainder joins the requester's lists.
        for o in (order..=MAX_ORDER).rev() {
            for other in Migratetype::ALL {
                let pfn = self.area.heads[o as usize][other.index()];
                if other != mt && pfn != NONE {
                    self.list_del(pfn, o, other);
                    self.expand(pfn, order, o, mt);
                    return Some(pfn);
                }
            }
        }
        None
    }

    /// Frees an order-`order` block whose head is not on any list, merging
    /// it with its free buddies as far as they go (`__free_one_page`).
    #[doc(alias = "__free_one_page")]
    pub(crate) fn free_one(&mut self, mut pfn: u32, mut order: u32, mt: Migratetype) {
        let pages = self.meta.len() as u64;
        while order < MAX_ORDER {
            let buddy = pfn ^ (1 << order);
            if buddy as u64 + (1u64 << order) > pages {
                break;
            }
            let bs = self.meta[buddy as usize].state();
            if bs.kind() != Kind::Buddy || bs.order() != order {
                break;
            }
            self.list_del(buddy, order, bs.mt());
            let merged = pfn & buddy;
            // The head that is absorbed becomes a tail.
            let absorbed = if merged == pfn { buddy } else { pfn };
            self.meta[absorbed as usize].set_state(State::TAIL);
            pfn = merged;
            order += 1;
        }
        self.list_add(pfn, order, mt);
    }

    /// Whether an order-`order` allocation leaves at least `mark` free pages
    /// (`zone_watermark_ok`, without the per-order refinements).
    #[doc(alias = "zone_watermark_ok")]
    pub(crate) fn watermark_ok(&self, order: u32, mark: usize) -> bool {
        self.area.free_pages >= mark + (1 << order)
    }
}

/// How a path takes a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMode {
    /// `lock()`: may spin, or sleep under PREEMPT_RT.
    Block,
    /// `try_lock()`: never waits; the operation fails instead.
    Try,
}

/// The zone: arena, side array, buddy lists and watermarks.
#[derive(Debug)]
pub(crate) struct Zone {
    arena: Arena,
    pub(crate) meta: Box<[PageMeta]>,
    lock: SpinLock<FreeArea>,
    /// Mirrors of the locked counts, for lock-free readers (statistics,
    /// the kswapd wake check). Written under the zone lock.
    free_pages: AtomicUsize,
    nr_free: [AtomicUsize; NR_ORDERS],
    /// Frees that found both the per-CPU lock and the zone lock taken
    /// (`free_pages_nolock`); merged by the next holder of the zone lock.
    deferred: AtomicU32,
    pub(crate) wmark: Watermarks,
    /// Pages given back to the OS and not allocated since, a bit each
    /// (`release.rs`); changed under the zone lock.
    pub(super) released: Box<[AtomicU64]>,
}

impl Zone {
    pub(crate) fn new(domain: &Domain, size: usize, wmark: Watermarks) -> Result<Zone, BuildError> {
        let pages = size / PAGE_SIZE;
        let arena = Arena::map(size)?;
        let meta: Box<[PageMeta]> = (0..pages).map(|_| PageMeta::new()).collect();
        let mut area = FreeArea {
            heads: [[NONE; Migratetype::COUNT]; NR_ORDERS],
            nr_free: [0; NR_ORDERS],
            free_pages: 0,
        };
        // Carve the arena into the largest aligned blocks (the kernel's
        // memblock_free_all, in small).
        let released: Box<[AtomicU64]> =
            (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        let mut buddy = Buddy {
            area: &mut area,
            meta: &meta,
            released: &released,
        };
        let mut pfn = 0usize;
        while pfn < pages {
            let mut order = MAX_ORDER;
            while !pfn.is_multiple_of(1 << order) || pfn + (1 << order) > pages {
                order -= 1;
            }
            buddy.list_add(pfn as u32, order, Migratetype::Movable);
            pfn += 1 << order;
        }
        let zone = Zone {
            arena,
            meta,
            lock: SpinLock::named(domain, "zone->lock", area),
            free_pages: AtomicUsize::new(0),
            nr_free: core::array::from_fn(|_| AtomicUsize::new(0)),
            deferred: AtomicU32::new(NONE),
            wmark,
            released,
        };
        zone.publish(&zone.lock.lock());
        Ok(zone)
    }

    /// Pages in the arena.
    #[inline]
    pub(crate) fn pages(&self) -> usize {
        self.meta.len()
    }

    /// The pfn of an address inside the arena.
    #[inline]
    pub(crate) fn pfn_of(&self, addr: usize) -> Option<u32> {
        let off = addr.checked_sub(self.arena.base.as_ptr() as usize)?;
        (off < self.arena.len).then_some((off >> PAGE_SHIFT) as u32)
    }

    /// The address of a pfn.
    #[inline]
    pub(crate) fn addr_of(&self, pfn: u32) -> NonNull<u8> {
        // SAFETY: pfn < pages (every pfn the allocator produces is), so the
        // offset stays inside the mapping, which is not null.
        unsafe { self.arena.base.add((pfn as usize) << PAGE_SHIFT) }
    }

    /// Free pages in the buddy (a relaxed snapshot).
    #[inline]
    pub(crate) fn free_pages(&self) -> usize {
        self.free_pages.load(Relaxed)
    }

    /// Free blocks per order in the buddy (a relaxed snapshot).
    pub(crate) fn nr_free(&self) -> [usize; NR_ORDERS] {
        core::array::from_fn(|o| self.nr_free[o].load(Relaxed))
    }

    /// Runs `f` on the buddy under the zone lock, taken as `mode` says;
    /// `None` if a trylock failed. Merges deferred frees first.
    #[inline]
    pub(crate) fn with_lock<R>(
        &self,
        mode: LockMode,
        f: impl FnOnce(&mut Buddy<'_>) -> R,
    ) -> Option<R> {
        let mut guard = match mode {
            LockMode::Block => self.lock.lock(),
            LockMode::Try => self.lock.try_lock()?,
        };
        let mut buddy = Buddy {
            area: &mut guard,
            meta: &self.meta,
            released: &self.released,
        };
        self.merge_deferred(&mut buddy);
        let r = f(&mut buddy);
        self.publish(&guard);
        Some(r)
    }

    fn publish(&self, area: &SpinLockGuard<'_, FreeArea>) {
        self.free_pages.store(area.free_pages, Relaxed);
        for (mirror, n) in self.nr_free.iter().zip(area.nr_free) {
            mirror.store(n, Relaxed);
        }
    }

    /// Pushes a block whose head is in state `Freeing` onto the deferred
    /// list (no lock taken).
    pub(crate) fn defer_free(&self, pfn: u32, order: u32, mt: Migratetype) {
        let m = &self.meta[pfn as usize];
        m.set_state(State::new(Kind::Deferred, order, mt));
        let mut head = self.deferred.load(Relaxed);
        loop {
            m.set_next(head);
            match self
                .deferred
                .compare_exchange_weak(head, pfn, Release, Relaxed)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    fn merge_deferred(&self, buddy: &mut Buddy<'_>) {
        if self.deferred.load(Relaxed) == NONE {
            return;
        }
        let mut pfn = self.deferred.swap(NONE, Acquire);
        while pfn != NONE {
            let m = &self.meta[pfn as usize];
            let next = m.next();
            let s = m.state();
            buddy.free_one(pfn, s.order(), s.mt());
            pfn = next;
        }
    }

    /// Frees deferred blocks now (for `drain_all`, so counts add up).
    pub(crate) fn flush_deferred(&self) {
        if self.deferred.load(Relaxed) != NONE {
            self.with_lock(LockMode::Block, |_| ());
        }
    }
}

/// Marks the pages of an allocated block in use (not released).
#[inline]
fn clear_released(bits: &[AtomicU64], pfn: u32, order: u32) {
    for_words(pfn, order, |w, mask| {
        // Under the zone lock: a plain load and store are enough.
        let v = bits[w].load(Relaxed);
        if v & mask != 0 {
            bits[w].store(v & !mask, Relaxed);
        }
    });
}

/// Calls `f(word, mask)` for the bits of pages `pfn..pfn + 2^order`.
#[inline]
pub(super) fn for_words(pfn: u32, order: u32, mut f: impl FnMut(usize, u64)) {
    let (mut p, end) = (pfn as usize, pfn as usize + (1usize << order));
    while p < end {
        let (w, b) = (p / 64, p % 64);
        let n = (64 - b).min(end - p);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << b
        };
        f(w, mask);
        p += n;
    }
}
