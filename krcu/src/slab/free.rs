//! Freeing one object: the checks every free makes (the slab is this
//! cache's, the address a slot, the object allocated), the push onto this
//! CPU's cache, and the lock-free deferred list where no lock can be had.
//!
//! Uses the cache's state (`cache.rs`) and the slab layout.

use super::SlabError;
use super::cache::{CacheCore, Mode, Node, SlabCache, bump_locked, drop_catching, never_block};
use super::layout::{self, Layout, SlabHeader};
use super::sheaf::Sheaf;
#[cfg(not(loom))]
use super::thread::{self, ThreadSlot, Which};
use crate::sync::atomic::Ordering::*;
use core::ptr::{self, NonNull};

impl<T> SlabCache<T> {
    /// Drops the object and frees it (`kmem_cache_free`). Bad input per the
    /// cache's policy (see the type's documentation).
    ///
    /// # Safety
    /// `obj` must have come from this cache's `alloc`, hold an initialised
    /// `T`, and not be used after this call.
    #[track_caller]
    #[inline]
    #[doc(alias = "kmem_cache_free")]
    pub unsafe fn free(&self, obj: NonNull<T>) {
        // SAFETY: forwarded from the caller.
        if let Err(e) = unsafe { self.try_free(obj) } {
            self.core.bad_free(e);
        }
    }

    /// As [`free`](Self::free), but bad input is returned, not reported;
    /// nothing is dropped or freed then.
    ///
    /// ```
    /// use krcu::page::{Gfp, PageAllocator, PageConfig};
    /// use krcu::slab::{SlabCache, SlabError};
    /// let pages = PageAllocator::new(krcu::Domain::global(), PageConfig::default().arena_size(4 << 20))
    ///     .unwrap();
    /// let cache = SlabCache::<u64>::with_checks(&pages, "u64", true).unwrap();
    /// let obj = cache.alloc(Gfp::KERNEL, 1).unwrap();
    /// // SAFETY: `obj` is this cache's; the second free is the bug being
    /// // shown, refused by the consistency checks before anything is read.
    /// unsafe {
    ///     assert_eq!(cache.try_free(obj), Ok(()));
    ///     let again = cache.try_free(obj);
    ///     assert_eq!(again, Err(SlabError::DoubleFree { addr: obj.as_ptr() as usize }));
    /// }
    /// ```
    ///
    /// # Errors
    /// A [`SlabError`] naming the address: not an object of this cache, not
    /// the start of an object, or (with consistency checks) already free.
    ///
    /// # Safety
    /// As for [`free`](Self::free), except that a pointer this cache did not
    /// hand out, or already freed, is detected and refused rather than
    /// undefined behaviour provided it points into the page arena.
    pub unsafe fn try_free(&self, obj: NonNull<T>) -> Result<(), SlabError> {
        self.core.check_and_mark_free(obj.as_ptr().cast())?;
        // SAFETY: the caller's contract; checked and marked free just now.
        unsafe { self.drop_and_free_slot(obj) };
        Ok(())
    }

    /// [`free`](Self::free) of an object a [`SlabBox`](super::SlabBox)
    /// owned: its type proves it an allocated object of this cache, so
    /// only consistency checks (when on) look at its slab.
    ///
    /// # Safety
    /// As for `free`, and `obj` is an allocated object of this cache.
    #[inline]
    pub(crate) unsafe fn free_owned(&self, obj: NonNull<T>) {
        if self.core.checks {
            // SAFETY: forwarded.
            unsafe { self.free(obj) };
        } else {
            // SAFETY: the caller's contract.
            unsafe { self.drop_and_free_slot(obj) };
        }
    }

