//! Spare blocks: where a new block comes from on the call path (the CPU's
//! cache, then what the policy allows under the raw lock), the refill
//! worker's top-ups (the kernel's `fill_page_cache_func`), the idle trim,
//! and the `kfree_rcu` shrinker.
//!
//! Owns: [`Cache`] (the refill thread's wake-up, the shrinker's back-off).
//! Uses: `shared.rs`, `krc.rs`, `block.rs`, `policy.rs`, `wake.rs`,
//! `stats.rs`, the page allocator.

use super::block::{Block, BlockList};
use super::krc::{Krc, Locked};
use super::policy::Policy;
use super::shared::Shared;
use super::stats::EngineCounters;
use super::wake::Wake;
use crate::page::Gfp;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

/// The flags of the refill worker's allocation: it may sleep, but gives up
/// after one round and leaves the reserves alone (mainline's
/// `fill_page_cache_func`).
const REFILL_GFP: Gfp = Gfp::KERNEL
    .union(Gfp::NORETRY)
    .union(Gfp::NOMEMALLOC)
    .union(Gfp::NOWARN);

/// Monitor passes without a call after which a CPU's cache goes back to the
/// page allocator (with the default drain delay, about a second).
const IDLE_PASSES_BEFORE_TRIM: u32 = 100;

pub(super) struct Cache {
    /// Wakes the refill thread (a thread of its own: its sleeping
    /// allocations may run the shrinkers, which may block, and the monitor
    /// must go on meanwhile).
    wake: Wake,
    /// Nanoseconds since `epoch` before which the refill worker holds off
    /// (set by the shrinker; Relaxed: a hint, no data hangs on it).
    backoff_until: AtomicU64,
    epoch: Instant,
}

