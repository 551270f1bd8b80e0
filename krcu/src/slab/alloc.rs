//! Allocation: an object from the calling thread's own sheaf (plain loads
//! and stores), else from a sheaf exchanged at the CPU or the barn or
//! refilled from the slabs; in a signal handler (or where thread-locals
//! are gone) from this CPU's sheaves under a trylock; and the slabs' side
//! of a refill (partial slabs under the node lock, or a new slab).
//!
//! Uses the cache's state (`cache.rs`), the exchanges (`exchange.rs`), the
//! thread slots (`thread.rs`); the slab lists' helpers are in `node.rs`.

#[cfg(not(loom))]
use super::cache::never_block;
use super::cache::{CacheCore, Mode, SlabCache, bump_locked};
use super::exchange::mode_for;
use super::layout::{self, SlabHeader};
use super::sheaf::Sheaf;
#[cfg(not(loom))]
use super::thread::{self, ThreadSlot, Which};
use crate::page::{AllocError, Gfp};
use crate::sync::atomic::Ordering::*;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use std::sync::Arc;

/// Pops an object from a sheaf with at least one.
///
/// # Safety
/// The caller owns `s`, which holds at least one object.
#[inline(always)]
pub(super) unsafe fn pop(s: *mut Sheaf) -> *mut u8 {
    // SAFETY: per the contract.
    let sh = unsafe { &mut *s };
    sh.len -= 1;
    sh.objs[sh.len]
}

impl<T> SlabCache<T> {
    /// Allocates an object and moves `value` into it
    /// (`kmem_cache_alloc`); gives `value` back if no memory could be had.
    /// (An example: [`SlabCache`].)
    ///
    /// # Errors
    /// `Err(value)` when no object could be had: as
    /// [`alloc_uninit`](Self::alloc_uninit) fails.
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
    /// do: with `NO_LOCKS` every lock is only trylocked and a new slab
    /// comes from the per-CPU page lists only; with `KERNEL` the caller may
    /// sleep (the validator is told). Under PREEMPT_RT, `NO_LOCKS` refuses
    /// hardirq (signal handler) and NMI context with
    /// [`AllocError::Context`], as the page allocator's `NO_LOCKS` does: the
    /// cache's locks sleep there, and even a trylock's unlock may wake a
    /// sleeper, which is not async-signal-safe.
    ///
    /// ```
    /// use krcu::page::{Gfp, PageAllocator, PageConfig};
    /// use krcu::slab::SlabCache;
    /// let pages = PageAllocator::new(krcu::Domain::global(), PageConfig::default().arena_size(4 << 20))
    ///     .unwrap();
    /// let cache = SlabCache::<[u64; 8]>::new(&pages, "buf").unwrap();
    /// let mut slot = cache.alloc_uninit(Gfp::KERNEL).unwrap();
    /// // SAFETY: the slot is ours; it is initialised before it is freed.
    /// unsafe {
    ///     slot.as_mut().write([7; 8]);
    ///     assert_eq!(slot.as_ref().assume_init_ref()[0], 7);
    ///     cache.free(slot.cast::<[u64; 8]>());
    /// }
    /// assert_eq!(cache.stats().slabs_allocated, 1);
    /// ```
    ///
    /// # Errors
    /// The page allocator's [`AllocError`] when a new slab was needed and
    /// none could be had under `gfp`, [`AllocError::Contended`] with
    /// `NO_LOCKS` or in a signal handler (whatever `gfp` says: there the
    /// node lock is only trylocked) when the node lock is taken, and
    /// [`AllocError::Context`] as said above.
    ///
    /// # Panics
    /// With consistency checks on ([`with_checks`](Self::with_checks)), if
    /// the object is already allocated: the cache's free lists are
    /// corrupt (a use after free wrote over them).
    #[track_caller]
    #[inline]
    pub fn alloc_uninit(&self, gfp: Gfp) -> Result<NonNull<MaybeUninit<T>>, AllocError> {
        if gfp.may_sleep() {
            self.core.pages.domain().might_sleep();
        }
        if gfp.contains(Gfp::NO_LOCKS) && self.core.pages.sleeping_locks_forbidden() {
            return Err(AllocError::Context);
        }
        let obj = match self.core.thread_pop() {
            Some(obj) => obj,
            None => self.core.alloc_slow(gfp)?,
        };
        self.core.hand_out(obj);
        // SAFETY: slots are non-null addresses inside the arena.
        Ok(unsafe { NonNull::new_unchecked(obj.cast()) })
    }
}

