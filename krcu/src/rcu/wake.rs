//! The worker's wake word: how `call_rcu` and `start_poll` wake an idle
//! worker, from any context (a signal handler too).
//!
//! # Sleeping and waking
//! The worker sleeps on a futex word when there is nothing to do; no timer,
//! no polling. `call_rcu` and `start_poll` wake it with [`Wake::kick`]: one
//! SeqCst load that finds the worker awake almost always; only when it is
//! asleep does the kicker swap the word and issue `FUTEX_WAKE`, a system
//! call, once per sleep (the first kicker to swap it does). A raw futex
//! wake is async-signal-safe, unlike `Thread::unpark`, so `call_rcu` may
//! kick from a signal handler.
//!
//! The store-load handshake: the kicker's push (a SeqCst compare-exchange)
//! precedes its SeqCst load of the word; the worker's SeqCst store of
//! "asleep" precedes its SeqCst loads of the pending lists. In the single
//! total order of SeqCst operations one of the two loads sees the other
//! side's store: either the worker sees the callback and does not sleep, or
//! the kicker sees "asleep" and wakes it. `FUTEX_WAIT` itself rechecks the
//! word, so a wake between the check and the wait is not lost.
//!
//! Uses nothing of krcu.
#![cfg(not(loom))]

use crate::sync::atomic::{AtomicU32, Ordering};
use crossbeam_utils::CachePadded;

const AWAKE: u32 = 0;
const ASLEEP: u32 = 1;

/// The longest an idle worker sleeps before it looks for callbacks
/// queued without a wake-up.
pub(crate) const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The worker's sleep word.
pub(crate) struct Wake {
    state: CachePadded<AtomicU32>,
}

impl Wake {
    pub(crate) fn new() -> Self {
        Wake {
            state: CachePadded::new(AtomicU32::new(AWAKE)),
        }
    }

    /// Wakes the worker if it sleeps. Async-signal-safe; a system call only
    /// when the worker is asleep.
    #[inline]
    pub(crate) fn kick(&self) {
        if self.state.load(Ordering::SeqCst) == ASLEEP {
            self.kick_slow();
        }
    }

    #[cold]
    fn kick_slow(&self) {
        if self.state.swap(AWAKE, Ordering::SeqCst) == ASLEEP {
            // SAFETY: FUTEX_WAKE on a live, aligned u32 (the word lives as
            // long as the instance's shared state, which the caller holds);
            // it reads no other memory.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.state.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    1 as libc::c_int,
                );
            }
        }
    }

    /// Sleeps unless `has_work` (checked after announcing the sleep) says
    /// there is something to do. May return spuriously.
    ///
    /// It sleeps at most [`IDLE_CHECK`]: callbacks queued by a real-time
    /// thread, which makes no system call and so wakes nobody
    /// (`Rcu::call_rcu_nowake`), are found within that.
    pub(super) fn sleep(&self, has_work: impl FnOnce() -> bool) {
        self.state.store(ASLEEP, Ordering::SeqCst);
        if !has_work() {
            let timeout = libc::timespec {
                tv_sec: IDLE_CHECK.as_secs() as libc::time_t,
                tv_nsec: IDLE_CHECK.subsec_nanos() as libc::c_long,
            };
            // SAFETY: FUTEX_WAIT on a live, aligned u32 that we own a
            // reference to, with a relative timeout that outlives the
            // call: returns when woken, when the word no longer reads
            // ASLEEP, on the timeout or on a signal.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.state.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    ASLEEP as libc::c_int,
                    &timeout as *const libc::timespec,
                );
            }
        }
        self.state.store(AWAKE, Ordering::SeqCst);
    }
}
