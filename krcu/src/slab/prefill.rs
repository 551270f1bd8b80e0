//! Prefilled sheaves (`kmem_cache_prefill_sheaf`,
//! `kmem_cache_alloc_from_sheaf`, `kmem_cache_return_sheaf`): a caller that
//! must not fail (or wait, or make a system call) inside a critical section
//! takes a sheaf holding at least `n` objects beforehand; allocating from
//! it is a pop (no lock, no atomic read-modify-write without consistency
//! checks, no system call, no global-allocator call) and cannot fail until
//! it is empty. Returning it (or dropping it) gives it to the CPU level or
//! the barn like any sheaf.
//!
//! Owns: [`PrefilledSheaf`]. Uses the cache's exchanges and sheaves.

use super::alloc::pop;
use super::cache::{Mode, SlabCache};
use super::exchange::mode_for;
use super::sheaf::{self, Sheaf};
use crate::page::{AllocError, Gfp};
use core::ptr::{self, NonNull};

/// A sheaf of free objects taken out of a cache for one user
/// ([`SlabCache::prefill_sheaf`]).
#[doc(alias = "slab_sheaf")]
pub struct PrefilledSheaf<'c, T> {
    cache: &'c SlabCache<T>,
    sheaf: *mut Sheaf,
}

// SAFETY: the sheaf is owned by this value alone; the cache is Sync for
// `T: Send`.
unsafe impl<T: Send> Send for PrefilledSheaf<'_, T> {}

impl<T> core::fmt::Debug for PrefilledSheaf<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PrefilledSheaf")
            .field("cache", &self.cache.name())
            .field("len", &self.len())
            .finish()
    }
}

impl<T> SlabCache<T> {
    /// A sheaf holding at least `n` free objects of this cache
    /// (`kmem_cache_prefill_sheaf`): a full one from the barn when it holds
    /// enough, else one refilled from the slabs. `n` above the cache's
    /// sheaf capacity makes a sheaf of `n` (flushed and freed when
    /// returned). `gfp` is what the refill may do.
    ///
    /// # Errors
    /// What a refill under `gfp` fails with; [`AllocError::NoMemory`] at
    /// once, before anything is allocated, when `n` is more objects than
    /// the whole page allocator could hold
    /// ([`max_prefill`](Self::max_prefill)).
    #[doc(alias = "kmem_cache_prefill_sheaf")]
    pub fn prefill_sheaf(&self, gfp: Gfp, n: usize) -> Result<PrefilledSheaf<'_, T>, AllocError> {
        let core = &*self.core;
        if n > self.max_prefill() {
            // Never satisfiable: refused before the sheaf's array (`n`
            // pointers) is asked of the global allocator, which would abort.
            return Err(AllocError::NoMemory);
        }
        let mode = mode_for(gfp);
        let mut s = ptr::null_mut();
        if n <= core.sheaf_capacity
            && let Some(mut barn) = core.lock_barn(mode)
        {
            s = barn.take_full().unwrap_or(ptr::null_mut());
        }
        if s.is_null() {
            if mode == Mode::Try {
                return Err(AllocError::Contended);
            }
            s = Sheaf::new_raw(n.max(core.sheaf_capacity));
        }
        let mut sheaf = PrefilledSheaf {
            cache: self,
            sheaf: s,
        };
        sheaf.refill(gfp, n)?;
        Ok(sheaf)
    }
}

impl<T> SlabCache<T> {
    /// The largest count [`prefill_sheaf`](Self::prefill_sheaf) accepts:
    /// the objects of as many slabs as the page allocator's arena holds.
    pub fn max_prefill(&self) -> usize {
        let core = &*self.core;
        (core.pages.total_pages() >> core.layout.order).saturating_mul(core.layout.objects)
    }
}

impl<'c, T> PrefilledSheaf<'c, T> {
    /// Objects in the sheaf.
    pub fn len(&self) -> usize {
        sheaf::len(self.sheaf)
    }