impl CacheCore {
    /// The fast path: an object from the calling thread's `main` sheaf.
    #[inline(always)]
    pub(super) fn thread_pop(&self) -> Option<*mut u8> {
        #[cfg(not(loom))]
        {
            let slot = thread::current(self.id)?;
            if never_block() {
                return None;
            }
            let obj = slot.with(Which::Main, |p| {
                let s = *p;
                // SAFETY: the owner's sheaf, inside its section.
                (!s.is_null() && unsafe { (*s).len } > 0).then(|| unsafe { pop(s) })
            })??;
            ThreadSlot::hit(&slot.alloc_hits);
            Some(obj)
        }
        #[cfg(loom)]
        None
    }

    /// What every allocation does to the object it hands out.
    #[inline(always)]
    pub(super) fn hand_out(&self, obj: *mut u8) {
        // Poisoned while free (see `asan`): accessible while allocated.
        crate::asan::unpoison(obj, self.obj_size);
        if self.checks {
            let (hdr, i) = self.slab_of_trusted(obj);
            // SAFETY: `hdr` is the header of a live slab of this cache: the
            // object came from one of its slabs and the slab cannot be
            // freed while one of its objects is outside it (inuse > 0).
            let ok = layout::mark_allocated(unsafe { &*hdr }, i);
            assert!(ok, "slab {}: object {obj:p} handed out twice", self.name);
        }
    }

    /// The slow path: the thread's sheaf exchanged, or the CPU's sheaves.
    #[cold]
    pub(super) fn alloc_slow(&self, gfp: Gfp) -> Result<*mut u8, AllocError> {
        #[cfg(not(loom))]
        if !never_block()
            && let Some(slot) = self.thread_slot_for(gfp)
        {
            // A spare with objects (a sheaf the thread recycled, see
            // `recycle.rs`) becomes `main`; the empty `main` becomes the
            // spare, for the thread's next `rcu_free` sheaf.
            let swapped = slot.with_all(|sh| {
                if super::sheaf::len(*sh.main) > 0 || super::sheaf::len(sh.recycle.spare) == 0 {
                    return None;
                }
                core::mem::swap(sh.main, &mut sh.recycle.spare);
                // SAFETY: the owner's sheaf, inside its section, not empty.
                Some(unsafe { pop(*sh.main) })
            });
            if let Some(Some(obj)) = swapped {
                ThreadSlot::hit(&slot.alloc_hits);
                return Ok(obj);
            }
            let mode = mode_for(gfp);
            let s = slot.take(Which::Main);
            return match self.get_filled(s, gfp) {
                Ok(s) => {
                    // SAFETY: `get_filled` hands back a sheaf with objects,
                    // ours until installed.
                    let obj = unsafe { pop(s) };
                    if let Err(s) = slot.install(Which::Main, s) {
                        self.stash(s, mode);
                    }
                    Ok(obj)
                }
                Err((AllocError::Contended, s)) if s.is_null() => {
                    // No sheaf without allocating one (`NO_LOCKS`): one
                    // object straight from the slabs.
                    let mut one = [ptr::null_mut()];
                    self.take_from_slabs(&mut one, gfp)?;
                    Ok(one[0])
                }
                Err((e, s)) => {
                    if let Err(s) = slot.install(Which::Main, s) {
                        self.stash(s, mode);
                    }
                    Err(e)
                }
            };
        }
        self.cpu_alloc(gfp)
    }

