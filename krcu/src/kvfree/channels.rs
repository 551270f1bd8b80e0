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

use super::block::Channel;
use crate::page::{PAGE_SIZE, PageAllocator};
use crate::rcu::{HasRcuHead, RcuHead};
use crate::slab::SlabCache;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering::*};

/// Slab caches with a live [`SlabChannel`](crate::SlabChannel), by magic.
const REGISTRY_SLOTS: usize = 256;
static MAGICS: [AtomicU64; REGISTRY_SLOTS] = [const { AtomicU64::new(0) }; REGISTRY_SLOTS];
static CACHES: [AtomicPtr<()>; REGISTRY_SLOTS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; REGISTRY_SLOTS];

/// Registers `cache` (its address, stable while the channel holds its
/// `Arc`); returns the slot, or None when the registry is full.
pub(crate) fn register<T>(cache: &SlabCache<T>) -> Option<usize> {
    let magic = cache.magic();
    for i in 0..REGISTRY_SLOTS {
        if MAGICS[i]
            .compare_exchange(0, magic, AcqRel, Relaxed)
            .is_ok()
        {
            // Release: a lookup that finds the pointer sees the cache.
            CACHES[i].store(ptr::from_ref(cache).cast_mut().cast(), Release);
            return Some(i);
        }
    }
    None
}

/// Unregisters the slot (after everything queued on the channel is freed).
pub(crate) fn unregister(slot: usize) {
    CACHES[slot].store(ptr::null_mut(), Release);
    MAGICS[slot].store(0, Release);
}

fn lookup(magic: u64) -> *const () {
    (0..REGISTRY_SLOTS)
        .find(|&i| MAGICS[i].load(Acquire) == magic)
        .map_or(ptr::null(), |i| CACHES[i].load(Acquire).cast_const())
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
    unsafe { cache.free_bulk_with(objs, drop_one) };
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
