//! The process-wide instance's face: [`global`], the free functions that
//! act on it (`krcu::rcu::read_lock`, `synchronize`, `call_rcu`, ...), and
//! the guard and handle types that say a section is of it.
//!
//! Uses the instance, its barrier, the process-wide instance's building and
//! early callbacks (`early.rs`), and the reader's guards and handles.
#![cfg(not(loom))]

use super::callback::{self, HasRcuHead, RcuCallbackFn, RcuHead};
use super::early::{call_rcu_global, global_arc, global_id};
use super::instance::Rcu;
use super::reader::{ReadGuard, ReaderHandle};
use super::seq::GpCookie;
use core::ptr::NonNull;

/// The process-wide instance: the global domain ([`Domain::global`](crate::Domain::global)),
/// default settings, built on first use (one worker thread, nothing else).
///
/// It is the one RCU of the process-wide `kfree_rcu` instance too:
/// `krcu::Krcu::global().rcu()` is this very instance, so a reader entered
/// with [`read_lock`] holds off objects retired with `krcu::kfree_rcu` and
/// the other free functions, and the other way round. Using only this
/// module's functions never builds the `kfree_rcu` machinery or the page
/// allocator: those start on first use of a function that needs them.
///
/// ```
/// let rcu = krcu::rcu::global();
/// assert!(std::ptr::eq(rcu, krcu::rcu::global()), "one per process");
/// assert!(rcu.domain().same(krcu::Domain::global()));
/// ```
pub fn global() -> &'static Rcu {
    global_arc()
}

/// [`Rcu::read_lock`] on the [`global`] instance. The first call builds
/// the instance (allocating, spawning its worker): to read from a signal
/// handler, use the instance (e.g. call [`global`]) once before. A
/// thread's first call also registers it as a reader (allocating): a
/// thread that must not allocate takes a handle first
/// ([`register_thread`], or [`krcu::register_thread`](crate::register_thread)
/// for a real-time thread) and reads through it.
///
/// The guard's type says its instance: cells of the process-wide instance
/// ([`RcuCell::new`](crate::RcuCell::new)) take it, and only it.
///
/// ```
/// use krcu::context;
/// assert_eq!(context::rcu_read_depth(), 0);
/// {
///     let _guard = krcu::rcu::read_lock();
///     assert!(krcu::rcu::global().is_reading());
///     if krcu::lockdep::COMPILED {
///         // The validator tracks the depth (and caps what a reader may do).
///         assert_eq!(context::rcu_read_depth(), 1);
///     }
/// }
/// assert!(!krcu::rcu::global().is_reading());
/// ```
#[inline]
#[doc(alias = "rcu_read_lock")]
pub fn read_lock() -> GlobalReadGuard<'static> {
    GlobalReadGuard::new(global().read_lock())
}

/// [`Rcu::register_thread`] on the [`global`] instance: its handle's
/// guards are [`GlobalReadGuard`]s. (It does not make the thread
/// real-time: [`krcu::register_thread`](crate::register_thread) does.)
///
/// ```
/// let handle = krcu::rcu::register_thread();
/// assert!(!krcu::context::is_realtime(), "a reader only, not real-time");
/// let cell = krcu::RcuCell::new(10u32);
/// let guard = handle.read_lock(); // a GlobalReadGuard: cells take it
/// assert_eq!(cell.load(&guard), Some(&10));
/// ```
pub fn register_thread() -> GlobalReaderHandle {
    GlobalReaderHandle::new(global().register_thread())
}

/// [`Rcu::synchronize`] on the [`global`] instance.
///
/// ```
/// let cookie = krcu::rcu::get_state();
/// krcu::rcu::synchronize();
/// assert!(krcu::rcu::poll_state(cookie), "a full grace period has passed");
/// ```
///
/// # Panics
/// Inside a read-side section of the global instance (as
/// [`Rcu::synchronize`]).
#[track_caller]
#[doc(alias = "synchronize_rcu")]
pub fn synchronize() {
    global().synchronize();
}

/// [`Rcu::synchronize_expedited`] on the [`global`] instance.
///
/// # Panics
/// As [`synchronize`].
#[track_caller]
#[doc(alias = "synchronize_rcu_expedited")]
pub fn synchronize_expedited() {
    global().synchronize_expedited();
}

