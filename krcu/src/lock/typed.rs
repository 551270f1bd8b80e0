//! The typed lock, `Lock<K, T>`, that every lock type is an alias of, and
//! the guard of its `_irqsave` forms.
//!
//! Uses: `context`, `domain`; in this module `kind.rs`, `raw.rs`, `stats.rs`.

use super::kind::{IrqSaveKind, LockKind};
use super::raw::RawLock;
use super::stats::LockStats;
use crate::context;
use crate::domain::Domain;
use crate::lockdep;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::panic::Location;

/// A lock of kind `K` protecting a `T`. Use it through its aliases:
/// [`RawSpinLock`](super::RawSpinLock), [`SpinLock`](super::SpinLock),
/// [`Mutex`](super::Mutex).
///
/// Every lock belongs to a [`Domain`] (the process-wide one unless built
/// with `new_in` or `named`) and to a validator class: one per construction
/// site, or per name.
pub struct Lock<K: LockKind, T: ?Sized> {
    pub(crate) inner: lock_api::Mutex<RawLock<K>, T>,
}

/// The guard of a [`Lock`]: `lock_api`'s, releasing the lock on drop.
pub type LockGuard<'a, K, T> = lock_api::MutexGuard<'a, RawLock<K>, T>;

impl<K: LockKind, T> Lock<K, T> {
    /// A lock in the process-wide domain, of the class of this call site.
    #[track_caller]
    pub fn new(value: T) -> Self {
        Self::build(Domain::global(), None, Location::caller(), value)
    }

    /// A lock in `domain`, of the class of this call site.
    #[track_caller]
    pub fn new_in(domain: &Domain, value: T) -> Self {
        Self::build(domain, None, Location::caller(), value)
    }

    /// A lock in `domain` whose class is named `name` (reports print the
    /// name, as lockdep prints `&zone->lock`).
    #[track_caller]
    pub fn named(domain: &Domain, name: &'static str, value: T) -> Self {
        Self::build(domain, Some(name), Location::caller(), value)
    }

    pub(crate) fn build(
        domain: &Domain,
        name: Option<&'static str>,
        at: &'static Location<'static>,
        value: T,
    ) -> Self {
        Lock {
            inner: lock_api::Mutex::from_raw(RawLock::build(domain, name, at), value),
        }
    }

    /// The protected value.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<K: LockKind, T: ?Sized> Lock<K, T> {
    #[inline(always)]
    fn raw(&self) -> &RawLock<K> {
        // SAFETY: only used to read statistics and properties, never to
        // lock or unlock behind the guard's back.
        unsafe { self.inner.raw() }
    }

    /// Takes the lock, waiting as its kind waits (spinning, or sleeping for
    /// a mutex and for a spinlock under PREEMPT_RT).
    #[inline]
    #[track_caller]
    #[doc(alias = "spin_lock")]
    #[doc(alias = "raw_spin_lock")]
    #[doc(alias = "mutex_lock")]
    pub fn lock(&self) -> LockGuard<'_, K, T> {
        lockdep::note_caller();
        self.inner.lock()
    }

    /// Takes the lock if it is free, without waiting. Trylocks are exempt
    /// from the validator's wait-context rule: they cannot wait.
    ///
    /// ```
    /// let lock = krcu::lock::Mutex::new(vec![1, 2]);
    /// let held = lock.lock();
    /// assert!(lock.is_locked());
    /// assert!(lock.try_lock().is_none(), "held: a trylock fails at once");
    /// drop(held);
    /// lock.try_lock().expect("free again").push(3);
    /// assert_eq!(lock.into_inner(), [1, 2, 3]);
    /// ```
    #[inline]
    #[track_caller]
    #[doc(alias = "spin_trylock")]
    pub fn try_lock(&self) -> Option<LockGuard<'_, K, T>> {
        lockdep::note_caller();
        self.inner.try_lock()
    }

    /// Whether some thread holds the lock now (a racy snapshot).
    pub fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }

    /// The protected value, through exclusive access to the lock.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    /// This lock's contention statistics.
    ///
    /// ```
    /// use krcu::lock::SpinLock;
    /// use std::sync::Arc;
    /// let lock = Arc::new(SpinLock::new(0u64));
    /// let held = lock.lock();
    /// let waiter = {
    ///     let lock = lock.clone();
    ///     std::thread::spawn(move || *lock.lock() += 1) // finds it taken
    /// };
    /// while lock.stats().contended == 0 {
    ///     std::thread::yield_now(); // until the waiter has found it taken
    /// }
    /// drop(held);
    /// waiter.join().unwrap();
    /// assert_eq!(*lock.lock(), 1);
    /// assert_eq!(lock.stats().contended, 1);
    /// ```
    pub fn stats(&self) -> LockStats {
        LockStats {
            contended: self.raw().word().contended(),
            parks: self.raw().word().parks(),
        }
    }

    /// Whether this lock sleeps when contended (a mutex; a spinlock under
    /// PREEMPT_RT).
    pub fn sleeps(&self) -> bool {
        self.raw().sleeps()
    }
}

