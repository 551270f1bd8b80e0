//! The cache's slab lists behind the node lock (`kmem_cache_node`): taking
//! the lock as the context allows, giving objects back to their slabs, and
//! returning empty slabs to the page allocator.
//!
//! Uses the cache's state (`cache.rs`) and the slab layout.

use super::cache::{CacheCore, Mode, Node};
use super::layout::{self, SlabHeader};
use crate::page::FaultSites;
use crate::sync::atomic::Ordering::*;
use core::ptr::{self, NonNull};
use std::sync::Arc;

impl CacheCore {
    /// The node lock: a real lock, except in [`Mode::Try`], which only
    /// trylocks (and can be made to fail: [`FaultSites::SLAB_NODE_TRYLOCK`]).
    pub(super) fn lock_node(&self, mode: Mode) -> Option<crate::lock::SpinLockGuard<'_, Node>> {
        match mode {
            Mode::Block => Some(self.node.lock()),
            Mode::Try
                if self
                    .pages
                    .faults()
                    .should_fail(FaultSites::SLAB_NODE_TRYLOCK) =>
            {
                None
            }
            Mode::Try => self.node.try_lock(),
        }
    }

    /// Gives objects (already marked free) back to their slabs under one
    /// node-lock acquisition, with the deferred ones; slabs that become
    /// empty go back to the page allocator after the lock is dropped. In
    /// [`Mode::Try`], if the trylock fails the objects are deferred.
    pub(super) fn return_to_slabs(&self, objs: &mut [*mut u8], mode: Mode) {
        let mut empty: *mut SlabHeader = ptr::null_mut();
        {
            // Under PREEMPT_RT in a signal handler not even a trylock.
            let locked = if mode == Mode::Try && self.pages.sleeping_locks_forbidden() {
                None
            } else {
                self.lock_node(mode)
            };
            let Some(mut node) = locked else {
                for &obj in objs.iter() {
                    self.defer(obj);
                }
                return;
            };
            self.drain_deferred_locked(&mut node, &mut empty);
            self.return_grouped_locked(&mut node, objs, &mut empty);
        }
        self.free_slabs(empty, mode);
    }

    /// Gives one object back to its slab, with the node lock held; chains
    /// the slab on `empty` if it becomes empty.
    pub(super) fn return_locked(&self, node: &mut Node, obj: *mut u8, empty: &mut *mut SlabHeader) {
        let (hdr, i) = self.slab_of_trusted(obj);
        // SAFETY: the object is this cache's and outside its slab, so the
        // slab is live (inuse > 0); its plain fields are ours under the
        // node lock.
        let h = unsafe { &mut *hdr };
        let (w, m) = layout::bit(i);
        h.avail[w] |= m;
        h.inuse -= 1;
        if h.inuse == 0 {
            if h.on_partial {
                // SAFETY: it is on the partial list.
                unsafe { Self::partial_del(node, hdr) };
            }
            node.nr_slabs -= 1;
            h.next = *empty;
            *empty = hdr;
        } else if !h.on_partial {
            // SAFETY: live, this cache's, on no list.
            unsafe { Self::partial_add(node, hdr) };
        }
    }

    /// Gives a chain of empty slabs (linked by `next`, off every list) back
    /// to the page allocator: in [`Mode::Try`] with `free_pages_nolock`,
    /// which never waits for the zone lock.
    ///
    /// Each slab's strong count of the core is dropped last, after the
    /// loop: the last one may free the core (after the handle is gone), so
    /// nothing of the cache is touched after that, here or by the callers
    /// (a path that gives back the slab of the very object it frees ends
    /// with this call).
    pub(super) fn free_slabs(&self, mut empty: *mut SlabHeader, mode: Mode) {
        let core: *const CacheCore = self;
        let mut freed = 0;
        while !empty.is_null() {
            // SAFETY: an empty slab taken off every list: ours alone.
            let next = unsafe { (*empty).next };
            // SAFETY: as above; clearing the magic makes stale frees into
            // this block fail the cache check once the pages are reused.
            unsafe { (*empty).magic.store(0, Release) };
            // SAFETY: slabs start on a block of the slab order allocated
            // from this page allocator.
            let base = unsafe { NonNull::new_unchecked(empty.cast::<u8>()) };
            // SAFETY: the slab's block, of the slab order, is this cache's
            // (taken with `into_raw` in `new_slab`); empty and off every
            // list, nothing refers to it any more.
            unsafe {
                match mode {
                    Mode::Block => self.pages.free_pages(base, self.layout.order),
                    Mode::Try => self.pages.free_pages_nolock(base, self.layout.order),
                }
            }
            self.counters.slabs_freed.fetch_add(1, Relaxed);
            freed += 1;
            empty = next;
        }
        for _ in 0..freed {
            // SAFETY: each slab freed held one strong count of the core (a
            // `CacheCore` only ever lives in an `Arc`), taken in `new_slab`;
            // `self` is not used after the last.
            unsafe { Arc::decrement_strong_count(core) };
        }
    }

    /// # Safety
    /// `hdr` must be a live slab of this cache on no list, with the node
    /// lock held (`node` is its guard's data).
    pub(super) unsafe fn partial_add(node: &mut Node, hdr: *mut SlabHeader) {
        // SAFETY: per the contract.
        let h = unsafe { &mut *hdr };
        h.prev = ptr::null_mut();
        h.next = node.partial;
        if !node.partial.is_null() {
            // SAFETY: the old head is a live slab on the list.
            unsafe { (*node.partial).prev = hdr };
        }
        node.partial = hdr;
        h.on_partial = true;
        node.nr_partial += 1;
    }

    /// # Safety
    /// `hdr` must be on `node`'s partial list, with the node lock held.
    pub(super) unsafe fn partial_del(node: &mut Node, hdr: *mut SlabHeader) {
        // SAFETY: per the contract; its neighbours are on the list too.
        unsafe {
            let h = &mut *hdr;
            if h.prev.is_null() {
                node.partial = h.next;
            } else {
                (*h.prev).next = h.next;
            }
            if !h.next.is_null() {
                (*h.next).prev = h.prev;
            }
            h.on_partial = false;
        }
        node.nr_partial -= 1;
    }
}
