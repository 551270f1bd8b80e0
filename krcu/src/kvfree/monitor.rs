//! The monitor (the kernel's `kfree_rcu_monitor`): its passes over the
//! fronts and every CPU, handing full blocks, aged ones and the `rcu_head`
//! lists to RCU in batches (two per CPU at most), freeing at once blocks
//! whose grace period already elapsed; and the barrier
//! (`kvfree_rcu_barrier`), which runs flushing passes until everything
//! queued is freed.
//!
//! Owns: [`Monitor`] (the pass lock, the monitor thread's wake-up, the
//! flush request), the idle predicate ([`Monitor::nothing_pending`]) and
//! the call path's doorbell ([`Monitor::note_work`]).
//!
//! # Sleeping idle
//! While anything is pending the monitor polls (every `active_poll`, or a
//! drain delay); when a pass finds nothing, it sleeps idle: up to
//! [`idle_poll`](super::KvfreeConfig::idle_poll) (default 1 s), unless
//! woken. Every place that puts work where a pass would find it after a
//! quiet spell is a slow path of the call (a block installed in a CPU's
//! `krc` or a thread's front, an object pushed on the `rcu_head` list):
//! there the caller rings the doorbell, [`note_work`](Monitor::note_work),
//! one SeqCst fence and one load, and a `FUTEX_WAKE` only when the monitor
//! sleeps idle. Adding to a block already installed needs no doorbell: a
//! block holding objects is pending, so the monitor is not idle, or the
//! caller that installed it after the monitor's last look rang. Real-time
//! threads and signal handlers never make the system call: they only leave
//! the work, which the monitor's next timed wake-up finds (at most
//! `idle_poll` later). `wake.rs` states the handshake's memory-ordering
//! argument; the producers' side is "publish, then `note_work`", the
//! sleeper's "announce, then [`nothing_pending`](Monitor::nothing_pending)". Uses: `shared.rs`, `fronts.rs`, `krc.rs`, `batch.rs`,
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
use crate::context::{self, ContextKind};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
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
    /// Doorbell kicks that woke the monitor from an idle sleep (Relaxed: a
    /// count).
    doorbell_kicks: AtomicU64,
    /// The monitor passed its idle re-check and waits (or is about to):
    /// only a kick or the timeout ends that wait (Relaxed: for tests and
    /// the refill thread's choice of sleep, nothing hangs on it).
    idle_waiting: AtomicBool,
    /// Runs between the idle re-check and the wait (tests stall there to
    /// queue work in the window a lost wake-up would hide in).
    #[cfg(feature = "testing")]
    before_idle_wait: Mutex<Option<IdleHook>>,
}

/// A test's hook into the idle sleep.
#[cfg(feature = "testing")]
pub(crate) type IdleHook = std::sync::Arc<dyn Fn() + Send + Sync>;

