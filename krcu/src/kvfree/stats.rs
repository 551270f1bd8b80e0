//! What `kfree_rcu` did: calls per context, objects per path, blocks,
//! pending memory and its peak, grace periods, batches and reclaim time.
//!
//! Owns: [`KvfreeStats`], the counters kept off the call path
//! ([`EngineCounters`]) and [`Pending`], the one formula of what waits to
//! be freed. Uses: `block.rs` (a block's size).

use super::block::BLOCK_BYTES;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A snapshot of an instance's `kfree_rcu` statistics ([`Krcu::stats`](crate::Krcu::stats)).
/// The [guide](crate::guide#what-each-statistic-means) says what to read
/// from them.
///
/// ```
/// use std::time::Duration;
/// let krcu = krcu::Krcu::builder()
///     .cpus(1)
///     .arena_size(16 << 20)
///     .drain_delay(Duration::from_millis(1))
///     .build()
///     .unwrap();
/// for i in 0..2000u32 {
///     krcu.kvfree_rcu_mightsleep(Box::new(i)).unwrap();
/// }
/// krcu.kvfree_rcu_barrier();
/// let s = krcu.stats();
/// assert_eq!(s.calls(), 2000);
/// assert_eq!(s.to_block + s.list_fallbacks + s.lock_busy_fallbacks + s.inline_synchronize, 2000);
/// assert!(s.batches >= 1 && s.mean_batch() > 1.0, "freed in batches");
/// assert!((0.0..=1.0).contains(&s.fallback_ratio()));
/// assert_eq!((s.reclaimed_objects, s.pending_objects, s.pending_bytes), (2000, 0, 0));
/// assert!(s.reclaim_ns_per_object() > 0.0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvfreeStats {
    /// Calls from task context. The `calls_*` fields count calls that
    /// reached a front block or a `krc` state; a call that found every
    /// `krc` lock taken is counted in
    /// [`lock_busy_fallbacks`](Self::lock_busy_fallbacks) instead, and
    /// [`calls`](Self::calls) adds both.
    pub calls_task: u64,
    /// Calls from softirq (worker) context.
    pub calls_softirq: u64,
    /// Calls from hardirq (signal handler) context.
    pub calls_hardirq: u64,
    /// Calls from NMI context, refused.
    pub refused_nmi: u64,
    /// Objects that went into a block.
    pub to_block: u64,
    /// New blocks taken from the per-CPU cache.
    pub blocks_from_cache: u64,
    /// New blocks allocated inline by the policy.
    pub inline_allocs: u64,
    /// Inline allocations the policy tried that failed.
    pub inline_alloc_failures: u64,
    /// Pages allocated inline (with no lock held) and given back because
    /// no `krc` lock could be had afterwards: the object took the list.
    pub inline_allocs_returned: u64,
    /// Objects that found no block and went on the `rcu_head` list.
    pub list_fallbacks: u64,
    /// Objects that found every `krc` lock taken and went on the list.
    pub lock_busy_fallbacks: u64,
    /// Single-argument calls that allocated a block with a sleeping
    /// allocation outside the lock.
    pub sleeping_allocs: u64,
    /// Single-argument calls that waited for a grace period and freed inline.
    pub inline_synchronize: u64,
    /// Blocks holding objects now (in the per-CPU state and in flight).
    pub blocks_in_use: u64,
    /// Spare blocks in the per-CPU caches now.
    pub blocks_cached: u64,
    /// Objects queued and not yet freed.
    pub pending_objects: u64,
    /// Bytes of those objects plus the block pages holding them.
    pub pending_bytes: u64,
    /// The largest `pending_objects` seen (sampled at every monitor pass).
    pub peak_pending_objects: u64,
    /// The largest `pending_bytes` seen (sampled likewise).
    pub peak_pending_bytes: u64,
    /// Grace periods the instance's RCU has completed.
    pub grace_periods: u64,
    /// Batches handed to RCU (each waits for one grace period).
    pub batches: u64,
    /// Objects in those batches.
    pub batched_objects: u64,
    /// Blocks freed at once because their grace period had already elapsed.
    pub drain_ready_blocks: u64,
    /// Objects freed.
    pub reclaimed_objects: u64,
    /// Time spent freeing them, in nanoseconds.
    pub reclaim_nanos: u64,
    /// Objects freed by callers that assisted (the flood brake).
    pub assisted_objects: u64,
    /// Destructors of retired objects that panicked. Each panic is caught
    /// (and logged) where the object is freed; the rest are freed as usual.
    pub destructor_panics: u64,
    /// Refill worker runs, and the pages it put in caches.
    pub refills: u64,
    /// Pages the refill worker allocated.
    pub refill_pages: u64,
    /// Shrinker scans, and the blocks they gave back.
    pub shrinker_runs: u64,
    /// Blocks the shrinker gave back.
    pub shrinker_freed_blocks: u64,
    /// Channel slots evicted for another channel.
    pub evictions: u64,
}

