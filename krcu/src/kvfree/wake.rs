//! How the kvfree threads sleep and are woken: [`Wake`], a futex word
//! that remembers a kick (the monitor, the refill thread, each
//! reclaimer) and tells whether its thread sleeps idle, and [`Signal`], a
//! bare condition variable (a reclaimer tells barriers it finished a
//! chunk).
//!
//! Owns: those two. Uses: only `std` and `libc` (`futex`).
//!
//! # The word
//! [`Wake`] is one `u32`: `AWAKE`, `KICKED` (a kick came while the thread
//! was awake: its next sleep returns at once), `ASLEEP` (a short, timed
//! sleep: a poll while work is pending) or `IDLE` (a long sleep: nothing
//! was pending). [`kick`](Wake::kick) swaps in `KICKED` and, only when it
//! swapped out a sleeping state, makes the `FUTEX_WAKE` system call. A
//! raw futex wake takes no lock and is async-signal-safe (unlike a
//! `Condvar`, whose mutex a signal handler could find held by its own
//! thread). Nothing needs holding across a `fork`: a futex has no owner.
//!
//! # Sleeping idle without losing a wake-up
//! [`sleep_idle`](Wake::sleep_idle) is the classic handshake. The sleeper
//! (1) announces `IDLE` with a SeqCst compare-exchange, (2) issues a SeqCst
//! fence and re-checks for work (the caller's predicate, whose loads may be
//! Relaxed or under the locks the producers publish under), (3) waits on
//! the futex only if the word still reads `IDLE` (`FUTEX_WAIT` compares
//! atomically in the kernel). A producer (a), publishes its work (a store,
//! or a lock release), (b) issues a SeqCst fence, (c) loads the word and,
//! if it reads `IDLE`, kicks ([`kick_if_idle`](Wake::kick_if_idle)). Both
//! fences are in the single total order S of SeqCst operations: if the
//! producer's fence (b) comes first, the sleeper's re-check (after its
//! fence (2)) sees the work and it does not sleep; if the sleeper's fence
//! comes first, the producer's load (c) sees `IDLE` (or a later value, a
//! kick's `KICKED`, when someone else woke it) and it kicks. Either the
//! work is seen or the sleeper is woken: no lost wake-up. A kick that
//! lands between (2) and (3) leaves `KICKED` in the word, so `FUTEX_WAIT`
//! returns at once. (Where the producer publishes under a lock that the
//! re-check takes too, the lock alone orders them: the sleeper's announce
//! is sequenced before its lock, the producer's load after its unlock.)

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst, fence};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const AWAKE: u32 = 0;
const KICKED: u32 = 1;
const ASLEEP: u32 = 2;
const IDLE: u32 = 3;

/// A kick-remembering sleep word (see the module doc).
pub(super) struct Wake {
    state: AtomicU32,
    /// Sleeps that ended (woken, timed out or returned at once): what an
    /// idle thread costs, for tests (Relaxed: a count, nothing hangs on it).
    wakeups: AtomicU64,
}

impl Wake {
    pub(super) fn new() -> Self {
        Wake {
            state: AtomicU32::new(AWAKE),
            wakeups: AtomicU64::new(0),
        }
    }

    /// Wakes the sleeper, or makes its next sleep return at once. A
    /// system call only when the thread sleeps: never from the call path
    /// (which uses [`kick_if_idle`](Self::kick_if_idle) on its slow path).
    pub(super) fn kick(&self) {
        if matches!(self.state.swap(KICKED, SeqCst), ASLEEP | IDLE) {
            futex_wake(&self.state);
        }
    }

    /// The producer's side of the idle handshake (module doc): call after
    /// publishing work and a SeqCst fence ([`fence_then_idle`](Self::fence_then_idle)
    /// does both checks). Kicks only a thread asleep idle.
    #[cold]
    pub(super) fn kick_if_idle(&self) -> bool {
        if self
            .state
            .compare_exchange(IDLE, KICKED, SeqCst, SeqCst)
            .is_ok()
        {
            futex_wake(&self.state);
            return true;
        }
        false
    }

    /// The producer's check, after it published its work: a SeqCst fence,
    /// then one load. True when the thread sleeps idle (the caller then
    /// kicks it, or leaves the work for its timed wake-up).
    #[inline]
    pub(super) fn fence_then_idle(&self) -> bool {
        fence(SeqCst);
        self.state.load(SeqCst) == IDLE
    }

    /// Sleeps until kicked or `timeout`, then clears the kick.
    pub(super) fn sleep(&self, timeout: Duration) {
        if self
            .state
            .compare_exchange(AWAKE, ASLEEP, SeqCst, SeqCst)
            .is_ok()
        {
            self.wait(ASLEEP, timeout);
        }
        self.clear();
        self.wakeups.fetch_add(1, Relaxed);
    }

    #[cfg(any(test, feature = "testing"))]
    /// Sleeps that ended so far.
    pub(super) fn wakeups(&self) -> u64 {
        self.wakeups.load(Relaxed)
    }

    /// Sleeps long (`timeout`) unless `has_work`, checked after announcing
    /// the idle sleep, finds work. Returns false when the re-check found
    /// work (the caller then sleeps its short period instead), true when it
    /// slept or a kick came first (the caller goes round at once). See the
    /// module doc for why no wake-up is lost. `before_wait` runs between
    /// the re-check and the wait (a test hook).
    pub(super) fn sleep_idle(
        &self,
        timeout: Duration,
        has_work: impl FnOnce() -> bool,
        before_wait: impl FnOnce(),
    ) -> bool {
        if self
            .state
            .compare_exchange(AWAKE, IDLE, SeqCst, SeqCst)
            .is_err()
        {
            // Kicked while awake: go round again at once.
            self.clear();
            self.wakeups.fetch_add(1, Relaxed);
            return true;
        }
        fence(SeqCst);
        if has_work() {
            // Back from IDLE unless a kick came meanwhile; either way the
            // caller goes round again (a kick's flag is cleared by the
            // next sleep, which then returns at once).
            let _ = self.state.compare_exchange(IDLE, AWAKE, SeqCst, SeqCst);
            return false;
        }
        before_wait();
        self.wait(IDLE, timeout);
        self.clear();
        self.wakeups.fetch_add(1, Relaxed);
        true
    }

    /// Back to `AWAKE`, consuming any kick. A swap, not a store: a
    /// read-modify-write reads the latest value, so a kick that came
    /// meanwhile is read (and its kicker's earlier stores are seen by this
    /// thread's next look for work) rather than overwritten unseen.
    fn clear(&self) {
        self.state.swap(AWAKE, SeqCst);
    }

    /// Waits while the word reads `expected`, at most `timeout`.
    fn wait(&self, expected: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.state.load(SeqCst) == expected {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            futex_wait(&self.state, expected, left);
        }
    }
}

/// `FUTEX_WAIT` on `word` while it reads `expected`, at most `timeout`.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a live, aligned u32 borrowed for the call, with
    // a relative timeout that lives on this stack; it returns when woken,
    // when the word no longer reads `expected`, on a signal or a timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected as libc::c_int,
            &ts as *const libc::timespec,
        );
    }
}

/// `FUTEX_WAKE` of one waiter on `word`.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32 borrowed for the call; it
    // reads no other memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1 as libc::c_int,
        );
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
