//! [`RcuCell`]: an RCU-protected pointer that needs no `unsafe` from its
//! user. Loads return references bound to a read-side guard, stores publish
//! with release ordering, and a replaced value is retired with `kfree_rcu`
//! in the same call.

use crate::context;
use crate::instance::Krcu;
use crate::rcu::{GlobalReadGuard, HasRcuHead, RcuHead, ReadGuard};
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A value together with the [`RcuHead`] that `kfree_rcu` needs to retire
/// it. Built only here, so its head offset is correct by construction.
struct Node<T> {
    value: T,
    head: RcuHead,
}

// SAFETY: `head` is a field of type `RcuHead` of `Node<T>`, and
// `offset_of!` computes its byte offset for every `T`.
unsafe impl<T: Send + 'static> HasRcuHead for Node<T> {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node<T>, head);
}

/// A value boxed for an [`RcuCell`], ready to publish: allocated ahead of
/// time, so that [`RcuCell::store_box`] (and the other `_box` updates)
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
pub struct RcuBox<T>(Box<Node<T>>);

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
    fn into_raw(self) -> *mut Node<T> {
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

/// The instance whose grace periods protect a cell's values, and the guard
/// type its readers load with: [`Global`] (the process-wide instance, whose
/// guards are [`GlobalReadGuard`]s) or `Arc<Krcu>` (one of yours, whose
/// guards are [`ReadGuard`]s of its [`rcu`](Krcu::rcu)). Sealed.
pub trait CellInstance: sealed::Sealed + Send + Sync + 'static {
    /// The read-side guard a cell of this instance takes.
    type Guard<'a>;
}

// What a cell asks of its instance: in the sealed supertrait, so that
// nothing outside the crate can call it (or implement it).
mod sealed {
    use super::{CellInstance, HasRcuHead, NonNull};

    pub trait Sealed {
        /// The id of the instance `guard` is a section of, when the type
        /// does not say it already (`None`: it is this instance by type).
        fn guard_instance(guard: &<Self as CellInstance>::Guard<'_>) -> Option<u64>
        where
            Self: CellInstance;

        /// The id of this instance's RCU, when guards must be checked.
        fn rcu_id(&self) -> u64;

        /// `kfree_rcu` of a leaked box by pointer on this instance; `false`
        /// (nothing done) in NMI context.
        ///
        /// # Safety
        /// As `Krcu::kfree_rcu_raw`: `raw` is a leaked `Box` handed over
        /// here, unqueued, written by no one from now on.
        unsafe fn retire<N: HasRcuHead>(&self, raw: NonNull<N>) -> bool;
    }
}

/// The process-wide instance, as a cell's [`CellInstance`]: its cells
/// ([`RcuCell::new`]) take the guards of
/// [`krcu::rcu::read_lock`](crate::rcu::read_lock), and the compiler
/// refuses any other guard.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl CellInstance for Global {
    type Guard<'a> = GlobalReadGuard<'a>;
}

impl sealed::Sealed for Global {
    #[inline(always)]
    fn guard_instance(_: &GlobalReadGuard<'_>) -> Option<u64> {
        None
    }

    fn rcu_id(&self) -> u64 {
        crate::rcu::global().id()
    }

    unsafe fn retire<N: HasRcuHead>(&self, raw: NonNull<N>) -> bool {
        // SAFETY: the caller's contract, passed on.
        unsafe { crate::instance::kfree_rcu_raw_global(raw) }
    }
}

impl CellInstance for Arc<Krcu> {
    type Guard<'a> = ReadGuard<'a>;
}

impl sealed::Sealed for Arc<Krcu> {
    #[inline(always)]
    fn guard_instance(guard: &ReadGuard<'_>) -> Option<u64> {
        Some(guard.instance_id())
    }

    fn rcu_id(&self) -> u64 {
        self.rcu().id()
    }

    unsafe fn retire<N: HasRcuHead>(&self, raw: NonNull<N>) -> bool {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.kfree_rcu_raw(raw) }
    }
}

/// An update of an [`RcuCell`] was refused before the swap: the cell was
/// left untouched, no value readers may still reach was dropped, and the
/// new value (a `T` or an [`RcuBox`]) is handed back.
///
/// - `InNmi`: in NMI context, where `kfree_rcu` refuses (as the kernel
///   does), no update can retire the old value.
/// - `Realtime` and `InHardirq`: the update would allocate (it boxes the
///   value) on a real-time thread ([`Krcu::register_thread`],
///   [`context::set_realtime`]) or in a hardirq handler (a signal handler,
///   where `malloc` is not async-signal-safe). Box the value beforehand
///   with [`RcuBox::new`] and publish it with the `_box` form
///   ([`RcuCell::store_box`]), which does not allocate.
#[derive(thiserror::Error)]
#[must_use = "the refused new value is handed back; the cell still holds its old value"]
pub enum UpdateError<V> {
    /// Called from NMI context.
    #[error("RcuCell update in NMI context: refused before the swap, the new value is handed back")]
    InNmi(V),
    /// Called on a real-time thread, where the update would allocate.
    #[error(
        "RcuCell update on a real-time thread would allocate: refused, the new value is \
         handed back (publish an RcuBox prepared beforehand with store_box)"
    )]
    Realtime(V),
    /// Called in hardirq context (a signal handler), where the update would
    /// allocate.
    #[error(
        "RcuCell update in hardirq (signal-handler) context would allocate: refused, the \
         new value is handed back (publish an RcuBox prepared beforehand with store_box)"
    )]
    InHardirq(V),
}

