//! The `kfree_rcu` engine: one instance's parts, built together, and the
//! narrow interface the rest of the crate (`instance/`) and the worker
//! threads (`worker.rs`) use. It holds no logic of its own beyond putting
//! the parts together: each lives in its own file, owns its state, and is
//! reached through a few methods.
//!
//! Owns: [`Engine`]: [`Shared`] (settings, per-CPU `krc` states, counters),
//! [`Fronts`] (the front blocks), [`Monitor`] (passes and barrier),
//! [`Cache`] (spare blocks, refill, shrinker), [`Reclaim`] (reclaimers,
//! assist). Uses: those parts, `call.rs` (the call paths), `stats.rs`.
//! Nothing in kvfree uses this file but `worker.rs` (and `instance/`
//! outside): the import graph has no cycle.
//!
//! # Lock order
//! From first to last (a lock is only ever taken with those before it
//! held, never the reverse):
//! 1. the monitor's **pass lock** (`monitor.rs`, `std`);
//! 2. the **fronts** registry's lock (`fronts.rs`, `std`), with every
//!    front's gate in the fork handler;
//! 3. the **`krc`** raw spinlocks (`krc.rs`, validated class
//!    `&krcp->lock`), in CPU order where more than one is held (only the
//!    fork handler; the call path trylocks);
//! 4. the **ready** raw spinlocks (`ready.rs`, validated class
//!    `&krcp->ready_lock`), never held with a `krc` lock today, after them
//!    in the fork handler;
//! 5. the barrier signal's mutex (`wake.rs`, `std`, with a condition
//!    variable): a leaf, nothing is taken under it. (The threads' own
//!    wake-ups are futex words, no locks.)
//!
//! The `std` mutexes are not the crate's validated locks, each for a reason
//! given at its field: the barrier signal parks on a `Condvar`; the pass lock and
//! the fronts registry are held by the monitor in softirq context for
//! long enough (front steals: `membarrier`, yields) that their waiters
//! must sleep, and the validator refuses a sleeping lock there (a
//! `spinlock_t` at most, which would make them spin). `worker.rs`'s
//! handles mutex is no kvfree lock: only the teardown and the fork handler
//! take it, holding nothing else.
//! [`Engine::lock_for_fork`] takes them all in this order.
//!
//! # Why a snapshot per object is enough
//! Each block carries the latest snapshot of the objects in it (by
//! `rcu_seq` order: [`Block::push`](super::block::Block::push) never lets
//! it go backwards). Snapshots are taken where the block is owned (under
//! its `krc` lock, or inside the front owner's section), so a caller that
//! stalls before it gets there takes a fresh one when it does.
//! A snapshot names the first grace period that *starts* after it was
//! taken; the grace-period engine starts every grace period with a
//! `membarrier` that orders the caller's earlier stores (the unlink that
//! made the object unreachable) before it, so a reader that could still see
//! the object is one that grace period waits for.

use super::KvfreeConfig;
use super::cache::Cache;
use super::call::CallPath;
use super::fronts::{Fronts, FrontsForkGuard};
use super::monitor::{Monitor, Pass, PassOutcome};
use super::ready::ReadyForkGuard;
use super::reclaim::Reclaim;
use super::shared::Shared;
use super::stats::KvfreeStats;
use crate::context::{self};
use crate::domain::Domain;
use crate::lock::RawSpinLockGuard;
use crate::page::PageAllocator;
use crate::rcu::Rcu;
use core::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

pub(crate) struct Engine {
    shared: Shared,
    fronts: Fronts,
    monitor: Monitor,
    cache: Cache,
    reclaim: Reclaim,
}

impl Engine {
    pub(crate) fn new(
        domain: &Domain,
        pages: Arc<PageAllocator>,
        rcu: Arc<Rcu>,
        config: KvfreeConfig,
    ) -> Arc<Engine> {
        let use_fronts = config.front_blocks && rcu.stats().membarrier;
        let e = Arc::new(Engine {
            shared: Shared::new(domain, pages, rcu, config),
            fronts: Fronts::new(use_fronts),
            monitor: Monitor::new(),
            cache: Cache::new(),
            reclaim: Reclaim::new(),
        });
        if e.shared.config.policy.refills() {
            for (_, cpu) in e.shared.cpus.iter() {
                cpu.want_refill();
            }
        }
        e
    }

