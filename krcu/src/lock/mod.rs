//! The kernel's lock family, with guards that release on drop.
//!
//! | krcu | kernel | waits by | holder | wait type |
//! |---|---|---|---|---|
//! | [`RawSpinLock`] | `raw_spinlock_t` | spinning | atomic | SPIN |
//! | [`SpinLock`] | `spinlock_t` | spinning; **sleeping under [`PreemptModel::Rt`](crate::context::PreemptModel::Rt)** | atomic; preemptible under Rt | CONFIG |
//! | [`Mutex`] | `struct mutex` | sleeping | preemptible | SLEEP |
//! | [`LocalLock`] | `local_lock_t` | as `SpinLock`, per CPU | as `SpinLock` | CONFIG |
//!
//! All are built on one raw lock ([`RawLock`]) that implements `lock_api`'s
//! `RawMutex`, so `lock()` returns `lock_api`'s familiar `MutexGuard`.
//! Sleeping waits park the thread with `parking_lot_core`. Every
//! acquisition goes through the validator ([`crate::lockdep`]) where it is
//! compiled in, and is counted per thread (what tests read with the
//! `testing` feature).
//!
//! "Atomic holder" means the thread's atomic depth (its preempt count) is
//! raised while it holds the lock: sleeping then is a bug the validator
//! reports.
//!
//! ```
//! use krcu::context::PreemptModel;
//! use krcu::lock::{Mutex, RawSpinLock, SpinLock};
//!
//! let counter = SpinLock::new(0u64);
//! *counter.lock() += 1;
//! assert_eq!(*counter.lock(), 1);
//!
//! // A lock's kind says how it waits, under its domain's preemption model.
//! let rt = krcu::Domain::builder().preempt_model(PreemptModel::Rt).build();
//! assert!(!RawSpinLock::new_in(&rt, ()).sleeps(), "raw spinlocks always spin");
//! assert!(SpinLock::new_in(&rt, ()).sleeps(), "spinlock_t sleeps under PREEMPT_RT");
//! assert!(!SpinLock::new(()).sleeps(), "and spins under PREEMPT (the default)");
//! assert!(Mutex::new(()).sleeps());
//! ```
//!
//! Uses nothing else of the crate.

mod kind;
mod local;
mod raw;
mod stats;
mod typed;
mod word;

pub use kind::{IrqSaveKind, Local, LockKind, RawSpin, Sleep, Spin};
pub use local::{LocalLock, LocalLockGuard, LocalLockIrqGuard};
pub use raw::RawLock;
pub use stats::LockStats;
/// What this thread did with krcu's locks, for tests that prove a path
/// took no lock but trylocks (the `testing` feature, off by default).
#[cfg(feature = "testing")]
pub use stats::{ThreadLockCounters, thread_counters};
pub use typed::{IrqSaveGuard, Lock, LockGuard};

/// `raw_spinlock_t`: always spins, and its holder is atomic.
#[doc(alias = "raw_spinlock_t")]
pub type RawSpinLock<T> = Lock<RawSpin, T>;
/// The guard of a [`RawSpinLock`].
pub type RawSpinLockGuard<'a, T> = LockGuard<'a, RawSpin, T>;

/// `spinlock_t`: spins, except under PREEMPT_RT where it sleeps.
#[doc(alias = "spinlock_t")]
pub type SpinLock<T> = Lock<Spin, T>;
/// The guard of a [`SpinLock`].
pub type SpinLockGuard<'a, T> = LockGuard<'a, Spin, T>;

/// `struct mutex`: a sleeping lock.
#[doc(alias = "struct mutex")]
pub type Mutex<T> = Lock<Sleep, T>;
/// The guard of a [`Mutex`].
pub type MutexGuard<'a, T> = LockGuard<'a, Sleep, T>;