impl KvfreeStats {
    /// All calls that queued an object.
    pub fn calls(&self) -> u64 {
        self.calls_task + self.calls_softirq + self.calls_hardirq + self.lock_busy_fallbacks
    }

    /// Objects that took a fallback, over all calls (0 with no calls).
    pub fn fallback_ratio(&self) -> f64 {
        let calls = self.calls();
        if calls == 0 {
            0.0
        } else {
            (self.list_fallbacks + self.lock_busy_fallbacks + self.inline_synchronize) as f64
                / calls as f64
        }
    }

    /// Mean objects per batch (0 with no batches).
    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.batched_objects as f64 / self.batches as f64
        }
    }

    /// Mean reclaim time per object, in nanoseconds.
    pub fn reclaim_ns_per_object(&self) -> f64 {
        if self.reclaimed_objects == 0 {
            0.0
        } else {
            self.reclaim_nanos as f64 / self.reclaimed_objects as f64
        }
    }
}

/// The counters kept off the call path, as atomics.
#[derive(Debug, Default)]
pub(crate) struct EngineCounters {
    pub(crate) refused_nmi: AtomicU64,
    pub(crate) inline_synchronize: AtomicU64,
    pub(crate) in_flight_objs: AtomicUsize,
    pub(crate) in_flight_bytes: AtomicUsize,
    pub(crate) in_flight_blocks: AtomicUsize,
    pub(crate) peak_pending_objs: AtomicU64,
    pub(crate) peak_pending_bytes: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batched_objects: AtomicU64,
    pub(crate) drain_ready_blocks: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    pub(crate) reclaim_nanos: AtomicU64,
    pub(crate) destructor_panics: AtomicU64,
    pub(crate) refills: AtomicU64,
    pub(crate) refill_pages: AtomicU64,
    pub(crate) shrinker_runs: AtomicU64,
    pub(crate) shrinker_freed: AtomicU64,
    pub(crate) inline_allocs_returned: AtomicU64,
    /// Calls through fronts the monitor has forgotten (threads that
    /// exited): task, softirq.
    pub(crate) gone_front_calls: [AtomicU64; 2],
}

