//! `alloc_nolock` / `free_nolock` (the kernel's `kmalloc_nolock` /
//! `kfree_nolock`, for typed caches): allocation and free callable from any
//! context, a signal handler or under a raw lock included. They take only
//! trylocks, never allocate a sheaf's memory, and never sleep; a free that
//! cannot get a lock defers the object onto the cache's lock-free deferred
//! list (given back by the next node-lock holder) instead of failing.
//!
//! Owns: [`NolockError`] and the two entry points. Uses the cache's paths.

use super::cache::{Mode, SlabCache, drop_catching, never_block};
use crate::page::{AllocError, Gfp};
use core::mem::MaybeUninit;
use core::ptr::NonNull;

/// Why [`SlabCache::alloc_nolock`] found no object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NolockError {
    /// A lock it needed was taken (this CPU's sheaves, the barn or the
    /// node lock): trylocks only, so it did not wait.
    #[error("a lock was taken and kmalloc_nolock only trylocks")]
    Contended,
    /// No free object in this CPU's sheaves, the barn or the slabs, and no
    /// page on this CPU's page lists for a new slab.
    #[error("no free object or page to be had without locks")]
    NoMemory,
    /// Not allowed here: a signal handler (hardirq or NMI context) under
    /// PREEMPT_RT, where even a trylock of the cache's sleeping locks is
    /// unsafe.
    #[error("not allowed in this context")]
    Context,
}

impl From<AllocError> for NolockError {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::Contended => NolockError::Contended,
            AllocError::Context => NolockError::Context,
            _ => NolockError::NoMemory,
        }
    }
}

impl<T> SlabCache<T> {
    /// Allocates an object from any context (`kmalloc_nolock`) and moves
    /// `value` into it; gives `value` back with the reason on failure.
    /// The calling thread's own sheaf first (not in a signal handler),
    /// then this CPU's sheaves and the barn under trylocks, then the slabs
    /// under a trylock with a new slab from this CPU's page lists only.
    ///
    /// # Errors
    /// The value back with a [`NolockError`]: a lock was taken
    /// (`Contended`), no object or page could be had without one
    /// (`NoMemory`), or the context forbids even trylocks (`Context`, a
    /// signal handler under PREEMPT_RT).
    #[doc(alias = "kmalloc_nolock")]
    #[doc(alias = "kmem_cache_alloc_nolock")]
    pub fn alloc_nolock(&self, value: T) -> Result<NonNull<T>, (T, NolockError)> {
        match self.alloc_uninit_nolock() {
            Ok(slot) => {
                let p = slot.cast::<T>();
                // SAFETY: freshly allocated, sized and aligned for `T`.
                unsafe { p.as_ptr().write(value) };
                Ok(p)
            }
            Err(e) => Err((value, e)),
        }
    }

    /// As [`alloc_nolock`](Self::alloc_nolock), uninitialised.
    ///
    /// # Errors
    /// As [`alloc_nolock`](Self::alloc_nolock).
    pub fn alloc_uninit_nolock(&self) -> Result<NonNull<MaybeUninit<T>>, NolockError> {
        let core = &*self.core;
        if never_block() && core.pages.sleeping_locks_forbidden() {
            return Err(NolockError::Context);
        }
        let obj = match core.thread_pop() {
            Some(obj) => obj,
            None => core.cpu_alloc(Gfp::NO_LOCKS | Gfp::NOWARN)?,
        };
        core.hand_out(obj);
        // SAFETY: slots are non-null addresses inside the arena.
        Ok(unsafe { NonNull::new_unchecked(obj.cast()) })
    }

    /// Drops the object and frees it from any context (`kfree_nolock`):
    /// onto the calling thread's own sheaf (not in a signal handler), else
    /// this CPU's sheaves under a trylock, else the slabs under a trylock,
    /// else the lock-free deferred list. Never fails and never waits. Bad
    /// input per the cache's policy (counted only in a signal handler).
    ///
    /// `T`'s destructor runs in the caller's context: it must be fit for
    /// it (a signal handler's destructor must be async-signal-safe).
    ///
    /// # Safety
    /// As for [`free`](Self::free).
    #[doc(alias = "kfree_nolock")]
    pub unsafe fn free_nolock(&self, obj: NonNull<T>) {
        let core = &*self.core;
        if let Err(e) = core.check_and_mark_free(obj.as_ptr().cast()) {
            core.bad_free(e);
            return;
        }
        // SAFETY: the caller's contract; we won the free bit.
        let panicked = unsafe { drop_catching(obj) };
        let p = obj.as_ptr().cast::<u8>();
        crate::asan::poison(p, core::mem::size_of::<T>());
        if !core.thread_push(p) {
            if core.pages.sleeping_locks_forbidden() {
                core.defer(p);
            } else {
                core.cpu_free(p, Mode::Try);
            }
        }
        if let Err(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
    }
}
