//! One CPU's ready queue: what a grace period has released, waiting to be
//! freed (the kernel keeps it in `krwp`, reached from the work by
//! `krwp->krcp`). A batch's RCU callback puts its contents here and wakes
//! the reclaimer; the reclaimer (and a caller that assists) takes them.
//!
//! Owns: [`ReadyQueue`] (its raw lock, the count of waiting blocks, the
//! count of threads freeing what they took, the objects freed by assisting
//! callers) and [`Work`], what a batch carries. Uses: `block.rs`,
//! `wake.rs`, the crate's locks.

use super::block::BlockList;
use super::wake::Wake;
use crate::domain::Domain;
use crate::lock::{RawSpinLock, RawSpinLockGuard};
use crate::rcu::CbList;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Arc;

/// Blocks and an `rcu_head` list handed over together, with the objects
/// and bytes they hold. A plain carrier, so its fields are `pub(super)`:
/// the monitor fills one, a ready queue empties it, reclaim frees it.
pub(super) struct Work {
    pub(super) blocks: BlockList,
    pub(super) list: CbList,
    pub(super) objs: usize,
    pub(super) bytes: usize,
}

impl Work {
    pub(super) const fn new() -> Self {
        Work {
            blocks: BlockList::new(),
            list: CbList::new(),
            objs: 0,
            bytes: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.list.is_empty()
    }
}

/// Whether a taker waits for a lock or only trylocks (an assisting caller
/// on the call path never waits).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Locking {
    Wait,
    Try,
}

/// Whether a taker also takes the `rcu_head` list (one object at a time:
/// the reclaimer does, an assisting caller takes a block only).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum List {
    Take,
    Leave,
}

/// What the ready lock protects.
struct Ready(Work);

// SAFETY: owns its blocks and heads exclusively; reached only through its
// lock.
unsafe impl Send for Ready {}

/// The ready lock held across a `fork` (see `engine.rs`).
pub(super) struct ReadyForkGuard<'a>(#[allow(dead_code)] RawSpinLockGuard<'a, Ready>);

pub(super) struct ReadyQueue {
    /// Lock order: after every `krc` lock (the fork handler takes them in
    /// that order); no other lock is taken under it.
    ready: RawSpinLock<Ready>,
    /// Blocks waiting (read without the lock, for the assist heuristic).
    blocks: AtomicUsize,
    /// Threads freeing blocks they took from here (SeqCst: a barrier that
    /// reads 0 after seeing the queue empty knows nothing is in hand).
    reclaiming: AtomicUsize,
    /// Of those, the ones whose destructor is waiting in a barrier of this
    /// instance (`Reclaim::wait_idle`): what they hold is freed only once
    /// that destructor returns, so no barrier waits for them (two
    /// reclaimers each running a destructor that calls a barrier would
    /// otherwise wait for each other for ever).
    parked: AtomicUsize,
    /// Objects freed by assisting callers.
    assisted: AtomicU64,
    /// The reclaimer that serves this queue (a home CPU's and its
    /// overflow state's queues share it).
    wake: Arc<Wake>,
}

impl ReadyQueue {
    pub(super) fn new(domain: &Domain, wake: Arc<Wake>) -> Self {
        ReadyQueue {
            ready: RawSpinLock::named(domain, "&krcp->ready_lock", Ready(Work::new())),
            blocks: AtomicUsize::new(0),
            reclaiming: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            assisted: AtomicU64::new(0),
            wake,
        }
    }

    /// Moves `work`, whose grace period has elapsed, here (from the RCU
    /// callback, or from the monitor for blocks already past theirs); its
    /// counts are zeroed, its lists emptied.
    ///
    /// # Safety
    /// The grace period of everything in `work` must have elapsed.
    pub(super) unsafe fn make_ready(&self, work: &mut Work) {
        let n = work.blocks.len;
        let mut r = self.ready.lock();
        r.0.blocks.append(&mut work.blocks);
        r.0.list.append(&mut work.list);
        r.0.objs += work.objs;
        r.0.bytes += work.bytes;
        self.blocks.fetch_add(n, Relaxed);
        work.objs = 0;
        work.bytes = 0;
    }

