//! A cell holding a [`SlabBox`]: [`RcuCell::store_slab`] and
//! [`RcuCell::replace_slab`] publish an object of a slab cache, and a slab
//! value that leaves the cell (any update, `clear`, the cell's drop) is
//! retired with `kfree_rcu_slab`, into its cache's sheaves.
//!
//! A cell holds either storage in the same word: a box node's address, or
//! a slab object's address with its lowest bit set (both are 8-aligned:
//! a node holds an `RcuHead`, slab slots are pointer-aligned). A load masks
//! the bit off (one `and`) and reads the `T` at that address, which is the
//! node's value too (`Node` is `repr(C)`, value first).
//!
//! Uses the cell, its instance, and the slab cache's box.

use super::boxed::Node;
use super::{CellInstance, RcuCell};
use crate::SlabRetireError;
use crate::context;
use crate::slab::SlabBox;
use core::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::tag::{SLAB_TAG, untag, value_of};

impl<T: Send + Sync + 'static, I: CellInstance> RcuCell<T, I> {
    /// Publishes an object of a slab cache (`rcu_assign_pointer`) and
    /// retires the old value: a slab value with `kfree_rcu_slab` (into its
    /// cache's `rcu_free` sheaf), a boxed one with `kfree_rcu`. Allocates
    /// nothing, so it may be called on a real-time thread and in hardirq
    /// context. When this value leaves the cell in turn (an update,
    /// [`clear`](Self::clear), the cell's drop) it is retired into its
    /// cache the same way.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use krcu::{Krcu, RcuCell};
    /// let krcu = Arc::new(Krcu::builder().arena_size(16 << 20).build().unwrap());
    /// let cache = krcu.slab_cache::<u64>("values").unwrap();
    /// let cell = RcuCell::new_in(krcu.clone(), 1u64);
    /// cell.store_slab(cache.alloc_box(2).unwrap()).unwrap();
    /// assert_eq!(cell.load(&krcu.rcu().read_lock()), Some(&2));
    /// ```
    ///
    /// # Errors
    /// Refused before it swaps, handing the box back:
    /// [`SlabRetireError::InNmi`] in NMI context,
    /// [`SlabRetireError::OtherInstance`] if the box's cache waits for the
    /// grace periods of another RCU than the cell's (the cell could not
    /// retire it safely).
    #[doc(alias = "rcu_assign_pointer")]
    #[track_caller]
    pub fn store_slab(&self, value: SlabBox<T>) -> Result<(), SlabRetireError<T>> {
        let new = self.check_slab(value)?;
        let old = self.ptr.swap(new, Ordering::AcqRel);
        self.retire(old);
        Ok(())
    }

    /// [`store_slab`](Self::store_slab) that returns the old value,
    /// readable while `guard` is held (`rcu_replace_pointer`).
    ///
    /// The old value cannot outlive the guard:
    /// ```compile_fail,E0505
    /// use std::sync::Arc;
    /// let krcu = Arc::new(krcu::Krcu::builder().arena_size(16 << 20).build().unwrap());
    /// let cache = krcu.slab_cache::<u64>("values").unwrap();
    /// let cell = krcu::RcuCell::new_in(krcu.clone(), 1u64);
    /// let g = krcu.rcu().read_lock();
    /// let old = cell.replace_slab(cache.alloc_box(2).unwrap(), &g).unwrap().unwrap();
    /// drop(g);
    /// assert_eq!(*old, 1);
    /// ```
    ///
    /// # Errors
    /// As [`store_slab`](Self::store_slab).
    ///
    /// # Panics
    /// If `guard` is a section of another instance of yours than the
    /// cell's.
    #[doc(alias = "rcu_replace_pointer")]
    #[track_caller]
    pub fn replace_slab<'g>(
        &'g self,
        value: SlabBox<T>,
        guard: &'g I::Guard<'_>,
    ) -> Result<Option<&'g T>, SlabRetireError<T>> {
        self.check_guard(guard);
        let new = self.check_slab(value)?;
        let old = self.ptr.swap(new, Ordering::AcqRel);
        // SAFETY: as in `replace_with`: `old` left the cell just now, is
        // retired below on the cell's instance, and the caller's guard of
        // that instance holds the free off for 'g.
        let r = unsafe { value_of(old) };
        self.retire(old);
        Ok(r)
    }

    /// Refuses NMI context and a box of a cache of another RCU; else gives
    /// the box up to the cell, tagged.
    #[inline]
    fn check_slab(&self, value: SlabBox<T>) -> Result<*mut Node<T>, SlabRetireError<T>> {
        if context::in_nmi() {
            return Err(SlabRetireError::InNmi(value));
        }
        if value.cache_rcu_id() != Some(self.rcu_id) {
            return Err(SlabRetireError::OtherInstance(value));
        }
        let p = SlabBox::into_raw(value).as_ptr();
        Ok(p.cast::<Node<T>>().map_addr(|a| a | SLAB_TAG))
    }

    /// Retires a tagged slab value that left the cell.
    ///
    /// # Safety
    /// `old` is a tagged pointer that was in the cell, the cell's to give.
    #[cold]
    pub(super) unsafe fn retire_slab(&self, old: *mut Node<T>) {
        let obj = untag(old).cast::<T>();
        // SAFETY: a slab object is never null.
        let obj = unsafe { NonNull::new_unchecked(obj) };
        // SAFETY: the cell's slab object (checked for this instance when
        // stored), handed over; readers keep only shared references.
        let queued = unsafe { self.instance.retire_slab(obj) };
        // Not queued (NMI): readers may still reach it, so it is leaked.
        let _ = queued;
    }
}
