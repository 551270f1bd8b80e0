//! `kfree_rcu` of a [`SlabBox`]: into the calling thread's `rcu_free`
//! sheaf of its cache when one can be had, else through the kvfree block
//! machinery, on a channel per cache that needs no registration and no
//! object per thread; the hidden `RcuHead` of the object's slot is the
//! last resort. Also the instance's cache constructor
//! ([`Krcu::slab_cache`]) and the free function on the process-wide
//! instance.
//!
//! # Why no `HasRcuHead`
//! Any `T: Send + 'static` can be retired: a block entry is the object's
//! address, and the block's channel (`reclaim_slab_boxes::<T>` with the
//! cache's core as context) frees it; the core is alive while the object's
//! slab is allocated, so nothing registers the cache. Only kfree_rcu's
//! last resort, the lock-free `rcu_head` list taken when no block can be
//! had without waiting, needs a head: every slot reserves one after its
//! object (16 bytes a slot), written only then, outside the object that
//! readers may still read.
//!
//! Uses: the instance, the kvfree engine's call path and block channel,
//! the slab cache's seam (`kfree_rcu_sheaf`) and its box helpers.

use super::Krcu;
use crate::context;
use crate::error::BuildError;
use crate::kvfree::Assist;
use crate::kvfree::block::{Channel, catch_destructor};
use crate::rcu::RcuHead;
use crate::slab::{
    CacheCore, Helping, Pin, SlabBox, SlabCache, core_of, hidden_head, object_of_head,
};
use core::ptr::{self, NonNull};
use std::sync::Arc;

/// Why [`Krcu::kfree_rcu_slab`] refused: the box is handed back, nothing
/// was freed.
///
/// The box may still be reachable by readers (it was unlinked only just
/// now): do not drop it; retire it again from another context (or on the
/// right instance), or leak it with [`std::mem::forget`].
#[derive(thiserror::Error)]
#[must_use = "the box is handed back and must not be dropped while readers can still reach it"]
pub enum SlabRetireError<T> {
    /// Called from NMI context, which `kfree_rcu` refuses.
    #[error("kfree_rcu_slab() called from NMI context: refused, the box is handed back")]
    InNmi(SlabBox<T>),
    /// The box's cache waits for the grace periods of another RCU instance
    /// than this one's: this instance's grace periods would not hold its
    /// readers off.
    #[error(
        "kfree_rcu_slab(): the box's cache belongs to another RCU instance; \
         retire it on the instance whose readers can reach it (Krcu::slab_cache makes a cache of an instance)"
    )]
    OtherInstance(SlabBox<T>),
}

impl<T> SlabRetireError<T> {
    /// The box handed back.
    pub fn into_inner(self) -> SlabBox<T> {
        match self {
            Self::InNmi(b) | Self::OtherInstance(b) => b,
        }
    }
}

impl<T> core::fmt::Debug for SlabRetireError<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::InNmi(_) => f.write_str("InNmi(..)"),
            Self::OtherInstance(_) => f.write_str("OtherInstance(..)"),
        }
    }
}

impl Krcu {
    /// A cache of `T` over this instance's page allocator whose retired
    /// objects wait for this instance's grace periods: the cache to retire
    /// [`SlabBox`]es from with [`kfree_rcu_slab`](Self::kfree_rcu_slab).
    /// (A cache made with [`SlabCache::new`] waits for the process-wide
    /// RCU's.)
    ///
    /// # Errors
    /// [`BuildError::SlabTooLarge`] when `T` does not fit a slab of at most
    /// 8 pages (with its header).
    #[doc(alias = "kmem_cache_create")]
    pub fn slab_cache<T>(&self, name: &'static str) -> Result<SlabCache<T>, BuildError> {
        SlabCache::builder(self.pages())
            .name(name)
            .rcu(self.engine.rcu_arc().clone())
            .build()
    }

