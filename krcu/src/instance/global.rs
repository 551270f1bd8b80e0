//! The process-wide instance behind [`Krcu::global`], and the free
//! functions on it ([`kfree_rcu`], [`kvfree_rcu_mightsleep`],
//! [`kvfree_rcu_barrier`], [`flush`], [`register_thread`]), which never
//! build it where the caller may not sleep.

use super::{InNmi, Krcu};
use crate::context::{self};
use crate::kvfree::block::drop_box_by_head;
use crate::rcu::{HasRcuHead, RcuHead};
use core::ptr::NonNull;
use std::sync::OnceLock;

/// The process-wide instance behind [`Krcu::global`].
pub(super) static GLOBAL: OnceLock<Krcu> = OnceLock::new();

impl Krcu {
    /// The process-wide instance behind the free functions
    /// ([`kfree_rcu`](crate::kfree_rcu) and friends), built on first use with
    /// the defaults.
    ///
    /// It is built on top of the process-wide RCU: its domain is
    /// [`Domain::global`](crate::Domain::global) and [`rcu`](Self::rcu) is
    /// [`krcu::rcu::global()`](crate::rcu::global) itself, so one set of
    /// grace periods serves `krcu::rcu::*` and the `kfree_rcu` free
    /// functions, and a reader entered through either holds off retires
    /// made through the other. The page allocator and the `kfree_rcu`
    /// workers start here, on first use: a program that only uses
    /// `krcu::rcu::*` never builds them.
    ///
    /// ```
    /// let krcu = krcu::Krcu::global();
    /// assert!(std::ptr::eq(krcu.rcu(), krcu::rcu::global()), "one RCU");
    /// assert!(krcu.domain().same(krcu::Domain::global()));
    /// // A reader of `krcu::rcu` holds off what the free functions retire.
    /// let guard = krcu::rcu::read_lock();
    /// assert!(krcu.rcu().is_reading());
    /// drop(guard);
    /// ```
    ///
    /// # Panics
    /// If it cannot be built (no memory for the arena's metadata, no
    /// thread).
    ///
    /// The free function [`kfree_rcu`](crate::kfree_rcu) never builds it
    /// where the caller may not sleep (see there).
    pub fn global() -> &'static Krcu {
        crate::fork::init_global(&GLOBAL, || {
            Krcu::builder()
                .build_on(crate::rcu::global_arc().clone())
                .expect("krcu: cannot build the default instance")
        })
    }
}

/// [`Krcu::kfree_rcu`] on the process-wide instance ([`Krcu::global`],
/// whose RCU is [`krcu::rcu::global()`](crate::rcu::global): readers entered
/// with `krcu::rcu::read_lock()` hold the object off).
///
/// The same promises as [`Krcu::kfree_rcu`], the first call included:
/// where the caller may not sleep (a signal handler, atomic, irqs off,
/// inside an RCU read-side section, a real-time thread) and the instance
/// is not built yet, it is not built there (that maps the arena, allocates
/// and starts threads, and from a handler that interrupted its own
/// initialisation would deadlock): the object goes to the global RCU's
/// `call_rcu` with a callback that drops the `Box`, the kernel's `rcu_head`
/// fallback. [`kvfree_rcu_barrier`] waits for those too (it runs
/// `rcu_barrier` on that same RCU). The first call where sleeping is
/// allowed builds the instance.
///
/// If the global RCU does not exist yet either, such objects wait, parked
/// without locks, until something builds it from a context that may sleep:
/// any task-context use of `krcu::rcu::*` or of these free functions, or
/// [`kvfree_rcu_barrier`]. A program whose only callers are real-time
/// threads or signal handlers should touch the global once at start-up
/// (`krcu::rcu::global();` or `Krcu::global();`), or nothing is freed.
///
/// ```
/// use krcu::rcu::{HasRcuHead, RcuHead};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// static FREED: AtomicU64 = AtomicU64::new(0);
/// #[derive(HasRcuHead)]
/// struct Node {
///     value: u64,
///     rcu: RcuHead,
/// }
/// impl Drop for Node {
///     fn drop(&mut self) {
///         FREED.fetch_add(self.value, Ordering::SeqCst);
///     }
/// }
///
/// for value in 1..=3 {
///     krcu::kfree_rcu(Box::new(Node { value, rcu: RcuHead::new() })).expect("not NMI");
/// }
/// krcu::kvfree_rcu_barrier();
/// assert_eq!(FREED.load(Ordering::SeqCst), 1 + 2 + 3);
/// ```
///
/// # Errors
/// [`InNmi`] from NMI context, with the object handed back (see there).
#[track_caller]
#[doc(alias = "kvfree_call_rcu")]
pub fn kfree_rcu<T: HasRcuHead>(obj: Box<T>) -> Result<(), InNmi<T>> {
    if let Some(k) = GLOBAL.get() {
        return k.kfree_rcu(obj);
    }
    if context::in_nmi() {
        return Err(InNmi(obj));
    }
    // SAFETY: a Box the caller handed over: leaked, its head unqueued, ours
    // alone. Not in NMI context (checked above), so it is queued.
    unsafe { kfree_rcu_raw_global(NonNull::from(Box::leak(obj))) };
    Ok(())
}

