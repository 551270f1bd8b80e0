//! Which caches wait on which RCU instance: the list that `kfree_rcu`'s
//! monitor and barrier walk to submit partly filled `rcu_free` sheaves, so
//! that nothing retired into a sheaf is stranded on an idle thread, an
//! idle CPU or an exited thread.
//!
//! Every cache registers at construction (a `Weak` of its core); entries
//! of dropped caches are pruned on the next walk. A walk collects strong
//! handles under the list's lock and submits with the lock released, so a
//! submit (which may take a thread slot's handshake and the CPUs' locks)
//! never runs under it, and a core whose last handle the walk held is
//! dropped outside it too.
//!
//! Owns: the list. Uses: the cache's core (`rcu_free.rs` submits).
#![cfg(not(loom))]

use super::cache::CacheCore;
use super::thread::Chains;
use crate::rcu::Rcu;
use crate::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A cache's entry: its core, and what the monitor saw of it last.
struct Entry {
    core: Weak<CacheCore>,
    /// `rcu_started` at the monitor's last look, and when it last saw it
    /// change.
    seen: u64,
    changed_at: Instant,
    /// When the monitor last submitted every partly filled sheaf.
    last_sweep: Instant,
}

/// Every cache's entry (a plain `std` mutex: only task-context paths walk
/// it, the monitor and `kvfree_rcu_barrier`, and nothing is called under
/// it).
static CACHES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// A partly filled sheaf of a busy cache is submitted at the latest this
/// long after the previous sweep, even while other threads keep starting
/// new sheaves.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

fn list() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    CACHES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers a new cache.
pub(super) fn register(core: &Arc<CacheCore>) {
    list().push(Entry {
        core: Arc::downgrade(core),
        seen: 0,
        changed_at: Instant::now(),
        last_sweep: Instant::now(),
    });
}

/// Whether `core` waits on `rcu` (without building the process-wide RCU).
fn waits_on(core: &CacheCore, rcu: &Rcu) -> bool {
    match core.rcu.get() {
        Some(r) => core::ptr::eq(r.as_ref(), rcu),
        None => crate::rcu::global_id() == Some(rcu.id()),
    }
}

/// The live caches of `rcu` for which `pick` says yes (given the entry),
/// pruning dropped ones.
fn collect(rcu: &Rcu, mut pick: impl FnMut(&CacheCore, &mut Entry) -> bool) -> Vec<Arc<CacheCore>> {
    let mut out = Vec::new();
    list().retain_mut(|e| {
        let Some(core) = e.core.upgrade() else {
            return false;
        };
        if waits_on(&core, rcu) && pick(&core, e) {
            out.push(core);
        }
        true
    });
    out
}

/// Submits every partly filled `rcu_free` sheaf of every cache of `rcu`
/// (`kvfree_rcu_barrier`: a `rcu_barrier` of `rcu` afterwards waits for
/// them). Returns how many sheaves went.
pub(crate) fn submit_all(rcu: &Rcu) -> usize {
    let caches = collect(rcu, |core, _| core.partial_rcu_sheaves() > 0);
    caches.iter().map(|c| c.submit_rcu_sheaves_all(Chains::All)).sum()
}

/// Waits for the recycles under way when it is called on caches of `rcu`
/// (part of `kvfree_rcu_barrier`: an object retired before the barrier may
/// be in a sheaf its thread took off its waiting list to recycle, which no
/// submit finds; its destructor has run once the recycle ends). Recycles
/// that begin later are not waited for, so writers that keep recycling do
/// not hold the barrier up. Not from a destructor krcu runs (a recycle's,
/// or a callback on an RCU worker): two of them calling barriers would
/// wait for each other.
pub(crate) fn wait_recycles(rcu: &Rcu) {
    if super::recycle::in_recycle() || crate::fork::on_worker_thread() {
        return;
    }
    let caches = collect(rcu, |_, _| true);
    let running: Vec<_> = caches.iter().flat_map(|c| c.threads.recycling()).collect();
    // The cores are dropped outside the list's lock (as in `submit_all`).
    drop(caches);
    for (slot, seq) in running {
        // SeqCst: pairs with the owner's raise inside its section (before
        // a taker could find its list without the sheaves) and its raise
        // once they are filed.
        while slot.recycle_seq.load(SeqCst) == seq {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// The monitor's pass: submits the partly filled `rcu_free` sheaves of
/// the caches of `rcu` where no sheaf was started for `quiet_for` (the
/// drain delay: a trickle of retires waits about that long, and a writer
/// descheduled for a moment keeps its sheaves), and of every cache at
/// least once per [`MAX_SWEEP_INTERVAL`]; with them the waiting lists of
/// threads that added none since the previous such submit. Returns how
/// many sheaves went.
pub(crate) fn submit_idle(rcu: &Rcu, quiet_for: Duration) -> usize {
    let now = Instant::now();
    let caches = collect(rcu, |core, e| {
        let started = core.counters.rcu_started.load(Relaxed);
        if started != e.seen {
            e.seen = started;
            e.changed_at = now;
        }
        let quiet = now.duration_since(e.changed_at) >= quiet_for;
        let due = quiet || now.duration_since(e.last_sweep) >= MAX_SWEEP_INTERVAL;
        if due && core.partial_rcu_sheaves() > 0 {
            e.last_sweep = now;
            true
        } else {
            false
        }
    });
    caches.iter().map(|c| c.submit_rcu_sheaves_all(Chains::Idle)).sum()
}

/// Whether any cache of `rcu` holds a partly filled `rcu_free` sheaf (the
/// monitor's "something is pending").
pub(crate) fn any_partial(rcu: &Rcu) -> bool {
    !collect(rcu, |core, _| core.partial_rcu_sheaves() > 0).is_empty()
}

/// Gives back what orphaned caches (their handle dropped) still hold in
/// sheaves: a box freed as its cache's handle was being dropped on another
/// thread, or the last box of a cache freed in a signal handler, leaves its
/// object (and so its slab and the cache's memory) in a sheaf nobody would
/// shrink again. Also drops the counts parked by signal handlers. Task
/// context: run when a cache is built (so a program that builds caches
/// gets back what an earlier one left; one that never builds another
/// keeps that orphaned cache's state, its pages already back).
pub(super) fn tend_orphans() {
    let mut orphans = Vec::new();
    list().retain(|e| match e.core.upgrade() {
        Some(core) => {
            if core.orphaned.load(Acquire) {
                orphans.push(core);
            }
            true
        }
        None => false,
    });
    super::boxed::take_parked(|core| orphans.push(core));
    for core in &orphans {
        if core.has_slabs() {
            core.shrink();
        }
    }
    // The last counts may go here: the cores drop in task context.
    drop(orphans);
}