    /// Drops the `T` and puts its slot back.
    ///
    /// # Safety
    /// `obj` is an allocated object of this cache holding an initialised,
    /// unaliased `T`, checked (or owned), freed by no one else.
    #[inline]
    unsafe fn drop_and_free_slot(&self, obj: NonNull<T>) {
        // A panicking destructor must not lose the object: it is marked
        // free already, so unless its slot goes back to the slab here the
        // slab (and its pages) could never be returned. Catch the panic,
        // give the slot back, then resume it.
        // SAFETY: the caller guarantees an initialised, unaliased `T`; we
        // won the free bit, so no other free of it runs.
        let panicked = unsafe { drop_catching(obj) };
        let obj = obj.as_ptr().cast::<u8>();
        // Before it is anyone's to take again.
        crate::asan::poison(obj, core::mem::size_of::<T>());
        self.core.free_slot(obj);
        if let Err(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
    }
}

/// Pushes an object onto a sheaf with room.
///
/// # Safety
/// The caller owns `s`, which is not full.
#[inline(always)]
pub(super) unsafe fn push(s: *mut Sheaf, obj: *mut u8) {
    // SAFETY: per the contract.
    let sh = unsafe { &mut *s };
    sh.objs[sh.len] = obj;
    sh.len += 1;
}

impl CacheCore {
    /// Puts a slot (dropped, marked free) back: on the calling thread's
    /// own sheaf (plain loads and stores), else through an exchange. In a
    /// signal handler (hardirq or NMI context) it never waits for a lock,
    /// as `free_pages_nolock`: this CPU's sheaves under a trylock, and the
    /// lock-free deferred list when the trylocks fail; under PREEMPT_RT
    /// there it touches no lock at all (the locks sleep, and even a
    /// trylock's unlock may wake a sleeper) and defers at once.
    #[inline(always)]
    pub(super) fn free_slot(&self, obj: *mut u8) {
        if !self.thread_push(obj) {
            self.free_slow(obj);
        }
    }

    /// The fast path: onto the calling thread's `main` sheaf, if it has
    /// one with room (and the caller is not a signal handler).
    #[inline(always)]
    pub(super) fn thread_push(&self, obj: *mut u8) -> bool {
        #[cfg(not(loom))]
        if let Some(slot) = thread::current(self.id)
            && !never_block()
            && slot.with(Which::Main, |p| {
                let s = *p;
                // SAFETY: the owner's sheaf, inside its section.
                if s.is_null() || unsafe { (*s).is_full() } {
                    return false;
                }
                // SAFETY: as above; it has room.
                unsafe { push(s, obj) };
                true
            }) == Some(true)
        {
            ThreadSlot::hit(&slot.free_hits);
            return true;
        }
        #[cfg(loom)]
        let _ = obj;
        false
    }

    #[cold]
    pub(super) fn free_slow(&self, obj: *mut u8) {
        // Under PREEMPT_RT the cache's locks sleep: in a handler, or in
        // atomic context (a raw lock held, interrupts off), not even a
        // trylock of them is allowed (an invalid wait context).
        let atomic = crate::context::in_atomic() || crate::context::irqs_disabled();
        if self.pages.sleeping_locks_forbidden()
            || atomic && self.pages.domain().preempt_model() == crate::context::PreemptModel::Rt
        {
            self.defer(obj);
            return;
        }
        // The handle is gone (SeqCst: pairs with its store before its
        // last shrink): no sheaf would be shrunk again, so the object goes
        // straight to its slab, and with the last one the slab and the
        // cache's memory. (A free whose check ran just before the handle's
        // drop and that lands in a sheaf after its shrink is given back
        // when the next cache is built, `by_rcu::tend_orphans`.)
        if self.orphaned.load(SeqCst) {
            let mode = if never_block() || atomic {
                Mode::Try
            } else {
                Mode::Block
            };
            self.return_to_slabs(&mut [obj], mode);
            return;
        }
        if never_block() || atomic {
            // No sleeping lock (a raw spinlock's holder may not wait for a
            // lock another thread holds while preempted) and no allocation:
            // this CPU's sheaves under trylocks, else the lock-free list.
            self.cpu_free(obj, Mode::Try);
            return;
        }
        #[cfg(not(loom))]
        if let Some(slot) = self.thread_slot() {
            let mut s = slot.take(Which::Main);
            // SAFETY: taken out of the slot: ours.
            if s.is_null() || unsafe { (*s).is_full() } {
                s = self.get_room(s, Mode::Block);
            }
            // SAFETY: `get_room` in Block mode hands back a sheaf with room.
            unsafe { push(s, obj) };
            if let Err(s) = slot.install(Which::Main, s) {
                self.stash(s, Mode::Block);
            }
            return;
        }
        self.cpu_free(obj, Mode::Block);
    }

