//! `kfree_rcu` / `kvfree_rcu`: objects retired to be freed after an RCU
//! grace period, batched into per-CPU, page-sized pointer blocks and freed
//! in bulk.
//!
//! # The kernel's design, in userspace
//! - A **block** (`block.rs`) is one 4 KiB page from krcu's page allocator:
//!   a header and 506 one-word pointers, all objects of one *channel* (one
//!   way of freeing: `Box<T>` of one `T`).
//! - Each thread in task or softirq context first appends to a **front
//!   block** of its own (`front.rs`) with plain stores; only a full block
//!   goes to the per-CPU state, under its trylock. A thread's front is made
//!   on a call where it may sleep, or ahead by
//!   [`Krcu::register_thread`](crate::Krcu::register_thread); until then it
//!   takes the per-CPU path.
//! - Each CPU has a **`krc`** (`krc.rs`) behind a raw spinlock, taken with
//!   trylock on the call path: the current block of each channel, a cache
//!   of spare blocks, and a lock-free `rcu_head` list for objects that find
//!   no block (the two-argument form's fallback: the object embeds an
//!   [`RcuHead`](crate::rcu::RcuHead)).
//! - Where a new block's page comes from with that raw lock held is the
//!   **policy** ([`Policy`]), the 2020 kfree_rcu thread's options made
//!   selectable (docs/history.md).
//! - The **monitor** (`monitor.rs`, run by `worker.rs`) hands full blocks, and any that waited a
//!   drain delay, to RCU in batches (two per CPU at most), freeing at once
//!   blocks whose grace period already elapsed; after the grace period an
//!   RCU callback frees the batch in bulk and returns block pages to the
//!   cache or the page allocator.
//!   Each CPU's reclaimer (`reclaim.rs`) frees what the callback put on
//!   the CPU's **ready queue** (`ready.rs`).
//! - The **refill worker** tops the caches up outside any raw lock; a
//!   **shrinker** gives spare blocks back under memory pressure
//!   (`cache.rs`).
//! - `engine.rs` puts the parts together and writes down kvfree's lock
//!   order; `worker.rs` starts and stops the threads.
//!
//! # Real-time threads
//! Real-time is a property of a thread, not of an instance. A thread that
//! declares itself real-time ([`Krcu::register_thread`](crate::Krcu::register_thread),
//! or [`context::set_realtime`](crate::context::set_realtime)) never runs a
//! destructor, never calls the global allocator and never takes a blocking
//! lock inside `kfree_rcu`, whatever the instance's [`Assist`] setting: the
//! flood brake is left to the other threads, and a front block it lacks is
//! not made on the call path (the per-CPU path serves it). With its front
//! made ahead (`register_thread`) it makes no system call either. The
//! exception is [`Policy::Nowait`], kept to show the bug the 2020
//! kfree_rcu thread showed (it may take the zone lock).
//!
//! Use it through [`Krcu`](crate::Krcu): [`Krcu::kfree_rcu`](crate::Krcu::kfree_rcu),
//! [`Krcu::kvfree_rcu_mightsleep`](crate::Krcu::kvfree_rcu_mightsleep),
//! [`Krcu::kvfree_rcu_barrier`](crate::Krcu::kvfree_rcu_barrier).
//!
//! Uses nothing else of the crate.

// The files, each owning one concern (its top comment says what it owns
// and what it may use); the import graph is acyclic, from the leaves up:
// block, channels, policy, stats, steal, wake -> ready -> batch -> krc,
// front -> shared -> fronts, cache, reclaim -> monitor, call -> engine ->
// worker.
mod batch;
pub(crate) mod block;
mod cache;
mod call;
pub(crate) mod channels;
pub(crate) mod engine;
mod front;
mod fronts;
mod krc;
mod monitor;
mod policy;
mod ready;
mod reclaim;
mod shared;
mod stats;
pub(crate) mod steal;
#[cfg(test)]
mod tests;
mod wake;
pub(crate) mod worker;

pub use policy::{ParsePolicyError, Policy};
pub use stats::KvfreeStats;

use std::time::Duration;

