//! Reclaim: freeing what a grace period released. The reclaimer threads
//! (the kernel's `kfree_rcu_work`, one per home CPU), the flood brake's
//! assist (a caller frees one ready block), the barrier's wait for
//! reclaim to finish, and the `rcu_head` list's one-object-at-a-time
//! reclaim.
//!
//! Owns: [`Reclaim`] (the reclaimers' stop flag and the signal a barrier
//! waits on) and this thread's stack of reclaims in progress. Uses:
//! `shared.rs`, `krc.rs` (spare blocks go back to a CPU's cache),
//! `ready.rs` (what is taken), `block.rs`, `wake.rs`, `stats.rs`.

use super::block::{self, BlockList};
use super::krc::KrcCpu;
use super::ready::{List, Locking, ReadyQueue, Work};
use super::shared::Shared;
use super::stats::EngineCounters;
use super::wake::Signal;
use crate::context;
use crate::rcu::CbList;
use core::sync::atomic::{AtomicBool, Ordering::*};
use std::time::{Duration, Instant};

pub(super) struct Reclaim {
    /// Tells the reclaimers to finish once nothing is left (Release/
    /// Acquire: set after the teardown's barrier, whose effects they see).
    stop: AtomicBool,
    /// The reclaimer threads run (they start on demand, `worker.rs`).
    /// Until then a barrier frees what is ready itself. Release/Acquire:
    /// set once they are spawned; a barrier that misses it only helps.
    started: AtomicBool,
    /// Signalled when a reclaimer finishes a chunk (for barriers).
    idle: Signal,
}

/// Blocks a reclaimer frees per chunk: short lock holds, a few thousand
/// objects.
const CHUNK: usize = 8;

impl Reclaim {
    pub(super) fn new() -> Reclaim {
        Reclaim {
            stop: AtomicBool::new(false),
            started: AtomicBool::new(false),
            idle: Signal::new(),
        }
    }

