//! A batch in flight: blocks and an `rcu_head` list handed to RCU together,
//! reclaimed in bulk after the grace period by its CPU's reclaimer (the
//! kernel's `struct kfree_rcu_cpu_work`, two per CPU, run by `kfree_rcu_work`
//! on the CPU's workqueue).
//!
//! Ownership: a batch is free (`busy` false) or owned by whoever set `busy`
//! with an `Acquire` compare-exchange: the monitor fills it and hands it to
//! `call_rcu`; after the grace period the RCU callback moves its contents to
//! the CPU's ready list (where the reclaimer, or a caller that assists,
//! frees them block by block) and clears `busy` with a `Release` store, so
//! the next owner sees it empty.

use super::block::BlockList;
use super::engine::Engine;
use crate::rcu::{CbList, RcuHead};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

pub(crate) struct BatchWork {
    pub(crate) blocks: BlockList,
    pub(crate) list: CbList,
    pub(crate) objs: usize,
    pub(crate) bytes: usize,
}

pub(crate) struct Batch {
    head: RcuHead,
    busy: AtomicBool,
    pub(crate) cpu: usize,
    /// The engine the batch belongs to, set once when the engine is built
    /// (the engine outlives every callback: it runs `rcu_barrier` before
    /// it is dropped).
    engine: AtomicPtr<Engine>,
    work: UnsafeCell<BatchWork>,
}

// SAFETY: `work` is only touched by the batch's current owner (see the
// module comment); the rest is atomics and an RcuHead made for sharing.
unsafe impl Sync for Batch {}
// SAFETY: as for Sync.
unsafe impl Send for Batch {}

/// Exclusive access to a claimed batch.
pub(crate) struct Claim<'a> {
    batch: &'a Batch,
}

impl Batch {
    pub(crate) fn new(cpu: usize) -> Self {
        Batch {
            head: RcuHead::new(),
            busy: AtomicBool::new(false),
            cpu,
            engine: AtomicPtr::new(ptr::null_mut()),
            work: UnsafeCell::new(BatchWork {
                blocks: BlockList::new(),
                list: CbList::new(),
                objs: 0,
                bytes: 0,
            }),
        }
    }

    pub(crate) fn set_engine(&self, e: *const Engine) {
        self.engine.store(e.cast_mut(), Ordering::Release);
    }

    /// Whether the batch is claimed or in flight.
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Claims the batch if it is free.
    pub(crate) fn try_claim(&self) -> Option<Claim<'_>> {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Claim { batch: self })
    }
}

impl Claim<'_> {
    pub(crate) fn work(&mut self) -> &mut BatchWork {
        // SAFETY: the claim is exclusive (busy was set by this claim).
        unsafe { &mut *self.batch.work.get() }
    }

    /// Hands the batch to RCU, or frees it at once if it is empty. Returns
    /// whether it went to RCU.
    pub(crate) fn submit(mut self, engine: &Engine) -> bool {
        let w = self.work();
        if w.blocks.is_empty() && w.list.is_empty() {
            self.batch.busy.store(false, Ordering::Release);
            return false;
        }
        engine.note_in_flight(w.objs, w.bytes, w.blocks.len);
        let head = NonNull::from(&self.batch.head);
        // SAFETY: the head is embedded in a batch that lives as long as the
        // engine, which outlives every callback; it is not queued (the batch
        // was free until this claim); `batch_done` only uses it to find the
        // batch.
        unsafe { engine.rcu().call_rcu(head, batch_done) };
        true
    }
}

/// The RCU callback of a batch: the grace period has elapsed, so its
/// contents go to the CPU's ready list, to be freed by the CPU's reclaimer
/// (or a caller that assists), block by block.
///
/// # Safety
/// `head` must be the head of a submitted batch whose grace period has
/// elapsed.
unsafe fn batch_done(head: NonNull<RcuHead>) {
    let offset = core::mem::offset_of!(Batch, head);
    // SAFETY: the head is embedded in a Batch at `offset`.
    let batch = unsafe { &*head.as_ptr().byte_sub(offset).cast::<Batch>() };
    // SAFETY: set before any batch is submitted; the engine outlives
    // every callback.
    let engine = unsafe { &*batch.engine.load(Ordering::Acquire) };
    // SAFETY: the callback owns the batch until it clears busy.
    let work = unsafe { &mut *batch.work.get() };
    // SAFETY: the grace period of everything in the batch has elapsed.
    unsafe { engine.make_ready(batch.cpu, work) };
    // The reclaimer is woken before `busy` is cleared: a batch in flight
    // keeps the engine alive (its teardown's barrier waits until no batch
    // is busy), so nothing here touches the engine after the clear.
    engine.wake_reclaimer(batch.cpu);
    batch.busy.store(false, Ordering::Release);
}