    /// Frees `obj` after a grace period of this instance (`kfree_rcu` of a
    /// slab object): its `T` is dropped, and its slot freed into its cache,
    /// once every reader that could reach it has left its section.
    ///
    /// First into the calling thread's `rcu_free` sheaf of the box's cache
    /// (no per-object free at all: the whole sheaf goes through one
    /// grace period and comes back as a sheaf of free objects); when no
    /// sheaf can be had without waiting, through the same blocks as
    /// [`kfree_rcu`](Self::kfree_rcu), freed with the cache's bulk free.
    /// `T` needs no [`RcuHead`]: see the module's notes (the slot holds a
    /// hidden one for the last resort).
    ///
    /// The promises of [`kfree_rcu`](Self::kfree_rcu) hold: never sleeps
    /// and never fails from task, softirq or hardirq (signal handler)
    /// context or under a raw lock; on a real-time thread
    /// ([`register_thread`](Self::register_thread)) it makes no system
    /// call, no global-allocator call and takes no blocking lock.
    ///
    /// For a `T` without drop glue, a full `rcu_free` sheaf waits on the
    /// calling thread for its grace period, and a later call of the same
    /// thread (in task context, not real-time, not atomic) recycles it once
    /// that has ended, as the sheaf the thread allocates from next: no
    /// lock, no RCU callback, nothing run per object. For a `T` with drop
    /// glue that would run **the destructors of objects this thread retired
    /// earlier inside that call**, under whatever the caller holds, so it
    /// is done only with kvfree's [`Assist::Always`](crate::kvfree::Assist)
    /// (and never inside a read-side section of the cache's instance, or of
    /// any instance where the validator is compiled in); by default such
    /// sheaves go to `call_rcu` and the RCU thread runs their destructors.
    /// With `Always`, a destructor must not take a lock the caller of
    /// `kfree_rcu_slab` holds; its panic is caught and counted
    /// ([`SlabStats::destructor_panics`](crate::slab::SlabStats::destructor_panics)).
    ///
    /// # Errors
    /// [`SlabRetireError::InNmi`] from NMI context;
    /// [`SlabRetireError::OtherInstance`] if the box's cache waits for
    /// another RCU than this instance's (see [`slab_cache`](Self::slab_cache)).
    /// The box is handed back; do not drop it where readers may reach it.
    #[doc(alias = "kfree_rcu")]
    #[doc(alias = "kfree_rcu_sheaf")]
    #[inline]
    #[track_caller]
    pub fn kfree_rcu_slab<T: Send + 'static>(
        &self,
        obj: SlabBox<T>,
    ) -> Result<(), SlabRetireError<T>> {
        if self.engine.refuse_nmi() {
            return Err(SlabRetireError::InNmi(obj));
        }
        let raw = SlabBox::into_raw(obj);
        // SAFETY: an allocated object of a cache (the box's), given up just
        // now: its slab holds the core.
        let core = unsafe { core_of(raw) };
        // SAFETY: alive, as above; nothing is dropped through the handle.
        let cache = unsafe { crate::slab::borrow_cache::<T>(core) };
        if !cache.rcu_is(self.rcu()) {
            // SAFETY: from into_raw just above, made a box once.
            return Err(SlabRetireError::OtherInstance(unsafe {
                SlabBox::from_raw(raw)
            }));
        }
        // SAFETY: the box was ours, handed over; not retired or freed yet;
        // its slab holds the core (`cache` alive).
        unsafe { self.retire_slab_object(&cache, raw) };
        // Checked once the object is queued (see kfree_rcu).
        self.check_reader("kfree_rcu_slab()");
        Ok(())
    }

    /// [`kfree_rcu_slab`](Self::kfree_rcu_slab) of an object given by
    /// pointer, for [`RcuCell`](crate::RcuCell), which checked the cache's
    /// instance when the object was stored: readers may hold shared
    /// references into it. Returns `false`, with nothing done, in NMI
    /// context.
    ///
    /// # Safety
    /// `obj` is an allocated object of a cache whose RCU is this
    /// instance's, owned by the caller and handed over here, written by no
    /// one from now on.
    #[track_caller]
    pub(crate) unsafe fn kfree_rcu_slab_raw<T: Send + 'static>(&self, obj: NonNull<T>) -> bool {
        if self.engine.refuse_nmi() {
            return false;
        }
        // SAFETY: allocated: its slab holds the core; nothing is dropped
        // through the handle.
        let cache = unsafe { crate::slab::borrow_cache::<T>(core_of(obj)) };
        debug_assert!(cache.rcu_is(self.rcu()));
        // SAFETY: the caller's contract.
        unsafe { self.retire_slab_object(&cache, obj) };
        true
    }

    /// Whether a thread retiring into a cache may recycle sheaves of a `T`
    /// with drop glue, running their destructors inline: only with
    /// kvfree's [`Assist::Always`] (a `T` without drop glue always
    /// recycles: nothing runs).
    #[inline]
    fn slab_helping(&self) -> Helping {
        if self.engine.config().assist == Assist::Always {
            Helping::Always
        } else {
            Helping::Never
        }
    }

    /// Retires an object of `cache` (whose RCU is this instance's): into a
    /// sheaf, else on the cache's block channel. Not in NMI context.
    ///
    /// # Safety
    /// `obj` is an allocated object of `cache` owned by the caller and
    /// handed over here, written by no one from now on.
    #[inline]
    pub(crate) unsafe fn retire_slab_object<T: Send + 'static>(
        &self,
        cache: &SlabCache<T>,
        obj: NonNull<T>,
    ) {
        // SAFETY: the caller's contract.
        let obj = match unsafe { cache.kfree_rcu_sheaf_owned(obj, self.slab_helping()) } {
            Ok(slow_path) => {
                if slow_path {
                    // A sheaf may have been started: wake an idle monitor
                    // (nothing on a real-time thread or in a handler).
                    self.engine.note_work(context::kind());
                }
                return;
            }
            Err(obj) => obj,
        };
        // The context is read here, off the fast path (which needs none).
        let ctx = context::kind();
        let chan = slab_box_channel::<T>(core_of_cache(cache));
        // SAFETY: the object is handed over (the caller's contract), on the
        // channel of its cache; its hidden head is its slot's own, unqueued
        // (the slot is allocated and was never retired), and
        // free_slab_by_head::<T> frees exactly it.
        unsafe {
            self.engine.call().queue(
                obj.as_ptr().cast(),
                &chan,
                hidden_head(obj),
                free_slab_by_head::<T>,
                ctx,
            );
        }
    }
}

