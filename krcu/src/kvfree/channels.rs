//! The channels besides global-allocator boxes: objects of krcu's
//! [`SlabCache`] (freed with `free_bulk`, the kernel's `kfree_bulk`) and
//! pages of krcu's page allocator.
//!
//! A block's entries are one word each, so what frees them comes from the
//! block's channel. The two-argument form's fallback, the `rcu_head` list,
//! has only the object: a slab object finds its cache through the magic in
//! its slab's header and the registry below (the kernel derives the cache
//! from the page the same way). A page has no field readers leave alone, so
//! nothing may be written into it before its grace period: pages take the
//! single-argument form only.
//!
//! Owns: the channels of slab caches and of pages. Uses: `block.rs`, the
//! page allocator and slab caches.

use super::block::Channel;
use crate::page::{PAGE_SIZE, PageAllocator};
use crate::rcu::{HasRcuHead, RcuHead};
use crate::slab::SlabCache;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering::*, fence};

/// Slab caches with a live [`SlabChannel`](crate::SlabChannel), by magic.
///
/// # Protocol
/// A slot is free (magic 0), claimed (magic [`RESERVED`]) or registered
/// (a cache's magic and its pointer). Only the claimant writes a slot: it
/// claims it with a compare-exchange from 0, and frees it last (a Release
/// store of 0, which the next claimant's AcqRel exchange reads).
///
/// Each slot's magic and pointer are read together under a seqlock
/// (`SEQS`, odd while its owner writes): a lookup never pairs the magic of
/// one registration with the pointer of another (which would free an
/// object into a cache of another type), and never stops at a slot being
/// registered or unregistered: it goes on to the next (two channels of one
/// cache hold two slots of the same magic; the caller's own channel keeps
/// one of them registered throughout).
///
/// Orderings (the seqlock): the writer stores `seq + 1` (Relaxed), a
/// Release fence, the data (Relaxed), then `seq + 2` (Release); the reader
/// loads `seq` (Acquire), the data (Relaxed), an Acquire fence, and `seq`
/// again. If the reader's data loads saw any store made after a writer's
/// odd store, the writer's Release fence synchronises with the reader's
/// Acquire fence, so the second `seq` load sees that odd value (or later)
/// and the read is retried; if its first load read an even `seq` stored
/// (Release) by a finished write, its data loads see that write's data.
pub(crate) const REGISTRY_SLOTS: usize = 256;
/// The magic of a claimed slot: no cache's (theirs have `0x51ab` on top).
const RESERVED: u64 = u64::MAX;
static MAGICS: [AtomicU64; REGISTRY_SLOTS] = [const { AtomicU64::new(0) }; REGISTRY_SLOTS];
static CACHES: [AtomicPtr<()>; REGISTRY_SLOTS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; REGISTRY_SLOTS];
static SEQS: [AtomicU64; REGISTRY_SLOTS] = [const { AtomicU64::new(0) }; REGISTRY_SLOTS];

/// Writes slot `i`'s magic and pointer under its seqlock (its claimant
/// only).
fn write_slot(i: usize, magic: u64, cache: *mut ()) {
    let seq = SEQS[i].load(Relaxed);
    SEQS[i].store(seq + 1, Relaxed);
    fence(Release);
    CACHES[i].store(cache, Relaxed);
    MAGICS[i].store(magic, Relaxed);
    SEQS[i].store(seq + 2, Release);
}

/// Registers `cache` (its address, stable while the channel holds its
/// `Arc`); returns the slot, or None when the registry is full.
pub(crate) fn register<T>(cache: &SlabCache<T>) -> Option<usize> {
    let magic = cache.magic();
    debug_assert_ne!(magic, RESERVED);
    for (i, slot) in MAGICS.iter().enumerate() {
        // AcqRel: reads the Release store of 0 that freed the slot, so the
        // seqlock's counter read next is the latest.
        if slot.compare_exchange(0, RESERVED, AcqRel, Relaxed).is_ok() {
            write_slot(i, magic, ptr::from_ref(cache).cast_mut().cast());
            return Some(i);
        }
    }
    None
}

/// Unregisters the slot (after everything queued on the channel is freed).
pub(crate) fn unregister(slot: usize) {
    write_slot(slot, RESERVED, ptr::null_mut());
    // Release: the next claimant sees the counter written above.
    MAGICS[slot].store(0, Release);
}

/// The registered cache of `magic` (null if none is).
fn lookup(magic: u64) -> *const () {
    for i in 0..REGISTRY_SLOTS {
        let s1 = SEQS[i].load(Acquire);
        if s1 & 1 == 1 || MAGICS[i].load(Relaxed) != magic {
            continue;
        }
        let p = CACHES[i].load(Relaxed);
        fence(Acquire);
        if SEQS[i].load(Relaxed) == s1 && !p.is_null() {
            return p.cast_const();
        }
    }
    ptr::null()
}

