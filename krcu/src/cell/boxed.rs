//! [`RcuBox`]: a value boxed with the `RcuHead` that `kfree_rcu` needs,
//! the form in which a cell holds (and publishes) its values. Uses only
//! the `rcu` module's head.

use crate::rcu::{HasRcuHead, RcuHead};

/// A value together with the [`RcuHead`] that `kfree_rcu` needs to retire
/// it. Built only here, so its head offset is correct by construction.
/// `repr(C)`, value first: a pointer to the node is a pointer to its
/// value, as a cell's slab values are (a cell loads either the same way).
#[repr(C)]
pub(super) struct Node<T> {
    pub(super) value: T,
    pub(super) head: RcuHead,
}

// SAFETY: `head` is a field of type `RcuHead` of `Node<T>`, and
// `offset_of!` computes its byte offset for every `T`.
unsafe impl<T: Send + 'static> HasRcuHead for Node<T> {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node<T>, head);
}

/// A value boxed for an [`RcuCell`](super::RcuCell), ready to publish: allocated ahead of
/// time, so that [`RcuCell::store_box`](super::RcuCell::store_box) (and the other `_box` updates)
/// make no heap allocation. This is how a real-time thread or a signal
/// handler updates a cell: another thread (or the same one, at start-up)
/// prepares the boxes, the real-time code publishes them, and the old
/// values are retired with `kfree_rcu`, which does not allocate either.
///
/// ```
/// use krcu::cell::{RcuBox, RcuCell};
/// let cell = RcuCell::new(1u32);
/// let prepared = RcuBox::new(2u32); // allocates here, not below
/// krcu::context::set_realtime(true);
/// cell.store_box(prepared).expect("not in NMI context");
/// krcu::context::set_realtime(false);
/// assert_eq!(cell.load(&krcu::rcu::read_lock()), Some(&2));
/// ```
pub struct RcuBox<T>(pub(super) Box<Node<T>>);

impl<T> RcuBox<T> {
    /// Boxes `value` with its head (one heap allocation).
    pub fn new(value: T) -> Self {
        RcuBox(Box::new(Node {
            value,
            head: RcuHead::new(),
        }))
    }

    /// The value, unboxed (frees the box).
    pub fn into_inner(self) -> T {
        self.0.value
    }

    /// Gives the box up to the cell: a pointer that the cell owns from now.
    pub(super) fn into_raw(self) -> *mut Node<T> {
        Box::into_raw(self.0)
    }
}

impl<T> core::ops::Deref for RcuBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.value
    }
}

impl<T> core::ops::DerefMut for RcuBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0.value
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for RcuBox<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("RcuBox").field(&self.0.value).finish()
    }
}