impl<K: IrqSaveKind, T: ?Sized> Lock<K, T> {
    /// Declares interrupts off, then takes the lock; the guard releases the
    /// lock, then restores interrupts. Under PREEMPT_RT a sleeping lock's
    /// `_irqsave` form leaves interrupts on, as the kernel's does.
    ///
    /// ```
    /// use krcu::context;
    /// let lock = krcu::lock::SpinLock::new(());
    /// {
    ///     let _guard = lock.lock_irqsave();
    ///     assert!(context::irqs_disabled());
    /// }
    /// assert!(!context::irqs_disabled(), "restored when the guard drops");
    /// ```
    #[inline]
    #[track_caller]
    #[doc(alias = "spin_lock_irqsave")]
    #[doc(alias = "raw_spin_lock_irqsave")]
    pub fn lock_irqsave(&self) -> IrqSaveGuard<'_, K, T> {
        let irqs_off = !self.sleeps();
        if irqs_off {
            context::irqs_off_enter();
        }
        lockdep::note_caller();
        IrqSaveGuard {
            guard: ManuallyDrop::new(self.inner.lock()),
            irqs_off,
        }
    }

    /// The trylock form of [`lock_irqsave`](Self::lock_irqsave).
    #[inline]
    #[track_caller]
    #[doc(alias = "spin_trylock_irqsave")]
    pub fn try_lock_irqsave(&self) -> Option<IrqSaveGuard<'_, K, T>> {
        let irqs_off = !self.sleeps();
        if irqs_off {
            context::irqs_off_enter();
        }
        lockdep::note_caller();
        match self.inner.try_lock() {
            Some(g) => Some(IrqSaveGuard {
                guard: ManuallyDrop::new(g),
                irqs_off,
            }),
            None => {
                if irqs_off {
                    context::irqs_off_exit();
                }
                None
            }
        }
    }
}

impl<K: LockKind, T: Default> Default for Lock<K, T> {
    #[track_caller]
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<K: LockKind, T: ?Sized + core::fmt::Debug> core::fmt::Debug for Lock<K, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct(K::NAME).field("data", &&self.inner).finish()
    }
}

/// The guard of an `_irqsave` acquisition: releases the lock, then restores
/// interrupts.
#[must_use = "the lock is released when the guard is dropped"]
pub struct IrqSaveGuard<'a, K: LockKind, T: ?Sized> {
    guard: ManuallyDrop<LockGuard<'a, K, T>>,
    irqs_off: bool,
}

impl<K: LockKind, T: ?Sized> Deref for IrqSaveGuard<'_, K, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<K: LockKind, T: ?Sized> DerefMut for IrqSaveGuard<'_, K, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<K: LockKind, T: ?Sized> Drop for IrqSaveGuard<'_, K, T> {
    fn drop(&mut self) {
        // SAFETY: the guard is dropped exactly once, here, and not used
        // after.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        if self.irqs_off {
            context::irqs_off_exit();
        }
    }
}
