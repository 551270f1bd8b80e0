//! [`SlabBox<T>`]: a safe owning handle to one object of a [`SlabCache`],
//! dropped back into the cache from any thread, and the ways back from an
//! object to its cache (through its slab's header) that the box and its
//! retirement (`rcu_free.rs`, the instance's `kfree_rcu_slab`) use.
//!
//! # The invariant
//! A slab holds one strong count of its cache's core from the moment it
//! comes from the page allocator until it goes back (`new_slab`,
//! `free_slabs`). A box's object sits in an allocated slab, so while the
//! box lives, or its object waits for a grace period, the core (and its
//! page allocator, so the object's memory) lives: the box holds no count of
//! its own. Dropping the cache's handle shrinks it and marks it orphaned;
//! a box dropped afterwards pins the core for the length of its free and
//! shrinks again, so that the last slab, and then the core, go.
//!
//! Uses the cache (`cache.rs`), the slab layout, the page allocator's
//! flags (`Gfp`).

use super::cache::{CacheCore, SlabCache, never_block};
use super::layout::{Layout, SlabHeader};
use crate::page::{Gfp, PAGE_SIZE};
#[cfg(not(loom))]
use crate::rcu::RcuHead;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering::*};

/// A `T` in an object of a [`SlabCache<T>`], owned as a `Box<T>` is: it
/// derefs to the `T`, and dropping it drops the `T` and frees the object
/// into its cache, on whatever thread drops it.
///
/// The box is one pointer and holds no reference count: the cache is found
/// through the object's slab, which keeps the cache's memory alive (see
/// [`SlabCache`]'s "Lifetime of the memory"). So a box may outlive the
/// handle of its cache:
///
/// ```
/// # use krcu::{Domain, page::{PageAllocator, PageConfig}, slab::{SlabBox, SlabCache}};
/// # let d = Domain::builder().cpus(1).build();
/// # let config = PageConfig::default().arena_size(4 << 20).kswapd(false);
/// # let pages = PageAllocator::new(&d, config).unwrap();
/// let cache = SlabCache::<String>::new(&pages, "names").unwrap();
/// let b = SlabBox::new_in(&cache, String::from("x")).unwrap();
/// drop(cache);
/// assert_eq!(*b, "x");
/// drop(b); // frees into the orphaned cache, which then goes
/// ```
///
/// Retire it after a grace period with
/// [`Krcu::kfree_rcu_slab`](crate::Krcu::kfree_rcu_slab), or publish it in
/// an [`RcuCell`](crate::RcuCell) with `store_slab`.
///
/// It is `Send` when `T` is, `Sync` when `T` is, as `Box<T>`:
/// ```compile_fail,E0277
/// fn send<S: Send>(_: S) {}
/// # use krcu::{Domain, page::{PageAllocator, PageConfig}, slab::{SlabBox, SlabCache}};
/// # let d = Domain::builder().cpus(1).build();
/// # let config = PageConfig::default().arena_size(4 << 20).kswapd(false);
/// # let pages = PageAllocator::new(&d, config).unwrap();
/// let cache = SlabCache::<std::rc::Rc<u8>>::new(&pages, "rc").unwrap();
/// send(SlabBox::new_in(&cache, std::rc::Rc::new(1)).unwrap());
/// ```
pub struct SlabBox<T> {
    ptr: NonNull<T>,
    _owns: PhantomData<T>,
}

// SAFETY: a SlabBox owns its T as a Box does; dropping it on another
// thread drops the T there (T: Send) and frees through the cache's core,
// whose state is behind locks and atomics (CacheCore<T: Send> is Sync).
unsafe impl<T: Send> Send for SlabBox<T> {}
// SAFETY: &SlabBox<T> only gives &T.
unsafe impl<T: Sync> Sync for SlabBox<T> {}

impl<T> SlabBox<T> {
    /// Allocates an object of `cache` and moves `value` into it (may sleep
    /// for memory, as `Gfp::KERNEL`); gives `value` back if no memory could
    /// be had.
    ///
    /// # Errors
    /// `Err(value)` when no object could be had (as
    /// [`SlabCache::alloc`] fails: the arena is full).
    #[track_caller]
    #[inline]
    pub fn new_in(cache: &SlabCache<T>, value: T) -> Result<SlabBox<T>, T> {
        Self::new_in_gfp(cache, Gfp::KERNEL, value)
    }

