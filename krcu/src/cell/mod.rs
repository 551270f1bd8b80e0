//! [`RcuCell`]: an RCU-protected pointer that needs no `unsafe` from its
//! user. Loads return references bound to a read-side guard, stores publish
//! with release ordering, and a replaced value is retired with `kfree_rcu`
//! in the same call.
//!
//! The parts: [`RcuBox`] (`boxed.rs`), the instance a cell belongs to
//! ([`CellInstance`], `instance.rs`), the refusals (`error.rs`); this file
//! is the cell itself. Uses the instance's `kfree_rcu` (by pointer) and the
//! `rcu` module's guards. The file is over 500 lines because the type's
//! documentation carries the misuse the compiler refuses, as `compile_fail`
//! tests; the code is about 220 lines.

mod boxed;
mod error;
mod instance;
mod slab;
mod tag;

use boxed::Node;
pub use boxed::RcuBox;
pub use error::{CompareExchangeError, UpdateError};
use error::{refuse_alloc, refuse_nmi};
pub use instance::{CellInstance, Global};

use crate::instance::Krcu;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

/// An RCU-protected pointer to a `T` (or to nothing): readers
/// [`load`](Self::load) under a read-side guard without any lock, writers
/// [`store`](Self::store) a whole new value, and the old one is retired
/// with `kfree_rcu`, freed only after every reader that could reach it has
/// left its section.
///
/// A cell belongs to one instance, named by its second type parameter
/// ([`CellInstance`]): the process-wide one (`RcuCell<T>`, from
/// [`new`](RcuCell::new)), whose guards are the [`GlobalReadGuard`](crate::rcu::GlobalReadGuard)s of
/// [`krcu::rcu::read_lock`](crate::rcu::read_lock), or one of yours
/// (`RcuCell<T, Arc<Krcu>>`, from [`new_in`](RcuCell::new_in)), whose guards
/// are the [`ReadGuard`](crate::rcu::ReadGuard)s of its [`rcu`](Krcu::rcu). A guard of another
/// instance would not hold the cell's values off: mixing the process-wide
/// instance with one of yours does not compile, and a guard of another
/// instance of yours makes a load or update **panic** (one compare of the
/// guard's instance id).
///
/// Any `T: Send + Sync + 'static` can be stored: the cell boxes it next to
/// the `RcuHead` that `kfree_rcu` needs, so there is no `HasRcuHead` to
/// implement. [`store`](Self::store), [`replace`](Self::replace) and
/// [`compare_exchange`](Self::compare_exchange) allocate that box, so they
/// refuse on a real-time thread and in hardirq context
/// ([`UpdateError`]); there, publish an [`RcuBox`] prepared beforehand
/// with the `_box` forms, which allocate nothing there. Retiring (every
/// update, [`clear`](Self::clear), dropping the cell) allocates nothing on
/// a real-time thread or in hardirq context; elsewhere a thread's first
/// retire may set up its per-thread state (and the first in the process
/// builds the process-wide instance).
///
/// A leaked guard (`Box::leak(Box::new(read_lock()))`) holds its section
/// open for good, even after its thread exits: references loaded under it
/// live for `'static`, so the instance's grace periods stall rather than
/// free them (see [`RcuStats::abandoned_sections`](crate::rcu::RcuStats)).
///
/// ```
/// use krcu::RcuCell;
/// let cell = RcuCell::new(1u64);
/// {
///     let guard = krcu::rcu::read_lock();
///     assert_eq!(cell.load(&guard), Some(&1));
/// }
/// cell.store(2).expect("not in NMI context");
/// let guard = krcu::rcu::read_lock();
/// assert_eq!(cell.load(&guard), Some(&2));
/// ```
///
/// # Misuse the compiler refuses
/// A reference cannot outlive the guard it was loaded under:
/// ```compile_fail,E0505
/// let cell = krcu::RcuCell::new(1u64);
/// let guard = krcu::rcu::read_lock();
/// let r = cell.load(&guard).unwrap();
/// drop(guard);
/// assert_eq!(*r, 1);
/// ```
/// nor the cell:
/// ```compile_fail,E0505
/// let cell = krcu::RcuCell::new(1u64);
/// let guard = krcu::rcu::read_lock();
/// let r = cell.load(&guard).unwrap();
/// drop(cell);
/// assert_eq!(*r, 1);
/// ```
/// nor does an old value `replace` returns, nor the current value a failed
/// `compare_exchange` shows:
/// ```compile_fail,E0505
/// let cell = krcu::RcuCell::new(1u64);
/// let g = krcu::rcu::read_lock();
/// let old = cell.replace(2, &g).unwrap().unwrap();
/// drop(g);
/// assert_eq!(*old, 1);
/// ```
/// ```compile_fail,E0505
/// let cell = krcu::RcuCell::new(1u64);
/// let g = krcu::rcu::read_lock();
/// let e = cell.compare_exchange(None, 3, &g).unwrap_err();
/// drop(g);
/// if let krcu::cell::CompareExchangeError::Changed { current, .. } = e {
///     assert_eq!(current, Some(&1));
/// }
/// ```
/// A reference loaded through a reader handle's guard cannot outlive the
/// handle, and a leaked guard does not make loads from a local cell
/// `'static`:
/// ```compile_fail,E0505
/// let cell = krcu::RcuCell::new(1u64);
/// let h = krcu::rcu::register_thread();
/// let g = h.read_lock();
/// let r = cell.load(&g).unwrap();
/// drop(g);
/// drop(h);
/// assert_eq!(*r, 1);
/// ```
/// ```compile_fail,E0515
/// fn f() -> &'static u64 {
///     let cell = krcu::RcuCell::new(1u64);
///     let g: &'static _ = Box::leak(Box::new(krcu::rcu::read_lock()));
///     cell.load(g).unwrap()
/// }
/// ```
/// A value that is not `Send + Sync + 'static` cannot be stored (readers on
/// any thread get `&T`, and it is dropped on another thread):
/// ```compile_fail,E0277
/// let _ = krcu::RcuCell::new(std::cell::Cell::new(1u32));
/// ```
/// ```compile_fail,E0277
/// let _ = krcu::RcuCell::new(std::rc::Rc::new(1u32));
/// ```
/// ```compile_fail,E0597
/// let x = 5u32;
/// let _c = krcu::RcuCell::new(&x);
/// ```
/// ```compile_fail,E0277
/// let b = krcu::cell::RcuBox::new(std::rc::Rc::new(1u32));
/// std::thread::spawn(move || drop(b));
/// ```
#[doc(alias = "__rcu")]
pub struct RcuCell<T: Send + Sync + 'static, I: CellInstance = Global> {
    ptr: AtomicPtr<Node<T>>,
    instance: I,
    /// The id of the instance's RCU, compared with each guard's whose type
    /// does not say its instance.
    rcu_id: u64,
    /// The cell owns a `T` (for the drop check and the auto traits: with
    /// `T: Send + Sync`, a `&RcuCell<T>` hands out `&T` on any thread and a
    /// value may be dropped on another thread than the one that stored it).
    _owns: PhantomData<Box<T>>,
}

