//! Bulk free (`kmem_cache_free_bulk`) and the grouping every return to the
//! slabs uses: objects are gathered into detached free lists, one per slab
//! (the kernel's `build_detached_freelist`: a bitmap of the slab's slots
//! and a count), without sorting the array; each slab's header is then
//! updated once per group under the node lock.
//!
//! Uses the cache's state (`cache.rs`) and the slab layout.

use super::SlabError;
use super::cache::{CacheCore, Mode, Node, SlabCache, drop_catching, never_block};
use super::layout::{self, SlabHeader};
use crate::sync::atomic::Ordering::*;
use core::ptr::{self, NonNull};

impl<T> SlabCache<T> {
    /// Drops and frees many objects at once (`kmem_cache_free_bulk`):
    /// groups them by slab (a detached free list per slab, no sort) and
    /// returns every group under one node-lock acquisition. For a `T` without drop
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
                    self.core.note_bad_free(e);
                }
                std::panic::resume_unwind(payload);
            }
            (None, Some(e)) => self.core.bad_free(e),
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
            match self.core.check_and_mark_free(obj.as_ptr().cast()) {
                Ok(()) => {
                    drop_one(obj);
                    crate::asan::poison(obj.as_ptr().cast(), core::mem::size_of::<T>());
                    objs[kept] = obj;
                    kept += 1;
                }
                Err(e) => match first_bad {
                    None => first_bad = Some(e),
                    Some(_) => {
                        self.core.counters.bad_frees.fetch_add(1, Relaxed);
                    }
                },
            }
        }
        let objs = &mut objs[..kept];
        // SAFETY: `NonNull<T>` and `*mut u8` have the same layout.
        let raw = unsafe { &mut *(ptr::from_mut(objs) as *mut [*mut u8]) };
        let mode = if never_block() {
            Mode::Try
        } else {
            Mode::Block
        };
        self.core.return_to_slabs(raw, mode);
        self.core.counters.bulk_frees.fetch_add(1, Relaxed);
        first_bad
    }
}

/// Slabs gathered at once before their groups are applied.
const GROUPS: usize = 16;

/// One slab's detached free list: which of its slots go back, how many.
#[derive(Clone, Copy)]
struct Detached {
    hdr: *mut SlabHeader,
    bits: [u64; layout::MAX_OBJECTS / 64],
    n: u32,
}

const NO_GROUP: Detached = Detached {
    hdr: ptr::null_mut(),
    bits: [0; layout::MAX_OBJECTS / 64],
    n: 0,
};

impl CacheCore {
    /// Gives objects (already marked free) back to their slabs with the
    /// node lock held: gathered into up to [`GROUPS`] detached free lists
    /// (one per slab; the last slab hit is tried first, then the others,
    /// as the kernel's lookahead), each applied with one update of its
    /// slab's header. Slabs that become empty are chained on `empty`.
    pub(super) fn return_grouped_locked(
        &self,
        node: &mut Node,
        objs: &[*mut u8],
        empty: &mut *mut SlabHeader,
    ) {
        let mut groups = [NO_GROUP; GROUPS];
        let (mut used, mut last) = (0, 0);
        for &obj in objs {
            let (hdr, i) = self.slab_of_trusted(obj);
            let g = if used > 0 && groups[last].hdr == hdr {
                last
            } else if let Some(g) = groups[..used].iter().position(|d| d.hdr == hdr) {
                g
            } else {
                if used == GROUPS {
                    for d in &groups[..used] {
                        self.apply_locked(node, d, empty);
                    }
                    used = 0;
                }
                groups[used] = Detached { hdr, ..NO_GROUP };
                used += 1;
                used - 1
            };
            let (w, m) = layout::bit(i);
            groups[g].bits[w] |= m;
            groups[g].n += 1;
            last = g;
        }
        for d in &groups[..used] {
            self.apply_locked(node, d, empty);
        }
    }

    /// Applies one slab's detached free list (node lock held).
    fn apply_locked(&self, node: &mut Node, d: &Detached, empty: &mut *mut SlabHeader) {
        let hdr = d.hdr;
        // SAFETY: the objects are this cache's and outside their slab, so
        // the slab is live (inuse >= n); its plain fields are ours under
        // the node lock.
        let h = unsafe { &mut *hdr };
        for (a, b) in h.avail.iter_mut().zip(d.bits) {
            debug_assert_eq!(*a & b, 0, "slab {:p}: a slot given back twice", hdr);
            *a |= b;
        }
        h.inuse -= d.n;
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
}