    /// Wakes the reclaimer serving this queue (makes a system call: from
    /// the RCU callback or the monitor, never the call path).
    pub(super) fn wake_reclaimer(&self) {
        self.wake.kick();
    }

    /// The reclaimer serving this queue.
    pub(super) fn wake(&self) -> &Wake {
        &self.wake
    }

    /// Takes up to `max_blocks` blocks, and with [`List::Take`] the whole
    /// `rcu_head` list; None if `locking` is [`Locking::Try`] and the lock
    /// is taken. The returned counts are what left the queue.
    pub(super) fn take(&self, max_blocks: usize, list: List, locking: Locking) -> Option<Work> {
        let mut r = match locking {
            Locking::Try => self.ready.try_lock()?,
            Locking::Wait => self.ready.lock(),
        };
        let r = &mut r.0;
        let mut out = Work::new();
        while out.blocks.len < max_blocks {
            let Some(b) = r.blocks.pop() else { break };
            // SAFETY: popped from the ready list, now ours.
            unsafe { out.blocks.push(b) };
        }
        self.blocks.fetch_sub(out.blocks.len, Relaxed);
        let (mut objs, mut bytes) = out.blocks.totals();
        if list == List::Take && !r.list.is_empty() {
            let n = r.list.len();
            // The list's bytes: what is left after the blocks' own.
            let list_bytes = (r.bytes - bytes.min(r.bytes)) * n / (r.objs - objs).max(n);
            core::mem::swap(&mut out.list, &mut r.list);
            objs += n;
            bytes += list_bytes;
        }
        r.objs -= objs.min(r.objs);
        r.bytes -= bytes.min(r.bytes);
        out.objs = objs;
        out.bytes = bytes;
        Some(out)
    }

    /// Whether objects wait here (takes the lock).
    pub(super) fn has_objects(&self) -> bool {
        self.ready.lock().0.objs > 0
    }

    /// Blocks waiting, without the lock (a heuristic).
    #[inline]
    pub(super) fn waiting_blocks(&self) -> usize {
        self.blocks.load(Relaxed)
    }

    /// Raises the count of threads freeing what they took from here.
    pub(super) fn enter_reclaim(&self) {
        self.reclaiming.fetch_add(1, SeqCst);
    }

    pub(super) fn leave_reclaim(&self) {
        self.reclaiming.fetch_sub(1, SeqCst);
    }

    /// A reclaim on this queue waits in a barrier (see `parked`).
    pub(super) fn park(&self) {
        self.parked.fetch_add(1, SeqCst);
    }

    pub(super) fn unpark(&self) {
        self.parked.fetch_sub(1, SeqCst);
    }

    /// Threads freeing from here, waiting in a barrier or not.
    pub(super) fn reclaiming(&self) -> usize {
        self.reclaiming.load(SeqCst)
    }

    /// Threads freeing from here that are not waiting in a barrier.
    pub(super) fn reclaiming_unparked(&self) -> usize {
        // `parked` first: a reclaim parks after it entered and unparks
        // before it leaves, so reading it first never counts more parked
        // than entered (saturating all the same).
        let parked = self.parked.load(SeqCst);
        self.reclaiming.load(SeqCst).saturating_sub(parked)
    }

    /// In the child of a `fork`: the threads that were freeing are gone.
    pub(super) fn forget_reclaimers(&self) {
        self.reclaiming.store(0, SeqCst);
        self.parked.store(0, SeqCst);
    }

    pub(super) fn count_assisted(&self, n: usize) {
        self.assisted.fetch_add(n as u64, Relaxed);
    }

    pub(super) fn assisted(&self) -> u64 {
        self.assisted.load(Relaxed)
    }

    pub(super) fn hold_for_fork(&self) -> ReadyForkGuard<'_> {
        ReadyForkGuard(self.ready.lock())
    }
}