impl<T: Send + Sync + 'static> RcuCell<T> {
    /// A cell holding `value`, protected by the process-wide instance: load
    /// it under [`krcu::rcu::read_lock`](crate::rcu::read_lock). Builds the
    /// process-wide RCU if it is not built yet (not the `kfree_rcu`
    /// workers).
    pub fn new(value: T) -> Self {
        Self::build(Global, RcuBox::new(value).into_raw())
    }

    /// An empty cell, protected by the process-wide instance.
    pub fn empty() -> Self {
        Self::build(Global, ptr::null_mut())
    }
}

impl<T: Send + Sync + 'static> RcuCell<T, Arc<Krcu>> {
    /// A cell holding `value`, protected by `krcu`: load it under a guard of
    /// `krcu.rcu()`. The cell keeps the instance alive; if it holds the
    /// last `Arc`, dropping it drops the instance, which waits for its
    /// grace periods: do not drop such a cell inside a section of that
    /// instance.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let krcu = Arc::new(krcu::Krcu::builder().arena_size(16 << 20).build().unwrap());
    /// let cell = krcu::RcuCell::new_in(krcu.clone(), String::from("a"));
    /// let guard = krcu.rcu().read_lock();
    /// assert_eq!(cell.load(&guard).map(String::as_str), Some("a"));
    /// ```
    ///
    /// A guard of another instance (here the process-wide one) is refused
    /// by the compiler when its type says so, and at run time otherwise
    /// (two instances of yours: a panic):
    /// ```compile_fail,E0308
    /// use std::sync::Arc;
    /// let krcu = Arc::new(krcu::Krcu::builder().arena_size(16 << 20).build().unwrap());
    /// let cell = krcu::RcuCell::new_in(krcu, 1u32);
    /// let _ = cell.load(&krcu::rcu::read_lock());
    /// ```
    pub fn new_in(krcu: Arc<Krcu>, value: T) -> Self {
        Self::build(krcu, RcuBox::new(value).into_raw())
    }

    /// An empty cell protected by `krcu`.
    pub fn empty_in(krcu: Arc<Krcu>) -> Self {
        Self::build(krcu, ptr::null_mut())
    }
}

