//! A slab: one block of pages from the page allocator, a header at its
//! start, and equal slots for objects after it.
//!
//! The header holds everything the allocator needs, so that freeing an
//! object never writes to the object's memory (except a free deferred from
//! a signal handler, which links the free slot into a lock-free list
//! through its first word; slots are at least a pointer for that):
//! - `magic`: which cache the slab belongs to (checked on every free);
//! - `free`: one bit per slot, set while the object is free *from the
//!   user's point of view* (in the slab or in a per-CPU cache). Changed
//!   with atomic `fetch_and`/`fetch_or` on every allocation and free, which
//!   makes a double free visible (the bit was already set);
//! - `avail`: one bit per slot, set while the object sits in the slab
//!   itself (not handed to a per-CPU cache), with `inuse` counting the
//!   others and the partial-list links. These change only under the
//!   cache's node lock (`n->list_lock`).
//!
//! Uses: `asan`, `page`, `rcu` (the hidden head's type), `sync`.

use crate::page::{MAX_ORDER, PAGE_SIZE};
#[cfg(not(loom))]
use crate::rcu::RcuHead;
/// Under loom the RCU callbacks are not built: a stand-in of the head's
/// size and alignment keeps the layout the same.
#[cfg(loom)]
type RcuHead = [usize; 2];
use crate::sync::atomic::{AtomicU64, Ordering};
use core::ptr::NonNull;

/// The most objects one slab holds (the bitmap size).
pub(crate) const MAX_OBJECTS: usize = 512;
const WORDS: usize = MAX_OBJECTS / 64;
/// The highest slab order tried (`slub_max_order`).
pub(crate) const SLAB_MAX_ORDER: u32 = 3;
/// Slabs aim to hold at least this many objects.
const MIN_OBJECTS: usize = 8;

/// The header at the start of every slab.
#[repr(C)]
pub(crate) struct SlabHeader {
    pub(crate) magic: AtomicU64,
    pub(crate) free: [AtomicU64; WORDS],
    // The rest: under the node lock only.
    pub(crate) avail: [u64; WORDS],
    pub(crate) inuse: u32,
    pub(crate) on_partial: bool,
    pub(crate) next: *mut SlabHeader,
    pub(crate) prev: *mut SlabHeader,
    /// The cache's core (`*const CacheCore<T>`), which this slab holds a
    /// strong count of while it is allocated: how a `SlabBox` finds its
    /// cache. Written once, before any object of the slab is handed out.
    pub(crate) cache: *const (),
}

/// Where objects sit in a slab of some type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The slab's page order.
    pub(crate) order: u32,
    /// Bytes from one slot to the next.
    pub(crate) stride: usize,
    /// Offset of slot 0 from the slab's start.
    pub(crate) first: usize,
    /// Slots per slab.
    pub(crate) objects: usize,
    /// Offset in each slot of its hidden [`RcuHead`], after the object:
    /// the `rcu_head` fallback of a retired `SlabBox` (see `slab/boxed.rs`).
    pub(crate) head: usize,
}

impl Layout {
    /// The layout for objects of `size` bytes aligned to `align`: the
    /// smallest order up to [`SLAB_MAX_ORDER`] that holds at least
    /// [`MIN_OBJECTS`] (or the largest order that holds one).
    /// A `const fn`: a box finds its slab's header from the order of `T`'s
    /// layout, computed once per type (`slab/boxed.rs`).
    pub(crate) const fn new(size: usize, align: usize) -> Option<Layout> {
        const fn max(a: usize, b: usize) -> usize {
            if a > b { a } else { b }
        }
        // Slots hold at least a pointer, aligned for one (SLUB's minimum
        // object size): a free deferred from a signal handler links the
        // object into a lock-free list through its first word.
        let align = max(
            max(align, core::mem::align_of::<*mut u8>()),
            core::mem::align_of::<RcuHead>(),
        );
        // Each slot ends with a hidden RcuHead (written only when a retired
        // object takes kfree_rcu's last-resort list, never while readers may
        // see it otherwise: it is outside the object).
        let head = size.next_multiple_of(core::mem::align_of::<RcuHead>());
        let stride = max(
            head + core::mem::size_of::<RcuHead>(),
            core::mem::size_of::<*mut u8>(),
        )
        .next_multiple_of(align);
        let first = core::mem::size_of::<SlabHeader>().next_multiple_of(align);
        let mut best = None;
        let top = if SLAB_MAX_ORDER < MAX_ORDER {
            SLAB_MAX_ORDER
        } else {
            MAX_ORDER
        };
        let mut order = 0;
        while order <= top {
            let bytes = PAGE_SIZE << order;
            if align > bytes {
                // Slabs are aligned to their own size (buddy blocks): a
                // larger slab may hold the object.
                order += 1;
                continue;
            }
            let fit = bytes.saturating_sub(first) / stride;
            let objects = if fit < MAX_OBJECTS { fit } else { MAX_OBJECTS };
            if objects > 0 {
                best = Some(Layout {
                    order,
                    stride,
                    first,
                    objects,
                    head,
                });
                if objects >= MIN_OBJECTS {
                    break;
                }
            }
            order += 1;
        }
        best
    }