/// [`Rcu::get_state`] on the [`global`] instance.
///
/// ```
/// let guard = krcu::rcu::read_lock();
/// let cookie = krcu::rcu::get_state();
/// assert!(!krcu::rcu::poll_state(cookie), "held off by this thread's reader");
/// drop(guard);
/// krcu::rcu::cond_synchronize(cookie);
/// assert!(krcu::rcu::poll_state(cookie));
/// ```
#[doc(alias = "get_state_synchronize_rcu")]
pub fn get_state() -> GpCookie {
    global().get_state()
}

/// [`Rcu::start_poll`] on the [`global`] instance.
#[doc(alias = "start_poll_synchronize_rcu")]
pub fn start_poll() -> GpCookie {
    global().start_poll()
}

/// [`Rcu::poll_state`] on the [`global`] instance.
#[doc(alias = "poll_state_synchronize_rcu")]
pub fn poll_state(cookie: GpCookie) -> bool {
    global().poll_state(cookie)
}

/// [`Rcu::cond_synchronize`] on the [`global`] instance.
///
/// # Panics
/// As [`synchronize`], unless the grace period has elapsed already.
#[track_caller]
#[doc(alias = "cond_synchronize_rcu")]
pub fn cond_synchronize(cookie: GpCookie) {
    global().cond_synchronize(cookie);
}

/// [`Rcu::call_rcu`] on the [`global`] instance, with the same
/// guarantees: never blocks, never allocates, signal-safe.
///
/// In hardirq (signal handler, see [`crate::context::enter_hardirq`]) or
/// NMI context before the global instance exists, it does not build it
/// (that allocates, locks and spawns): the callback is parked on a static
/// lock-free list, and the instance adopts it when it is built, on the
/// process's next use of it from task context (any function of this
/// module, or the global `kfree_rcu`). Until then the callback is only
/// delayed, never lost, and a barrier ([`rcu_barrier`], or
/// `kvfree_rcu_barrier`) that starts after it was queued waits for it;
/// a program that queues callbacks only from handlers
/// should call [`global`] once at startup. (In a handler not marked with
/// `enter_hardirq` the context cannot be told and the instance is built
/// there: initialise it first.)
///
/// # Safety
/// As for [`Rcu::call_rcu`].
pub unsafe fn call_rcu(head: NonNull<RcuHead>, func: RcuCallbackFn) {
    // SAFETY: forwarded from the caller.
    unsafe { call_rcu_global(head, func) }
}

/// [`Rcu::call_rcu_box`] on the [`global`] instance; in a signal handler
/// before the instance exists, as [`call_rcu`].
///
/// ```
/// use krcu::rcu::{HasRcuHead, RcuHead};
/// use std::sync::Arc;
///
/// #[derive(HasRcuHead)]
/// struct Retired {
///     owner: Arc<()>,
///     rcu: RcuHead,
/// }
///
/// let owner = Arc::new(());
/// krcu::rcu::call_rcu_box(Box::new(Retired { owner: owner.clone(), rcu: RcuHead::new() }));
/// krcu::rcu::rcu_barrier(); // every callback queued before has run
/// assert_eq!(Arc::strong_count(&owner), 1, "dropped by its callback");
/// ```
#[doc(alias = "call_rcu")]
pub fn call_rcu_box<T: HasRcuHead>(obj: Box<T>) {
    let raw = Box::into_raw(obj);
    // SAFETY: by HasRcuHead's contract the head lies RCU_HEAD_OFFSET bytes
    // into the object, inside the allocation.
    let head = unsafe { raw.byte_add(T::RCU_HEAD_OFFSET) }.cast::<RcuHead>();
    // SAFETY: the head belongs to a leaked Box (valid, unmoved, not
    // queued), and box_callback::<T> reclaims exactly that Box.
    unsafe { call_rcu_global(NonNull::new_unchecked(head), callback::box_callback::<T>) }
}

/// [`Rcu::rcu_barrier`] on the [`global`] instance. (An example:
/// [`call_rcu_box`].)
///
/// # Panics
/// Inside a read-side section of the global instance, or in a callback on
/// its worker (as [`Rcu::rcu_barrier`]).
#[track_caller]
pub fn rcu_barrier() {
    global().rcu_barrier();
}

