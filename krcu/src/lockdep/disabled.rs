//! The validator compiled out (release builds without the `lockdep`
//! feature; see `krcu/build.rs`): the items of `enabled.rs`, with the same
//! signatures, as inline no-ops, so that locks carry no validator state and
//! the hooks on their paths compile to nothing. `mod.rs` picks one.
//!
//! Uses only the types the signatures name.

use super::report::HeldLockInfo;
use super::validator::HasValidator;
use super::wait::WaitType;
use core::panic::Location;

/// Formats and delivers the reports found in hardirq or NMI context: none
/// without the validator.
#[doc(alias = "printk_safe_flush")]
#[inline]
pub fn flush_deferred_reports() {}

/// The validator state every lock carries: nothing.
pub(crate) struct LockDep;

impl LockDep {
    /// Not tracked.
    pub(crate) const UNTRACKED: LockDep = LockDep;

    #[inline(always)]
    pub(crate) fn new(
        _owner: &impl HasValidator,
        _name: Option<&'static str>,
        _at: &'static Location<'static>,
        _outer: WaitType,
        _inner: WaitType,
    ) -> LockDep {
        LockDep
    }

    #[inline(always)]
    pub(crate) fn acquire(
        &self,
        _addr: usize,
        _trylock: bool,
        _at: Option<&'static Location<'static>>,
    ) {
    }

    #[inline(always)]
    pub(crate) fn release(&self, _addr: usize) {}

    #[inline(always)]
    pub(crate) fn might_sleep(&self, _at: Option<&'static Location<'static>>) {}
}

/// No caller is recorded without the validator.
#[inline(always)]
pub(crate) fn take_caller() -> Option<&'static Location<'static>> {
    None
}

#[inline(always)]
#[track_caller]
pub(crate) fn note_caller() {}

/// Declares that the caller may sleep here; compiles to nothing without
/// the validator.
#[track_caller]
#[inline]
pub fn might_sleep() {}

#[inline(always)]
pub(crate) fn might_sleep_in(_domain: &impl HasValidator, _at: &'static Location<'static>) {}

#[inline(always)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn rcu_suspicious(
    _domain: &impl HasValidator,
    _at: &'static Location<'static>,
    _what: &'static str,
) {
}

/// The locks the current thread holds, as the validator sees them: none,
/// the validator not being compiled in.
#[doc(alias = "lockdep_print_held_locks")]
pub fn held_locks() -> Vec<HeldLockInfo> {
    Vec::new()
}
