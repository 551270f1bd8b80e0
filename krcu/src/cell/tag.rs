//! The tag that tells a cell's two storages apart in its pointer: a box
//! node, or a slab object with its lowest bit set (see `slab.rs`). Uses the
//! cell's node type only.

use super::boxed::Node;

/// The tag of a slab value in a cell's pointer.
pub(super) const SLAB_TAG: usize = 1;

/// The pointer without its tag.
#[inline(always)]
pub(super) fn untag<T>(p: *mut Node<T>) -> *mut Node<T> {
    p.map_addr(|a| a & !SLAB_TAG)
}

/// Whether the pointer is a slab value.
#[inline(always)]
pub(super) fn is_slab<T>(p: *mut Node<T>) -> bool {
    p.addr() & SLAB_TAG != 0
}

/// The value at a cell pointer (either storage), or `None` for null.
///
/// # Safety
/// `p` was in the cell (a node or a tagged slab object) and is still
/// allocated for `'a`.
#[inline(always)]
pub(super) unsafe fn value_of<'a, T>(p: *mut Node<T>) -> Option<&'a T> {
    // SAFETY: per the contract; a node's value is at its address (repr(C)).
    unsafe { untag(p).cast::<T>().as_ref() }
}
