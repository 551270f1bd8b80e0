//! Allocation: an object from this CPU's cache, or a batch refilled from
//! the partial slabs under the node lock, or a new slab from the page
//! allocator.
//!
//! Uses the cache's state (`cache.rs`); the slab lists' helpers it calls
//! are in `node.rs`.

use super::cache::{CPU_BATCH, CPU_CAPACITY, Mode, Node, SlabCache, bump_locked};
use super::layout::{self, SlabHeader};
use crate::page::{AllocError, Gfp};
use crate::sync::atomic::Ordering::*;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use std::sync::Arc;

impl<T> SlabCache<T> {
    /// Allocates an object and moves `value` into it
    /// (`kmem_cache_alloc`); gives `value` back if no memory could be had.
    #[track_caller]
    #[inline]
    #[doc(alias = "kmem_cache_alloc")]
    pub fn alloc(&self, gfp: Gfp, value: T) -> Result<NonNull<T>, T> {
        match self.alloc_uninit(gfp) {
            Ok(slot) => {
                let p = slot.cast::<T>();
                // SAFETY: the slot is freshly allocated, sized and aligned
                // for `T`, and exclusively ours.
                unsafe { p.as_ptr().write(value) };
                Ok(p)
            }
            Err(_) => Err(value),
        }
    }

    /// Allocates an uninitialised object. `gfp` decides what a refill may
    /// do: with `NO_LOCKS` the node lock is only trylocked and a new slab
    /// comes from the per-CPU page lists only; with `KERNEL` the caller may
    /// sleep (the validator is told). Under PREEMPT_RT, `NO_LOCKS` refuses
    /// hardirq (signal handler) and NMI context with
    /// [`AllocError::Context`], as the page allocator's `NO_LOCKS` does: the
    /// cache's locks sleep there, and even a trylock's unlock may wake a
    /// sleeper, which is not async-signal-safe.
    #[track_caller]
    #[inline]
    pub fn alloc_uninit(&self, gfp: Gfp) -> Result<NonNull<MaybeUninit<T>>, AllocError> {
        if gfp.may_sleep() {
            self.pages.domain().might_sleep();
        }
        if gfp.contains(Gfp::NO_LOCKS) && self.pages.sleeping_locks_forbidden() {
            return Err(AllocError::Context);
        }
        let (_, cpu) = self.cpu.current();
        let cached = match cpu.try_lock() {
            Some(mut cc) if cc.len > 0 => {
                cc.len -= 1;
                bump_locked(&self.counters.cpu_allocs);
                Some(cc.objs[cc.len])
            }
            Some(_) => None,
            None => {
                self.counters.trylock_failures.fetch_add(1, Relaxed);
                None
            }
        };
        let obj = match cached {
            Some(obj) => obj,
            None => self.alloc_slow(gfp)?,
        };
        // Poisoned while free (see `asan`): accessible while allocated.
        crate::asan::unpoison(obj, core::mem::size_of::<T>());
        if self.checks {
            let (hdr, i) = self.slab_of_trusted(obj);
            // SAFETY: `hdr` is the header of a live slab of this cache: the
            // object came from one of its slabs and the slab cannot be
            // freed while one of its objects is outside it (inuse > 0).
            let ok = layout::mark_allocated(unsafe { &*hdr }, i);
            assert!(ok, "slab {}: object {obj:p} handed out twice", self.name);
        }
        // SAFETY: slots are non-null addresses inside the arena.
        Ok(unsafe { NonNull::new_unchecked(obj.cast()) })
    }

