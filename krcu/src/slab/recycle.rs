//! A thread recycles its own `rcu_free` sheaves: when its `rcu_free` sheaf
//! of a cache fills, the thread keeps it on its slot's list of sheaves
//! waiting for their grace period (stamped with a polled grace-period
//! cookie, `start_poll_synchronize_rcu`) instead of handing it to
//! `call_rcu`; at a later fill, once the oldest one's grace period has
//! ended (`poll_state_synchronize_rcu`), the thread runs its objects'
//! destructors (nothing for a `T` without drop glue) and keeps it as its
//! spare, a sheaf of free objects that the next allocation finding its
//! `main` empty swaps in. The empty `main` becomes the next `rcu_free`
//! sheaf. So a thread that allocates and retires in a loop takes no lock,
//! leaves nothing to the RCU callback thread, and reuses objects still in
//! its own cache; and its retired objects never outgrow the bound below,
//! whatever CPU the callback thread gets (the list's oldest sheaf goes to
//! `call_rcu` beyond it).
//!
//! Only a thread in task context recycles: not a real-time thread, not in
//! a signal handler, not atomic. For a `T` with drop glue (whose
//! destructors would run inside the caller's `kfree_rcu_slab`) only with
//! kvfree's `Assist::Always`, and not inside a read-side section, a
//! destructor this path runs, or the thread's thread-local teardown. Elsewhere the `rcu_free`
//! path of `rcu_free.rs` runs as before. The destructors run outside the
//! slot's section (a destructor may use the cache), each under
//! `catch_unwind`; a panic is counted in the cache's statistics
//! (`destructor_panics`) and its payload dropped, as kvfree's reclaim does.
//!
//! Nothing is stranded: the list counts as partly filled `rcu_free`
//! sheaves (`rcu_started` less submitted and recycled ones), so
//! `kvfree_rcu_barrier` and the monitor's passes take it from idle or
//! exited threads and submit each sheaf to `call_rcu`, whose grace period
//! starts after the one the sheaf waited for.
//!
//! Owns: the recycling path. Uses: the thread slots (`thread.rs`), the
//! `rcu_free` path (`rcu_free.rs`), the RCU instance's polled grace
//! periods.
#![cfg(not(loom))]

use super::cache::CacheCore;
use super::sheaf::{self, Fifo, Sheaf};
use super::thread::ThreadSlot;
use crate::sync::atomic::Ordering::*;
use core::cell::Cell;
use core::ptr;
use std::sync::Arc;

/// The most memory (in object slots) a thread's waiting list of one cache
/// holds: beyond it the oldest sheaf goes to `call_rcu`.
const WAITING_BYTES: usize = 4 << 20;
/// The fewest sheaves the list may hold, whatever their size.
const MIN_WAITING: usize = 4;

thread_local! {
    /// Set while this thread runs destructors of a recycled sheaf: a
    /// destructor that retires into a cache does not recycle again, and a
    /// barrier it calls does not wait for recycles (its own among them).
    static RECYCLING: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is running destructors of a recycled sheaf.
pub(crate) fn in_recycle() -> bool {
    RECYCLING.with(Cell::get)
}

/// Whether a thread recycling for `kfree_rcu_slab` may run destructors of
/// the objects it recycles (from kvfree's [`Assist`](crate::kvfree::Assist)
/// of the instance): a cache of a `T` with drop glue recycles on the
/// retiring thread only with `Assist::Always`, the explicit opt-in (its
/// destructors then run inside `kfree_rcu_slab`, under whatever the caller
/// holds); otherwise its sheaves go to `call_rcu` and the RCU thread runs
/// the destructors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Helping {
    /// Never (destructors run on the RCU thread).
    Never,
    /// Whenever a sheaf's grace period has ended.
    Always,
}

impl CacheCore {
    /// How many sheaves a thread's waiting list of this cache may hold.
    pub(super) fn max_waiting(&self) -> usize {
        let sheaf_bytes = self.layout.stride * self.sheaf_capacity;
        (WAITING_BYTES / sheaf_bytes.max(1)).max(MIN_WAITING)
    }