impl Monitor {
    pub(super) fn new() -> Monitor {
        Monitor {
            pass_lock: Mutex::new(()),
            wake: Wake::new(),
            flush_wanted: AtomicBool::new(false),
            doorbell_kicks: AtomicU64::new(0),
            idle_waiting: AtomicBool::new(false),
            #[cfg(feature = "testing")]
            before_idle_wait: Mutex::new(None),
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
            // Sheaves a real-time thread queued without waking the RCU
            // worker (it makes no system call).
            s.rcu.kick_if_pending();
            if flush {
                crate::slab::submit_rcu_sheaves_of(&s.rcu);
            } else {
                crate::slab::submit_idle_rcu_sheaves_of(&s.rcu, s.config.drain_delay);
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
            // Objects a thread is recycling now (slab sheaves taken off its
            // waiting list, which no submit finds): dropped once this
            // returns. Not from a destructor krcu runs (see there).
            #[cfg(not(loom))]
            if !reclaim.in_any_reclaim() {
                crate::slab::wait_slab_recycles_of(&s.rcu);
            }
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

    /// The monitor thread sleeps idle, up to `timeout`, unless
    /// `nothing_pending` (checked after announcing the sleep) finds work:
    /// then it returns false and the caller sleeps a short while instead.
    pub(super) fn sleep_idle(
        &self,
        timeout: Duration,
        nothing_pending: impl FnOnce() -> bool,
    ) -> bool {
        #[cfg(feature = "testing")]
        let hook = self
            .before_idle_wait
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let slept = self.wake.sleep_idle(
            timeout,
            || !nothing_pending(),
            || {
                self.idle_waiting.store(true, Relaxed);
                #[cfg(feature = "testing")]
                if let Some(h) = hook {
                    h();
                }
            },
        );
        self.idle_waiting.store(false, Relaxed);
        slept
    }

    /// Whether nothing is pending that the monitor must hand over or watch:
    /// the one predicate its idle sleep rests on. Called after the sleep is
    /// announced (`wake.rs`): its loads see whatever a caller published
    /// before that caller's doorbell found the monitor awake. Whatever else
    /// comes to hold objects the monitor hands over adds its check here
    /// (and its producers ring [`note_work`](Self::note_work)).
    pub(super) fn nothing_pending(&self, s: &Shared, fronts: &Fronts) -> bool {
        !self.flush_wanted.load(SeqCst)
            && fronts.all_empty()
            && s.cpus.iter().all(|(_, cpu)| cpu_quiet(s, cpu))
            && s.counters.in_flight().objs == 0
            && !rcu_sheaves_pending(s)
    }

    /// The call path's doorbell, rung on its slow paths after the work is
    /// published (module doc). From task or softirq context on a thread
    /// that is not real-time, wakes the monitor if it sleeps idle (a
    /// `FUTEX_WAKE`, no lock); a real-time thread or a signal handler
    /// (hardirq context) does nothing here: the monitor's next timed
    /// wake-up finds the work.
    #[inline]
    pub(super) fn note_work(&self, ctx: ContextKind) {
        if matches!(ctx, ContextKind::Task | ContextKind::Softirq)
            && !context::is_realtime()
            && self.wake.fence_then_idle()
        {
            self.ring();
        }
    }

    #[cold]
    fn ring(&self) {
        if self.wake.kick_if_idle() {
            self.doorbell_kicks.fetch_add(1, Relaxed);
        }
    }

    #[cfg(any(test, feature = "testing"))]
    /// Doorbell kicks that woke the monitor from an idle sleep.
    pub(super) fn doorbell_kicks(&self) -> u64 {
        self.doorbell_kicks.load(Relaxed)
    }

    #[cfg(any(test, feature = "testing"))]
    /// The monitor thread's wake-ups so far.
    pub(super) fn wakeups(&self) -> u64 {
        self.wake.wakeups()
    }

    /// Whether the monitor sleeps idle now (past its re-check: only a kick
    /// or the timeout wakes it).
    pub(super) fn is_idle(&self) -> bool {
        self.idle_waiting.load(Relaxed)
    }

    /// Sets the hook that runs between the idle re-check and the wait.
    #[cfg(feature = "testing")]
    pub(super) fn set_idle_hook(&self, hook: Option<IdleHook>) {
        *self
            .before_idle_wait
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = hook;
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
}

/// Whether `cpu` has nothing the monitor must hand over or watch: no
/// object in its blocks or on its `rcu_head` list, no refill asked for,
/// no batch in flight or ready, no spare blocks waiting for the idle trim.
fn cpu_quiet(s: &Shared, cpu: &KrcCpu) -> bool {
    if cpu.list_waiting()
        || cpu.refill_wanted()
        || cpu.batches.iter().any(|b| b.is_busy())
        || cpu.ready.has_objects()
    {
        return false;
    }
    let krc = cpu.krc.lock();
    !krc.has_pending() && !cache::trim_due(s, &krc)
}

/// Whether a slab cache waiting on this instance's RCU holds a partly
/// filled `rcu_free` sheaf (the monitor submits it once it goes quiet).
/// A sheaf is started only on `kfree_rcu_slab`'s slow path, which rings
/// the doorbell (`Engine::note_work`, nothing on a real-time thread or in
/// a handler); its fast path pushes into a sheaf that already holds an
/// object, so the monitor is not idle then.
fn rcu_sheaves_pending(s: &Shared) -> bool {
    #[cfg(not(loom))]
    return crate::slab::any_partial_rcu_sheaves(&s.rcu);
    #[cfg(loom)]
    {
        let _ = s;
        false
    }
}
