//! A batch in flight: blocks and an `rcu_head` list handed to RCU together,
//! reclaimed in bulk after the grace period by its CPU's reclaimer (the
//! kernel's `struct kfree_rcu_cpu_work`, two per CPU, run by `kfree_rcu_work`
//! on the CPU's workqueue).
//!
//! Owns: [`Batch`] and its RCU callback. Uses: `ready.rs` (a batch points at
//! its CPU's ready queue, as the kernel's `krwp->krcp`, given when the
//! batch is made: it never reaches the engine), `stats.rs`, RCU.
//!
//! Ownership: a batch is free (`busy` false) or owned by whoever set `busy`
//! with an `Acquire` compare-exchange: the monitor fills it and hands it to
//! `call_rcu`; after the grace period the RCU callback moves its contents to
//! the CPU's ready queue (where the reclaimer, or a caller that assists,
//! frees them block by block) and clears `busy` with a `Release` store, so
//! the next owner sees it empty.

use super::ready::{ReadyQueue, Work};
use super::stats::EngineCounters;
use crate::rcu::{Rcu, RcuHead};
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub(super) struct Batch {
    head: RcuHead,
    busy: AtomicBool,
    /// Where the callback puts the batch's contents. The queue outlives
    /// every callback: the engine that holds both runs a barrier that waits
    /// until no batch is busy before it is dropped.
    ready: Arc<ReadyQueue>,
    work: UnsafeCell<Work>,
}

// SAFETY: `work` is only touched by the batch's current owner (see the
// module comment); the rest is atomics, an RcuHead made for sharing, and
// a shared ReadyQueue (Sync).
unsafe impl Sync for Batch {}
// SAFETY: as for Sync.
unsafe impl Send for Batch {}

/// Exclusive access to a claimed batch.
pub(super) struct Claim<'a> {
    batch: &'a Batch,
}

impl Batch {
    pub(super) fn new(ready: Arc<ReadyQueue>) -> Self {
        Batch {
            head: RcuHead::new(),
            busy: AtomicBool::new(false),
            ready,
            work: UnsafeCell::new(Work::new()),
        }
    }

    /// Whether the batch is claimed or in flight.
    pub(super) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Claims the batch if it is free.
    pub(super) fn try_claim(&self) -> Option<Claim<'_>> {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Claim { batch: self })
    }
}

impl Claim<'_> {
    pub(super) fn work(&mut self) -> &mut Work {
        // SAFETY: the claim is exclusive (busy was set by this claim).
        unsafe { &mut *self.batch.work.get() }
    }

    /// Hands the batch to `rcu`, or frees it at once if it is empty.
    /// Returns whether it went to RCU.
    pub(super) fn submit(mut self, rcu: &Rcu, counters: &EngineCounters) -> bool {
        let w = self.work();
        if w.is_empty() {
            self.batch.busy.store(false, Ordering::Release);
            return false;
        }
        counters.note_in_flight(w.objs, w.bytes, w.blocks.len);
        let head = NonNull::from(&self.batch.head);
        // SAFETY: the head is embedded in a batch that lives as long as the
        // engine, which outlives every callback; it is not queued (the batch
        // was free until this claim); `batch_done` only uses it to find the
        // batch.
        unsafe { rcu.call_rcu(head, batch_done) };
        true
    }
}

/// The RCU callback of a batch: the grace period has elapsed, so its
/// contents go to the CPU's ready queue, to be freed by the CPU's reclaimer
/// (or a caller that assists), block by block.
///
/// # Safety
/// `head` must be the head of a submitted batch whose grace period has
/// elapsed.
unsafe fn batch_done(head: NonNull<RcuHead>) {
    let offset = core::mem::offset_of!(Batch, head);
    // SAFETY: the head is embedded in a Batch at `offset`; the batch lives
    // as long as its engine, which outlives every callback.
    let batch = unsafe { &*head.as_ptr().byte_sub(offset).cast::<Batch>() };
    // SAFETY: the callback owns the batch until it clears busy.
    let work = unsafe { &mut *batch.work.get() };
    // SAFETY: the grace period of everything in the batch has elapsed.
    unsafe { batch.ready.make_ready(work) };
    // The reclaimer is woken before `busy` is cleared: a batch in flight
    // keeps the engine alive (its teardown's barrier waits until no batch
    // is busy), so nothing here touches the engine after the clear.
    batch.ready.wake_reclaimer();
    batch.busy.store(false, Ordering::Release);
}
