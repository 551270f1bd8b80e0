//! The monitor (the kernel's `kfree_rcu_monitor`): its passes over the
//! fronts and every CPU, handing full blocks, aged ones and the `rcu_head`
//! lists to RCU in batches (two per CPU at most), freeing at once blocks
//! whose grace period already elapsed; and the barrier
//! (`kvfree_rcu_barrier`), which runs flushing passes until everything
//! queued is freed.
//!
//! Owns: [`Monitor`] (the pass lock, the monitor thread's wake-up, the
//! flush request). Uses: `shared.rs`, `fronts.rs`, `krc.rs`, `batch.rs`,
//! `ready.rs`, `reclaim.rs` (a barrier waits for reclaim), `cache.rs` (the
//! idle trim), `block.rs`, `wake.rs`, `stats.rs`.

use super::block::BlockList;
use super::cache;
use super::fronts::Fronts;
use super::krc::KrcCpu;
use super::ready::Work;
use super::reclaim::Reclaim;
use super::shared::Shared;
use super::stats::{EngineCounters, Pending};
use super::wake::Wake;
use core::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a pass hands over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Pass {
    /// Full blocks, and what waited a drain delay.
    Due,
    /// Everything queued (a barrier, the shrinker, a flush request).
    Flush,
}

/// What a pass found.
#[derive(Clone, Copy, Debug)]
pub(super) struct PassOutcome {
    /// Every CPU and front could hand over what it needed to (false when
    /// both a CPU's batches were in flight, or a front's owner stayed in
    /// its section).
    pub(super) complete: bool,
    /// Anything is still pending.
    pub(super) busy: bool,
}

pub(super) struct Monitor {
    /// Serialises passes with barriers, so that a barrier sees every
    /// detached batch already handed to RCU. Lock order: first of
    /// kvfree's locks (before the fronts registry and every `krc` lock).
    ///
    /// A `std` mutex, not one of the crate's validated locks: the monitor
    /// holds it in softirq context (its thread runs there) for a whole
    /// pass, which steals front blocks (`membarrier`, yields) and frees
    /// pages, so a barrier waiting for it must sleep, not spin; and the
    /// validator rightly refuses a sleeping lock (`Mutex`) in softirq
    /// context, whose level allows a `spinlock_t` at most. The forking
    /// thread also holds it across `fork`.
    pass_lock: Mutex<()>,
    /// Wakes the monitor thread.
    wake: Wake,
    /// A flush was asked for (Release/AcqRel: the asker's earlier calls
    /// are seen by the pass that takes the request).
    flush_wanted: AtomicBool,
}

impl Monitor {
    pub(super) fn new() -> Monitor {
        Monitor {
            pass_lock: Mutex::new(()),
            wake: Wake::new(),
            flush_wanted: AtomicBool::new(false),
        }
    }

    /// One pass over the fronts and every CPU.
    pub(super) fn pass(&self, s: &Shared, fronts: &Fronts, pass: Pass) -> PassOutcome {
        let flush = pass == Pass::Flush;
        // Partly filled `rcu_free` sheaves of the slab caches waiting on
        // this RCU: all of them on a flush, else those gone quiet (outside
        // the pass lock: a submit takes the slab's own locks).
        #[cfg(not(loom))]
        let sheaves_pending = {
            if flush {
                crate::slab::submit_rcu_sheaves_of(&s.rcu);
            } else {
                crate::slab::submit_idle_rcu_sheaves_of(&s.rcu);
            }
            crate::slab::any_partial_rcu_sheaves(&s.rcu)
        };
        #[cfg(loom)]
        let sheaves_pending = false;
        let _pass = self.lock();
        let now = Instant::now();
        let (mut pending, mut complete) = fronts.monitor(s, flush, now, s.config.drain_delay);
        let mut busy = pending.objs > 0 || sheaves_pending;
        for (_, cpu) in s.cpus.iter() {
            let (c, b, p) = self.pass_cpu(s, cpu, flush, now);
            complete &= c;
            busy |= b;
            pending += p;
        }
        let in_flight = s.counters.in_flight();
        busy |= in_flight.objs > 0;
        pending += in_flight;
        s.counters.note_pending(pending);
        PassOutcome { complete, busy }
    }