impl EngineCounters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// A batch of `objs` objects in `blocks` blocks went to RCU.
    pub(crate) fn note_in_flight(&self, objs: usize, bytes: usize, blocks: usize) {
        self.add_in_flight(objs, bytes, blocks);
        Self::add(&self.batches, 1);
        Self::add(&self.batched_objects, objs as u64);
    }

    /// Objects handed over (to RCU, or ready at once) and not yet freed.
    pub(crate) fn add_in_flight(&self, objs: usize, bytes: usize, blocks: usize) {
        self.in_flight_objs.fetch_add(objs, Relaxed);
        self.in_flight_bytes.fetch_add(bytes, Relaxed);
        self.in_flight_blocks.fetch_add(blocks, Relaxed);
    }

    /// Objects taken off a ready queue to be freed.
    pub(crate) fn sub_in_flight(&self, objs: usize, bytes: usize, blocks: usize) {
        saturating_sub(&self.in_flight_objs, objs);
        saturating_sub(&self.in_flight_bytes, bytes);
        self.in_flight_blocks.fetch_sub(blocks, Relaxed);
    }

    /// What is in flight: handed over, not yet freed. Its `bytes` are the
    /// objects' alone: the monitor's peaks have always left the in-flight
    /// blocks' pages out (kept so, the flood test's bound is measured so);
    /// the statistics add them ([`Pending::with_block_pages`]).
    pub(crate) fn in_flight(&self) -> Pending {
        Pending {
            objs: self.in_flight_objs.load(Relaxed),
            bytes: self.in_flight_bytes.load(Relaxed),
            blocks: self.in_flight_blocks.load(Relaxed),
        }
    }

    /// Adds these counters to `s`, whose pending counts are otherwise
    /// complete (the peaks take them into account).
    pub(crate) fn add_stats(&self, s: &mut KvfreeStats) {
        let (t, so) = (
            self.gone_front_calls[0].load(Relaxed),
            self.gone_front_calls[1].load(Relaxed),
        );
        s.calls_task += t;
        s.calls_softirq += so;
        s.to_block += t + so;
        s.refused_nmi = self.refused_nmi.load(Relaxed);
        s.inline_synchronize = self.inline_synchronize.load(Relaxed);
        let f = self.in_flight().with_block_pages();
        s.blocks_in_use += f.blocks as u64;
        s.pending_objects += f.objs as u64;
        s.pending_bytes += f.bytes as u64;
        s.peak_pending_objects = self.peak_pending_objs.load(Relaxed).max(s.pending_objects);
        s.peak_pending_bytes = self.peak_pending_bytes.load(Relaxed).max(s.pending_bytes);
        s.batches = self.batches.load(Relaxed);
        s.batched_objects = self.batched_objects.load(Relaxed);
        s.drain_ready_blocks = self.drain_ready_blocks.load(Relaxed);
        s.reclaimed_objects = self.reclaimed.load(Relaxed);
        s.reclaim_nanos = self.reclaim_nanos.load(Relaxed);
        s.destructor_panics = self.destructor_panics.load(Relaxed);
        s.refills = self.refills.load(Relaxed);
        s.refill_pages = self.refill_pages.load(Relaxed);
        s.shrinker_runs = self.shrinker_runs.load(Relaxed);
        s.shrinker_freed_blocks = self.shrinker_freed.load(Relaxed);
        s.inline_allocs_returned = self.inline_allocs_returned.load(Relaxed);
    }

    /// Records a new total pending, for the peaks.
    pub(crate) fn note_pending(&self, p: Pending) {
        self.peak_pending_objs.fetch_max(p.objs as u64, Relaxed);
        self.peak_pending_bytes.fetch_max(p.bytes as u64, Relaxed);
    }
}

/// Objects not yet freed somewhere, the bytes they take (with the pages of
/// the blocks holding them) and those blocks: the one formula for
/// "pending", used by the monitor's peaks and by the statistics alike.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) objs: usize,
    pub(crate) bytes: usize,
    pub(crate) blocks: usize,
}

impl Pending {
    /// With the pages of its blocks added to its bytes.
    pub(crate) fn with_block_pages(self) -> Pending {
        Pending {
            bytes: self.bytes + self.blocks * BLOCK_BYTES,
            ..self
        }
    }
}

impl core::ops::AddAssign for Pending {
    fn add_assign(&mut self, o: Pending) {
        self.objs += o.objs;
        self.bytes += o.bytes;
        self.blocks += o.blocks;
    }
}

/// Lowers an estimate, never below zero (the list's byte counts are
/// estimates, so what is taken back can exceed what was added).
fn saturating_sub(c: &AtomicUsize, n: usize) {
    let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}
