//! [`RcuCell`]: an RCU-protected pointer that needs no `unsafe` from its
//! user. Loads return references bound to a read-side guard, stores publish
//! with release ordering, and a replaced value is retired with `kfree_rcu`
//! in the same call.

use crate::context;
use crate::instance::{InNmi, Krcu};
use crate::rcu::{HasRcuHead, RcuHead, ReadGuard};
use core::marker::PhantomData;
use core::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A value together with the [`RcuHead`] that `kfree_rcu` needs to retire
/// it. Built only here, so its head offset is correct by construction.
struct RcuBox<T> {
    value: T,
    head: RcuHead,
}

// SAFETY: `head` is a field of type `RcuHead` of `RcuBox<T>`, and
// `offset_of!` computes its byte offset for every `T`.
unsafe impl<T: Send + 'static> HasRcuHead for RcuBox<T> {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(RcuBox<T>, head);
}

/// The instance whose grace periods protect a cell's values.
enum Instance {
    /// The process-wide instance, through the free functions (which do not
    /// build it where the caller may not sleep).
    Global,
    /// An instance of the user's.
    Shared(Arc<Krcu>),
}

/// A store, replace or compare-exchange was refused because the caller is
/// in NMI context, where `kfree_rcu` refuses (as the kernel does). The cell
/// was left untouched (the refusal comes before the swap): the new value is
/// handed back in `.0`, and no value readers may still reach was dropped.
#[derive(thiserror::Error)]
#[error("RcuCell update in NMI context: refused before the swap, the new value is handed back")]
#[must_use = "the refused new value is handed back; the cell still holds its old value"]
pub struct UpdateInNmi<T>(pub T);

impl<T> core::fmt::Debug for UpdateInNmi<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("UpdateInNmi(..)")
    }
}

/// Why [`RcuCell::compare_exchange`] did not swap.
#[must_use = "the new value is handed back"]
pub enum CompareExchangeError<'g, T> {
    /// The cell did not hold `current`: `current` is what it held, `new`
    /// the value handed back.
    Changed {
        /// What the cell held when compared, readable under the guard.
        current: Option<&'g T>,
        /// The new value, handed back.
        new: T,
    },
    /// The caller is in NMI context: refused before comparing (see
    /// [`UpdateInNmi`]); the new value is handed back.
    InNmi(T),
}

impl<T> core::fmt::Debug for CompareExchangeError<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Changed { current, .. } => f
                .debug_struct("Changed")
                .field("current_is_some", &current.is_some())
                .finish_non_exhaustive(),
            Self::InNmi(_) => f.write_str("InNmi(..)"),
        }
    }
}

/// An RCU-protected pointer to a `T` (or to nothing): readers
/// [`load`](Self::load) under a read-side guard without any lock, writers
/// [`store`](Self::store) a whole new value, and the old one is retired
/// with `kfree_rcu`, freed only after every reader that could reach it has
/// left its section.
///
/// A cell belongs to one instance: the process-wide one ([`new`](Self::new),
/// whose guards come from [`krcu::rcu::read_lock`](crate::rcu::read_lock) or
/// `Krcu::global().rcu()`), or one of yours ([`new_in`](Self::new_in)). A
/// guard of another instance would not hold its values off, so a load or
/// replace with one **panics** (one compare of the guard's instance id).
///
/// Any `T: Send + Sync + 'static` can be stored: the cell boxes it next to
/// the `RcuHead` that `kfree_rcu` needs, so there is no `HasRcuHead` to
/// implement. Each update allocates that box: a real-time thread
/// ([`Krcu::register_thread`]) must not update a cell.
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
#[doc(alias = "__rcu")]
pub struct RcuCell<T: Send + Sync + 'static> {
    ptr: AtomicPtr<RcuBox<T>>,
    instance: Instance,
    /// The id of the instance's RCU, compared with each guard's.
    rcu_id: u64,
    /// The cell owns a `T` (for the drop check and the auto traits: with
    /// `T: Send + Sync`, a `&RcuCell<T>` hands out `&T` on any thread and a
    /// value may be dropped on another thread than the one that stored it).
    _owns: PhantomData<Box<T>>,
}

