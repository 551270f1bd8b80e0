//! The state an instance shares with its worker thread (the kernel's
//! `rcu_state`): settings, grace-period engine, per-CPU pending lists, the
//! worker's wake word, the barrier's state and the counters.
//!
//! Data, with no behaviour of its own: the instance (`instance.rs`) builds
//! and uses it, the worker (`worker.rs`) runs on it, the barrier
//! (`barrier.rs`) queues on it; it uses none of them.
#![cfg(not(loom))]

use super::callback::{PendingList, RcuHead, SegCbList};
use super::gp::GpEngine;
use super::wake::Wake;
use crate::domain::Domain;
use crate::percpu::PerCpu;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Settings of an [`Rcu`](super::Rcu) instance, built from `Default` with
/// one setter per setting.
///
/// ```
/// use krcu::rcu::{Rcu, RcuConfig};
/// use std::time::Duration;
/// let config = RcuConfig::default()
///     .gp_interval(Duration::from_millis(5)) // batch callbacks more
///     .batch_limit(100)
///     .force_fallback_fences(true); // readers fence instead of membarrier
/// let rcu = Rcu::new(krcu::Domain::global(), config);
/// assert!(!rcu.stats().membarrier);
/// rcu.synchronize();
/// ```
#[derive(Debug, Clone)]
pub struct RcuConfig {
    pub(super) stall_timeout: Duration,
    pub(super) batch_limit: usize,
    pub(super) gp_interval: Duration,
    pub(super) force_fallback_fences: bool,
    pub(super) worker_name: String,
}

impl Default for RcuConfig {
    fn default() -> Self {
        RcuConfig {
            stall_timeout: Duration::from_secs(21),
            batch_limit: 1000,
            gp_interval: Duration::from_millis(1),
            force_fallback_fences: false,
            worker_name: "krcu-rcu-gp".to_owned(),
        }
    }
}

impl RcuConfig {
    /// How long a grace period may wait for a reader before a stall warning
    /// names it (default 21 s, the kernel's `CONFIG_RCU_CPU_STALL_TIMEOUT`).
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// How many ready callbacks per CPU the worker invokes in one softirq
    /// batch before it looks for new work (default 1000; the kernel's
    /// `blimit`).
    pub fn batch_limit(mut self, limit: usize) -> Self {
        self.batch_limit = limit.max(1);
        self
    }

    /// The least time between the end of one grace period the worker runs
    /// (for callbacks and pollers) and the start of its next, so that a
    /// stream of callbacks is batched (default 1 ms; zero runs them back to
    /// back). `synchronize` is not affected.
    pub fn gp_interval(mut self, interval: Duration) -> Self {
        self.gp_interval = interval;
        self
    }

    /// Use full fences in readers and writer even where membarrier works
    /// (default off; for tests and comparisons).
    pub fn force_fallback_fences(mut self, on: bool) -> Self {
        self.force_fallback_fences = on;
        self
    }

    /// The worker thread's name (default `krcu-rcu-gp`).
    pub fn worker_name(mut self, name: impl Into<String>) -> Self {
        self.worker_name = name.into();
        self
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) taken: AtomicU64,
    pub(super) invoked: AtomicU64,
    pub(super) panics: AtomicU64,
    pub(super) barriers: AtomicU64,
}

/// The barrier's callback head, one per CPU.
#[repr(C)]
pub(super) struct BarrierHead {
    pub(super) head: RcuHead,
    pub(super) barrier: *const Barrier,
}

// SAFETY: `barrier` points into the Arc that owns the head; it is only read
// (to reach the Barrier's atomics and lock), from any thread.
unsafe impl Send for BarrierHead {}
// SAFETY: as for Send; `head` is Sync.
unsafe impl Sync for BarrierHead {}

/// `rcu_barrier`'s state (`rcu_state.barrier_*`).
pub(super) struct Barrier {
    /// `barrier_mutex`.
    pub(super) mutex: Mutex<()>,
    /// `barrier_sequence`, an rcu_seq.
    pub(super) seq: AtomicU64,
    /// `barrier_cpu_count`.
    pub(super) remaining: AtomicUsize,
    pub(super) done: Mutex<()>,
    pub(super) cv: Condvar,
    pub(super) heads: PerCpu<BarrierHead>,
}

/// State shared by an instance's handle and its worker.
pub(super) struct Shared {
    pub(super) domain: Domain,
    pub(super) config: RcuConfig,
    pub(super) gp: GpEngine,
    pub(super) pending: PerCpu<PendingList>,
    pub(super) wake: Wake,
    pub(super) stop: AtomicBool,
    pub(super) barrier: Arc<Barrier>,
    pub(super) stats: Counters,
    /// The worker thread; replaced in the child of a `fork`.
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
    /// The worker's callback lists while it is parked for a `fork`: the
    /// parent's worker takes them back, the child's new worker takes them
    /// over.
    pub(super) handoff: Mutex<Option<Vec<SegCbList>>>,
}