impl<V> UpdateError<V> {
    /// The new value, handed back.
    pub fn into_inner(self) -> V {
        match self {
            Self::InNmi(v) | Self::Realtime(v) | Self::InHardirq(v) => v,
        }
    }
}

impl<V> core::fmt::Debug for UpdateError<V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::InNmi(_) => "InNmi(..)",
            Self::Realtime(_) => "Realtime(..)",
            Self::InHardirq(_) => "InHardirq(..)",
        })
    }
}

/// Refuses an update in NMI context (handing `v` back).
#[inline]
fn refuse_nmi<V>(v: V) -> Result<V, UpdateError<V>> {
    if context::in_nmi() {
        Err(UpdateError::InNmi(v))
    } else {
        Ok(v)
    }
}

/// Refuses an update that would allocate where it must not: NMI, a
/// real-time thread, hardirq (handing `v` back).
#[inline]
fn refuse_alloc<V>(v: V) -> Result<V, UpdateError<V>> {
    let v = refuse_nmi(v)?;
    if context::is_realtime() {
        Err(UpdateError::Realtime(v))
    } else if context::in_hardirq() {
        Err(UpdateError::InHardirq(v))
    } else {
        Ok(v)
    }
}

/// Why [`RcuCell::compare_exchange`] did not swap. `V` is what was offered:
/// a `T`, or an [`RcuBox`] for [`RcuCell::compare_exchange_box`].
#[must_use = "the new value is handed back"]
pub enum CompareExchangeError<'g, T, V = T> {
    /// The cell did not hold `current`: `current` is what it held, `new`
    /// the value handed back.
    Changed {
        /// What the cell held when compared, readable under the guard.
        current: Option<&'g T>,
        /// The new value, handed back.
        new: V,
    },
    /// Refused before comparing (see [`UpdateError`]); the new value is
    /// handed back.
    Refused(UpdateError<V>),
}

impl<T, V> core::fmt::Display for CompareExchangeError<'_, T, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Changed { .. } => f.write_str(
                "RcuCell compare_exchange: the cell held another value; the new value is handed back",
            ),
            Self::Refused(e) => core::fmt::Display::fmt(e, f),
        }
    }
}

impl<T, V> std::error::Error for CompareExchangeError<'_, T, V> {}

impl<T, V> core::fmt::Debug for CompareExchangeError<'_, T, V> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Changed { current, .. } => f
                .debug_struct("Changed")
                .field("current_is_some", &current.is_some())
                .finish_non_exhaustive(),
            Self::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
        }
    }
}

/// An RCU-protected pointer to a `T` (or to nothing): readers
/// [`load`](Self::load) under a read-side guard without any lock, writers
/// [`store`](Self::store) a whole new value, and the old one is retired
/// with `kfree_rcu`, freed only after every reader that could reach it has
/// left its section.
///
/// A cell belongs to one instance, named by its second type parameter
/// ([`CellInstance`]): the process-wide one (`RcuCell<T>`, from
/// [`new`](RcuCell::new)), whose guards are the [`GlobalReadGuard`]s of
/// [`krcu::rcu::read_lock`](crate::rcu::read_lock), or one of yours
/// (`RcuCell<T, Arc<Krcu>>`, from [`new_in`](RcuCell::new_in)), whose guards
/// are the [`ReadGuard`]s of its [`rcu`](Krcu::rcu). A guard of another
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
        let p = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer in the cell is a leaked
        // Box<Node<T>>. It is freed only through kfree_rcu on the cell's
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
    /// thread (or a caller that assists; on the RCU worker while the
    /// process-wide `kfree_rcu` instance is not built). Allocates the box
    /// for `value`.
    ///
    /// # Errors
    /// Refuses before it swaps, handing `value` back: in NMI context, on a
    /// real-time thread, and in hardirq context ([`UpdateError`]).
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
        let r = unsafe { old.as_ref() }.map(|b| &b.value);
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
        match self
            .ptr
            .compare_exchange(expected, new, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(old) => {
                // SAFETY: as in `replace_with`: `old` left the cell just
                // now, is retired below on the cell's instance, and the
                // caller's guard of that instance holds the free off for 'g.
                let r = unsafe { old.as_ref() }.map(|b| &b.value);
                self.retire(old);
                Ok(r)
            }
            Err(seen) => {
                // SAFETY: `new` was never published: it is still the
                // Box::into_raw of an RcuBox we own.
                let new = RcuBox(unsafe { Box::from_raw(new) });
                // SAFETY: `seen` was in the cell when compared, under the
                // caller's guard of the cell's instance: as in `load`.
                let current = unsafe { seen.as_ref() }.map(|b| &b.value);
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
