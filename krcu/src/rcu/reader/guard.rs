//! The read side: entering a section on a slot, the guard that ends it,
//! and the handle that holds a thread's registration.
//!
//! Uses the registry (and, through its methods, the registration of the
//! calling thread), the slots and the handshake.

use super::super::handshake;
use super::cache::CACHE;
use super::registry::Readers;
use super::slot::Slot;
use crate::context;
use crate::lockdep;
use crate::sync::atomic::Ordering;
use core::marker::PhantomData;
use std::sync::Arc;

/// Enters a read-side section on `slot` (the shared fast path).
#[inline(always)]
pub(crate) fn lock<'a>(readers: &Readers, slot: &'a Slot) -> ReadGuard<'a> {
    handshake::read_lock(&slot.ctr, &readers.gp_ctr, slot.full_fence);
    if lockdep::COMPILED {
        context::rcu_read_enter();
    }
    ReadGuard {
        slot,
        instance: readers.id,
        _not_send: PhantomData,
    }
}

/// An RCU read-side critical section, ended when dropped
/// (`rcu_read_unlock`).
///
/// Sections nest. While one is open, a grace period of its instance that
/// began before it cannot end, so whatever the section could reach stays
/// allocated. Do not sleep inside it (the validator reports it); the guard
/// is tied to its thread.
///
/// ```
/// let rcu = krcu::rcu::Rcu::new(krcu::Domain::global(), Default::default());
/// let guard = rcu.read_lock();
/// let cookie = rcu.start_poll();
/// std::thread::sleep(std::time::Duration::from_millis(10));
/// assert!(!rcu.poll_state(cookie), "an open section holds the grace period off");
/// drop(guard);
/// rcu.cond_synchronize(cookie);
/// assert!(rcu.poll_state(cookie));
/// ```
///
/// # Misuse the compiler refuses
/// A guard cannot move to another thread, nor be shared with one:
/// ```compile_fail,E0277
/// fn send<T: Send>(_: T) {}
/// send(krcu::rcu::read_lock());
/// ```
/// ```compile_fail,E0277
/// fn sync<T: Sync>() {}
/// sync::<krcu::rcu::ReadGuard<'static>>();
/// ```
/// It cannot outlive its instance:
/// ```compile_fail,E0505
/// use krcu::rcu::{Rcu, RcuConfig};
/// let rcu = Rcu::new(krcu::Domain::global(), RcuConfig::default());
/// let g = rcu.read_lock();
/// drop(rcu);
/// drop(g);
/// ```
#[must_use = "the read-side section ends when the guard is dropped"]
#[doc(alias = "rcu_read_lock")]
pub struct ReadGuard<'a> {
    slot: &'a Slot,
    /// The id of the instance whose section this is (ids are never
    /// reused), so that [`RcuCell`](crate::cell::RcuCell) can refuse a
    /// guard of another instance.
    pub(in crate::rcu) instance: u64,
    _not_send: PhantomData<*const ()>,
}

impl ReadGuard<'_> {
    /// The id of the guard's instance (see `Rcu::id`).
    #[inline(always)]
    pub(crate) fn instance_id(&self) -> u64 {
        self.instance
    }
}

impl Drop for ReadGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if lockdep::COMPILED {
            context::rcu_read_exit();
        }
        handshake::read_unlock(&self.slot.ctr, self.slot.full_fence);
    }
}

impl core::fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadGuard")
            .field(
                "nesting",
                &(self.slot.ctr.load(Ordering::Relaxed) & handshake::NEST_MASK),
            )
            .finish()
    }
}

/// The calling thread's registration with one instance
/// ([`Rcu::register_thread`](crate::rcu::Rcu::register_thread)): its
/// [`read_lock`](Self::read_lock) goes straight to the thread's slot, and
/// neither it nor the instance's `read_lock` allocates while the handle
/// lives. Tied to its thread.
///
/// ```
/// use krcu::rcu::{Rcu, RcuConfig};
/// let rcu = Rcu::new(krcu::Domain::global(), RcuConfig::default());
/// let handle = rcu.register_thread();
/// let outer = handle.read_lock();
/// let inner = rcu.read_lock(); // the instance's read_lock uses the same slot
/// assert!(rcu.is_reading());
/// drop((inner, outer));
/// assert!(!rcu.is_reading());
/// assert_eq!(rcu.stats().readers, 1, "registered while the handle lives");
/// ```
///
/// # Misuse the compiler refuses
/// A handle cannot move to another thread (its slot is its thread's):
/// ```compile_fail,E0277
/// fn send<T: Send>(_: T) {}
/// send(krcu::rcu::register_thread());
/// ```
/// It cannot be dropped inside a section it opened:
/// ```compile_fail,E0505
/// let h = krcu::rcu::global().register_thread();
/// let g = h.read_lock();
/// drop(h);
/// drop(g);
/// ```
/// nor outlive its instance (with a section open or not):
/// ```compile_fail,E0505
/// use krcu::rcu::{Rcu, RcuConfig};
/// let rcu = Rcu::new(krcu::Domain::global(), RcuConfig::default());
/// let h = rcu.register_thread();
/// let g = h.read_lock();
/// drop(rcu);
/// drop(g);
/// ```
pub struct ReaderHandle<'a> {
    pub(in crate::rcu) readers: Arc<Readers>,
    pub(super) index: usize,
    /// The slot's tenure when the handle's registration took it.
    pub(super) tenure: u64,
    pub(super) slot: *const Slot,
    /// The handle borrows its instance, so that neither it nor a guard it
    /// opened can outlive the instance (whose drop waits for grace
    /// periods, which an open section of its own thread would hold up).
    pub(super) _instance: PhantomData<&'a ()>,
}

impl ReaderHandle<'_> {
    pub(crate) fn new(readers: &Arc<Readers>) -> Self {
        let (index, tenure) = readers.register_current(1);
        let slot: *const Slot = readers.slot(index);
        let _ = CACHE.try_with(|c| c.set(readers.id, slot));
        ReaderHandle {
            readers: readers.clone(),
            index,
            tenure,
            slot,
            _instance: PhantomData,
        }
    }

    /// Enters a read-side section (`rcu_read_lock`): wait-free, no
    /// allocation, no system call.
    #[inline(always)]
    #[doc(alias = "rcu_read_lock")]
    pub fn read_lock(&self) -> ReadGuard<'_> {
        // SAFETY: the slot stays registered to this thread while the handle
        // lives (the handle keeps the registry alive and holds a handle
        // count that keeps the slot from being released).
        lock(&self.readers, unsafe { &*self.slot })
    }
}

impl Drop for ReaderHandle<'_> {
    fn drop(&mut self) {
        self.readers.drop_handle(self.index, self.tenure);
    }
}

impl core::fmt::Debug for ReaderHandle<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReaderHandle")
            .field("instance", &self.readers.id)
            .field("slot", &self.index)
            .finish()
    }
}
