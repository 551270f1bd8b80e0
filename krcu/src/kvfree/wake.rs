//! How the kvfree threads sleep and are woken: [`Wake`], a kicked flag
//! with a condition variable (the monitor, the refill thread, each
//! reclaimer), and [`Signal`], a bare condition variable (a reclaimer
//! tells barriers it finished a chunk).
//!
//! Owns: those two. Uses: only `std`.
//!
//! # Why `std` mutexes
//! These stay `std::sync::Mutex`, not the crate's validated locks: a thread
//! parks on the `Condvar` with the mutex held, and `Condvar` needs a
//! `std::sync::MutexGuard`. They are leaves of kvfree's lock order (taken
//! last, nothing is taken under them, see `engine.rs`), so the validator
//! loses nothing it could check. The forking thread holds them across a
//! `fork` ([`Wake::hold`]), so that the child never inherits one held.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A flag set by [`kick`](Self::kick) and cleared by the sleeper.
pub(super) struct Wake {
    /// Lock order: a leaf (see `engine.rs`).
    kicked: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub(super) fn new() -> Self {
        Wake {
            kicked: Mutex::new(false),
            cv: Condvar::new(),
        }
    }

    /// Wakes the sleeper, or makes its next sleep return at once. Makes a
    /// system call: never from the call path.
    pub(super) fn kick(&self) {
        *self.lock() = true;
        self.cv.notify_one();
    }

    /// Sleeps until kicked or `timeout`, then clears the flag.
    pub(super) fn sleep(&self, timeout: Duration) {
        let g = self.lock();
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |kicked| !*kicked)
            .unwrap_or_else(|e| e.into_inner());
        *g = false;
    }

    /// The mutex, held across a `fork` by the forking thread.
    pub(super) fn hold(&self) -> MutexGuard<'_, bool> {
        self.lock()
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.kicked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A condition variable without a flag: waiters poll what they wait for
/// and wait a bounded time between looks, so a missed notification costs
/// at most that time.
pub(super) struct Signal {
    /// Lock order: a leaf (see `engine.rs`).
    lock: Mutex<()>,
    cv: Condvar,
}

impl Signal {
    pub(super) fn new() -> Self {
        Signal {
            lock: Mutex::new(()),
            cv: Condvar::new(),
        }
    }

    pub(super) fn notify_all(&self) {
        let _g = self.hold();
        self.cv.notify_all();
    }

    /// Waits for a notification, at most `timeout`.
    pub(super) fn wait(&self, timeout: Duration) {
        let g = self.hold();
        let _ = self
            .cv
            .wait_timeout(g, timeout)
            .unwrap_or_else(|e| e.into_inner());
    }

    /// The mutex, held across a `fork` by the forking thread.
    pub(super) fn hold(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}
