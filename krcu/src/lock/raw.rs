//! The raw lock under every krcu lock type: a [`LockWord`], the validator's
//! map, and the behaviour of its kind (spin or sleep, atomic holder or not),
//! implementing `lock_api`'s [`RawMutex`] so the guards are `lock_api`'s.
//!
//! Uses: `context`, `domain`; in this module `kind.rs`, `stats.rs`,
//! `word.rs`.

use super::kind::LockKind;
use super::stats;
use super::word::LockWord;
use crate::context;
use crate::domain::Domain;
use crate::lockdep::{self, LockDep};
use core::marker::PhantomData;
use core::panic::Location;
use lock_api::{GuardNoSend, RawMutex};

/// The raw lock of kind `K`. Users meet it only as a type parameter of the
/// guards; build locks with the typed wrappers in [`crate::lock`].
pub struct RawLock<K: LockKind> {
    word: LockWord,
    /// Whether this lock sleeps when contended (fixed at construction from
    /// the kind and the domain's preemption model).
    sleeps: bool,
    dep: LockDep,
    _kind: PhantomData<K>,
}

impl<K: LockKind> RawLock<K> {
    pub(crate) fn build(
        domain: &Domain,
        name: Option<&'static str>,
        at: &'static Location<'static>,
    ) -> Self {
        RawLock {
            word: LockWord::new(),
            sleeps: K::sleeps(domain.preempt_model()),
            dep: LockDep::new(domain, name, at, K::OUTER, K::INNER),
            _kind: PhantomData,
        }
    }

    /// Whether this lock sleeps (parks) when contended; folds to `false` at
    /// compile time for kinds that never sleep.
    #[inline(always)]
    pub(crate) fn sleeps(&self) -> bool {
        K::MAY_SLEEP && self.sleeps
    }

    #[inline(always)]
    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    pub(crate) fn word(&self) -> &LockWord {
        &self.word
    }
}

// SAFETY: `lock` and `try_lock` return only once the word's LOCKED bit was
// set by this thread with an Acquire compare-exchange, and `unlock` clears
// it with Release: at most one holder at a time, and each critical section
// happens-before the next.
unsafe impl<K: LockKind> RawMutex for RawLock<K> {
    #[cfg(not(loom))]
    const INIT: Self = RawLock {
        word: LockWord::new(),
        sleeps: false,
        dep: LockDep::UNTRACKED,
        _kind: PhantomData,
    };
    // Loom's atomics cannot be built in a constant. krcu never uses INIT
    // (every lock is built with `from_raw`), so this is never evaluated.
    #[cfg(loom)]
    const INIT: Self = panic!("krcu locks are built with RawLock::build");

    // The holder's atomic depth and the validator's held-lock stack are
    // per thread: the guard must be dropped on the thread that took it.
    type GuardMarker = GuardNoSend;

    #[inline]
    fn lock(&self) {
        let at = lockdep::take_caller();
        stats::count_blocking();
        if self.sleeps() {
            self.dep.might_sleep(at);
            self.dep.acquire(self.addr(), false, at);
            if !self.word.try_lock() {
                let waited = self.word.lock_parking();
                stats::count_wait(waited.parks);
            }
        } else {
            self.dep.acquire(self.addr(), false, at);
            context::atomic_enter();
            if !self.word.try_lock() {
                self.word.lock_spinning();
                stats::count_wait(0);
            }
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        let at = lockdep::take_caller();
        let spins = !self.sleeps();
        if spins {
            context::atomic_enter();
        }
        let ok = self.word.try_lock();
        stats::count_try(ok);
        if ok {
            self.dep.acquire(self.addr(), true, at);
        } else if spins {
            context::atomic_exit();
        }
        ok
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.dep.release(self.addr());
        if self.sleeps() {
            self.word.unlock_parking();
        } else {
            self.word.unlock_spinning();
            context::atomic_exit();
        }
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.word.is_locked()
    }
}
