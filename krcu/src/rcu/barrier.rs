//! `rcu_barrier`: waiting until every callback queued before the call has
//! run, by queueing one callback per CPU behind them and waiting for all.
//!
//! Uses the instance and its shared state (`state.rs`: the barrier's
//! sequence, mutex and heads) and, for the process-wide instance, the
//! callbacks parked before it was built (`early.rs`).
#![cfg(not(loom))]

use super::callback::RcuHead;
use super::early::adopt_early_for_barrier;
use super::instance::Rcu;
use super::seq;
use super::state::BarrierHead;
use core::ptr::NonNull;
use std::sync::atomic::Ordering;

/// The barrier callback (`rcu_barrier_callback`).
///
/// # Safety
/// `head` must be the head of a `BarrierHead` of a live `Barrier`.
unsafe fn barrier_callback(head: NonNull<RcuHead>) {
    // SAFETY: BarrierHead is repr(C) with the head first, and the caller
    // guarantees it is one; its Barrier lives in the same Arc.
    let barrier = unsafe { &*(*head.as_ptr().cast::<BarrierHead>()).barrier };
    if barrier.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        let _g = barrier.done.lock().unwrap_or_else(|e| e.into_inner());
        barrier.cv.notify_all();
    }
}

impl Rcu {
    /// Waits until every callback queued (on any thread) before this call
    /// has run (`rcu_barrier`). Concurrent callers share barriers. Sleeps.
    /// (An example: [`call_rcu_box`](Self::call_rcu_box).)
    ///
    /// # Panics
    /// Inside a read-side section of this instance, or on its worker thread
    /// (in a callback): both would wait forever.
    #[track_caller]
    pub fn rcu_barrier(&self) {
        self.may_wait("rcu_barrier()");
        assert!(
            !self.shared.on_worker(),
            "krcu: rcu_barrier() called from an RCU callback: it would wait for itself forever"
        );
        // The global instance: callbacks parked before it was built are
        // queued first (see `adopt_early_for_barrier`).
        adopt_early_for_barrier(self);
        let b = &*self.shared.barrier;
        let snap = seq::seq_snap(b.seq.load(Ordering::Acquire));
        let _serial = b.mutex.lock().unwrap_or_else(|e| e.into_inner());
        if seq::seq_done(b.seq.load(Ordering::Acquire), snap) {
            return; // a barrier that began after our call has finished
        }
        let s = b.seq.load(Ordering::Relaxed);
        b.seq.store(seq::seq_start(s), Ordering::Relaxed);
        b.remaining.store(b.heads.cpus(), Ordering::Relaxed);
        for (cpu, h) in b.heads.iter() {
            // SAFETY: the barrier heads are queued only here, under the
            // barrier mutex, after the previous barrier saw every one run
            // (remaining reached zero); they live as long as the Arc<Barrier>
            // the worker's Shared holds; barrier_callback expects exactly
            // such a head.
            unsafe {
                self.shared
                    .pending
                    .get(cpu)
                    .push(NonNull::from(&h.head), barrier_callback);
            }
        }
        self.shared.wake.kick();
        let mut g = b.done.lock().unwrap_or_else(|e| e.into_inner());
        while b.remaining.load(Ordering::Acquire) != 0 {
            g = b.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        drop(g);
        b.seq
            .store(seq::seq_end(seq::seq_start(s)), Ordering::Release);
        self.shared.stats.barriers.fetch_add(1, Ordering::Relaxed);
    }
}
