//! The registry of front blocks: every thread's [`Front`] for this
//! instance, with what the monitor knows of it (which block it saw, since
//! when), so that the monitor can take a block that waited a drain delay,
//! or whose thread exited, and the statistics can count them.
//!
//! Owns: [`Fronts`] (the instance's id, whether fronts are in use, the
//! registry's lock) and [`FrontGates`]. Uses: `front.rs` (one thread's
//! front and its thread-locals), `krc.rs` (a stolen block goes to CPU 0's
//! `krc` as a full block), `stats.rs`, `block.rs`.
//!
//! # The registry's lock
//! A `std` mutex, not one of the crate's validated locks. The monitor
//! holds it in softirq context for a whole look at the fronts, which
//! steals blocks (a `membarrier` and up to 64 yields per front whose owner
//! is in its section): a waiter (a thread's first call registering its
//! front, `stats`, a barrier's pass) must sleep, not spin, that long, and
//! the validator rightly refuses a sleeping lock (`Mutex`) in softirq
//! context, whose level allows a `spinlock_t` at most. The forking
//! thread also holds it across `fork` (`Engine::lock_for_fork`). Lock
//! order: after the monitor's pass lock, before every `krc` lock (see
//! `engine.rs`).

use super::block::{BLOCK_BYTES, Block};
use super::front::{self, Front};
use super::shared::Shared;
use super::stats::{EngineCounters, KvfreeStats, Pending};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A thread's front as the monitor tracks it.
struct FrontEntry {
    front: Arc<Front>,
    /// The block it had at the last pass, and since when.
    seen: *mut Block,
    since: Option<Instant>,
}

// SAFETY: `seen` is only compared, never followed.
unsafe impl Send for FrontEntry {}

pub(super) struct Fronts {
    /// This instance's id (a thread finds its front by it).
    id: u64,
    /// Whether threads append to front blocks (membarrier in use and the
    /// configuration allows).
    enabled: bool,
    /// Lock order: after the pass lock, before every `krc` lock.
    entries: Mutex<Vec<FrontEntry>>,
}

/// The registry's lock and every front's gate, held across a `fork`.
pub(super) struct FrontsForkGuard<'a>(
    #[allow(dead_code)] MutexGuard<'a, Vec<FrontEntry>>,
    #[allow(dead_code)] FrontGates,
);

impl Fronts {
    pub(super) fn new(enabled: bool) -> Fronts {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Fronts {
            id: NEXT.fetch_add(1, Relaxed),
            enabled,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// Whether fronts are in use.
    #[inline]
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The calling thread's front, if it has one.
    #[inline]
    pub(super) fn current(&self) -> Option<&'static Front> {
        front::current(self.id)
    }

    /// Makes the calling thread's front and records it. Allocates and
    /// takes the registry's lock: only where sleeping is allowed.
    #[cold]
    pub(super) fn register(&self) -> Option<&'static Front> {
        front::get_or_register(self.id, |f| {
            self.lock().push(FrontEntry {
                front: f,
                seen: core::ptr::null_mut(),
                since: None,
            });
        })
    }