    /// The calling thread's slot of this cache for an allocation with
    /// `gfp`: with `NO_LOCKS` only an existing one (registering allocates,
    /// takes the registry's mutex and reclaims exited threads' sheaves
    /// with blocking locks); the caller then uses the CPU's sheaves.
    #[cfg(not(loom))]
    #[inline]
    fn thread_slot_for(&self, gfp: Gfp) -> Option<&'static ThreadSlot> {
        if gfp.contains(Gfp::NO_LOCKS) {
            thread::current(self.id)
        } else {
            self.thread_slot()
        }
    }

    /// The calling thread's slot of this cache, registered on first use.
    #[cfg(not(loom))]
    #[inline]
    pub(super) fn thread_slot(&self) -> Option<&'static ThreadSlot> {
        thread::current(self.id).or_else(|| {
            thread::find_or_register(self.id, &self.threads, || {
                self.threads
                    .take_where(true, |_| true, thread::Chains::All, &mut |s, w| {
                        self.reclaim_sheaf(s, w)
                    });
            })
        })
    }

    /// Allocation from this CPU's sheaves (signal handlers, threads whose
    /// thread-locals are gone, `alloc_nolock`); when they are busy (a
    /// trylock failed) or nothing can be had for them, one object straight
    /// from the slabs.
    pub(super) fn cpu_alloc(&self, gfp: Gfp) -> Result<*mut u8, AllocError> {
        let mode = mode_for(gfp);
        let mut taken = ptr::null_mut();
        if let Some(mut cs) = self.lock_cpu(mode) {
            let cs = &mut *cs;
            if super::sheaf::len(cs.main) == 0 && super::sheaf::len(cs.spare) > 0 {
                core::mem::swap(&mut cs.main, &mut cs.spare);
            }
            if super::sheaf::len(cs.main) > 0 {
                bump_locked(&self.counters.cpu_allocs);
                // SAFETY: the CPU's sheaf, ours under its lock, not empty.
                return Ok(unsafe { pop(cs.main) });
            }
            taken = core::mem::replace(&mut cs.main, ptr::null_mut());
        }
        match self.get_filled(taken, gfp) {
            Ok(s) => {
                // SAFETY: a sheaf with objects, ours.
                let obj = unsafe { pop(s) };
                self.put_cpu_main(s, mode);
                return Ok(obj);
            }
            Err((e, s)) => {
                self.put_cpu_main(s, mode);
                if e != AllocError::Contended {
                    return Err(e);
                }
            }
        }
        let mut one = [ptr::null_mut()];
        self.take_from_slabs(&mut one, gfp)?;
        Ok(one[0])
    }

    /// Puts back a sheaf taken out of this CPU's `main`.
    pub(super) fn put_cpu_main(&self, s: *mut Sheaf, mode: Mode) {
        if s.is_null() {
            return;
        }
        if let Some(mut cs) = self.lock_cpu(mode)
            && cs.main.is_null()
        {
            cs.main = s;
            return;
        }
        self.stash(s, mode);
    }

    /// Fills `out` from the partial slabs (at least one object unless `out`
    /// is empty), allocating a slab when none has objects. Returns how many
    /// were taken. The mode comes from the flags and the context: in a
    /// signal handler the node lock is only trylocked whatever `gfp` says,
    /// and a new slab comes from the page allocator's lock-free path.
    pub(super) fn take_from_slabs(
        &self,
        out: &mut [*mut u8],
        gfp: Gfp,
    ) -> Result<usize, AllocError> {
        if out.is_empty() {
            // Nothing asked: no slab for nobody (a full sheaf refilled).
            return Ok(0);
        }
        let mode = mode_for(gfp);
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

    /// A fresh slab from the page allocator; in [`Mode::Try`] (a signal
    /// handler, or `NO_LOCKS`) through its `NO_LOCKS` path, which waits
    /// for no lock.
    pub(super) fn new_slab(&self, gfp: Gfp) -> Result<*mut SlabHeader, AllocError> {
        let gfp = match mode_for(gfp) {
            Mode::Try => gfp | Gfp::NO_LOCKS,
            Mode::Block => gfp,
        };
        let page = self.pages.alloc_pages(gfp - Gfp::ZERO, self.layout.order)?;
        self.counters.slabs_allocated.fetch_add(1, Relaxed);
        // The slab keeps the block by address; `return_to_slabs` frees it.
        let base = page.into_raw();
        // SAFETY: a block of the slab order just allocated for us; pages are
        // page-aligned, more than a header needs.
        let hdr = unsafe { layout::init_header(base, &self.layout, self.magic) };
        let core: *const CacheCore = self;
        // The slab's strong count of the core (dropped in `free_slabs`).
        // SAFETY: a `CacheCore` only ever lives in an `Arc` (the builder
        // makes it so), alive while `self` is borrowed.
        unsafe { Arc::increment_strong_count(core) };
        // SAFETY: fresh, ours alone; published with the slab (node lock).
        unsafe { (*hdr).cache = core.cast() };
        Ok(hdr)
    }

    /// Takes available objects from partial slabs into `out`.
    pub(super) fn take_locked(&self, node: &mut super::cache::Node, out: &mut [*mut u8]) -> usize {
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