/// [`kfree_rcu`] of a leaked `Box<T>` given by pointer (see
/// [`Krcu::kfree_rcu_raw`]). Returns `false`, with nothing done, in NMI
/// context.
///
/// # Safety
/// As [`Krcu::kfree_rcu_raw`].
#[track_caller]
pub(crate) unsafe fn kfree_rcu_raw_global<T: HasRcuHead>(raw: NonNull<T>) -> bool {
    if let Some(k) = GLOBAL.get() {
        // SAFETY: the caller's contract, passed on.
        return unsafe { k.kfree_rcu_raw(raw) };
    }
    if !may_build_global() {
        // SAFETY: the caller's contract, passed on.
        return unsafe { kfree_rcu_unbuilt(raw) };
    }
    // SAFETY: the caller's contract, passed on.
    unsafe { Krcu::global().kfree_rcu_raw(raw) }
}

/// Whether the calling context may build the process-wide instance (it
/// sleeps: locks, allocations, thread starts).
#[inline]
pub(super) fn may_build_global() -> bool {
    matches!(
        context::kind(),
        context::ContextKind::Task | context::ContextKind::Softirq
    ) && !context::in_atomic()
        && !context::irqs_disabled()
        && context::rcu_read_depth() == 0
        && !context::is_realtime()
}

/// `kfree_rcu` before the process-wide instance exists, where it may not
/// be built: the `rcu_head` fallback on the global RCU.
///
/// # Safety
/// As [`Krcu::kfree_rcu_raw`].
#[cold]
unsafe fn kfree_rcu_unbuilt<T: HasRcuHead>(raw: NonNull<T>) -> bool {
    if context::in_nmi() {
        return false;
    }
    let raw = raw.as_ptr();
    // SAFETY: HasRcuHead's contract puts the head RCU_HEAD_OFFSET bytes
    // into the object, inside the allocation.
    let head =
        unsafe { NonNull::new_unchecked(raw.byte_add(T::RCU_HEAD_OFFSET).cast::<RcuHead>()) };
    // SAFETY: the head belongs to a leaked Box<T> handed over here (valid,
    // unmoved, not queued: the Box was the caller's), and
    // drop_box_by_head::<T> frees exactly that Box after the grace period.
    // Never builds the global RCU either: the caller may not sleep.
    unsafe { crate::rcu::call_rcu_global_nobuild(head, drop_box_by_head::<T>) };
    true
}

/// [`Krcu::register_thread`] on the process-wide instance: makes the
/// calling thread real-time (see there for the promise) and returns its
/// reader handle, whose guards are
/// [`GlobalReadGuard`](crate::rcu::GlobalReadGuard)s (the ones cells of the
/// process-wide instance take). Builds the instance: call it where the
/// thread may still allocate, before its real-time work.
///
/// ```
/// let cell = krcu::RcuCell::new(1u32);
/// let prepared = krcu::RcuBox::new(2u32);
/// let handle = krcu::register_thread(); // this thread is real-time now
/// assert!(cell.store(3).is_err()); // would allocate: refused
/// cell.store_box(prepared).expect("not in NMI context");
/// assert_eq!(cell.load(&handle.read_lock()), Some(&2));
/// krcu::context::set_realtime(false);
/// ```
pub fn register_thread() -> crate::rcu::GlobalReaderHandle {
    crate::rcu::GlobalReaderHandle::new(Krcu::global().register_thread())
}

