//! Bulk free (`kmem_cache_free_bulk`): the pointers sorted, so grouped by
//! slab, and each group given back under one node-lock acquisition.
//!
//! Uses the cache's state (`cache.rs`) and the slab layout.

use super::SlabError;
use super::cache::{Mode, SlabCache, drop_catching, never_block};
use crate::sync::atomic::Ordering::*;
use core::ptr::{self, NonNull};

impl<T> SlabCache<T> {
    /// Drops and frees many objects at once (`kmem_cache_free_bulk`):
    /// sorts `objs` in place, which groups them by slab, and returns each
    /// slab's group under one node-lock acquisition. For a `T` without drop
    /// glue the objects' memory is never read or written. Bad pointers are
    /// reported per the cache's policy and skipped.
    ///
    /// # Safety
    /// As for [`free`](Self::free), for every pointer.
    #[track_caller]
    #[doc(alias = "kmem_cache_free_bulk")]
    ///
    /// # Panics
    /// If destructors panic, every object is still freed (the others
    /// dropped, all returned to their slabs) and then the first panic is
    /// resumed.
    pub unsafe fn free_bulk(&self, objs: &mut [NonNull<T>]) {
        let mut first_panic = None;
        let drop_one = |obj: NonNull<T>| {
            // SAFETY: as in `try_free`: given once, after its free was
            // checked and marked.
            if let Err(payload) = unsafe { drop_catching(obj) } {
                match first_panic {
                    None => first_panic = Some(payload),
                    // Only the first is resumed; dropping a later one may
                    // panic too, which must not cut the loop short.
                    Some(_) => crate::unwind::drop_panic_payload(payload),
                }
            }
        };
        // SAFETY: forwarded from the caller; `drop_one` drops each object
        // in place, once.
        let bad = unsafe { self.free_bulk_with(objs, drop_one) };
        match (first_panic, bad) {
            // The destructor's panic is the one resumed, as documented; the
            // bad free is counted and logged, not raised on top of it.
            (Some(payload), bad) => {
                if let Some(e) = bad {
                    self.note_bad_free(e);
                }
                std::panic::resume_unwind(payload);
            }
            (None, Some(e)) => self.bad_free(e),
            (None, None) => {}
        }
    }

    /// [`free_bulk`](Self::free_bulk), dropping each object (after its
    /// free is checked and marked) with `drop_one`, which must drop it in
    /// place and may catch a panic of its destructor: `kfree_rcu` does, so
    /// that one panicking destructor neither stops the others nor leaks
    /// their memory.
    ///
    /// Returns the first bad pointer's error (the others are counted), for
    /// the caller to report once every good object is back: reporting
    /// panics in debug builds, which must not cut a bulk free short or
    /// land on top of a destructor's panic.
    ///
    /// # Safety
    /// As for [`free`](Self::free), for every pointer; `drop_one` must drop
    /// the object it is given, once, and not use it afterwards.
    #[track_caller]
    #[must_use = "a bad free must be reported"]
    pub(crate) unsafe fn free_bulk_with(
        &self,
        objs: &mut [NonNull<T>],
        mut drop_one: impl FnMut(NonNull<T>),
    ) -> Option<SlabError> {
        let mut kept = 0;
        // A bad pointer is reported once the good ones are back in their
        // slabs: the report panics in debug builds, and the objects already
        // marked free and dropped would otherwise never be returned.
        let mut first_bad = None;
        for i in 0..objs.len() {
            let obj = objs[i];
            match self.check_and_mark_free(obj) {
                Ok(()) => {
                    drop_one(obj);
                    crate::asan::poison(obj.as_ptr().cast(), core::mem::size_of::<T>());
                    objs[kept] = obj;
                    kept += 1;
                }
                Err(e) => match first_bad {
                    None => first_bad = Some(e),
                    Some(_) => {
                        self.counters.bad_frees.fetch_add(1, Relaxed);
                    }
                },
            }
        }
        let objs = &mut objs[..kept];
        objs.sort_unstable();
        // SAFETY: `NonNull<T>` and `*mut u8` have the same layout.
        let raw = unsafe { &mut *(ptr::from_mut(objs) as *mut [*mut u8]) };
        let mode = if never_block() {
            Mode::Try
        } else {
            Mode::Block
        };
        self.return_to_slabs(raw, mode);
        self.counters.bulk_frees.fetch_add(1, Relaxed);
        first_bad
    }
}
