//! [`SlabChannel`]: `kfree_rcu` for the objects of one [`SlabCache`],
//! whose blocks are freed with the cache's bulk free.

use super::Krcu;
use crate::context::{self};
use crate::kvfree::block::Channel;
use crate::kvfree::channels;
use crate::rcu::{HasRcuHead, RcuHead};
use crate::slab::SlabCache;
use core::ptr::NonNull;
use std::sync::Arc;

/// `kfree_rcu` for the objects of one [`SlabCache`], from
/// [`Krcu::slab_channel`].
pub struct SlabChannel<'k, T: HasRcuHead> {
    // Made by `Krcu::slab_channel` (in the parent module).
    pub(super) krcu: &'k Krcu,
    pub(super) cache: Arc<SlabCache<T>>,
    pub(super) chan: Channel,
    pub(super) slot: usize,
}

impl<T: HasRcuHead> SlabChannel<'_, T> {
    /// The cache.
    pub fn cache(&self) -> &Arc<SlabCache<T>> {
        &self.cache
    }

    /// Frees `obj` after a grace period, in bulk with its block (the
    /// two-argument form: never sleeps, never fails; the embedded
    /// [`RcuHead`] is the fallback). From NMI context it refuses and hands
    /// the object back.
    ///
    /// An example: [`Krcu::slab_channel`].
    ///
    /// # Errors
    /// From NMI context the object is handed back (`Err(obj)`), neither
    /// queued nor freed: do not free it there.
    ///
    /// # Safety
    /// `obj` must be an object allocated from this channel's cache, handed
    /// over here (unreachable to readers that start from now on), and freed
    /// no other way.
    #[doc(alias = "kfree_bulk")]
    #[track_caller]
    pub unsafe fn kfree_rcu(&self, obj: NonNull<T>) -> Result<(), NonNull<T>> {
        if self.krcu.engine.refuse_nmi() {
            return Err(obj);
        }
        let ctx = context::kind();
        // SAFETY: HasRcuHead puts the head inside the object.
        let head = unsafe { obj.byte_add(T::RCU_HEAD_OFFSET) }.cast::<RcuHead>();
        // SAFETY: by the caller's contract the object is this cache's and
        // handed over; slab_free_by_head::<T> finds the cache, registered
        // while this channel lives.
        unsafe {
            self.krcu.engine.call().queue(
                obj.as_ptr().cast(),
                &self.chan,
                head,
                channels::slab_free_by_head::<T>,
                ctx,
            );
        }
        // Checked once the object is queued (see Krcu::kfree_rcu).
        self.krcu.check_reader("kfree_rcu()");
        Ok(())
    }
}

impl<T: HasRcuHead> Drop for SlabChannel<'_, T> {
    fn drop(&mut self) {
        if self.krcu.rcu().on_worker() {
            // Inside a callback on this instance's RCU worker the barrier
            // would wait for that very callback (it panics rather than
            // hang): objects of this channel may still be queued, so the
            // cache and its registry slot are kept for good.
            self.keep_cache("inside an RCU callback of its instance");
            return;
        }
        // Should the barrier unwind (it panics where it would wait for
        // itself), objects of this channel may still be queued: keep the
        // cache rather than free it under them.
        struct KeepOnUnwind<'c, T>(&'c Arc<SlabCache<T>>, bool);
        impl<T> Drop for KeepOnUnwind<'_, T> {
            fn drop(&mut self) {
                if !self.1 {
                    core::mem::forget(self.0.clone());
                }
            }
        }
        let mut unwinding = KeepOnUnwind(&self.cache, false);
        self.krcu.kvfree_rcu_barrier();
        unwinding.1 = true;
        if self.krcu.engine.in_own_reclaim() {
            // Dropped by a destructor that this instance's reclaim runs:
            // the barrier could not wait for what this thread's reclaim
            // holds, which may include objects of this channel, freed
            // through the cache (by pointer, and by the registry for the
            // list fallback) after the destructor returns. Keep both for
            // good rather than free the cache under them.
            self.keep_cache("inside kfree_rcu reclaim");
            return;
        }
        channels::unregister(self.slot);
    }
}

impl<T: HasRcuHead> SlabChannel<'_, T> {
    /// Keeps the cache alive and its registry slot taken for good: objects
    /// of this channel may be freed through them after the drop returns.
    #[cold]
    fn keep_cache(&self, why: &str) {
        tracing::warn!("krcu: a SlabChannel dropped {why}; its cache is kept alive");
        core::mem::forget(self.cache.clone());
    }
}