    /// One CPU's part of a pass: whether it handed over what it needed to,
    /// whether anything is pending there, and what.
    fn pass_cpu(
        &self,
        s: &Shared,
        cpu: &KrcCpu,
        flush: bool,
        now: Instant,
    ) -> (bool, bool, Pending) {
        let list_waiting = cpu.list_waiting();
        let mut krc = cpu.krc.lock();
        let aged = krc.monitor_look(now, s.config.drain_delay, list_waiting);
        let pending = cpu.pending(&krc);
        let busy = krc.has_pending() || list_waiting || cpu.refill_wanted();
        let mut trimmed = cache::trim_if_idle(s, &mut krc);
        let want = flush || aged || krc.has_full_blocks();
        if !want {
            drop(krc);
            s.free_blocks(&mut trimmed);
            return (true, busy, pending);
        }
        let Some(mut claim) = cpu.batches.iter().find_map(|b| b.try_claim()) else {
            // Both batches are in flight: the next pass hands this over.
            drop(krc);
            s.free_blocks(&mut trimmed);
            return (false, busy, pending);
        };
        let (mut blocks, _, _) = krc.detach_blocks(flush || aged);
        krc.restart_drain_clock(now);
        drop(krc);
        s.free_blocks(&mut trimmed);

        let (mut list, n, bytes) = cpu.take_list();

        // Drain-ready: a block whose snapshot has already elapsed is freed
        // now, without waiting for another grace period.
        let mut ready = BlockList::new();
        let w: &mut Work = claim.work();
        while let Some(b) = blocks.pop() {
            // SAFETY: detached blocks are owned by this pass.
            let blk = unsafe { &*b.as_ptr() };
            if s.rcu.poll_state(blk.gp_snap) {
                // SAFETY: owned, as above.
                unsafe { ready.push(b) };
            } else {
                w.objs += blk.count;
                w.bytes += blk.count * blk.chan.obj_size;
                // SAFETY: owned, as above.
                unsafe { w.blocks.push(b) };
            }
        }
        w.objs += n;
        w.bytes += bytes;
        w.list.append(&mut list);
        if !ready.is_empty() {
            let n = ready.len;
            EngineCounters::add(&s.counters.drain_ready_blocks, n as u64);
            let (objs, bytes) = ready.totals();
            s.counters.add_in_flight(objs, bytes, n);
            let mut work = Work::new();
            work.blocks = ready;
            work.objs = objs;
            work.bytes = bytes;
            // SAFETY: every block in `work` has an elapsed snapshot.
            unsafe { cpu.ready.make_ready(&mut work) };
            // No RCU callback will wake the reclaimer for these.
            cpu.ready.wake_reclaimer();
        }
        claim.submit(&s.rcu, &s.counters);
        (true, busy, pending)
    }

    /// Hands everything queued to RCU and waits until it is all freed
    /// (`kvfree_rcu_barrier`).
    pub(super) fn barrier(&self, s: &Shared, fronts: &Fronts, reclaim: &Reclaim) {
        // Partly filled `rcu_free` sheaves of the slab caches waiting on
        // this RCU go to `call_rcu` now: the `rcu_barrier` below waits for
        // their callbacks too.
        #[cfg(not(loom))]
        crate::slab::submit_rcu_sheaves_of(&s.rcu);
        loop {
            let outcome = self.pass(s, fronts, Pass::Flush);
            // Every batch handed over so far is in RCU's lists: wait for
            // its grace period, then for the reclaimers to free it.
            s.rcu.rcu_barrier();
            reclaim.wait_idle(s);
            if outcome.complete {
                break;
            }
        }
    }

    /// Wakes the monitor thread (from contexts that may make a system
    /// call).
    pub(super) fn kick(&self) {
        self.wake.kick();
    }

    /// The monitor thread sleeps until kicked or `timeout`.
    pub(super) fn sleep(&self, timeout: Duration) {
        self.wake.sleep(timeout);
    }

    /// Asks the next pass to hand everything over, and wakes the monitor.
    pub(super) fn request_flush(&self) {
        self.flush_wanted.store(true, Release);
        self.kick();
    }

    /// Takes the flush request: what the monitor thread's next pass does.
    pub(super) fn take_flush_request(&self) -> Pass {
        if self.flush_wanted.swap(false, AcqRel) {
            Pass::Flush
        } else {
            Pass::Due
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.pass_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pass lock, held across a `fork` (phase 0, before the fronts).
    pub(super) fn hold_for_fork(&self) -> MutexGuard<'_, ()> {
        self.lock()
    }

    /// The monitor's wake-up lock, held across a `fork`.
    pub(super) fn hold_wake_for_fork(&self) -> MutexGuard<'_, bool> {
        self.wake.hold()
    }
}