/// A read-side section of the process-wide instance
/// ([`krcu::rcu::global`](super::global)), from
/// [`krcu::rcu::read_lock`](super::read_lock): a [`ReadGuard`] whose
/// instance is known from its type. A [`RcuCell`](crate::cell::RcuCell) of
/// the process-wide instance takes only this guard, so the compiler refuses
/// a guard of any other instance with it (and a cell of another instance
/// refuses this one).
///
/// A plain guard of the process-wide instance converts; one of another
/// instance is handed back:
/// ```
/// use krcu::rcu::{GlobalReadGuard, Rcu};
/// let plain = krcu::Krcu::global().rcu().read_lock();
/// assert!(GlobalReadGuard::try_from(plain).is_ok());
/// let other = Rcu::new(krcu::Domain::global(), Default::default());
/// assert!(GlobalReadGuard::try_from(other.read_lock()).is_err());
/// ```
///
/// ```compile_fail,E0308
/// let krcu = krcu::Krcu::builder().arena_size(16 << 20).build().unwrap();
/// let cell = krcu::RcuCell::new(1u32); // the process-wide instance
/// let other = krcu.rcu().read_lock(); // a section of another instance
/// let _ = cell.load(&other);
/// ```
#[must_use = "the read-side section ends when the guard is dropped"]
#[doc(alias = "rcu_read_lock")]
pub struct GlobalReadGuard<'a>(ReadGuard<'a>);

impl<'a> GlobalReadGuard<'a> {
    /// Wraps a section of the global instance.
    pub(crate) fn new(guard: ReadGuard<'a>) -> Self {
        GlobalReadGuard(guard)
    }
}

impl<'a> TryFrom<ReadGuard<'a>> for GlobalReadGuard<'a> {
    /// The guard, handed back (its section still open).
    type Error = ReadGuard<'a>;

    /// A section of the process-wide instance taken as a plain guard (say
    /// through `Krcu::global().rcu()`), checked: a guard of another
    /// instance is handed back.
    fn try_from(guard: ReadGuard<'a>) -> Result<Self, Self::Error> {
        if global_id() == Some(guard.instance) {
            Ok(GlobalReadGuard(guard))
        } else {
            Err(guard)
        }
    }
}

impl<'a> From<GlobalReadGuard<'a>> for ReadGuard<'a> {
    /// The section as a plain guard (it stays open).
    fn from(guard: GlobalReadGuard<'a>) -> Self {
        guard.0
    }
}

/// A [`ReaderHandle`] of the process-wide instance, from
/// [`krcu::rcu::register_thread`](super::register_thread) or
/// [`krcu::register_thread`](crate::register_thread): its
/// [`read_lock`](Self::read_lock) is the fastest way into a section and
/// gives a [`GlobalReadGuard`], which cells of the process-wide instance
/// take. Wait-free, no allocation, no system call.
///
/// As a [`ReaderHandle`], it cannot be dropped inside a section it opened:
/// ```compile_fail,E0505
/// let h = krcu::rcu::register_thread();
/// let g = h.read_lock();
/// drop(h);
/// drop(g);
/// ```
pub struct GlobalReaderHandle(ReaderHandle<'static>);

impl GlobalReaderHandle {
    /// Wraps a handle of the global instance.
    pub(crate) fn new(handle: ReaderHandle<'static>) -> Self {
        debug_assert_eq!(global_id(), Some(handle.readers.id));
        GlobalReaderHandle(handle)
    }

    /// Enters a read-side section of the process-wide instance
    /// (`rcu_read_lock`): wait-free, no allocation, no system call.
    #[inline(always)]
    #[doc(alias = "rcu_read_lock")]
    pub fn read_lock(&self) -> GlobalReadGuard<'_> {
        GlobalReadGuard(self.0.read_lock())
    }
}

impl TryFrom<ReaderHandle<'static>> for GlobalReaderHandle {
    /// The handle, handed back.
    type Error = ReaderHandle<'static>;

    /// A handle of the process-wide instance taken as a plain one (say
    /// from `Krcu::global().register_thread()`), checked.
    fn try_from(handle: ReaderHandle<'static>) -> Result<Self, Self::Error> {
        if global_id() == Some(handle.readers.id) {
            Ok(GlobalReaderHandle(handle))
        } else {
            Err(handle)
        }
    }
}

impl core::fmt::Debug for GlobalReaderHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("GlobalReaderHandle").field(&self.0).finish()
    }
}

impl core::fmt::Debug for GlobalReadGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("GlobalReadGuard").field(&self.0).finish()
    }
}