impl<T: Send + Sync + 'static> RcuCell<T> {
    /// A cell holding `value`, protected by the process-wide instance.
    /// Builds the process-wide RCU if it is not built yet (not the
    /// `kfree_rcu` workers).
    pub fn new(value: T) -> Self {
        Self::build(Instance::Global, crate::rcu::global().id(), boxed(value))
    }

    /// An empty cell, protected by the process-wide instance.
    pub fn empty() -> Self {
        Self::build(Instance::Global, crate::rcu::global().id(), ptr::null_mut())
    }

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
    pub fn new_in(krcu: Arc<Krcu>, value: T) -> Self {
        let id = krcu.rcu().id();
        Self::build(Instance::Shared(krcu), id, boxed(value))
    }

    /// An empty cell protected by `krcu`.
    pub fn empty_in(krcu: Arc<Krcu>) -> Self {
        let id = krcu.rcu().id();
        Self::build(Instance::Shared(krcu), id, ptr::null_mut())
    }

    fn build(instance: Instance, rcu_id: u64, p: *mut RcuBox<T>) -> Self {
        RcuCell {
            ptr: AtomicPtr::new(p),
            instance,
            rcu_id,
            _owns: PhantomData,
        }
    }

    /// Panics unless `guard` is a section of this cell's instance.
    #[inline(always)]
    #[track_caller]
    fn check_guard(&self, guard: &ReadGuard<'_>) {
        if guard.instance_id() != self.rcu_id {
            guard_mismatch();
        }
    }

    /// The value, readable while `guard` is held (`rcu_dereference`).
    /// Wait-free: one compare and one acquire load.
    ///
    /// # Panics
    /// If `guard` is a section of another instance than the cell's.
    #[doc(alias = "rcu_dereference")]
    #[inline]
    #[track_caller]
    pub fn load<'g>(&'g self, guard: &'g ReadGuard<'_>) -> Option<&'g T> {
        self.check_guard(guard);
        // Acquire pairs with the Release (or AcqRel) of the store that
        // published the box: its initialisation happens before our reads
        // of `value` (the kernel's rcu_dereference is a dependency-ordered
        // load; Rust has no consume, so acquire).
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer in the cell is a leaked
        // Box<RcuBox<T>>. It is freed only through kfree_rcu on the cell's
        // instance, called after it left the cell (swap or drop); `guard`
        // is a section of that same instance (checked above), opened before
        // this load saw the pointer, so the grace period that frees it
        // cannot end while `guard` lives, and 'g is within the borrow of
        // `guard`. A box is never written after it is published but for
        // its head, which kfree_rcu uses only after it left the cell.
        unsafe { p.as_ref() }.map(|b| &b.value)
    }

    /// Publishes `value` (`rcu_assign_pointer`) and retires the old value
    /// with `kfree_rcu`: it is dropped after a grace period, on a reclaimer
    /// thread (or a caller that assists).
    ///
    /// # Errors
    /// In NMI context it refuses before it swaps and hands `value` back;
    /// the cell is untouched.
    #[doc(alias = "rcu_assign_pointer")]
    #[track_caller]
    pub fn store(&self, value: T) -> Result<(), UpdateInNmi<T>> {
        if context::in_nmi() {
            return Err(UpdateInNmi(value));
        }
        let old = self.swap(boxed(value));
        self.retire(old);
        Ok(())
    }

    /// Empties the cell, retiring its value with `kfree_rcu`.
    ///
    /// # Errors
    /// In NMI context it refuses before it swaps (`.0` is `()`).
    pub fn clear(&self) -> Result<(), UpdateInNmi<()>> {
        if context::in_nmi() {
            return Err(UpdateInNmi(()));
        }
        let old = self.swap(ptr::null_mut());
        self.retire(old);
        Ok(())
    }

    /// Publishes `value` and returns the old value, readable while `guard`
    /// is held (`rcu_replace_pointer`). The old value is already retired
    /// with `kfree_rcu`; `guard` holds its free off.
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
    /// In NMI context it refuses before it swaps and hands `value` back.
    ///
    /// # Panics
    /// If `guard` is a section of another instance than the cell's.
    #[doc(alias = "rcu_replace_pointer")]
    #[track_caller]
    pub fn replace<'g>(
        &'g self,
        value: T,
        guard: &'g ReadGuard<'_>,
    ) -> Result<Option<&'g T>, UpdateInNmi<T>> {
        self.check_guard(guard);
        if context::in_nmi() {
            return Err(UpdateInNmi(value));
        }
        let old = self.swap(boxed(value));
        // SAFETY: `old` left the cell just now and is retired below with
        // kfree_rcu on the cell's instance; `guard`, a section of that
        // instance (checked above) opened before the retire, holds the free
        // off for 'g. The swap's Acquire made its initialisation visible.
        let r = unsafe { old.as_ref() }.map(|b| &b.value);
        self.retire(old);
        Ok(r)
    }

    /// Publishes `new` if the cell holds `current` (compared by address;
    /// `None` for empty), and returns the old value, retired with
    /// `kfree_rcu` and readable while `guard` is held.
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
    /// # Errors
    /// [`CompareExchangeError::Changed`] if the cell held another value (the
    /// new value is handed back), [`CompareExchangeError::InNmi`] in NMI
    /// context (refused before comparing).
    ///
    /// # Panics
    /// If `guard` is a section of another instance than the cell's.
    #[doc(alias = "cmpxchg")]
    #[track_caller]
    pub fn compare_exchange<'g>(
        &'g self,
        current: Option<&T>,
        new: T,
        guard: &'g ReadGuard<'_>,
    ) -> Result<Option<&'g T>, CompareExchangeError<'g, T>> {
        self.check_guard(guard);
        if context::in_nmi() {
            return Err(CompareExchangeError::InNmi(new));
        }
        // The box `current` would be in: only compared, never dereferenced
        // unless the compare succeeds (then it is the cell's own pointer).
        let expected = match current {
            None => ptr::null_mut(),
            Some(r) => ptr::from_ref(r)
                .cast_mut()
                .wrapping_byte_sub(core::mem::offset_of!(RcuBox<T>, value))
                .cast::<RcuBox<T>>(),
        };
        let new = boxed(new);
        // Success: Release publishes the new box's initialisation to the
        // loads that see it; Acquire makes the old box's initialisation
        // visible to us (we return a reference into it and kfree_rcu
        // writes its head). Failure: Acquire, as a load, for `current`.
        match self
            .ptr
            .compare_exchange(expected, new, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(old) => {
                // SAFETY: as in `replace`: `old` left the cell just now,
                // is retired below on the cell's instance, and `guard` of
                // that instance holds the free off for 'g.
                let r = unsafe { old.as_ref() }.map(|b| &b.value);
                self.retire(old);
                Ok(r)
            }
            Err(seen) => {
                // SAFETY: `new` was never published: we own the Box.
                let new = unsafe { Box::from_raw(new) }.value;
                // SAFETY: `seen` was in the cell when compared, under
                // `guard` of the cell's instance: as in `load`.
                let current = unsafe { seen.as_ref() }.map(|b| &b.value);
                Err(CompareExchangeError::Changed { current, new })
            }
        }
    }

    /// Swaps `new` in. AcqRel: Release publishes `new`'s initialisation;
    /// Acquire orders the old box's initialisation (by whoever published
    /// it) before our use of it (kfree_rcu writes its head; `replace`
    /// returns a reference into it).
    fn swap(&self, new: *mut RcuBox<T>) -> *mut RcuBox<T> {
        self.ptr.swap(new, Ordering::AcqRel)
    }

    /// Retires `old` (null or a box that just left the cell) with
    /// `kfree_rcu` on the cell's instance. Callers checked NMI context
    /// first, so the refusal cannot happen; were it to, the box is leaked
    /// rather than freed while readers may reach it.
    fn retire(&self, old: *mut RcuBox<T>) {
        if old.is_null() {
            return;
        }
        // SAFETY: a non-null pointer that was in the cell is a leaked
        // Box<RcuBox<T>> that the cell owned; it left the cell, so this is
        // its one owner now.
        let old = unsafe { Box::from_raw(old) };
        let res = match &self.instance {
            Instance::Global => crate::kfree_rcu(old),
            Instance::Shared(k) => k.kfree_rcu(old),
        };
        if let Err(InNmi(b)) = res {
            // Readers may still reach it: never free it now.
            core::mem::forget(b);
        }
    }
}

impl<T: Send + Sync + 'static> Drop for RcuCell<T> {
    /// Retires the value with `kfree_rcu`: it is dropped after a grace
    /// period, never at once. In NMI context (where `kfree_rcu` refuses)
    /// the value is leaked.
    fn drop(&mut self) {
        let old = core::mem::replace(self.ptr.get_mut(), ptr::null_mut());
        self.retire(old);
    }
}

impl<T: Send + Sync + 'static + core::fmt::Debug> core::fmt::Debug for RcuCell<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RcuCell")
            .field("instance", &self.rcu_id)
            .finish_non_exhaustive()
    }
}

fn boxed<T>(value: T) -> *mut RcuBox<T> {
    Box::into_raw(Box::new(RcuBox {
        value,
        head: RcuHead::new(),
    }))
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