/// [`Krcu::kvfree_rcu_mightsleep`] on the process-wide instance: any
/// `Box<T>`, no `RcuHead` needed; may sleep.
///
/// ```
/// use std::sync::Arc;
/// let config = Arc::new(String::from("v1"));
/// // Readers may still hold the old `Arc` clone's box: retire it.
/// krcu::kvfree_rcu_mightsleep(Box::new(config.clone())).expect("not NMI");
/// krcu::kvfree_rcu_barrier();
/// assert_eq!(Arc::strong_count(&config), 1);
/// ```
///
/// # Errors
/// [`InNmi`] from NMI context, with the object handed back.
#[track_caller]
pub fn kvfree_rcu_mightsleep<T: Send + 'static>(obj: Box<T>) -> Result<(), InNmi<T>> {
    if context::in_nmi() {
        return Err(InNmi(obj));
    }
    // Leaked while the instance is built: a build that fails (panics)
    // leaks the object rather than free it under a reader.
    let raw = Box::into_raw(obj);
    let krcu = Krcu::global();
    // SAFETY: `raw` came from Box::into_raw just above and nothing else
    // took it: it is the caller's Box again.
    krcu.kvfree_rcu_mightsleep(unsafe { Box::from_raw(raw) })
}

/// [`Krcu::kvfree_rcu_barrier`] on the process-wide instance. Before the
/// instance is built, objects retired with [`kfree_rcu`] went to the global
/// RCU's `call_rcu` (see there): this is then its `rcu_barrier`, and does
/// not build the instance.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// let ran = Arc::new(AtomicUsize::new(0));
/// for _ in 0..5 {
///     let ran = ran.clone();
///     krcu::defer(move || {
///         ran.fetch_add(1, Ordering::SeqCst);
///     })
///     .expect("task context");
/// }
/// krcu::kvfree_rcu_barrier(); // everything retired before it has run
/// assert_eq!(ran.load(Ordering::SeqCst), 5);
/// ```
///
/// # Panics
/// As [`Krcu::kvfree_rcu_barrier`]: from a callback on the global RCU's
/// worker.
#[track_caller]
pub fn kvfree_rcu_barrier() {
    match GLOBAL.get() {
        // Its barrier runs `rcu_barrier` on the global RCU too, so it also
        // waits for what went to `call_rcu` before the instance was built.
        Some(k) => k.kvfree_rcu_barrier(),
        // Whoever queued on the instance built it first (`get_or_init`
        // returned before the call): if this load sees none, everything
        // queued before this call is on the global RCU's lists.
        None => crate::rcu::rcu_barrier(),
    }
}

/// Runs the destructor of every object queued on the process-wide instance
/// before the call: waits for a grace period and for every pending free
/// (a [`kvfree_rcu_barrier`], which includes the global RCU's
/// [`rcu_barrier`](crate::rcu::rcu_barrier), so `call_rcu` callbacks queued
/// before it have run too), then once more for what those destructors
/// retired in turn. Sleeps; leaves the instance working (its threads keep
/// running: this is no teardown, and `kfree_rcu` works after it as
/// before).
///
/// For programs that need destructors to run before they exit: objects
/// queued on the process-wide instance are otherwise never dropped at exit
/// (see [`kfree_rcu`]). Instances of your own ([`Krcu`]) need no such call:
/// dropping one frees everything queued on it.
///
/// It does not promise anything about objects retired while it runs, or
/// after it returns, by other threads (or by destructors beyond the second
/// round): call it when the threads that retire objects are done. Not from
/// a real-time thread's real-time work, which must not sleep, nor from a
/// signal handler. From an RCU callback of the global RCU it panics, as
/// [`rcu_barrier`](crate::rcu::rcu_barrier) does (it would wait for
/// itself). Before the instance exists it builds neither it nor anything
/// but the global RCU.
///
/// ```
/// use krcu::rcu::{HasRcuHead, RcuHead};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// static DROPPED: AtomicUsize = AtomicUsize::new(0);
///
/// #[derive(HasRcuHead)]
/// struct Node {
///     rcu: RcuHead,
/// }
/// impl Drop for Node {
///     fn drop(&mut self) {
///         DROPPED.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// for _ in 0..10 {
///     krcu::kfree_rcu(Box::new(Node { rcu: RcuHead::new() })).expect("not in NMI context");
/// }
/// krcu::flush(); // before exit: every destructor has run
/// assert_eq!(DROPPED.load(Ordering::Relaxed), 10);
/// ```
#[doc(alias = "shutdown")]
#[doc(alias = "rcu_barrier")]
#[track_caller]
pub fn flush() {
    kvfree_rcu_barrier();
    // The destructors that ran may have retired objects in turn.
    kvfree_rcu_barrier();
}