    /// The reclaimer of home CPU `home` (the kernel's `kfree_rcu_work`):
    /// frees the ready objects of its home and overflow states in chunks,
    /// in softirq context, until told to stop with nothing left in flight.
    pub(super) fn reclaimer(&self, s: &Shared, home: usize) {
        let _softirq = context::enter_softirq();
        let mine = s.served_by(home);
        loop {
            crate::fork::checkpoint();
            let mut freed = 0;
            for cpu in mine {
                // Destructors' panics are caught one by one; this is the
                // last resort for anything else that unwinds (a bad-free
                // report of the freeing itself): the reclaimer goes on, or
                // everything later on its CPU would never be freed.
                freed += std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.reclaim_chunk(s, cpu, CHUNK)
                }))
                .unwrap_or_else(|p| {
                    block::drop_payload(p);
                    EngineCounters::add(&s.counters.destructor_panics, 1);
                    1
                });
            }
            if freed > 0 {
                self.idle.notify_all();
                continue;
            }
            if self.stop.load(Acquire)
                && mine
                    .iter()
                    .all(|c| !c.batches.iter().any(|b| b.is_busy()) && !c.ready.has_objects())
            {
                return;
            }
            // Every producer of ready work (the RCU callback of a batch,
            // the monitor's drain-ready blocks, a stop) kicks after it
            // publishes, and a kick is remembered by the word (`wake.rs`):
            // the timeout is only a fallback.
            mine[0].ready.wake().sleep(s.config.idle_poll);
        }
    }

    /// Tells the reclaimers to finish.
    pub(super) fn stop(&self, s: &Shared) {
        self.stop.store(true, Release);
        for home in 0..s.homes {
            s.cpus.get(home).ready.wake_reclaimer();
        }
    }

    /// Undoes [`stop`](Self::stop) (reclaimers that failed to start all
    /// were stopped; none runs).
    pub(super) fn unstop(&self) {
        self.stop.store(false, Release);
    }

    /// Whether the reclaimer threads run.
    pub(super) fn started(&self) -> bool {
        self.started.load(Acquire)
    }

    /// The reclaimer threads run from now on.
    pub(super) fn mark_started(&self) {
        self.started.store(true, Release);
    }

    /// In the child of a `fork`: no reclaimer thread exists there.
    pub(super) fn forget_started(&self) {
        self.started.store(false, Release);
    }

    /// Frees up to `max_blocks` ready blocks of `cpu` and its whole
    /// `rcu_head` list, waiting for the locks (a reclaimer, or a barrier
    /// that helps).
    fn reclaim_chunk(&self, s: &Shared, cpu: &KrcCpu, max_blocks: usize) -> usize {
        self.reclaim(s, cpu, max_blocks, List::Take, Locking::Wait)
    }

    /// The flood brake: frees one ready block of `cpu`, taking no lock but
    /// trylocks (a caller on the call path).
    #[cold]
    pub(super) fn assist(&self, s: &Shared, cpu: &KrcCpu) {
        let n = self.reclaim(s, cpu, 1, List::Leave, Locking::Try);
        cpu.ready.count_assisted(n);
    }

    /// Takes up to `max_blocks` blocks (and with [`List::Take`] the whole
    /// `rcu_head` list) from `cpu`'s ready queue and frees them: in bulk per
    /// block, then the list one object at a time. Block pages go back to the
    /// CPU's cache up to its target, the rest to the page allocator.
    fn reclaim(
        &self,
        s: &Shared,
        cpu: &KrcCpu,
        max_blocks: usize,
        list: List,
        locking: Locking,
    ) -> usize {
        // Counted before taking anything, so that a barrier which finds the
        // ready queue empty and nobody reclaiming knows nothing is in hand;
        // and recorded on this thread, so that a barrier or a drop of the
        // instance from a destructor run here knows it runs inside reclaim.
        in_reclaim(self, &cpu.ready, || {
            let Some(work) = cpu.ready.take(max_blocks, list, locking) else {
                return 0;
            };
            self.free_work(s, cpu, work, locking)
        })
    }

    /// Frees what [`reclaim`](Self::reclaim) took off `cpu`'s ready queue.
    fn free_work(&self, s: &Shared, cpu: &KrcCpu, mut work: Work, locking: Locking) -> usize {
        s.counters
            .sub_in_flight(work.objs, work.bytes, work.blocks.len);
        let t0 = Instant::now();
        let (mut freed, mut panics) = (0, 0);
        let mut spare = BlockList::new();
        while let Some(b) = work.blocks.pop() {
            // SAFETY: blocks on the ready queue had their grace period
            // elapse.
            let (n, p) = unsafe { (*b.as_ptr()).reclaim() };
            freed += n;
            panics += p;
            // SAFETY: owned here.
            unsafe { spare.push(b) };
        }
        let (n, p) = reclaim_list(&mut work.list);
        freed += n;
        panics += p;
        if panics > 0 {
            EngineCounters::add(&s.counters.destructor_panics, panics as u64);
            tracing::error!(
                panics,
                "kfree_rcu: destructors of retired objects panicked; caught, reclaim goes on"
            );
        }
        if !spare.is_empty() {
            let krc = match locking {
                Locking::Try => cpu.krc.try_lock(),
                Locking::Wait => Some(cpu.krc.lock()),
            };
            if let Some(mut krc) = krc {
                krc.keep_spare(&mut spare);
            }
        }
        while let Some(b) = spare.pop() {
            // SAFETY: an emptied block we own, an order-0 page of our
            // allocator, taken off every list.
            unsafe {
                match locking {
                    Locking::Try => s.pages.free_pages_nolock(b.cast(), 0),
                    Locking::Wait => s.pages.free_pages(b.cast(), 0),
                }
            }
        }
        let c = &s.counters;
        EngineCounters::add(&c.reclaimed, freed as u64);
        EngineCounters::add(&c.reclaim_nanos, t0.elapsed().as_nanos() as u64);
        freed
    }

    /// Whether the calling thread is freeing objects of this instance (a
    /// reclaimer, or a caller that assists): a destructor of a retired
    /// object runs on it.
    pub(super) fn in_own_reclaim(&self) -> bool {
        count_reclaim_frames(|f| core::ptr::eq(f.reclaim, self)) > 0
    }

    /// Whether the calling thread runs inside a destructor that krcu runs:
    /// any instance's reclaim, or a slab sheaf's recycle (a barrier called
    /// there waits for no reclaim or recycle that may be waiting for it).
    pub(super) fn in_any_reclaim(&self) -> bool {
        #[cfg(not(loom))]
        if crate::slab::in_recycle() {
            return true;
        }
        count_reclaim_frames(|_| true) > 0
    }

    /// Waits until no batch is in flight and every ready object is freed.
    ///
    /// Called from a destructor that this instance's reclaim runs (on a
    /// reclaimer, or on a caller that assists), the reclaimer it would wait
    /// for may be this very thread: it then frees the ready objects itself,
    /// and does not count its own reclaim among those it waits for (the
    /// objects its callers have in hand, the rest of the destructor's block
    /// among them, are freed once the destructor returns).
    ///
    /// Where no reclaimer runs (none started yet, or they could not be
    /// started) it frees the ready objects itself too.
    ///
    /// Its own reclaims (and every other thread's reclaim that waits in a
    /// barrier the same way) are parked meanwhile: a barrier called from a
    /// destructor does not wait for them, or two reclaimers whose
    /// destructors both call a barrier would wait for each other for ever.
    /// A barrier called outside every reclaim waits for parked reclaims
    /// too (theirs wait for no parked one, so they finish): what was
    /// queued before it, the objects whose destructors are running now
    /// among them, is freed when it returns.
    pub(super) fn wait_idle(&self, s: &Shared) {
        let own_reclaim = self.in_own_reclaim();
        let in_any_reclaim = self.in_any_reclaim();
        let helping = own_reclaim || !self.started();
        let _parked = Parked::new(self);
        for (_, cpu) in s.cpus.iter() {
            loop {
                if helping {
                    self.reclaim_chunk(s, cpu, usize::MAX);
                }
                let busy = cpu.batches.iter().any(|b| b.is_busy())
                    || cpu.ready.has_objects()
                    || if in_any_reclaim {
                        cpu.ready.reclaiming_unparked() > 0
                    } else {
                        cpu.ready.reclaiming() > 0
                    };
                if !busy {
                    break;
                }
                cpu.ready.wake_reclaimer();
                self.idle.wait(Duration::from_millis(1));
            }
        }
    }

    /// The barrier signal's lock, held across a `fork`.
    pub(super) fn hold_for_fork(&self) -> std::sync::MutexGuard<'_, ()> {
        self.idle.hold()
    }
}