impl<T: Send + Sync + 'static, I: CellInstance> RcuCell<T, I> {
    fn build(instance: I, p: *mut Node<T>) -> Self {
        RcuCell {
            ptr: AtomicPtr::new(p),
            rcu_id: instance.rcu_id(),
            instance,
            _owns: PhantomData,
        }
    }

    /// Panics unless `guard` is a section of this cell's instance.
    #[inline(always)]
    #[track_caller]
    fn check_guard(&self, guard: &I::Guard<'_>) {
        if let Some(id) = I::guard_instance(guard)
            && id != self.rcu_id
        {
            guard_mismatch();
        }
    }

    /// The value, readable while `guard` is held (`rcu_dereference`).
    /// Wait-free: one compare and one acquire load.
    ///
    /// # Panics
    /// If `guard` is a section of another instance of yours than the
    /// cell's (a cell of the process-wide instance never panics: its guard
    /// type says its instance).
    #[doc(alias = "rcu_dereference")]
    #[inline]
    #[track_caller]
    pub fn load<'g>(&'g self, guard: &'g I::Guard<'_>) -> Option<&'g T> {
        self.check_guard(guard);
        // Acquire pairs with the Release (or AcqRel) of the store that
        // published the box: its initialisation happens before our reads
        // of `value` (the kernel's rcu_dereference is a dependency-ordered
        // load; Rust has no consume, so acquire).
        let p = tag::untag(self.ptr.load(Ordering::Acquire));
        // SAFETY: a non-null pointer in the cell (its tag masked off) is a
        // leaked Box<Node<T>> or a slab object holding a T (at the same
        // offset: Node is repr(C), value first). It is freed only through
        // kfree_rcu on the cell's
        // instance, called after it left the cell (swap or drop); `guard`
        // is a section of that same instance (checked above), opened before
        // this load saw the pointer, so the grace period that frees it
        // cannot end while `guard` lives, and 'g is within the borrow of
        // `guard`. A box is never written after it is published but for
        // its head, which kfree_rcu uses only after it left the cell.
        unsafe { p.cast::<T>().as_ref() }
    }

    /// Publishes `value` (`rcu_assign_pointer`) and retires the old value
    /// with `kfree_rcu`: it is dropped after a grace period, on a reclaimer
    /// thread (or a caller that assists; on the RCU worker while the
    /// process-wide `kfree_rcu` instance is not built). Allocates the box
    /// for `value`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// let tracker = Arc::new(());
    /// let cell = krcu::RcuCell::new(tracker.clone());
    /// cell.store(Arc::new(())).expect("task context");
    /// krcu::kvfree_rcu_barrier(); // the old value's grace period is over
    /// assert_eq!(Arc::strong_count(&tracker), 1, "the old value was dropped");
    /// ```
    ///
    /// # Errors
    /// Refuses before it swaps, handing `value` back: in NMI context, on a
    /// real-time thread, and in hardirq context ([`UpdateError`]).
    ///
    /// ```
    /// use krcu::cell::UpdateError;
    /// let cell = krcu::RcuCell::new(1u32);
    /// let refused = {
    ///     let _handler = krcu::context::enter_hardirq(); // a signal handler
    ///     cell.store(2).unwrap_err()
    /// };
    /// assert!(matches!(refused, UpdateError::InHardirq(2)));
    /// assert_eq!(refused.into_inner(), 2);
    /// assert_eq!(cell.load(&krcu::rcu::read_lock()), Some(&1), "untouched");
    /// ```
    #[doc(alias = "rcu_assign_pointer")]
    #[track_caller]
    pub fn store(&self, value: T) -> Result<(), UpdateError<T>> {
        let value = refuse_alloc(value)?;
        self.publish(RcuBox::new(value));
        Ok(())
    }

    /// [`store`](Self::store) of a value boxed beforehand: it boxes
    /// nothing, so it may be called on a real-time thread and in hardirq
    /// context, where it allocates nothing.
    ///
    /// # Errors
    /// In NMI context it refuses before it swaps and hands the box back.
    /// Dropping the box there would free it (a call to the allocator):
    /// keep it (`mem::forget`, or hand it to a thread that may free).
    #[doc(alias = "rcu_assign_pointer")]
    #[track_caller]
    pub fn store_box(&self, value: RcuBox<T>) -> Result<(), UpdateError<RcuBox<T>>> {
        let value = refuse_nmi(value)?;
        self.publish(value);
        Ok(())
    }

    /// Swaps `value` in and retires the old value.
    #[track_caller]
    fn publish(&self, value: RcuBox<T>) {
        let old = self.swap(value.into_raw());
        self.retire(old);
    }

    /// Empties the cell, retiring its value with `kfree_rcu`. Allocates
    /// nothing on a real-time thread or in hardirq context (see the type's
    /// docs for a thread's first retire elsewhere).
    ///
    /// ```
    /// let cell = krcu::RcuCell::new(String::from("configured"));
    /// cell.clear().expect("not in NMI context");
    /// assert_eq!(cell.load(&krcu::rcu::read_lock()), None);
    /// let empty = krcu::RcuCell::<String>::empty();
    /// assert!(empty.load(&krcu::rcu::read_lock()).is_none());
    /// ```
    ///
    /// # Errors
    /// In NMI context it refuses before it swaps (`()` is handed back).
    #[track_caller]
    pub fn clear(&self) -> Result<(), UpdateError<()>> {
        refuse_nmi(())?;
        let old = self.swap(ptr::null_mut());
        self.retire(old);
        Ok(())
    }

    /// Publishes `value` and returns the old value, readable while `guard`
    /// is held (`rcu_replace_pointer`). The old value is already retired
    /// with `kfree_rcu`; `guard` holds its free off. Allocates the box for
    /// `value`.
    ///
    /// ```
    /// let cell = krcu::RcuCell::new(1u32);
    /// let guard = krcu::rcu::read_lock();
    /// let old = cell.replace(2, &guard).unwrap();
    /// assert_eq!(old, Some(&1));
    /// assert_eq!(cell.load(&guard), Some(&2));
    /// ```
    ///
    /// # Errors
    /// As [`store`](Self::store): refused before the swap in NMI context,
    /// on a real-time thread and in hardirq context.
    ///
    /// # Panics
    /// If `guard` is a section of another instance of yours than the
    /// cell's (a cell of the process-wide instance never panics: its guard
    /// type says its instance).
    #[doc(alias = "rcu_replace_pointer")]
    #[track_caller]
    pub fn replace<'g>(
        &'g self,
        value: T,
        guard: &'g I::Guard<'_>,
    ) -> Result<Option<&'g T>, UpdateError<T>> {
        self.check_guard(guard);
        let value = refuse_alloc(value)?;
        Ok(self.replace_with(RcuBox::new(value)))
    }

    /// [`replace`](Self::replace) with a value boxed beforehand: no
    /// allocation.
    ///
    /// # Errors
    /// In NMI context it refuses before it swaps and hands the box back.
    ///
    /// # Panics
    /// If `guard` is a section of another instance of yours than the
    /// cell's (a cell of the process-wide instance never panics: its guard
    /// type says its instance).
    #[doc(alias = "rcu_replace_pointer")]
    #[track_caller]
    pub fn replace_box<'g>(
        &'g self,
        value: RcuBox<T>,
        guard: &'g I::Guard<'_>,
    ) -> Result<Option<&'g T>, UpdateError<RcuBox<T>>> {
        self.check_guard(guard);
        let value = refuse_nmi(value)?;
        Ok(self.replace_with(value))
    }

    /// Swaps `value` in, retires the old value and returns it. Private:
    /// each caller checked its guard and returns the reference bound to
    /// that guard's borrow (`'g`), never longer.
    #[track_caller]
    fn replace_with(&self, value: RcuBox<T>) -> Option<&T> {
        let old = self.swap(value.into_raw());
        // SAFETY: `old` left the cell just now and is retired below with
        // kfree_rcu on the cell's instance; the caller's guard, a section
        // of that instance (checked by the caller) opened before the
        // retire, holds the free off while the caller's 'g lasts, and the
        // caller returns the reference for 'g only. The swap's Acquire made
        // its initialisation visible.
        let r = unsafe { tag::value_of(old) };
        self.retire(old);
        r
    }

    /// Publishes `new` if the cell holds `current` (compared by address;
    /// `None` for empty), and returns the old value, retired with
    /// `kfree_rcu` and readable while `guard` is held. Allocates the box
    /// for `new`.
    ///
    /// ```
    /// use krcu::cell::CompareExchangeError;
    /// let cell = krcu::RcuCell::new(1u32);
    /// let guard = krcu::rcu::read_lock();
    /// let cur = cell.load(&guard);
    /// assert_eq!(cell.compare_exchange(cur, 2, &guard).unwrap(), Some(&1));
    /// // `cur` is stale now: refused, and 3 is handed back.
    /// match cell.compare_exchange(cur, 3, &guard) {
    ///     Err(CompareExchangeError::Changed { current, new }) => {
    ///         assert_eq!((current, new), (Some(&2), 3));
    ///     }
    ///     _ => unreachable!(),
    /// }
    /// ```
    ///
    /// A retry loop that calls this boxes `new` at every attempt (and frees
    /// the box on each failure); [`compare_exchange_box`](Self::compare_exchange_box)
    /// hands the box back instead, to be changed through `DerefMut` and
    /// offered again.
    ///
    /// # Errors
    /// [`CompareExchangeError::Changed`] if the cell held another value (the
    /// new value is handed back), [`CompareExchangeError::Refused`] in NMI
    /// context, on a real-time thread or in hardirq context (refused before
    /// comparing, as [`store`](Self::store)).
    ///
    /// # Panics
    /// If `guard` is a section of another instance of yours than the
    /// cell's (a cell of the process-wide instance never panics: its guard
    /// type says its instance).
    #[doc(alias = "cmpxchg")]
    #[track_caller]
    pub fn compare_exchange<'g>(
        &'g self,
        current: Option<&T>,
        new: T,
        guard: &'g I::Guard<'_>,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>> {
        self.check_guard(guard);
        let new = refuse_alloc(new).map_err(CompareExchangeError::Refused)?;
        self.compare_exchange_with(current, RcuBox::new(new))
            .map_err(|e| match e {
                CompareExchangeError::Changed { current, new } => CompareExchangeError::Changed {
                    current,
                    new: new.into_inner(),
                },
                CompareExchangeError::Refused(e) => CompareExchangeError::Refused(match e {
                    UpdateError::InNmi(b) => UpdateError::InNmi(b.into_inner()),
                    UpdateError::Realtime(b) => UpdateError::Realtime(b.into_inner()),
                    UpdateError::InHardirq(b) => UpdateError::InHardirq(b.into_inner()),
                }),
            })
    }

    /// [`compare_exchange`](Self::compare_exchange) with a value boxed
    /// beforehand: no allocation (a failed compare hands the box back).
    ///
    /// # Errors
    /// [`CompareExchangeError::Changed`] if the cell held another value,
    /// [`CompareExchangeError::Refused`] in NMI context; the box is handed
    /// back.
    ///
    /// # Panics
    /// If `guard` is a section of another instance of yours than the
    /// cell's (a cell of the process-wide instance never panics: its guard
    /// type says its instance).
    #[doc(alias = "cmpxchg")]
    #[track_caller]
    pub fn compare_exchange_box<'g>(
        &'g self,
        current: Option<&T>,
        new: RcuBox<T>,
        guard: &'g I::Guard<'_>,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T, RcuBox<T>>> {
        self.check_guard(guard);
        let new = refuse_nmi(new).map_err(CompareExchangeError::Refused)?;
        self.compare_exchange_with(current, new)
    }

    /// The compare-exchange itself; the caller checked the guard and the
    /// context.
    #[track_caller]
    fn compare_exchange_with<'g>(
        &'g self,
        current: Option<&T>,
        new: RcuBox<T>,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T, RcuBox<T>>> {
        // The node `current` would be in: only compared, never dereferenced
        // unless the compare succeeds (then it is the cell's own pointer).
        let expected = match current {
            None => ptr::null_mut(),
            Some(r) => ptr::from_ref(r)
                .cast_mut()
                .wrapping_byte_sub(core::mem::offset_of!(Node<T>, value))
                .cast::<Node<T>>(),
        };
        let new = new.into_raw();
        // Success: Release publishes the new node's initialisation to the
        // loads that see it; Acquire makes the old node's initialisation
        // visible to us (we return a reference into it and kfree_rcu
        // writes its head). Failure: Acquire, as a load, for `current`.
        // A slab value is held tagged: `current` names it untagged, so a
        // compare that failed only on the tag is made again with it.
        let mut expected = expected;
        let result = loop {
            match self
                .ptr
                .compare_exchange(expected, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Err(seen) if seen != expected && tag::untag(seen) == expected => expected = seen,
                r => break r,
            }
        };
        match result {
            Ok(old) => {
                // SAFETY: as in `replace_with`: `old` left the cell just
                // now, is retired below on the cell's instance, and the
                // caller's guard of that instance holds the free off for 'g.
                let r = unsafe { tag::value_of(old) };
                self.retire(old);
                Ok(r)
            }
            Err(seen) => {
                // SAFETY: `new` was never published: it is still the
                // Box::into_raw of an RcuBox we own.
                let new = RcuBox(unsafe { Box::from_raw(new) });
                // SAFETY: `seen` was in the cell when compared, under the
                // caller's guard of the cell's instance: as in `load`.
                let current = unsafe { tag::value_of(seen) };
                Err(CompareExchangeError::Changed { current, new })
            }
        }
    }

    /// Swaps `new` in. AcqRel: Release publishes `new`'s initialisation;
    /// Acquire orders the old node's initialisation (by whoever published
    /// it) before our use of it (kfree_rcu writes its head; `replace`
    /// returns a reference into it).
    fn swap(&self, new: *mut Node<T>) -> *mut Node<T> {
        self.ptr.swap(new, Ordering::AcqRel)
    }

    /// Retires `old` (null or a node that just left the cell) with
    /// `kfree_rcu` on the cell's instance, by pointer: readers may still
    /// hold shared references into it, so no `Box` (a unique pointer) is
    /// made of it before its grace period. Callers checked NMI context
    /// first, so the refusal cannot happen; were it to, the node is leaked
    /// rather than freed while readers may reach it.
    #[track_caller]
    fn retire(&self, old: *mut Node<T>) {
        if tag::is_slab(old) {
            // SAFETY: a tagged pointer in the cell is a slab object the
            // cell owned (stored by `store_slab`/`replace_slab`); it left
            // the cell, so its ownership passes to kfree_rcu here.
            unsafe { self.retire_slab(old) };
            return;
        }
        let Some(old) = NonNull::new(old) else {
            return;
        };
        // SAFETY: a non-null pointer that was in the cell is the
        // Box::into_raw of a node the cell owned; it left the cell, so the
        // cell's ownership passes to kfree_rcu here, and nothing writes it
        // again (the cell never writes a published node).
        let queued = unsafe { self.instance.retire(old) };
        // Not queued (NMI): readers may still reach it, so it is leaked.
        let _ = queued;
    }
}

impl<T: Send + Sync + 'static, I: CellInstance> Drop for RcuCell<T, I> {
    /// Retires the value with `kfree_rcu`: it is dropped after a grace
    /// period, never at once. In NMI context (where `kfree_rcu` refuses)
    /// the value is leaked. Allocates nothing, unless the cell holds the
    /// last `Arc` of its instance: dropping it then tears the instance down
    /// (joins its threads, frees its arena), which a real-time thread or a
    /// signal handler must not do.
    fn drop(&mut self) {
        let old = core::mem::replace(self.ptr.get_mut(), ptr::null_mut());
        self.retire(old);
    }
}

impl<T: Send + Sync + 'static, I: CellInstance> core::fmt::Debug for RcuCell<T, I> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RcuCell")
            .field("instance", &self.rcu_id)
            .finish_non_exhaustive()
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn guard_mismatch() -> ! {
    panic!(
        "krcu: RcuCell used with a read guard of another RCU instance; \
         that guard does not hold the cell's values off (use the guard of \
         the instance the cell was built with)"
    )
}
