//! The lock word every krcu lock is built on, and its two ways of waiting:
//! spinning (raw spinlocks, and `spinlock_t` outside PREEMPT_RT) and parking
//! (mutexes, and `spinlock_t` under PREEMPT_RT, the rtmutex-based
//! "sleeping spinlock").
//!
//! The word has two bits, as in `parking_lot`'s mutex: `LOCKED`, and
//! `PARKED` (some thread sleeps in the parking lot keyed on this word's
//! address). A spinning lock never sets `PARKED`.
//!
//! Memory ordering: the owner takes the lock with an `Acquire`
//! compare-exchange and gives it back with a `Release` store or
//! compare-exchange, so each critical section happens-before the next one.
//! Parking is validated under the parking lot's bucket lock (`validate`
//! re-reads the word), and the unparker rewrites the word inside the
//! `unpark_one` callback, which runs under that same bucket lock; so a
//! waiter either sees the word change and does not sleep, or is in the queue
//! when the unparker looks. Woken threads re-read the word and compete
//! again (no direct hand-off), which keeps the unlock path short.
//!
//! Uses: `sync`.

use crate::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use crossbeam_utils::Backoff;

const LOCKED: u8 = 1;
const PARKED: u8 = 2;

/// How a contended acquisition went, for the statistics.
pub(crate) struct Waited {
    pub(crate) parks: u64,
}

pub(crate) struct LockWord {
    state: AtomicU8,
    /// Contended acquisitions (the slow path ran).
    contended: AtomicU64,
    /// Times a waiter went to sleep in the parking lot.
    parks: AtomicU64,
}

impl LockWord {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        LockWord {
            state: AtomicU8::new(0),
            contended: AtomicU64::new(0),
            parks: AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        LockWord {
            state: AtomicU8::new(0),
            contended: AtomicU64::new(0),
            parks: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    pub(crate) fn is_locked(&self) -> bool {
        self.state.load(Ordering::Relaxed) & LOCKED != 0
    }

    pub(crate) fn contended(&self) -> u64 {
        self.contended.load(Ordering::Relaxed)
    }

    pub(crate) fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }

    /// Spins (test, then test-and-set, with exponential backoff that yields
    /// the CPU once spinning has gone on: in userspace the holder may have
    /// been preempted) until the lock is taken.
    #[cold]
    pub(crate) fn lock_spinning(&self) {
        self.contended.fetch_add(1, Ordering::Relaxed);
        let backoff = Backoff::new();
        loop {
            while self.state.load(Ordering::Relaxed) & LOCKED != 0 {
                backoff.snooze();
                #[cfg(loom)]
                crate::sync::yield_now();
            }
            if self.try_lock() {
                return;
            }
        }
    }

    /// Spins briefly, then sleeps in the parking lot until the lock is taken.
    #[cold]
    pub(crate) fn lock_parking(&self) -> Waited {
        self.contended.fetch_add(1, Ordering::Relaxed);
        let mut waited = Waited { parks: 0 };
        let backoff = Backoff::new();
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            if state & LOCKED == 0 {
                match self.state.compare_exchange_weak(
                    state,
                    state | LOCKED,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return waited,
                    Err(s) => {
                        state = s;
                        continue;
                    }
                }
            }
            // Spin a little while nobody sleeps: the holder may be about to
            // release it.
            if state & PARKED == 0 && !backoff.is_completed() {
                backoff.snooze();
                state = self.state.load(Ordering::Relaxed);
                continue;
            }
            if state & PARKED == 0
                && let Err(s) = self.state.compare_exchange_weak(
                    state,
                    state | PARKED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
            {
                state = s;
                continue;
            }
            self.parks.fetch_add(1, Ordering::Relaxed);
            waited.parks += 1;
            self.park();
            backoff.reset();
            state = self.state.load(Ordering::Relaxed);
        }
    }

    #[cfg(not(loom))]
    fn park(&self) {
        let key = self as *const Self as usize;
        let validate = || self.state.load(Ordering::Relaxed) == LOCKED | PARKED;
        // SAFETY: the key is this word's address, unique while the word
        // lives; the callbacks neither panic nor call into the parking lot;
        // the word outlives the wait because a waiter holds a reference to
        // the lock it waits on.
        unsafe {
            parking_lot_core::park(
                key,
                validate,
                || {},
                |_, _| {},
                parking_lot_core::DEFAULT_PARK_TOKEN,
                None,
            );
        }
    }

    #[cfg(loom)]
    fn park(&self) {
        // Loom has no parking lot: waiting is yielding until the word
        // changes, which loom explores the same way.
        while self.state.load(Ordering::Relaxed) == LOCKED | PARKED {
            crate::sync::yield_now();
        }
    }

    /// Releases a lock that was taken by spinning or by `try_lock` and has no
    /// sleepers (spinning locks never have any).
    #[inline]
    pub(crate) fn unlock_spinning(&self) {
        self.state.store(0, Ordering::Release);
    }

    /// Releases a lock that may have sleepers, waking one.
    #[inline]
    pub(crate) fn unlock_parking(&self) {
        if self
            .state
            .compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        self.unlock_slow();
    }

    #[cold]
    fn unlock_slow(&self) {
        #[cfg(not(loom))]
        {
            let key = self as *const Self as usize;
            let callback = |result: parking_lot_core::UnparkResult| {
                // Runs under the bucket lock: no waiter can queue between
                // this store and the end of the unpark.
                let next = if result.have_more_threads { PARKED } else { 0 };
                self.state.store(next, Ordering::Release);
                parking_lot_core::DEFAULT_UNPARK_TOKEN
            };
            // SAFETY: the key is this word's address; the callback neither
            // panics nor calls into the parking lot.
            unsafe {
                parking_lot_core::unpark_one(key, callback);
            }
        }
        #[cfg(loom)]
        self.state.store(0, Ordering::Release);
    }
}