/// This thread's reclaims of one instance, parked for the length of a
/// barrier it waits in (see `ReadyQueue::parked`); unparked on drop.
struct Parked<'a> {
    reclaim: &'a Reclaim,
}

impl<'a> Parked<'a> {
    fn new(reclaim: &'a Reclaim) -> Self {
        for_each_frame(|f| {
            if core::ptr::eq(f.reclaim, reclaim) {
                // SAFETY: a frame on this thread's stack names a queue of
                // the engine that is running it.
                unsafe { (*f.queue).park() };
            }
        });
        Parked { reclaim }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        for_each_frame(|f| {
            if core::ptr::eq(f.reclaim, self.reclaim) {
                // SAFETY: as in `new`: the same frames, still on the stack.
                unsafe { (*f.queue).unpark() };
            }
        });
    }
}

/// One reclaim in progress on this thread, linked to the ones it runs
/// inside of (a destructor that calls a barrier that reclaims).
struct ReclaimFrame {
    /// Whose reclaim (the engine's [`Reclaim`]).
    reclaim: *const Reclaim,
    /// The queue whose `reclaiming` count the frame holds raised.
    queue: *const ReadyQueue,
    prev: *const ReclaimFrame,
}

std::thread_local! {
    /// The innermost reclaim in progress on this thread (const, no
    /// destructor: usable from thread-local destructors too).
    static RECLAIM_TOP: core::cell::Cell<*const ReclaimFrame> =
        const { core::cell::Cell::new(core::ptr::null()) };
}

/// Runs `f` (one reclaim) with `queue`'s `reclaiming` count raised and this
/// thread's reclaim frame pushed; undoes both when `f` returns, or if
/// something unwinds through it (so that a barrier never waits for a dead
/// count).
fn in_reclaim<R>(reclaim: &Reclaim, queue: &ReadyQueue, f: impl FnOnce() -> R) -> R {
    struct Leave<'a> {
        queue: &'a ReadyQueue,
        prev: *const ReclaimFrame,
    }
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            RECLAIM_TOP.with(|t| t.set(self.prev));
            self.queue.leave_reclaim();
        }
    }
    queue.enter_reclaim();
    let frame = ReclaimFrame {
        reclaim,
        queue,
        prev: RECLAIM_TOP.with(core::cell::Cell::get),
    };
    RECLAIM_TOP.with(|t| t.set(&frame));
    let _leave = Leave {
        queue,
        prev: frame.prev,
    };
    f()
}

/// How many reclaims in progress on this thread satisfy `f`.
fn count_reclaim_frames(mut f: impl FnMut(&ReclaimFrame) -> bool) -> usize {
    let mut n = 0;
    let mut p = RECLAIM_TOP.with(core::cell::Cell::get);
    while !p.is_null() {
        // SAFETY: a frame on this thread's list lives on the stack of an
        // `in_reclaim` call still running on this thread (each unlinks its
        // frame before returning or unwinding, innermost first); frames
        // are never written after they are linked.
        let frame = unsafe { &*p };
        n += usize::from(f(frame));
        p = frame.prev;
    }
    n
}

/// Runs `f` on each of this thread's reclaim frames, innermost first.
fn for_each_frame(mut f: impl FnMut(&ReclaimFrame)) {
    count_reclaim_frames(|frame| {
        f(frame);
        false
    });
}

/// Runs every callback of a list: the `rcu_head` path, one object at a
/// time, chasing the links through the objects themselves. Returns the
/// objects and how many destructors panicked (caught one by one).
fn reclaim_list(list: &mut CbList) -> (usize, usize) {
    let (mut n, mut panics) = (0, 0);
    while let Some((head, func)) = list.pop() {
        // SAFETY: every head on a kvfree list was pushed with the function
        // that frees its object, and its grace period has elapsed; the
        // head was popped before the call, so a panic leaves the list whole.
        let r = block::catch_destructor(|| unsafe { func(head) });
        panics += usize::from(r.is_err());
        n += 1;
    }
    (n, panics)
}