    /// Whether the sheaf is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tops the sheaf up to at least `n` objects (`kmem_cache_refill_sheaf`;
    /// at most its capacity).
    ///
    /// # Errors
    /// The page allocator's [`AllocError`] when a new slab was needed and
    /// none could be had under `gfp`; the sheaf keeps what it got.
    #[doc(alias = "kmem_cache_refill_sheaf")]
    pub fn refill(&mut self, gfp: Gfp, n: usize) -> Result<(), AllocError> {
        let core = &*self.cache.core;
        // SAFETY: ours.
        let cap = unsafe { &*self.sheaf }.capacity();
        while self.len() < n.min(cap) {
            core.refill_sheaf(self.sheaf, gfp)?;
        }
        Ok(())
    }

    /// Allocates an object from the sheaf and moves `value` into it
    /// (`kmem_cache_alloc_from_sheaf`); gives `value` back only when the
    /// sheaf is empty. Takes no lock and makes no system call.
    ///
    /// # Errors
    /// `Err(value)` when the sheaf is empty.
    #[doc(alias = "kmem_cache_alloc_from_sheaf")]
    #[inline]
    pub fn alloc(&mut self, value: T) -> Result<NonNull<T>, T> {
        if self.is_empty() {
            return Err(value);
        }
        // SAFETY: ours, not empty.
        let obj = unsafe { pop(self.sheaf) };
        self.cache.core.hand_out(obj);
        let p = obj.cast::<T>();
        // SAFETY: a free slot just handed out, sized and aligned for `T`.
        unsafe { p.write(value) };
        // SAFETY: slots are non-null.
        Ok(unsafe { NonNull::new_unchecked(p) })
    }

    /// [`alloc`](Self::alloc) into an owning [`SlabBox`](super::SlabBox):
    /// what a real-time thread publishes and later retires with
    /// [`Krcu::kfree_rcu_slab`](crate::Krcu::kfree_rcu_slab), with no
    /// `unsafe`. Takes no lock and makes no system call.
    ///
    /// ```
    /// let krcu = krcu::Krcu::builder().arena_size(16 << 20).build().unwrap();
    /// let cache = krcu.slab_cache::<[u64; 2]>("rt").unwrap();
    /// // Before the deadline-critical section:
    /// let mut sheaf = cache.prefill_sheaf(krcu::page::Gfp::KERNEL, 8).unwrap();
    /// // Inside it: cannot fail until the sheaf is empty.
    /// let b = sheaf.alloc_box([1, 2]).unwrap();
    /// assert_eq!(*b, [1, 2]);
    /// krcu.kfree_rcu_slab(b).unwrap();
    /// sheaf.return_sheaf();
    /// krcu.kvfree_rcu_barrier();
    /// ```
    ///
    /// # Errors
    /// `Err(value)` when the sheaf is empty.
    #[inline]
    pub fn alloc_box(&mut self, value: T) -> Result<super::SlabBox<T>, T> {
        let ptr = self.alloc(value)?;
        // SAFETY: an object of this cache just allocated and initialised,
        // owned by nobody else: the box is its only owner.
        Ok(unsafe { super::SlabBox::from_allocated(ptr) })
    }

    /// Gives the sheaf back to the cache (`kmem_cache_return_sheaf`); what
    /// dropping it does too.
    #[doc(alias = "kmem_cache_return_sheaf")]
    pub fn return_sheaf(self) {}
}

impl<T> Drop for PrefilledSheaf<'_, T> {
    fn drop(&mut self) {
        let core = &*self.cache.core;
        let s = core::mem::replace(&mut self.sheaf, ptr::null_mut());
        let mode = if super::cache::never_block() {
            Mode::Try
        } else {
            Mode::Block
        };
        // SAFETY: ours.
        if unsafe { &*s }.capacity() == core.sheaf_capacity {
            core.stash(s, mode);
        } else if mode == Mode::Block {
            // An oversize sheaf: not one for the barn.
            core.flush_sheaf(s, mode);
            // SAFETY: ours, empty now.
            unsafe { Sheaf::free_raw(s) };
        } else {
            // In a signal handler nothing is freed: the barn keeps it.
            core.flush_and_free_sheaf(s, mode);
        }
    }
}