    /// Takes a batch from the slabs (allocating a slab if need be) with no
    /// per-CPU lock held, since a new slab may need a sleeping allocation;
    /// keeps one object and puts the rest in this CPU's cache, or back in
    /// the slabs if the cache is busy or full.
    #[cold]
    pub(super) fn alloc_slow(&self, gfp: Gfp) -> Result<*mut u8, AllocError> {
        let mut batch = [ptr::null_mut(); CPU_BATCH];
        let n = self.take_from_slabs(&mut batch, gfp)?;
        let (obj, rest) = (batch[n - 1], &mut batch[..n - 1]);
        let mut kept = 0;
        if let Some(mut cc) = self.cpu.current().1.try_lock() {
            kept = rest.len().min(CPU_CAPACITY - cc.len);
            let len = cc.len;
            cc.objs[len..len + kept].copy_from_slice(&rest[..kept]);
            cc.len = len + kept;
            bump_locked(&self.counters.refills);
        }
        if kept < rest.len() {
            // With `NO_LOCKS`, trylock only: the surplus is deferred if the
            // node lock is busy (it may be held by the thread a signal
            // handler interrupted).
            let mode = if gfp.contains(Gfp::NO_LOCKS) {
                Mode::Try
            } else {
                Mode::Block
            };
            self.return_to_slabs(&mut rest[kept..], mode);
        }
        Ok(obj)
    }

    /// Fills `out` from the partial slabs (at least one object), allocating
    /// a slab when none has objects. Returns how many were taken.
    pub(super) fn take_from_slabs(
        &self,
        out: &mut [*mut u8],
        gfp: Gfp,
    ) -> Result<usize, AllocError> {
        let mode = if gfp.contains(Gfp::NO_LOCKS) {
            Mode::Try
        } else {
            Mode::Block
        };
        loop {
            let mut empty = ptr::null_mut();
            let n = {
                let mut node = self.lock_node(mode).ok_or(AllocError::Contended)?;
                self.drain_deferred_locked(&mut node, &mut empty);
                self.take_locked(&mut node, out)
            };
            self.free_slabs(empty, mode);
            if n > 0 {
                return Ok(n);
            }
            let slab = self.new_slab(gfp)?;
            let Some(mut node) = self.lock_node(mode) else {
                // The slab was never on a list nor handed out: give it
                // straight back rather than lose it.
                // SAFETY: fresh from `new_slab`, on no list, no object of
                // it handed out; `next` chains it alone.
                unsafe { (*slab).next = ptr::null_mut() };
                self.free_slabs(slab, Mode::Try);
                return Err(AllocError::Contended);
            };
            node.nr_slabs += 1;
            // SAFETY: a fresh slab, owned by this cache, on no list.
            unsafe { Self::partial_add(&mut node, slab) };
        }
    }

    pub(super) fn new_slab(&self, gfp: Gfp) -> Result<*mut SlabHeader, AllocError> {
        let page = self.pages.alloc_pages(gfp - Gfp::ZERO, self.layout.order)?;
        self.counters.slabs_allocated.fetch_add(1, Relaxed);
        // The slab keeps the block by address; `return_to_slabs` frees it.
        let base = page.into_raw();
        // SAFETY: a block of the slab order just allocated for us; pages are
        // page-aligned, more than a header needs.
        let hdr = unsafe { layout::init_header(base, &self.layout, self.magic) };
        let core = Arc::as_ptr(&self.core);
        // The slab's strong count of the core (dropped in `free_slabs`).
        // SAFETY: `core` comes from a live Arc (ours).
        unsafe { Arc::increment_strong_count(core) };
        // SAFETY: fresh, ours alone; published with the slab (node lock).
        unsafe { (*hdr).cache = core.cast() };
        Ok(hdr)
    }

    /// Takes available objects from partial slabs into `out`.
    pub(super) fn take_locked(&self, node: &mut Node, out: &mut [*mut u8]) -> usize {
        let mut n = 0;
        while n < out.len() && !node.partial.is_null() {
            let hdr = node.partial;
            // SAFETY: slabs on the partial list are live and this cache's;
            // their non-atomic fields are ours under the node lock.
            let h = unsafe { &mut *hdr };
            for w in 0..h.avail.len() {
                while h.avail[w] != 0 && n < out.len() {
                    let b = h.avail[w].trailing_zeros() as usize;
                    h.avail[w] &= !(1u64 << b);
                    out[n] = self.layout.slot(hdr, w * 64 + b).as_ptr();
                    n += 1;
                    h.inuse += 1;
                }
            }
            if h.avail.iter().all(|&w| w == 0) {
                // SAFETY: `hdr` is on the partial list.
                unsafe { Self::partial_del(node, hdr) };
            }
        }
        n
    }
}