    /// A free onto this CPU's sheaves (signal handlers, threads whose
    /// thread-locals are gone, `free_nolock`); when they are busy, straight
    /// to the slabs (deferred if the node lock is busy too in `Try` mode).
    pub(super) fn cpu_free(&self, obj: *mut u8, mode: Mode) {
        let taken = {
            let Some(mut cs) = self.lock_cpu(mode) else {
                self.return_to_slabs(&mut [obj], mode);
                return;
            };
            let cs = &mut *cs;
            for _ in 0..2 {
                // SAFETY: the CPU's sheaves are ours under its lock.
                if !cs.main.is_null() && !unsafe { (*cs.main).is_full() } {
                    // SAFETY: as above; it has room.
                    unsafe { push(cs.main, obj) };
                    bump_locked(&self.counters.cpu_frees);
                    return;
                }
                core::mem::swap(&mut cs.main, &mut cs.spare);
            }
            core::mem::replace(&mut cs.main, ptr::null_mut())
        };
        let s = self.get_room(taken, mode);
        if s.is_null() {
            self.return_to_slabs(&mut [obj], mode);
            return;
        }
        // SAFETY: `get_room` hands back a sheaf with room, ours.
        unsafe { push(s, obj) };
        self.put_cpu_main(s, mode);
    }

    /// Pushes a free slot on the deferred list. Lock-free, allocation-free,
    /// async-signal-safe.
    #[cold]
    pub(super) fn defer(&self, obj: *mut u8) {
        // The link lives in the free slot's first word (slots are at least
        // a pointer, pointer-aligned: see `Layout::new`).
        crate::asan::unpoison(obj, core::mem::size_of::<*mut u8>());
        let link = obj.cast::<*mut u8>();
        let mut head = self.deferred.load(Relaxed);
        loop {
            // SAFETY: the slot is free and ours alone until the
            // compare-exchange below publishes it; it is big and aligned
            // enough for a pointer.
            unsafe { link.write(head) };
            // Release: the drainer's Acquire swap sees the link written.
            match self
                .deferred
                .compare_exchange_weak(head, obj, Release, Relaxed)
            {
                Ok(_) => break,
                Err(h) => head = h,
            }
        }
        self.counters.deferred_frees.fetch_add(1, Relaxed);
    }

    /// Gives every deferred slot back to its slab, with the node lock held
    /// (`node` is its guard's data); slabs that become empty are chained on
    /// `empty`.
    pub(super) fn drain_deferred_locked(&self, node: &mut Node, empty: &mut *mut SlabHeader) {
        // Acquire (here and in the swap): pairs with the pushes' Release,
        // making each slot's link visible.
        if self.deferred.load(Acquire).is_null() {
            return;
        }
        let mut p = self.deferred.swap(ptr::null_mut(), Acquire);
        while !p.is_null() {
            // SAFETY: `p` was published by `defer` with its link in its
            // first word; the swap made the chain ours alone.
            let next = unsafe { p.cast::<*mut u8>().read() };
            crate::asan::poison(p, core::mem::size_of::<*mut u8>());
            self.return_locked(node, p, empty);
            p = next;
        }
    }

    /// The slab header and slot of an object this cache handed out (no
    /// checks: for the allocation path's own objects).
    #[inline]
    pub(super) fn slab_of_trusted(&self, obj: *mut u8) -> (*mut SlabHeader, usize) {
        let base = self.pages.block_base(obj as usize, self.layout.order);
        // Inside one slab (at most 32 KiB): a 32-bit division suffices.
        let off = (obj as usize - base.as_ptr() as usize - self.layout.first) as u32;
        let i = (off / self.layout.stride as u32) as usize;
        (base.as_ptr().cast(), i)
    }