/// Frees slab objects of `SlabCache<T>` in bulk.
///
/// # Safety
/// See [`ReclaimFn`](super::block::ReclaimFn); `ctx` is the cache.
unsafe fn reclaim_slab<T>(ctx: *const (), objs: &mut [*mut u8]) -> usize {
    // SAFETY: the channel's context is the cache, kept alive by the
    // channel until everything queued on it is freed.
    let cache = unsafe { &*ctx.cast::<SlabCache<T>>() };

    // SAFETY: the entries are non-null object pointers of this cache, so
    // a slice of them is a slice of NonNull<T> (same layout).
    let objs = unsafe { &mut *(ptr::from_mut(objs) as *mut [NonNull<T>]) };
    let mut panics = 0;
    let drop_one = |obj: NonNull<T>| {
        if core::mem::needs_drop::<T>() {
            // SAFETY: an initialised, unreachable T whose free was just
            // checked and marked; given once. A panic of its destructor is
            // caught here, so its memory still goes back to its slab.
            let r = super::block::catch_destructor(|| unsafe { ptr::drop_in_place(obj.as_ptr()) });
            panics += usize::from(r.is_err());
        }
    };
    // SAFETY: every object is allocated from this cache, unreachable, and
    // freed once (ReclaimFn's contract); `drop_one` drops each in place,
    // once.
    // A bad pointer (a double free through the unsafe `SlabChannel` API) is
    // counted and logged: reclaim never panics on it.
    if let Some(e) = unsafe { cache.free_bulk_with(objs, drop_one) } {
        cache.note_bad_free(e);
    }
    panics
}

/// The channel of `cache`'s objects.
pub(crate) fn slab_channel<T>(cache: &SlabCache<T>) -> Channel {
    Channel {
        reclaim: reclaim_slab::<T>,
        ctx: ptr::from_ref(cache).cast(),
        obj_size: size_of::<T>(),
    }
}

/// The list fallback of a slab object: finds its cache by its slab's
/// magic, and frees it there.
///
/// # Safety
/// `head` must be the embedded head of an allocated object of a
/// `SlabCache<T>` registered with a live channel, whose grace period has
/// elapsed; called once.
pub(crate) unsafe fn slab_free_by_head<T: HasRcuHead>(head: NonNull<RcuHead>) {
    // SAFETY: the head lies RCU_HEAD_OFFSET bytes into the object.
    let obj = unsafe { head.as_ptr().byte_sub(T::RCU_HEAD_OFFSET) }.cast::<T>();
    // SAFETY: the object is in an allocated slab of a SlabCache<T>.
    let magic = unsafe { SlabCache::<T>::slab_magic_of(obj.cast()) };
    let cache = lookup(magic).cast::<SlabCache<T>>();
    assert!(
        !cache.is_null(),
        "krcu: a slab object retired on a channel that is gone"
    );
    // SAFETY: registered caches are alive while their channel is; the object
    // is allocated from it, unreachable, and freed once.
    unsafe { (*cache).free(NonNull::new_unchecked(obj)) };
}

/// Frees pages: entries are block addresses with the order in the low bits.
///
/// # Safety
/// See [`ReclaimFn`](super::block::ReclaimFn); `ctx` is the page allocator.
unsafe fn reclaim_pages(ctx: *const (), objs: &mut [*mut u8]) -> usize {
    // SAFETY: the context is the instance's page allocator, which outlives
    // everything queued on the instance.
    let pages = unsafe { &*ctx.cast::<PageAllocator>() };
    for &mut p in objs {
        let a = p as usize;
        // SAFETY: a page-aligned, non-null block address with its order in
        // the low bits, as `page_entry` made it.
        let addr = unsafe { NonNull::new_unchecked((a & !(PAGE_SIZE - 1)) as *mut u8) };
        // SAFETY: per the caller's contract, a block of this allocator
        // handed over to the pages channel, past its grace period, freed
        // once; the order is the one `page_entry` recorded.
        unsafe { pages.free_pages(addr, (a & (PAGE_SIZE - 1)) as u32) };
    }
    0
}

/// The channel of `pages`' pages.
pub(crate) fn page_channel(pages: &PageAllocator) -> Channel {
    Channel {
        reclaim: reclaim_pages,
        ctx: ptr::from_ref(pages).cast(),
        obj_size: PAGE_SIZE,
    }
}

/// A page's block entry: its address with the order in the low bits.
pub(crate) fn page_entry(addr: NonNull<u8>, order: u32) -> *mut u8 {
    (addr.as_ptr() as usize | order as usize) as *mut u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Domain;
    use crate::page::PageConfig;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// Two channels of cache `c`, the first churning (unregistered and
    /// its slot taken by cache `d` of another type, then by `c` again):
    /// a lookup of `c`'s magic always finds `c`, never null (the slot seen
    /// between its pointer and its magic) nor `d` (the slot recycled
    /// between the two loads).
    #[test]
    fn lookup_finds_the_cache_while_another_of_its_channels_churns() {
        let domain = Domain::builder().cpus(1).build();
        let config = PageConfig {
            arena_size: 4 << 20,
            kswapd: false,
            ..PageConfig::default()
        };
        let pages = PageAllocator::new(&domain, config).unwrap();
        let c = SlabCache::<u64>::new(&pages, "registry-c").unwrap();
        let d = SlabCache::<[u8; 24]>::new(&pages, "registry-d").unwrap();
        // The churning channel first, so that it sits before the stable one.
        let churn = register(&c).unwrap();
        let stable = register(&c).unwrap();
        let want = ptr::from_ref(&c).cast::<()>();
        let stop = AtomicBool::new(false);
        let (mut bad_null, mut bad_other, mut n) = (0u64, 0u64, 0u64);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut slot = churn;
                while !stop.load(Relaxed) {
                    unregister(slot);
                    slot = register(&d).unwrap();
                    unregister(slot);
                    slot = register(&c).unwrap();
                }
                unregister(slot);
            });
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(500) {
                for _ in 0..1000 {
                    let p = lookup(c.magic());
                    if p.is_null() {
                        bad_null += 1;
                    } else if p != want {
                        bad_other += 1;
                    }
                    n += 1;
                }
            }
            stop.store(true, Relaxed);
        });
        unregister(stable);
        assert_eq!(
            (bad_null, bad_other),
            (0, 0),
            "of {n} lookups, some found no cache or another cache"
        );
    }
}
