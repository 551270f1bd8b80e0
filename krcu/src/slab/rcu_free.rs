//! The seam between the slab cache and `kfree_rcu` into sheaves: retiring
//! an object into the calling thread's `rcu_free` sheaf of its cache.
//!
//! STUB: this branch has no sheaves yet. `kfree_rcu_sheaf` always hands
//! the object back, so every retire takes the kvfree block machinery (the
//! fallback the real implementation keeps for when no sheaf can be had);
//! the sheaves' own file replaces this one.
//!
//! Uses the cache only.

use super::cache::SlabCache;
use core::ptr::NonNull;

impl<T> SlabCache<T> {
    /// Retires `obj` (an allocated object of this cache that readers of
    /// the cache's RCU may still reach) into the calling thread's
    /// `rcu_free` sheaf. `Err(obj)`: no sheaf could be had without
    /// blocking; the object is handed back untouched and the caller falls
    /// back to the kvfree block machinery. (Stub: always `Err`.)
    ///
    /// # Safety
    /// `obj` came from this cache's alloc, is not freed or retired already,
    /// and the caller gives up ownership when `Ok` is returned.
    #[inline]
    pub(crate) unsafe fn kfree_rcu_sheaf(&self, obj: NonNull<T>) -> Result<(), NonNull<T>> {
        Err(obj)
    }

    /// Submits this cache's partly filled `rcu_free` sheaves to `call_rcu`;
    /// returns how many (stub: none exist).
    #[allow(dead_code)]
    pub(crate) fn submit_rcu_sheaves(&self) -> usize {
        0
    }

    /// Waits until every sheaf submitted so far is back (stub: none are).
    #[allow(dead_code)]
    pub(crate) fn rcu_sheaf_barrier(&self) {}
}