    /// The slab header and slot of `obj`, checked: inside an allocated
    /// block of this cache's slab order, whose header has this cache's
    /// magic, at a slot start.
    pub(super) fn check(&self, obj: *mut u8) -> Result<(*mut SlabHeader, usize), SlabError> {
        let addr = obj as usize;
        let base = self
            .pages
            .allocated_block(addr, self.layout.order)
            .ok_or(SlabError::NotFromCache { addr })?;
        let hdr = base.as_ptr().cast::<SlabHeader>();
        // SAFETY: the block is allocated with the slab order; whoever owns
        // it, its first 8 bytes are mapped and aligned, and reading them
        // through an atomic is how every slab's magic is read.
        let magic = unsafe { (*hdr).magic.load(Acquire) };
        if magic != self.magic {
            return Err(SlabError::NotFromCache { addr });
        }
        let i = self
            .layout
            .index_of(base, addr)
            .ok_or(SlabError::NotAnObject { addr })?;
        Ok((hdr, i))
    }

    /// Checks a free (see [`check`](Self::check)) and, with consistency
    /// checks on, wins the object's free bit or reports a double free.
    #[inline]
    pub(super) fn check_and_mark_free(&self, obj: *mut u8) -> Result<(), SlabError> {
        let (hdr, i) = self.check(obj)?;
        // SAFETY: checked: a slot of a live slab of this cache.
        if self.checks && !layout::mark_free(unsafe { &*hdr }, i) {
            return Err(SlabError::DoubleFree { addr: obj as usize });
        }
        Ok(())
    }

    #[cold]
    #[track_caller]
    pub(super) fn bad_free(&self, e: SlabError) {
        if cfg!(debug_assertions) && !never_block() {
            self.counters.bad_frees.fetch_add(1, Relaxed);
            panic!("slab cache {}: {e}", self.name);
        }
        self.note_bad_free(e);
    }

    /// Counts a bad free and logs it; never panics (for callers that must
    /// not unwind: a bulk free already resuming a destructor's panic, and
    /// `kfree_rcu` reclaim).
    pub(crate) fn note_bad_free(&self, e: SlabError) {
        self.counters.bad_frees.fetch_add(1, Relaxed);
        if never_block() {
            // In a signal handler `tracing` may allocate and lock: counted
            // only (in `bad_frees`), as the page allocator does.
            return;
        }
        tracing::error!(cache = self.name, "slab cache {}: {e}", self.name);
    }
}

impl<T> SlabCache<T> {
    /// The magic number this cache's slabs carry.
    pub(crate) fn magic(&self) -> u64 {
        self.core.magic
    }

    /// Counts a bad free and logs it; never panics (see
    /// `CacheCore::note_bad_free`).
    pub(crate) fn note_bad_free(&self, e: SlabError) {
        self.core.note_bad_free(e);
    }

    /// The magic of the slab holding `obj`, an object of some cache of
    /// `T`, read from the slab's header. The arena is aligned to its
    /// largest block, so a slab starts at `obj` rounded down to the slab
    /// size, which depends on `T` alone.
    ///
    /// # Safety
    /// `obj` must point into an allocated slab of a `SlabCache<T>`.
    pub(crate) unsafe fn slab_magic_of(obj: *const u8) -> u64 {
        let layout = Layout::new(core::mem::size_of::<T>(), core::mem::align_of::<T>())
            .expect("a cache of T exists, so its layout does");
        let base = obj as usize & !((crate::page::PAGE_SIZE << layout.order) - 1);
        // SAFETY: by the caller's contract `base` is the start of an
        // allocated slab, whose header begins with the magic.
        unsafe { (*(base as *const SlabHeader)).magic.load(Acquire) }
    }
}