    /// As [`new_in`](Self::new_in) with the allocation flags `gfp`
    /// (`Gfp::NO_LOCKS` from a signal handler or under a raw lock).
    ///
    /// # Errors
    /// `Err(value)` when no object could be had under `gfp`.
    #[track_caller]
    #[inline]
    pub fn new_in_gfp(cache: &SlabCache<T>, gfp: Gfp, value: T) -> Result<SlabBox<T>, T> {
        let ptr = cache.alloc(gfp, value)?;
        Ok(SlabBox {
            ptr,
            _owns: PhantomData,
        })
    }

    /// A box owning `ptr`.
    ///
    /// # Safety
    /// `ptr` is an allocated object of a `SlabCache<T>` holding an
    /// initialised `T`, owned by nobody else.
    pub(crate) unsafe fn from_allocated(ptr: NonNull<T>) -> SlabBox<T> {
        SlabBox {
            ptr,
            _owns: PhantomData,
        }
    }

    /// Gives up the box: the object stays allocated, to be made a box
    /// again with [`from_raw`](Self::from_raw).
    #[must_use = "the object leaks unless made a box again"]
    pub fn into_raw(b: SlabBox<T>) -> NonNull<T> {
        ManuallyDrop::new(b).ptr
    }

    /// A box of an object given up with [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    /// `ptr` came from `SlabBox::<T>::into_raw` and is made a box once.
    pub unsafe fn from_raw(ptr: NonNull<T>) -> SlabBox<T> {
        SlabBox {
            ptr,
            _owns: PhantomData,
        }
    }

    /// The object's address.
    pub fn as_ptr(b: &SlabBox<T>) -> *const T {
        b.ptr.as_ptr()
    }

    #[cfg(not(loom))]
    /// The id of the RCU its cache's retired objects wait for (`None`: the
    /// process-wide one, not built yet).
    pub(crate) fn cache_rcu_id(&self) -> Option<u64> {
        // SAFETY: the box's object is allocated: its slab holds the core;
        // nothing is dropped through the handle.
        let cache = unsafe { borrow_cache::<T>(core_of(self.ptr)) };
        match cache.core.rcu.get() {
            Some(r) => Some(r.id()),
            None => crate::rcu::global_id(),
        }
    }
}

impl<T> core::ops::Deref for SlabBox<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: the box owns an initialised T in an allocated object.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> core::ops::DerefMut for SlabBox<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the box owns its T uniquely.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for SlabBox<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("SlabBox").field(&**self).finish()
    }
}

impl<T> Drop for SlabBox<T> {
    /// Drops the `T` and frees the object into its cache.
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the box owns an object of a live cache (its slab holds
        // the core), dropped and freed once, here.
        unsafe { free_object(self.ptr) };
    }
}

/// The core of the cache that owns `obj`, read from its slab's header.
///
/// # Safety
/// `obj` must be an allocated object of a `SlabCache<T>` (its slab is then
/// allocated, its header's `cache` set).
#[inline]
pub(crate) unsafe fn core_of<T>(obj: NonNull<T>) -> *const CacheCore {
    let layout = layout_of::<T>();
    let base = obj.as_ptr() as usize & !((PAGE_SIZE << layout.order) - 1);
    // SAFETY: the arena is aligned to its largest block, so the slab (a
    // block of the slab order, holding `obj`) starts at `base` with its
    // header; `cache` was written before the object was handed out (the
    // slab was published under the node lock, and the object reached us
    // through an allocation that happened after).
    unsafe { (*(base as *const SlabHeader)).cache.cast() }
}

/// The slab layout of `T` (as every cache of `T` computes it).
#[inline]
pub(crate) fn layout_of<T>() -> Layout {
    const { Layout::new(core::mem::size_of::<T>(), core::mem::align_of::<T>()) }
        .expect("a cache of T exists, so its layout does")
}