    /// The call path (`call.rs`): `queue` (the two-argument form) and
    /// `queue_mightsleep` (the single-argument form), for `instance/`.
    #[inline]
    pub(crate) fn call(&self) -> CallPath<'_> {
        CallPath {
            s: &self.shared,
            monitor: &self.monitor,
            fronts: &self.fronts,
            cache: &self.cache,
            reclaim: &self.reclaim,
        }
    }

    pub(crate) fn rcu(&self) -> &Rcu {
        &self.shared.rcu
    }

    /// The RCU as the `Arc` the engine shares (for caches of the instance).
    pub(crate) fn rcu_arc(&self) -> &Arc<Rcu> {
        &self.shared.rcu
    }

    pub(crate) fn pages(&self) -> &Arc<PageAllocator> {
        &self.shared.pages
    }

    pub(crate) fn domain(&self) -> &Domain {
        &self.shared.domain
    }

    pub(crate) fn config(&self) -> &KvfreeConfig {
        &self.shared.config
    }

    // ----------------------------------------------------------------
    // For `instance/`: the calls
    // ----------------------------------------------------------------

    /// Counts a single-argument call that freed inline after a grace period.
    pub(crate) fn note_inline_synchronize(&self) {
        self.shared
            .counters
            .inline_synchronize
            .fetch_add(1, Relaxed);
    }

    /// Whether the calling thread is in a context `kfree_rcu` refuses.
    #[inline]
    pub(crate) fn refuse_nmi(&self) -> bool {
        if context::in_nmi() {
            self.shared.counters.refused_nmi.fetch_add(1, Relaxed);
            true
        } else {
            false
        }
    }

    /// The monitor's doorbell, for work queued outside the engine's own
    /// call path (`rcu_free` sheaves started by `kfree_rcu_slab`).
    pub(crate) fn note_work(&self, ctx: crate::context::ContextKind) {
        self.monitor.note_work(ctx);
    }

    /// Makes the calling thread's front ahead of its first call (it
    /// allocates; the first call then does not).
    pub(crate) fn prepare_thread(&self) {
        self.fronts.prepare_thread();
    }

    /// Hands everything queued to RCU and waits until it is all freed
    /// (`kvfree_rcu_barrier`).
    pub(crate) fn barrier(&self) {
        self.monitor
            .barrier(&self.shared, &self.fronts, &self.reclaim);
    }

    /// Whether the calling thread is freeing objects of this instance (a
    /// reclaimer, or a caller that assists).
    pub(crate) fn in_own_reclaim(&self) -> bool {
        self.reclaim.in_own_reclaim()
    }

    /// How many spare blocks the shrinker could free.
    pub(crate) fn shrink_count(&self) -> usize {
        self.cache.shrink_count(&self.shared)
    }

    /// Frees up to `n` spare blocks, holds the refill worker off for a drain
    /// delay, and asks the monitor to hand over everything pending (the
    /// `kfree_rcu` shrinker).
    pub(crate) fn shrink_scan(&self, n: usize) -> usize {
        let freed = self.cache.shrink_scan(&self.shared, n);
        self.monitor.request_flush();
        self.cache.kick();
        tracing::debug!(freed, "kvfree: shrinker ran");
        freed
    }

    /// A snapshot of the statistics.
    pub(crate) fn stats(&self) -> KvfreeStats {
        let mut s = KvfreeStats::default();
        for (_, cpu) in self.shared.cpus.iter() {
            cpu.add_stats(&mut s);
        }
        self.fronts.add_stats(&mut s);
        self.shared.counters.add_stats(&mut s);
        let r = self.shared.rcu.stats();
        s.grace_periods = r.grace_periods + r.expedited_grace_periods;
        s
    }

    // ----------------------------------------------------------------
    // For `worker.rs`: the threads' bodies and the teardown
    // ----------------------------------------------------------------

    /// One monitor pass (the monitor thread's).
    pub(super) fn monitor_pass(&self, pass: Pass) -> PassOutcome {
        self.monitor.pass(&self.shared, &self.fronts, pass)
    }

    /// What the monitor thread's next pass does (a flush if one was
    /// asked for).
    pub(super) fn take_flush_request(&self) -> Pass {
        self.monitor.take_flush_request()
    }

    pub(super) fn monitor_sleep(&self, timeout: Duration) {
        self.monitor.sleep(timeout);
    }

    /// Whether the monitor sleeps idle now (or is about to).
    pub(super) fn monitor_idle(&self) -> bool {
        self.monitor.is_idle()
    }

    /// Whether nothing is pending (`Monitor::nothing_pending`): the one
    /// predicate the monitor's idle sleep rests on.
    pub(super) fn nothing_pending(&self) -> bool {
        self.monitor.nothing_pending(&self.shared, &self.fronts)
    }

    /// The monitor sleeps idle (up to `idle_poll`) unless
    /// [`nothing_pending`](Self::nothing_pending), checked after the sleep
    /// is announced, finds work: false then.
    pub(super) fn monitor_sleep_idle(&self) -> bool {
        self.monitor
            .sleep_idle(self.shared.config.idle_poll, || self.nothing_pending())
    }

    /// Tops the caches up (the refill thread's pass).
    pub(super) fn refill_pass(&self) {
        self.cache.refill_pass(&self.shared);
    }

    pub(super) fn refill_wanted(&self) -> bool {
        self.cache.refill_wanted(&self.shared)
    }

    pub(super) fn kick_refill(&self) {
        self.cache.kick();
    }

    pub(super) fn refill_sleep(&self, timeout: Duration) {
        self.cache.sleep(timeout);
    }

    /// Wakes the monitor and the refill thread (from contexts that may
    /// make a system call).
    pub(super) fn kick(&self) {
        self.monitor.kick();
        self.cache.kick();
    }

    /// Wakes every reclaimer.
    pub(super) fn wake_reclaimers(&self) {
        for home in 0..self.shared.homes {
            self.shared.cpus.get(home).ready.wake_reclaimer();
        }
    }

    /// Reclaimers: one per home CPU.
    pub(super) fn homes(&self) -> usize {
        self.shared.homes
    }

    /// The body of home CPU `home`'s reclaimer thread.
    pub(super) fn reclaimer(&self, home: usize) {
        self.reclaim.reclaimer(&self.shared, home);
    }

    /// Tells the reclaimers to finish once nothing is left.
    pub(super) fn stop_reclaimers(&self) {
        self.reclaim.stop(&self.shared);
    }

    /// Undoes [`stop_reclaimers`](Self::stop_reclaimers) after reclaimers
    /// that failed to start all were stopped: the next start may succeed.
    pub(super) fn restart_reclaimers(&self) {
        self.reclaim.unstop();
    }

    /// Whether the reclaimer threads run.
    pub(super) fn reclaimers_started(&self) -> bool {
        self.reclaim.started()
    }

    /// The reclaimer threads run from now on.
    pub(super) fn mark_reclaimers_started(&self) {
        self.reclaim.mark_started();
    }

    /// Whether anything was handed to RCU and is not freed yet (what the
    /// reclaimers are for).
    pub(super) fn reclaim_wanted(&self) -> bool {
        self.shared.counters.in_flight().objs > 0
    }

    /// The instance is going away: threads may forget their fronts.
    pub(super) fn retire_fronts(&self) {
        self.fronts.retire(&self.shared.counters);
    }

    /// Frees every spare block (the instance is going away).
    pub(super) fn release_caches(&self) {
        self.cache.release(&self.shared);
    }

    // ----------------------------------------------------------------
    // Fork
    // ----------------------------------------------------------------

    /// The phases of [`lock_for_fork`](Self::lock_for_fork).
    pub(super) const FORK_LOCK_PHASES: usize = 4;

    /// Takes phase `phase` of the locks another thread could hold, in
    /// kvfree's lock order (module doc), so that with several engines each
    /// lock class is taken in one order: 0, the pass lock, the fronts
    /// registry and every front's gate (no thread is inside its front
    /// section at the fork, so the child never waits for a section whose
    /// thread it does not have); 1, every `krc` lock; 2, every ready lock;
    /// 3, the barrier signal's lock. The engine's workers are parked,
    /// holding none.
    pub(super) fn lock_for_fork(&self, phase: usize) -> ForkLocks<'_> {
        let s = &self.shared;
        ForkLocks(match phase {
            0 => ForkGuards::Monitor(self.monitor.hold_for_fork(), self.fronts.hold_for_fork()),
            1 => ForkGuards::Krc(s.cpus.iter().map(|(_, c)| c.krc.lock()).collect()),
            2 => ForkGuards::Ready(
                s.cpus
                    .iter()
                    .map(|(_, c)| c.ready.hold_for_fork())
                    .collect(),
            ),
            // The threads' wake-ups are futex words, with no lock to hold.
            _ => ForkGuards::Signal(self.reclaim.hold_for_fork()),
        })
    }

    /// In the child of a `fork`: objects another (now gone) thread was
    /// freeing are forgotten (they leak in the child), so that barriers do
    /// not wait for it; the other threads' fronts are marked exited (see
    /// [`Fronts::forget_other_threads`]).
    pub(super) fn forget_other_threads(&self) {
        for (_, c) in self.shared.cpus.iter() {
            c.ready.forget_reclaimers();
        }
        // No reclaimer exists in the child: they start again on demand.
        self.reclaim.forget_started();
        self.fronts.forget_other_threads();
    }

    // ----------------------------------------------------------------
    // Tests
    // ----------------------------------------------------------------

    #[cfg(any(test, feature = "testing"))]
    /// What the idle sleep costs and does, for tests: (wake-ups of every
    /// kvfree thread so far, doorbell kicks that woke the monitor, whether
    /// the monitor sleeps idle now).
    pub(crate) fn idle_counters(&self) -> (u64, u64, bool) {
        let s = &self.shared;
        let reclaimers: u64 = (0..s.homes)
            .map(|h| s.cpus.get(h).ready.wake().wakeups())
            .sum();
        (
            self.monitor.wakeups() + self.cache.wakeups() + reclaimers,
            self.monitor.doorbell_kicks(),
            self.monitor.is_idle(),
        )
    }

    /// Sets the hook the monitor runs between its idle re-check and its
    /// wait.
    #[cfg(feature = "testing")]
    pub(crate) fn set_idle_hook(&self, hook: Option<super::monitor::IdleHook>) {
        self.monitor.set_idle_hook(hook);
    }

    /// Holds every CPU's `krc` lock until the guard drops (released in
    /// reverse order), so that tests drive the path where every trylock
    /// fails.
    #[cfg(test)]
    pub(super) fn hold_krc_locks(&self) -> impl Drop + '_ {
        struct Held<'a>(Vec<RawSpinLockGuard<'a, super::krc::Krc>>);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                while self.0.pop().is_some() {}
            }
        }
        Held(self.shared.cpus.iter().map(|(_, c)| c.krc.lock()).collect())
    }
}

/// The locks of one phase of [`Engine::lock_for_fork`], held by the forking
/// thread across a `fork`.
pub(crate) struct ForkLocks<'a>(#[allow(dead_code)] ForkGuards<'a>);

/// The guards of one phase, held only to be dropped.
#[allow(dead_code)]
enum ForkGuards<'a> {
    Monitor(MutexGuard<'a, ()>, FrontsForkGuard<'a>),
    Krc(Vec<RawSpinLockGuard<'a, super::krc::Krc>>),
    Ready(Vec<ReadyForkGuard<'a>>),
    Signal(MutexGuard<'a, ()>),
}