    /// Makes the calling thread's front ahead of its first call.
    pub(super) fn prepare_thread(&self) {
        if self.enabled && self.current().is_none() {
            self.register();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<FrontEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The monitor's look at the fronts: takes the block of a front whose
    /// thread exited, of one whose block has sat `drain_delay`, and of all
    /// with `flush`, and hands them to the first CPU's `krc` as full
    /// blocks. Returns what is still in fronts, and whether it took every
    /// block it wanted: an owner that stays inside its section (preempted
    /// there) is not waited for, with the pass and registry locks held;
    /// the next pass (a barrier's next round) tries again.
    pub(super) fn monitor(
        &self,
        s: &Shared,
        flush: bool,
        now: Instant,
        drain_delay: Duration,
    ) -> (Pending, bool) {
        let mut left = Pending::default();
        if !self.enabled {
            return (left, true);
        }
        let mut complete = true;
        self.lock().retain_mut(|e| {
            let f = &e.front;
            let exited = f.exited.load(Acquire);
            let b = f.block.load(Relaxed);
            if b != e.seen {
                e.seen = b;
                e.since = Some(now);
            }
            let aged = e
                .since
                .is_some_and(|t| now.duration_since(t) >= drain_delay);
            let stolen = if !b.is_null() && (exited || flush || aged) {
                let got = f.steal();
                complete &= got.is_some();
                got
            } else {
                None
            };
            if let Some((b, o, by)) = stolen {
                if let Some(b) = NonNull::new(b) {
                    let mut krc = s.cpus.get(0).krc.lock();
                    // SAFETY: stolen: the block is ours now.
                    unsafe { krc.adopt(b, o, by) };
                }
                e.seen = core::ptr::null_mut();
                e.since = None;
            } else {
                left += pending(f);
            }
            // An exited front is forgotten once its block is taken.
            let gone = exited && f.block.load(Relaxed).is_null();
            if gone {
                forget(&s.counters, f);
            }
            !gone
        });
        (left, complete)
    }

    /// Whether no front holds a block (the monitor's idle predicate: a
    /// front's block holds at least one object from its install on).
    /// Relaxed loads: the caller orders them (`Monitor::nothing_pending`).
    pub(super) fn all_empty(&self) -> bool {
        !self.enabled
            || self
                .lock()
                .iter()
                .all(|e| e.front.block.load(Relaxed).is_null())
    }

    /// The instance is going away: threads may forget their fronts.
    pub(super) fn retire(&self, counters: &EngineCounters) {
        for e in self.lock().drain(..) {
            forget(counters, &e.front);
            e.front.set_dead();
        }
    }

    /// Adds the fronts' calls and what waits in them to `s`.
    pub(super) fn add_stats(&self, s: &mut KvfreeStats) {
        for e in self.lock().iter() {
            let f = &e.front;
            let (t, so) = (f.calls[0].load(Relaxed), f.calls[1].load(Relaxed));
            s.calls_task += t;
            s.calls_softirq += so;
            s.to_block += t + so;
            let p = pending(f);
            s.pending_objects += p.objs as u64;
            s.blocks_in_use += p.blocks as u64;
            s.pending_bytes += p.bytes as u64;
        }
    }

    /// Takes the registry's lock and closes every front's gate, for a
    /// `fork` (see `Engine::lock_for_fork`).
    pub(super) fn hold_for_fork(&self) -> FrontsForkGuard<'_> {
        let entries = self.lock();
        let gates = FrontGates::close(&entries);
        FrontsForkGuard(entries, gates)
    }

    /// In the child of a `fork`: the other threads' fronts are marked
    /// exited; the child's monitor takes their blocks (their sections
    /// ended before the fork, see [`FrontGates`]) and forgets them. The
    /// forking thread's own fronts stay.
    pub(super) fn forget_other_threads(&self) {
        for e in self.lock().iter() {
            if !front::owned_here(&e.front) {
                e.front.forget_owner();
            }
        }
    }
}

/// What waits in a front: its objects and their bytes, and its block's
/// page if it has one (with no block the counts are zero: they leave with
/// the block). A racy look at another thread's counts (Relaxed loads): a
/// statistic.
fn pending(f: &Front) -> Pending {
    let blocks = usize::from(!f.block.load(Relaxed).is_null());
    Pending {
        objs: f.objs.load(Relaxed),
        bytes: f.bytes.load(Relaxed) + blocks * BLOCK_BYTES,
        blocks,
    }
}

/// Keeps the counts of a front the instance stops tracking.
fn forget(counters: &EngineCounters, f: &Front) {
    for (gone, calls) in counters.gone_front_calls.iter().zip(&f.calls) {
        gone.fetch_add(calls.load(Relaxed), Relaxed);
    }
}

/// Every front's gate closed across a `fork`: each front's steal asked and
/// its owner out of its section; opened again when dropped (in the parent
/// and in the child).
///
/// Ordering: the same handshake as the monitor's steal (`steal.rs`): every
/// `steal` store precedes one membarrier, after which an owner is either
/// seen `busy` (and waited for) or will see `steal` and leave its block
/// alone; so at the fork no thread is inside its section, and none enters
/// one until the gates reopen. The owners never block on anything while
/// inside (a section holds no lock but a `krc` trylock), so the wait ends.
pub(super) struct FrontGates(Vec<Arc<Front>>);

impl FrontGates {
    fn close(fronts: &[FrontEntry]) -> FrontGates {
        let gates: Vec<Arc<Front>> = fronts.iter().map(|e| e.front.clone()).collect();
        for f in &gates {
            f.fork_ask();
        }
        if let Some(f) = gates.first() {
            f.fork_barrier();
        }
        for f in &gates {
            f.fork_wait();
        }
        FrontGates(gates)
    }
}

impl Drop for FrontGates {
    fn drop(&mut self) {
        for f in &self.0 {
            f.fork_release();
        }
    }
}