/// Settings of the `kfree_rcu` machinery (what the limits mean when callers
/// outrun grace periods: the [guide](crate::guide#memory-bounds-and-the-flood-brake)).
///
/// ```
/// use krcu::kvfree::{Assist, KvfreeConfig, Policy};
/// use std::time::Duration;
/// let config = KvfreeConfig::default()
///     .policy(Policy::CacheRefill)
///     .cache_blocks(8)
///     .refill_mark(4)
///     .assist(Assist::Always)
///     .drain_delay(Duration::from_millis(1));
/// let krcu = krcu::Krcu::builder().cpus(1).arena_size(16 << 20).kvfree_config(config).build().unwrap();
/// assert_eq!(krcu.kvfree_config().cache_blocks, 8);
/// // The refill worker fills each CPU's cache before the first call.
/// assert!(krcu.stats().blocks_cached >= 8);
/// // Settings that contradict each other are refused by `build`.
/// let bad = KvfreeConfig::default().cache_blocks(2).refill_mark(3);
/// let err = krcu::Krcu::builder().kvfree_config(bad).build().unwrap_err();
/// assert!(matches!(err, krcu::BuildError::RefillMark { refill_mark: 3, cache_blocks: 2 }));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KvfreeConfig {
    /// How a block page is found under the raw lock.
    pub policy: Policy,
    /// Spare blocks kept per CPU by the refill policies (mainline's
    /// `rcu_min_cached_objs`, default 5).
    pub cache_blocks: usize,
    /// Ask for a refill when fewer spare blocks than this are left.
    pub refill_mark: usize,
    /// The most spare blocks a CPU keeps when calls come fast.
    pub max_cache_blocks: usize,
    /// How long objects may wait in a partly filled block before they are
    /// handed to RCU anyway (`KFREE_DRAIN_JIFFIES`). Default 5 ms, chosen by
    /// measurement (`krcu scale --drain-delay`, 2 threads x 800 k objects on
    /// the 2-core development machine): throughput is the same from 1 ms to
    /// 200 ms (full blocks are handed over at once whatever the delay), and
    /// 5 ms gave the lowest peak pending memory (about 10-12 MiB, against
    /// 16-18 MiB at 10 ms and up to 85 MiB at 200 ms, where everything
    /// waited in one batch). While objects wait it is also the monitor's
    /// poll period; when nothing is pending the workers sleep idle
    /// ([`idle_poll`](Self::idle_poll)).
    pub drain_delay: Duration,
    /// How often the worker looks for work while anything is pending.
    pub active_poll: Duration,
    /// How long the worker threads sleep when nothing is pending, unless
    /// woken (default 1 s): an idle instance wakes a few times a second and
    /// costs well under a millisecond of CPU per second.
    ///
    /// A `kfree_rcu` on a thread that is not real-time, in task or softirq
    /// context, wakes the monitor when it installs a block after a quiet
    /// spell (one `FUTEX_WAKE`, only then), so its objects wait a drain
    /// delay as usual. A real-time thread
    /// ([`Krcu::register_thread`](crate::Krcu::register_thread)) or a signal
    /// handler (hardirq context) never makes that system call: what it
    /// queues after a quiet spell is found by the monitor's next timed
    /// wake-up, so it waits at most `idle_poll` plus a drain delay before it
    /// is handed to RCU (and its CPU's refill, if it asked for one, waits as
    /// long). Shorter values bound that delay tighter at the cost of more
    /// idle wake-ups.
    pub idle_poll: Duration,
    /// Whether task-context callers help free what is ready (the flood
    /// brake).
    pub assist: Assist,
    /// With [`Assist::WhenBehind`]: help when more than this many blocks
    /// wait to be freed on the caller's CPU.
    pub assist_above: usize,
    /// Whether each thread (in task or softirq context) appends to a
    /// *front block* of its own before the per-CPU state: no atomic
    /// operation on the common call. Only where membarrier is available.
    /// (Was `thread_blocks`: "front block" is the one name for it.)
    pub front_blocks: bool,
}

/// Whether a `kfree_rcu` caller helps free objects whose grace period has
/// elapsed. Only a caller in task context that is not atomic, has irqs on
/// and is not real-time ([`context::set_realtime`](crate::context::set_realtime))
/// ever helps, one block (at most 506 objects) per call, taking no lock but
/// trylocks; the objects' destructors then run on its thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Assist {
    /// Never: only the reclaimers free. Pending memory is then bounded only
    /// by how much CPU they get. (A thread that must never run a destructor
    /// or enter the global allocator declares itself real-time instead: the
    /// other threads keep the brake.)
    Never,
    /// When the caller's CPU has more than `assist_above` blocks waiting:
    /// a brake for floods that starve the reclaimers (the default).
    #[default]
    WhenBehind,
    /// Whenever a block is ready: objects are freed on the thread that
    /// retires them, where the allocator's thread cache makes the next
    /// allocation cheap. Fastest end to end.
    Always,
}

impl Default for KvfreeConfig {
    fn default() -> Self {
        KvfreeConfig {
            policy: Policy::default(),
            cache_blocks: 5,
            refill_mark: 3,
            max_cache_blocks: 64,
            drain_delay: Duration::from_millis(5),
            active_poll: Duration::from_micros(250),
            idle_poll: Duration::from_secs(1),
            assist: Assist::default(),
            assist_above: 16,
            front_blocks: true,
        }
    }
}

/// Setters, one per field, for `KvfreeConfig::default().policy(..)...`:
/// the struct is `#[non_exhaustive]` (fields may be added), so it is built
/// from its `Default` rather than with a struct expression.
impl KvfreeConfig {
    /// Sets [`policy`](Self::policy).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// Sets [`cache_blocks`](Self::cache_blocks).
    pub fn cache_blocks(mut self, n: usize) -> Self {
        self.cache_blocks = n;
        self
    }
    /// Sets [`refill_mark`](Self::refill_mark).
    pub fn refill_mark(mut self, n: usize) -> Self {
        self.refill_mark = n;
        self
    }
    /// Sets [`max_cache_blocks`](Self::max_cache_blocks).
    pub fn max_cache_blocks(mut self, n: usize) -> Self {
        self.max_cache_blocks = n;
        self
    }
    /// Sets [`drain_delay`](Self::drain_delay).
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }
    /// Sets [`active_poll`](Self::active_poll).
    pub fn active_poll(mut self, period: Duration) -> Self {
        self.active_poll = period;
        self
    }
    /// Sets [`idle_poll`](Self::idle_poll).
    pub fn idle_poll(mut self, period: Duration) -> Self {
        self.idle_poll = period;
        self
    }
    /// Sets [`assist`](Self::assist).
    pub fn assist(mut self, assist: Assist) -> Self {
        self.assist = assist;
        self
    }
    /// Sets [`assist_above`](Self::assist_above).
    pub fn assist_above(mut self, blocks: usize) -> Self {
        self.assist_above = blocks;
        self
    }
    /// Sets [`front_blocks`](Self::front_blocks).
    pub fn front_blocks(mut self, on: bool) -> Self {
        self.front_blocks = on;
        self
    }
}
