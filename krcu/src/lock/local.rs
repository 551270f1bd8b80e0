//! `LocalLock<T>`: one `T` per CPU, each behind its own lock, taken for the
//! CPU the thread runs on (the kernel's `local_lock_t` around per-CPU data).
//!
//! In the kernel a local lock on a non-RT build only disables preemption,
//! because nothing can then take the CPU's data away. A userspace thread can
//! be migrated at any instruction, so here every CPU's data has a real lock:
//! a thread migrated while holding it keeps its CPU's data to itself, and a
//! thread that lands on that CPU meanwhile waits (or, with trylock, goes
//! elsewhere). Under PREEMPT_RT the lock sleeps, as the kernel's does.
//!
//! Uses: `domain`, `percpu`; in this module `kind.rs`, `typed.rs`.

use super::kind::Local;
use super::typed::{IrqSaveGuard, Lock, LockGuard};
use crate::domain::Domain;
use crate::lockdep;
use crate::percpu::PerCpu;
use core::ops::{Deref, DerefMut};
use core::panic::Location;

/// Per-CPU data behind a per-CPU lock.
///
/// ```
/// use krcu::lock::LocalLock;
/// let domain = krcu::Domain::builder().cpus(4).build();
/// let counters = LocalLock::new_in(&domain, |cpu| cpu * 100);
/// assert_eq!(counters.cpus(), 4);
/// let cpu = {
///     let mut mine = counters.lock(); // the CPU this thread runs on
///     *mine += 1;
///     mine.cpu()
/// };
/// assert!(cpu < 4);
/// assert_eq!(*counters.cpu_lock(cpu).lock(), cpu * 100 + 1);
/// ```
#[doc(alias = "local_lock_t")]
pub struct LocalLock<T> {
    slots: PerCpu<Lock<Local, T>>,
}

/// The guard of a [`LocalLock`]: the CPU's data, and which CPU it is.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LocalLockGuard<'a, T> {
    cpu: usize,
    guard: LockGuard<'a, Local, T>,
}

/// The guard of [`LocalLock::lock_irqsave`].
#[must_use = "the lock is released when the guard is dropped"]
pub struct LocalLockIrqGuard<'a, T> {
    cpu: usize,
    guard: IrqSaveGuard<'a, Local, T>,
}

impl<T> LocalLock<T> {
    /// One `T` per CPU of the process-wide domain, built by `init(cpu)`.
    #[track_caller]
    pub fn new(init: impl FnMut(usize) -> T) -> Self {
        Self::build(Domain::global(), None, Location::caller(), init)
    }

    /// One `T` per CPU of `domain`, built by `init(cpu)`.
    #[track_caller]
    pub fn new_in(domain: &Domain, init: impl FnMut(usize) -> T) -> Self {
        Self::build(domain, None, Location::caller(), init)
    }

    /// As [`new_in`](Self::new_in), with a class name for reports.
    #[track_caller]
    pub fn named(domain: &Domain, name: &'static str, init: impl FnMut(usize) -> T) -> Self {
        Self::build(domain, Some(name), Location::caller(), init)
    }

    fn build(
        domain: &Domain,
        name: Option<&'static str>,
        at: &'static Location<'static>,
        mut init: impl FnMut(usize) -> T,
    ) -> Self {
        // Every CPU's lock is of the one class of this construction site.
        LocalLock {
            slots: PerCpu::new(domain.cpus(), |cpu| {
                Lock::build(domain, name, at, init(cpu))
            }),
        }
    }

    /// How many CPUs it has data for.
    pub fn cpus(&self) -> usize {
        self.slots.cpus()
    }

    /// Takes the lock of the CPU the thread runs on.
    #[track_caller]
    #[doc(alias = "local_lock")]
    pub fn lock(&self) -> LocalLockGuard<'_, T> {
        let (cpu, slot) = self.slots.current();
        lockdep::note_caller();
        LocalLockGuard {
            cpu,
            guard: slot.inner.lock(),
        }
    }

    /// Takes the current CPU's lock if it is free.
    #[track_caller]
    pub fn try_lock(&self) -> Option<LocalLockGuard<'_, T>> {
        let (cpu, slot) = self.slots.current();
        lockdep::note_caller();
        slot.inner
            .try_lock()
            .map(|guard| LocalLockGuard { cpu, guard })
    }

    /// Declares interrupts off (except under PREEMPT_RT) and takes the
    /// current CPU's lock.
    #[track_caller]
    #[doc(alias = "local_lock_irqsave")]
    pub fn lock_irqsave(&self) -> LocalLockIrqGuard<'_, T> {
        let (cpu, slot) = self.slots.current();
        LocalLockIrqGuard {
            cpu,
            guard: slot.lock_irqsave(),
        }
    }

    /// The lock of a given CPU (for draining a remote CPU's data).
    pub fn cpu_lock(&self, cpu: usize) -> &Lock<Local, T> {
        self.slots.get(cpu)
    }
}

impl<T> LocalLockGuard<'_, T> {
    /// The CPU whose data this is.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl<T> LocalLockIrqGuard<'_, T> {
    /// The CPU whose data this is.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl<T> Deref for LocalLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}
impl<T> DerefMut for LocalLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}
impl<T> Deref for LocalLockIrqGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}
impl<T> DerefMut for LocalLockIrqGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}
