//! The kinds of lock: what each waits like and what the validator knows of
//! it. Each is a zero-sized marker type so that a kind's fixed properties
//! fold away at compile time.
//!
//! Uses: `context`.

use crate::context::PreemptModel;
use crate::lockdep::WaitType;

/// A kind of lock. Sealed: the four kinds are the kernel's.
pub trait LockKind: sealed::Sealed + Send + Sync + 'static {
    /// The kernel's type name, for documentation and tables.
    const NAME: &'static str;
    /// What taking it may do (`wait_type_outer`).
    const OUTER: WaitType;
    /// What may be done while holding it (`wait_type_inner`).
    const INNER: WaitType;
    /// Whether some preemption model makes it sleep.
    const MAY_SLEEP: bool;
    /// Whether it sleeps under `model`.
    fn sleeps(model: PreemptModel) -> bool;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::RawSpin {}
    impl Sealed for super::Spin {}
    impl Sealed for super::Sleep {}
    impl Sealed for super::Local {}
}

/// `raw_spinlock_t`: always spins; the holder is atomic.
#[derive(Debug)]
pub enum RawSpin {}
/// `spinlock_t`: spins, except under PREEMPT_RT, where it is a sleeping
/// lock (an rtmutex) and the holder stays preemptible.
#[derive(Debug)]
pub enum Spin {}
/// `struct mutex`: sleeps.
#[derive(Debug)]
pub enum Sleep {}
/// `local_lock_t`: a per-CPU lock, spinning except under PREEMPT_RT.
#[derive(Debug)]
pub enum Local {}

impl LockKind for RawSpin {
    const NAME: &'static str = "raw_spinlock_t";
    const OUTER: WaitType = WaitType::Spin;
    const INNER: WaitType = WaitType::Spin;
    const MAY_SLEEP: bool = false;
    fn sleeps(_: PreemptModel) -> bool {
        false
    }
}

impl LockKind for Spin {
    const NAME: &'static str = "spinlock_t";
    const OUTER: WaitType = WaitType::Config;
    const INNER: WaitType = WaitType::Config;
    const MAY_SLEEP: bool = true;
    fn sleeps(model: PreemptModel) -> bool {
        model.spinlock_sleeps()
    }
}

impl LockKind for Sleep {
    const NAME: &'static str = "struct mutex";
    const OUTER: WaitType = WaitType::Sleep;
    const INNER: WaitType = WaitType::Sleep;
    const MAY_SLEEP: bool = true;
    fn sleeps(_: PreemptModel) -> bool {
        true
    }
}

impl LockKind for Local {
    const NAME: &'static str = "local_lock_t";
    const OUTER: WaitType = WaitType::Config;
    const INNER: WaitType = WaitType::Config;
    const MAY_SLEEP: bool = true;
    fn sleeps(model: PreemptModel) -> bool {
        model.spinlock_sleeps()
    }
}

/// Kinds the kernel takes with `_irqsave` (every kind but the mutex).
pub trait IrqSaveKind: LockKind {}
impl IrqSaveKind for RawSpin {}
impl IrqSaveKind for Spin {}
impl IrqSaveKind for Local {}