    /// Whether the calling thread may recycle here, running this cache's
    /// destructors if it has any (the caller has checked task context:
    /// not a handler, not atomic, not real-time): only as `helping` allows,
    /// and not inside a read-side section (of the cache's instance always;
    /// of any instance where the validator tracks the depth: a destructor
    /// may wait for a grace period), not inside a destructor this path
    /// runs, not while the thread's thread-locals are being destroyed. A
    /// cache of a `T` without drop glue runs nothing: always.
    fn may_recycle(&self, helping: Helping) -> bool {
        if self.drop_fn.is_none() {
            return true;
        }
        helping == Helping::Always
            && !RECYCLING.with(Cell::get)
            && crate::context::rcu_read_depth() == 0
            && !self.rcu().is_reading()
            && !super::thread::exiting()
    }

    /// The `rcu_free` slow path of a task-context thread that has a slot.
    /// Where the thread may run destructors (see `may_run_destructors`),
    /// a full `rcu_free` sheaf joins the waiting list, and up to two of
    /// the oldest waiting sheaves whose grace period has ended are
    /// recycled (into the spare, else the barn). Elsewhere the full sheaf,
    /// and any sheaves still waiting, go to `call_rcu`. Either way an
    /// empty spare becomes the new `rcu_free` sheaf. True if `p` was
    /// queued; false leaves it to the general path (the slot's `rcu_free`
    /// sheaf is then null or has room).
    pub(super) fn rcu_free_recycling(&self, slot: &ThreadSlot, p: *mut u8, helping: Helping) -> bool {
        let rcu = self.rcu();
        let recycle = self.may_recycle(helping);
        // Taken before the section, after every push into the full sheaf
        // (earlier calls of this thread): its grace period covers them all
        // (see `GpState::snapshot` for the ordering against the unlinks).
        // Only for a sheaf that will wait here: one that goes to `call_rcu`
        // needs no cookie (nor a grace period requested for it).
        let cookie = if recycle {
            rcu.start_poll()
        } else {
            crate::rcu::GpCookie::COMPLETED
        };
        let max = self.max_waiting();
        // Sheaves for `call_rcu` (the overflow, or everything when the
        // thread may not recycle), and sheaves to recycle.
        let mut submit = Fifo::new();
        let mut ready: [*mut Sheaf; 2] = [ptr::null_mut(); 2];
        let queued = slot.with_all(|sh| {
            let s = *sh.rcu;
            if !s.is_null() {
                // SAFETY: the owner's sheaf, inside its section.
                if unsafe { !(*s).is_full() } {
                    // SAFETY: as above; it has room.
                    unsafe { self.push_retired(s, p) };
                    return true;
                }
                *sh.rcu = ptr::null_mut();
                // SAFETY: as above; it leaves the slot for a list.
                unsafe {
                    (*s).gp = cookie;
                    sh.recycle.waiting.push_back(s);
                }
                ThreadSlot::hit(&slot.waiting_added);
            }
            if recycle {
                if sh.recycle.waiting.len > max
                    && let Some(oldest) = sh.recycle.waiting.pop_front()
                {
                    // SAFETY: off the owner's list: ours.
                    unsafe { submit.push_back(oldest) };
                }
                let mut marked = false;
                for r in &mut ready {
                    let Some(oldest) = sh.recycle.waiting.front() else {
                        break;
                    };
                    // SAFETY: on the owner's list.
                    if !rcu.poll_state(unsafe { (*oldest).gp }) {
                        break;
                    }
                    // The grace period has ended (the poll's fence orders
                    // the destructors after it): ours to recycle. Marked
                    // before the section ends, so that a barrier that
                    // finds the list without it waits for the recycle.
                    if !marked {
                        slot.recycle_fork.store(crate::fork::generation(), SeqCst);
                        slot.recycle_seq.fetch_add(1, SeqCst);
                        marked = true;
                    }
                    *r = sh.recycle.waiting.pop_front().unwrap_or(ptr::null_mut());
                }
            } else {
                core::mem::swap(&mut submit, &mut sh.recycle.waiting);
            }
            let spare = sh.recycle.spare;
            if !spare.is_null() && sheaf::len(spare) == 0 {
                sh.recycle.spare = ptr::null_mut();
                // SAFETY: the owner's empty sheaf.
                unsafe { self.push_retired(spare, p) };
                *sh.rcu = spare;
                return true;
            }
            false
        });
        let Some(queued) = queued else {
            // A taker holds the slot: the general path.
            return false;
        };
        while let Some(s) = submit.pop_front() {
            self.submit_rcu_sheaf(s);
        }
        if !ready[0].is_null() {
            // Ends the recycle (even should filing a sheaf unwind): a
            // barrier waiting for it goes on.
            struct End<'a>(&'a ThreadSlot);
            impl Drop for End<'_> {
                fn drop(&mut self) {
                    self.0.recycle_seq.fetch_add(1, SeqCst);
                }
            }
            let _end = End(slot);
            for r in ready {
                if !r.is_null() {
                    self.recycle(slot, r);
                }
            }
        }
        queued
    }

    /// Runs the destructors of `s` (a waiting sheaf whose grace period has
    /// ended, taken off the list) and keeps it as the slot's spare, or
    /// files it like a sheaf back from `call_rcu` when the slot is taken.
    #[cold]
    fn recycle(&self, slot: &ThreadSlot, s: *mut Sheaf) {
        // A count of our own while destructors run and the sheaf is filed:
        // a destructor may drop the cache's last handle, and filing an
        // orphaned cache's sheaf frees slabs, each of which held a count.
        // SAFETY: a `CacheCore` only ever lives in an `Arc` (built in
        // `SlabCacheBuilder::build`); the count is given back by `_hold`.
        let _hold = unsafe {
            Arc::increment_strong_count(ptr::from_ref(self));
            Arc::from_raw(ptr::from_ref(self))
        };
        if self.drop_fn.is_some() {
            RECYCLING.with(|r| r.set(true));
            let mut panics = 0;
            // SAFETY: ours (off the list), its objects past their grace
            // period, each retired once with an initialised `T`.
            unsafe {
                self.drop_objects(s, |payload| {
                    panics += 1;
                    crate::unwind::drop_panic_payload(payload);
                })
            };
            RECYCLING.with(|r| r.set(false));
            self.counters
                .destructor_panics
                .fetch_add(panics as u64, Relaxed);
        }
        self.poison_objects(s);
        self.counters.rcu_recycled.fetch_add(1, Relaxed);
        let kept = slot.with_all(|sh| {
            if sh.recycle.spare.is_null() {
                sh.recycle.spare = s;
                true
            } else {
                false
            }
        });
        if kept != Some(true) {
            self.rcu_sheaf_home(s);
        }
    }

    /// Runs `T`'s destructor (if it has one) on each object of `s`, each
    /// under `catch_unwind` (a panicking one does not stop the others),
    /// handing each panic's payload to `on_panic`. What a recycle and the
    /// RCU callback of a submitted sheaf both run.
    ///
    /// # Safety
    /// `s` is the caller's, each object in it holds an initialised `T`
    /// that nobody reaches any more, and is dropped only here.
    pub(super) unsafe fn drop_objects(
        &self,
        s: *mut Sheaf,
        mut on_panic: impl FnMut(Box<dyn core::any::Any + Send>),
    ) {
        let Some(drop_fn) = self.drop_fn else {
            return;
        };
        // SAFETY: the caller's sheaf.
        let sh = unsafe { &*s };
        for &obj in &sh.objs[..sh.len] {
            // SAFETY: per the contract.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { drop_fn(obj) }));
            if let Err(payload) = r {
                on_panic(payload);
            }
        }
    }

    /// Marks the objects of `s` free for the address sanitizer: poisoned
    /// until handed out again.
    pub(super) fn poison_objects(&self, s: *mut Sheaf) {
        // SAFETY: the caller's sheaf.
        let sh = unsafe { &*s };
        for &obj in &sh.objs[..sh.len] {
            crate::asan::poison(obj, self.obj_size);
        }
    }
}