#[cfg(not(loom))]
/// The hidden `RcuHead` of the slot holding `obj` (after the object).
#[inline]
pub(crate) fn hidden_head<T>(obj: NonNull<T>) -> NonNull<RcuHead> {
    // SAFETY: every slot has `layout.head + size_of::<RcuHead>()` bytes at
    // least (`Layout::new`), inside the slab.
    unsafe { obj.cast::<u8>().add(layout_of::<T>().head).cast() }
}

#[cfg(not(loom))]
/// The object whose hidden head is `head`.
///
/// # Safety
/// `head` must come from [`hidden_head`] of a `T`.
#[inline]
pub(crate) unsafe fn object_of_head<T>(head: NonNull<RcuHead>) -> NonNull<T> {
    // SAFETY: the reverse of `hidden_head`, inside the same slot.
    unsafe { head.cast::<u8>().sub(layout_of::<T>().head).cast() }
}

/// A handle on the cache of `core` that drops nothing: the cache's methods
/// are the handle's (they reach the core by `Deref`).
///
/// # Safety
/// `core` must be alive for as long as the handle is used.
#[inline(always)]
pub(crate) unsafe fn borrow_cache<T>(core: *const CacheCore) -> ManuallyDrop<SlabCache<T>> {
    // SAFETY: `core` came from `Arc::as_ptr` of the core's Arc (the slab
    // header stores it so) and is alive (the caller's contract);
    // ManuallyDrop never drops the count not taken.
    let core = unsafe { Arc::from_raw(core) };
    ManuallyDrop::new(SlabCache {
        core,
        shrinker: None,
        _objects: PhantomData,
    })
}

/// Holds one strong count of a core for a while (a box dropped after its
/// cache's handle, a block of retired objects reclaimed): the last slab
/// freed meanwhile then cannot free the core under the caller.
pub(crate) struct Pin<T>(*const CacheCore, PhantomData<fn() -> T>);

impl<T> Pin<T> {
    /// # Safety
    /// `core` must be alive (an allocated object's slab holds it).
    #[inline]
    pub(crate) unsafe fn new(core: *const CacheCore) -> Pin<T> {
        // SAFETY: alive per the contract; from Arc::as_ptr.
        unsafe { Arc::increment_strong_count(core) };
        Pin(core, PhantomData)
    }

    /// The cache, for as long as the pin lives.
    #[inline]
    pub(crate) fn cache(&self) -> ManuallyDrop<SlabCache<T>> {
        // SAFETY: the pin holds a count.
        unsafe { borrow_cache(self.0) }
    }
}

impl<T> Drop for Pin<T> {
    fn drop(&mut self) {
        // SAFETY: the count taken in `new`; nothing uses the core after.
        unsafe { Arc::decrement_strong_count(self.0) };
    }
}

/// Drops the `T` at `obj` and frees the object into its cache.
///
/// # Safety
/// `obj` must be an allocated object of a `SlabCache<T>` holding an
/// initialised `T`, owned by the caller, used by nobody afterwards.
#[inline]
unsafe fn free_object<T>(obj: NonNull<T>) {
    // SAFETY: per the contract, the object's slab holds its core.
    let core = unsafe { core_of(obj) };
    // SAFETY: alive (the object's slab holds it). Acquire: pairs with the
    // handle's SeqCst store; see the race note below.
    if unsafe { (*core).orphaned.load(Acquire) } {
        // SAFETY: alive, as above.
        unsafe { free_orphaned(core, obj) };
        return;
    }
    // The handle was alive when checked. Should it be dropped now, on
    // another thread, the core still lives until this free gives back the
    // object's slab, and `free_slabs` drops that count last: nothing of the
    // cache is touched after it. (If the handle's shrink runs before this
    // free reaches the per-CPU cache, the object stays cached there, and
    // with it its slab and the core, until the next box of the cache is
    // dropped: a leak at worst, never a free under a user.)
    // SAFETY: alive until the free gives back the object's slab, and the
    // handle is not used after that (see above).
    let cache = unsafe { borrow_cache(core) };
    // SAFETY: per the contract: an object of this cache, freed once.
    unsafe { cache.free_owned(obj) };
}

