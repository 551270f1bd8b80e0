//! [`CellInstance`]: which instance protects a cell's values, and the guard
//! type its readers load with. Uses the instance (`Krcu`, the process-wide
//! one) and the `rcu` module's guards.

use crate::instance::Krcu;
use crate::rcu::{GlobalReadGuard, HasRcuHead, ReadGuard};
use core::ptr::NonNull;
use std::sync::Arc;

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
pub(super) mod sealed {
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

        /// `kfree_rcu_slab` of a slab object by pointer on this instance;
        /// `false` (nothing done) in NMI context.
        ///
        /// # Safety
        /// As `Krcu::kfree_rcu_slab_raw`.
        unsafe fn retire_slab<T: Send + 'static>(&self, obj: NonNull<T>) -> bool;
    }
}

/// The process-wide instance, as a cell's [`CellInstance`]: its cells
/// ([`RcuCell::new`](super::RcuCell::new)) take the guards of
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

    unsafe fn retire_slab<T: Send + 'static>(&self, obj: NonNull<T>) -> bool {
        // SAFETY: the caller's contract, passed on.
        unsafe { crate::instance::kfree_rcu_slab_raw_global(obj) }
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

    unsafe fn retire_slab<T: Send + 'static>(&self, obj: NonNull<T>) -> bool {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.kfree_rcu_slab_raw(obj) }
    }
}