/// The address of a cache's core, the channel's context.
#[inline]
fn core_of_cache<T>(cache: &SlabCache<T>) -> *const CacheCore {
    Arc::as_ptr(cache.core())
}

/// The block channel of the boxes of the cache whose core is `core`: one
/// per cache, made on the spot (no registration: the core lives while any
/// object of the cache is allocated, retired objects included).
#[inline]
fn slab_box_channel<T>(core: *const CacheCore) -> Channel {
    Channel {
        reclaim: reclaim_slab_boxes::<T>,
        ctx: core.cast(),
        obj_size: size_of::<T>(),
    }
}

/// Frees a block's worth of retired slab objects of one cache in bulk.
///
/// # Safety
/// See [`ReclaimFn`](crate::kvfree::block::ReclaimFn); `ctx` is the core
/// of the cache every object belongs to.
unsafe fn reclaim_slab_boxes<T>(ctx: *const (), objs: &mut [*mut u8]) -> usize {
    // SAFETY: the objects are allocated in the cache's slabs, which hold the
    // core; the pin keeps it past the last slab the bulk free gives back.
    let pin = unsafe { Pin::new(ctx.cast::<CacheCore>()) };
    let cache = pin.cache();
    // SAFETY: the entries are non-null object pointers of this cache, so a
    // slice of them is a slice of NonNull<T> (same layout).
    let objs = unsafe { &mut *(ptr::from_mut(objs) as *mut [NonNull<T>]) };
    let mut panics = 0;
    let drop_one = |obj: NonNull<T>| {
        if core::mem::needs_drop::<T>() {
            // SAFETY: an initialised, unreachable T whose free was just
            // checked and marked; given once. A panic is caught, so its
            // memory still goes back.
            let r = catch_destructor(|| unsafe { ptr::drop_in_place(obj.as_ptr()) });
            panics += usize::from(r.is_err());
        }
    };
    // SAFETY: every object is allocated from this cache, past its grace
    // period, and freed once (ReclaimFn's contract); `drop_one` drops each
    // in place once.
    if let Some(e) = unsafe { cache.free_bulk_with(objs, drop_one) } {
        cache.note_bad_free(e);
    }
    shrink_if_orphaned(&cache);
    drop(pin);
    panics
}