impl Cache {
    pub(super) fn new() -> Cache {
        Cache {
            wake: Wake::new(),
            backoff_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A page for a new block, with this CPU's lock held: the cache, then
    /// what the policy allows.
    #[inline]
    pub(super) fn block_for(&self, s: &Shared, l: &mut Locked<'_>) -> Option<NonNull<u8>> {
        let policy = s.config.policy;
        if let Some(p) = l.krc.take_cached() {
            if policy.refills() && l.krc.cache.len < s.config.refill_mark {
                l.cpu.want_refill();
            }
            return Some(p);
        }
        if policy.refills() {
            // The cache ran dry: calls come faster than the refills. Keep
            // more spare blocks here from now on.
            if !l.cpu.refill_wanted() {
                l.krc.cache_target = (l.krc.cache_target * 2).min(s.config.max_cache_blocks);
            }
            l.cpu.want_refill();
        }
        let page = match policy {
            Policy::Prohibit | Policy::Preemptible | Policy::CacheRefill => return None,
            // The bug the 2020 thread argued about: takes zone->lock under
            // the raw krc lock when the per-CPU lists are empty.
            Policy::Nowait => s
                .pages
                .alloc_page(Gfp::NOWAIT | Gfp::NOWARN)
                .map(|p| p.addr()),
            Policy::GfpNoLocks => s
                .pages
                .alloc_page(Gfp::NO_LOCKS | Gfp::NOWARN)
                .map(|p| p.addr()),
            Policy::AllocPagesNolock | Policy::CacheRefillNolock => {
                s.pages.alloc_pages_nolock(0).map(|p| p.addr())
            }
        };
        match page {
            Ok(p) => {
                l.krc.counters.inline_alloc += 1;
                Some(p)
            }
            Err(_) => {
                l.krc.counters.inline_alloc_failed += 1;
                None
            }
        }
    }

    /// A page for a block by a sleeping allocation, holding no lock (the
    /// single-argument form).
    pub(super) fn alloc_sleeping(&self, s: &Shared) -> Option<NonNull<u8>> {
        s.pages.alloc_page(REFILL_GFP).ok().map(|p| p.addr())
    }

    /// Tops up the caches of the CPUs that asked (the kernel's
    /// `fill_page_cache_func`), allocating with no lock held: the worker runs
    /// in softirq context, where a sleeping allocation is allowed.
    pub(super) fn refill_pass(&self, s: &Shared) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        if now < self.backoff_until.load(Relaxed) {
            return;
        }
        for (_, cpu) in s.cpus.iter() {
            if !cpu.take_refill_request() {
                continue;
            }
            let need = {
                let krc = cpu.krc.lock();
                krc.cache_target.saturating_sub(krc.cache.len)
            };
            if need == 0 {
                continue;
            }
            let mut got = BlockList::new();
            for _ in 0..need {
                match s.pages.alloc_page(REFILL_GFP) {
                    // SAFETY: a fresh page of our arena, owned here.
                    Ok(p) => unsafe { got.push(p.addr().cast::<Block>()) },
                    Err(_) => break,
                }
            }
            let n = got.len as u64;
            cpu.krc.lock().keep_spare(&mut got);
            s.free_blocks(&mut got);
            EngineCounters::add(&s.counters.refills, 1);
            EngineCounters::add(&s.counters.refill_pages, n);
            tracing::trace!(pages = n, "kvfree: refilled a block cache");
        }
    }

    /// Whether any CPU asked for spare blocks.
    pub(super) fn refill_wanted(&self, s: &Shared) -> bool {
        s.cpus.iter().any(|(_, c)| c.refill_wanted())
    }

    /// Wakes the refill thread.
    pub(super) fn kick(&self) {
        self.wake.kick();
    }

    /// The refill thread sleeps until kicked or `timeout`.
    pub(super) fn sleep(&self, timeout: Duration) {
        self.wake.sleep(timeout);
    }

    #[cfg(any(test, feature = "testing"))]
    /// The refill thread's wake-ups so far.
    pub(super) fn wakeups(&self) -> u64 {
        self.wake.wakeups()
    }

    /// How many spare blocks the shrinker could free.
    pub(super) fn shrink_count(&self, s: &Shared) -> usize {
        s.cpus.iter().map(|(_, c)| c.krc.lock().cache.len).sum()
    }

    /// Frees up to `n` spare blocks and holds the refill worker off for a
    /// drain delay (the `kfree_rcu` shrinker's scan; the engine then asks
    /// the monitor to hand everything over).
    pub(super) fn shrink_scan(&self, s: &Shared, n: usize) -> usize {
        let backoff = (self.epoch.elapsed() + s.config.drain_delay).as_nanos() as u64;
        self.backoff_until.store(backoff, Relaxed);
        let mut freed = 0;
        for (_, cpu) in s.cpus.iter() {
            let mut out = BlockList::new();
            {
                let mut krc = cpu.krc.lock();
                krc.cache_target = s.base_cache();
                while freed + out.len < n {
                    let Some(b) = krc.cache.pop() else { break };
                    // SAFETY: a spare block we now own.
                    unsafe { out.push(b) };
                }
            }
            freed += out.len;
            s.free_blocks(&mut out);
        }
        EngineCounters::add(&s.counters.shrinker_runs, 1);
        EngineCounters::add(&s.counters.shrinker_freed, freed as u64);
        freed
    }

    /// Frees every spare block (the instance is going away).
    pub(super) fn release(&self, s: &Shared) {
        for (_, cpu) in s.cpus.iter() {
            let mut out = BlockList::new();
            out.append(&mut cpu.krc.lock().cache);
            s.free_blocks(&mut out);
        }
    }
}

/// Whether `krc`'s spare blocks wait for the idle trim (the monitor keeps
/// passing until it has run, so that an idle instance keeps no more than
/// the base cache).
pub(super) fn trim_due(s: &Shared, krc: &Krc) -> bool {
    krc.idle_passes() < IDLE_PASSES_BEFORE_TRIM
        && (!krc.cache.is_empty() || krc.cache_target > s.base_cache())
}

/// An idle CPU gives its spare blocks back (no thread runs there any more,
/// or none calls `kfree_rcu`): from the monitor's pass, with `krc` locked.
/// Returns the blocks to free once the lock is dropped.
pub(super) fn trim_if_idle(s: &Shared, krc: &mut Krc) -> BlockList {
    let mut trimmed = BlockList::new();
    if krc.idle_passes() >= IDLE_PASSES_BEFORE_TRIM {
        krc.cache_target = s.base_cache();
        if krc.idle_passes() == IDLE_PASSES_BEFORE_TRIM {
            trimmed.append(&mut krc.cache);
        }
    }
    trimmed
}
