//! Lock statistics: per lock (contention, parking) and per thread (how
//! many acquisitions of each kind this thread made).
//!
//! The per-thread counters are plain cells in a thread-local, so keeping
//! them costs no atomic operation; they let a test prove what a code path
//! did ("took no lock but trylocks") by reading them before and after.
//!
//! Uses nothing else of the crate.

use core::cell::Cell;

/// Statistics of one lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockStats {
    /// Acquisitions that found the lock taken and had to wait.
    pub contended: u64,
    /// Times a waiter slept (parked) instead of spinning.
    pub parks: u64,
}

/// What the current thread did with krcu's locks.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThreadLockCounters {
    /// Blocking acquisitions (`lock`, `lock_irqsave`): they may wait.
    pub blocking: u64,
    /// Trylocks that took the lock.
    pub try_ok: u64,
    /// Trylocks that found it taken.
    pub try_failed: u64,
    /// Blocking acquisitions that had to wait.
    pub contended: u64,
    /// Times this thread slept in the parking lot.
    pub parks: u64,
}

#[cfg(any(test, feature = "testing"))]
impl core::ops::Sub for ThreadLockCounters {
    type Output = ThreadLockCounters;
    fn sub(self, o: Self) -> Self {
        ThreadLockCounters {
            blocking: self.blocking - o.blocking,
            try_ok: self.try_ok - o.try_ok,
            try_failed: self.try_failed - o.try_failed,
            contended: self.contended - o.contended,
            parks: self.parks - o.parks,
        }
    }
}

struct Counters {
    blocking: Cell<u64>,
    try_ok: Cell<u64>,
    try_failed: Cell<u64>,
    contended: Cell<u64>,
    parks: Cell<u64>,
}

#[cfg(not(loom))]
thread_local! {
    static COUNTERS: Counters = const {
        Counters {
            blocking: Cell::new(0),
            try_ok: Cell::new(0),
            try_failed: Cell::new(0),
            contended: Cell::new(0),
            parks: Cell::new(0),
        }
    };
}

#[cfg(loom)]
loom::thread_local! {
    static COUNTERS: Counters = Counters {
        blocking: Cell::new(0),
        try_ok: Cell::new(0),
        try_failed: Cell::new(0),
        contended: Cell::new(0),
        parks: Cell::new(0),
    };
}

#[inline(always)]
fn bump(f: impl FnOnce(&Counters) -> &Cell<u64>) {
    COUNTERS.with(|c| {
        let cell = f(c);
        cell.set(cell.get() + 1);
    });
}

#[inline(always)]
pub(crate) fn count_blocking() {
    bump(|c| &c.blocking);
}

#[inline(always)]
pub(crate) fn count_try(ok: bool) {
    if ok {
        bump(|c| &c.try_ok)
    } else {
        bump(|c| &c.try_failed)
    }
}

#[inline]
pub(crate) fn count_wait(parks: u64) {
    COUNTERS.with(|c| {
        c.contended.set(c.contended.get() + 1);
        c.parks.set(c.parks.get() + parks);
    });
}

#[cfg(any(test, feature = "testing"))]
/// The current thread's counters since it started.
pub fn thread_counters() -> ThreadLockCounters {
    COUNTERS.with(|c| ThreadLockCounters {
        blocking: c.blocking.get(),
        try_ok: c.try_ok.get(),
        try_failed: c.try_failed.get(),
        contended: c.contended.get(),
        parks: c.parks.get(),
    })
}