/// The last resort's callback: frees one retired slab object given its
/// hidden head.
///
/// # Safety
/// `head` is the hidden head of an allocated object of a `SlabCache<T>`,
/// retired (handed over) and past its grace period; called once.
pub(crate) unsafe fn free_slab_by_head<T>(head: NonNull<RcuHead>) {
    // SAFETY: a hidden head of a T (the contract).
    let obj = unsafe { object_of_head::<T>(head) };
    // SAFETY: allocated: its slab holds the core.
    let pin = unsafe { Pin::new(core_of(obj)) };
    let cache = pin.cache();
    // SAFETY: an object of this cache, unreachable now, freed once.
    unsafe { cache.free(obj) };
    shrink_if_orphaned(&cache);
    drop(pin);
}

/// A cache whose handle is gone is shrunk after a reclaim, so that its
/// cached objects, its slabs and then its core go (the caller pins it).
#[inline]
fn shrink_if_orphaned<T>(cache: &SlabCache<T>) {
    if cache.is_orphaned() && !crate::context::in_hardirq() && !crate::context::in_nmi() {
        cache.shrink();
    }
}

/// [`Krcu::kfree_rcu_slab_raw`] on the process-wide instance (building it
/// only where the caller may sleep; else the global RCU's `call_rcu`
/// through the hidden head). `false` in NMI context.
///
/// # Safety
/// As [`Krcu::kfree_rcu_slab_raw`], for a cache of the process-wide RCU.
#[track_caller]
pub(crate) unsafe fn kfree_rcu_slab_raw_global<T: Send + 'static>(obj: NonNull<T>) -> bool {
    if let Some(k) = super::global::GLOBAL.get() {
        // SAFETY: the caller's contract, passed on.
        return unsafe { k.kfree_rcu_slab_raw(obj) };
    }
    if context::in_nmi() {
        return false;
    }
    if super::global::may_build_global() {
        // SAFETY: the caller's contract, passed on.
        return unsafe { Krcu::global().kfree_rcu_slab_raw(obj) };
    }
    // SAFETY: handed over (the caller's contract): its hidden head is
    // unqueued, and free_slab_by_head::<T> frees exactly it after the
    // global RCU's grace period. Never builds the global RCU.
    unsafe { crate::rcu::call_rcu_global_nobuild(hidden_head(obj), free_slab_by_head::<T>) };
    true
}

/// [`Krcu::kfree_rcu_slab`] on the process-wide instance, for a box of a
/// cache of the process-wide RCU ([`SlabCache::new`]). Where the caller
/// may not sleep and the instance is not built yet, it is not built there
/// (see [`kfree_rcu`](crate::kfree_rcu)): the object goes to the global
/// RCU's `call_rcu` through its slot's hidden head.
///
/// # Errors
/// As [`Krcu::kfree_rcu_slab`].
#[doc(alias = "kfree_rcu")]
#[track_caller]
pub fn kfree_rcu_slab<T: Send + 'static>(obj: SlabBox<T>) -> Result<(), SlabRetireError<T>> {
    if let Some(k) = super::global::GLOBAL.get() {
        return k.kfree_rcu_slab(obj);
    }
    if context::in_nmi() {
        return Err(SlabRetireError::InNmi(obj));
    }
    let raw = SlabBox::as_ptr(&obj).cast_mut();
    // SAFETY: the box's object: allocated, its slab holds the core.
    let cache = unsafe { crate::slab::borrow_cache::<T>(core_of(NonNull::new_unchecked(raw))) };
    if !cache.waits_for_global_rcu() {
        return Err(SlabRetireError::OtherInstance(obj));
    }
    // SAFETY: the box's object, of a cache of the process-wide RCU
    // (checked), handed over here.
    let queued = unsafe { kfree_rcu_slab_raw_global(SlabBox::into_raw(obj)) };
    debug_assert!(queued, "not in NMI context: checked above");
    Ok(())
}