    /// The slot index of `addr` in the slab at `base`, if it is a slot
    /// start.
    #[inline]
    pub(crate) fn index_of(&self, base: NonNull<u8>, addr: usize) -> Option<usize> {
        let off = addr
            .checked_sub(base.as_ptr() as usize)?
            .checked_sub(self.first)?;
        if off >= PAGE_SIZE << self.order {
            return None;
        }
        // Offsets inside a slab (at most 32 KiB) fit 32 bits, and a 32-bit
        // division costs about half a 64-bit one on the free path.
        let (off, stride) = (off as u32, self.stride as u32);
        let i = (off / stride) as usize;
        (off % stride == 0 && i < self.objects).then_some(i)
    }

    /// The address of slot `i` of the slab at `hdr`.
    #[inline]
    pub(crate) fn slot(&self, hdr: *mut SlabHeader, i: usize) -> NonNull<u8> {
        // SAFETY: `i < objects`, so the offset is inside the slab, which is
        // inside the arena mapping; the result is not null.
        unsafe { NonNull::new_unchecked(hdr.cast::<u8>().add(self.first + i * self.stride)) }
    }
}

/// Initialises the header of a fresh slab at `base`: every slot free and
/// available, nothing in use.
///
/// # Safety
/// `base` must be the start of an allocated block of order `layout.order`
/// owned by the caller, aligned at least to `SlabHeader`'s alignment.
pub(crate) unsafe fn init_header(
    base: NonNull<u8>,
    layout: &Layout,
    magic: u64,
) -> *mut SlabHeader {
    let hdr = base.as_ptr().cast::<SlabHeader>();
    let mut bits = [0u64; WORDS];
    for (w, word) in bits.iter_mut().enumerate() {
        let lo = w * 64;
        let n = layout.objects.saturating_sub(lo).min(64);
        *word = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    }
    // SAFETY: the caller owns the block; the header fits in it (the layout
    // puts slot 0 after it) and `base` is suitably aligned (page-aligned).
    unsafe {
        hdr.write(SlabHeader {
            magic: AtomicU64::new(magic),
            free: bits.map(AtomicU64::new),
            avail: bits,
            inuse: 0,
            on_partial: false,
            next: core::ptr::null_mut(),
            prev: core::ptr::null_mut(),
            cache: core::ptr::null(),
        });
    }
    // Every slot starts free: poisoned under AddressSanitizer (the header
    // stays accessible; the allocator reads it on every free).
    crate::asan::poison(
        base.as_ptr().wrapping_add(layout.first),
        (PAGE_SIZE << layout.order) - layout.first,
    );
    hdr
}

/// The free bit of slot `i`: its word and mask.
#[inline]
pub(crate) fn bit(i: usize) -> (usize, u64) {
    (i / 64, 1u64 << (i % 64))
}

/// Marks slot `i` user-free; false if it already was (a double free).
#[inline]
pub(crate) fn mark_free(hdr: &SlabHeader, i: usize) -> bool {
    let (w, m) = bit(i);
    hdr.free[w].fetch_or(m, Ordering::AcqRel) & m == 0
}

/// Marks slot `i` allocated to the user; false if it was not free (the
/// allocator's own bookkeeping is broken).
#[inline]
pub(crate) fn mark_allocated(hdr: &SlabHeader, i: usize) -> bool {
    let (w, m) = bit(i);
    hdr.free[w].fetch_and(!m, Ordering::AcqRel) & m != 0
}