/// [`free_object`] for a cache whose handle is gone: pinned for the free
/// and a shrink, so that the cached objects go back and with them the
/// slabs, and the core once the last is freed.
///
/// # Safety
/// As [`free_object`]; `core` is the object's cache's.
///
/// In a signal handler (or NMI) the pin is not dropped there: its count may
/// be the core's last, and the core's drop frees memory and takes blocking
/// locks. It is parked for the next task-context tending of orphaned
/// caches (`by_rcu::tend_orphans`, when a cache is built), which drops it
/// there (the slot itself went straight to its slab, see `free_slow`).
#[cold]
unsafe fn free_orphaned<T>(core: *const CacheCore, obj: NonNull<T>) {
    // SAFETY: alive (the object's slab holds it).
    let pin = unsafe { Pin::new(core) };
    let cache = pin.cache();
    // SAFETY: per the contract.
    unsafe { cache.free(obj) };
    if never_block() {
        park_pin(pin);
        return;
    }
    cache.shrink();
    drop(pin);
}

/// Counts of cores taken in signal handlers, to be dropped in task context
/// (a fixed array: a handler allocates nothing).
static PARKED: [AtomicPtr<CacheCore>; 64] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 64];

/// Parks `pin`'s count in [`PARKED`] (lock-free: one compare-exchange per
/// slot tried). With every slot taken the count is leaked, and with it the
/// cache's memory: 64 orphaned caches whose last box went in a handler
/// since the last tending.
fn park_pin<T>(pin: Pin<T>) {
    let core = ManuallyDrop::new(pin).0.cast_mut();
    for slot in &PARKED {
        // AcqRel/Acquire: the tending thread that takes the pointer sees
        // the count taken before it.
        if slot
            .compare_exchange(core::ptr::null_mut(), core, AcqRel, Acquire)
            .is_ok()
        {
            return;
        }
    }
    tracing::debug!("slab: a parked cache count leaked (64 parked already)");
}

/// Takes every parked count (task context): the caller shrinks the cache
/// and then drops the count.
pub(super) fn take_parked(mut f: impl FnMut(Arc<CacheCore>)) {
    for slot in &PARKED {
        let p = slot.swap(core::ptr::null_mut(), AcqRel);
        if !p.is_null() {
            // SAFETY: a count taken by `Pin::new` (from `Arc::as_ptr` of the
            // core's Arc) and parked, now handed over once.
            f(unsafe { Arc::from_raw(p.cast_const()) });
        }
    }
}

impl<T> SlabCache<T> {
    /// [`SlabBox::new_in`]: allocates an object and moves `value` into it.
    ///
    /// # Errors
    /// `Err(value)` when no object could be had (the arena is full).
    #[track_caller]
    #[inline]
    pub fn alloc_box(&self, value: T) -> Result<SlabBox<T>, T> {
        SlabBox::new_in(self, value)
    }

    /// The cache's core (its address is the cache's identity for the
    /// block channel of its retired boxes).
    #[inline]
    pub(crate) fn core(&self) -> &Arc<CacheCore> {
        &self.core
    }

    /// Whether the cache's handle is gone (boxes or retired objects keep
    /// its state).
    #[inline]
    pub(crate) fn is_orphaned(&self) -> bool {
        self.core.orphaned.load(Relaxed)
    }

    #[cfg(not(loom))]
    /// Whether the cache waits for the process-wide RCU's grace periods.
    pub(crate) fn waits_for_global_rcu(&self) -> bool {
        match self.core.rcu.get() {
            Some(r) => crate::rcu::global_id() == Some(r.id()),
            None => true,
        }
    }

    #[cfg(not(loom))]
    /// Whether `rcu` is the cache's RCU, without building the process-wide
    /// one.
    pub(crate) fn rcu_is(&self, rcu: &crate::rcu::Rcu) -> bool {
        match self.core.rcu.get() {
            Some(r) => core::ptr::eq(r.as_ref(), rcu),
            None => crate::rcu::global_id() == Some(rcu.id()),
        }
    }
}
