//! The grace-period worker: one thread per instance (the kernel's
//! `rcu_gp_kthread` and `rcu_core` softirq in one) that takes queued
//! callbacks, runs grace periods while callbacks or pollers wait for one,
//! and invokes the ready callbacks in batches in softirq context.
//!
//! # Batching
//! Under a stream of callbacks the worker does not run grace periods back
//! to back: it leaves [`RcuConfig::gp_interval`](super::RcuConfig::gp_interval)
//! (default 1 ms) between the start of one and the end of the previous, so
//! that each grace period (two membarrier IPI rounds) covers a batch, and the
//! pending lists' cache lines are not pulled away from the CPUs that push
//! onto them at every turn. The kernel's grace periods take milliseconds
//! for the same effect. `synchronize` callers run their own grace periods
//! and are not delayed.
//!
//! It sleeps on its wake word (`wake.rs`) when there is nothing to do.
//!
//! Uses the state it shares with the instance (`state.rs`), the callback
//! lists and the grace-period engine; never the instance, which starts it.
#![cfg(not(loom))]

use super::callback::{CbList, SegCbList};
use super::gp::WaitMode;
use super::seq::GpCookie;
use super::state::Shared;
use crate::context;
use crate::fork;
use crate::sync::atomic::Ordering;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

thread_local! {
    /// The id of the instance whose worker this thread is (0: none).
    static WORKER_OF: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// Whether the calling thread is the worker of the instance with this id.
pub(crate) fn is_worker_of(id: u64) -> bool {
    WORKER_OF.try_with(|w| w.get() == id).unwrap_or(false)
}

/// Takes the callback lists a worker parked for a `fork` left (a new
/// worker in the child takes over its predecessor's).
fn take_handoff(shared: &Shared) -> Option<Vec<SegCbList>> {
    shared
        .handoff
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
}

/// The worker's main loop; returns once the instance is stopping and every
/// callback has run.
pub(crate) fn run(shared: Arc<Shared>) {
    WORKER_OF.with(|w| w.set(shared.gp.readers.id));
    let mut segs: Vec<SegCbList> = take_handoff(&shared).unwrap_or_else(|| {
        (0..shared.pending.cpus())
            .map(|_| SegCbList::new())
            .collect()
    });
    let mut taken = Vec::with_capacity(segs.len());
    let interval = shared.config.gp_interval;
    let mut last_gp = Instant::now();
    loop {
        if fork::requested() {
            // The safe point for a fork: no lock held, nothing taken but
            // `segs`, which goes where the child's worker finds it.
            *shared.handoff.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(core::mem::take(&mut segs));
            fork::checkpoint();
            segs = take_handoff(&shared).unwrap_or_else(|| {
                (0..shared.pending.cpus())
                    .map(|_| SegCbList::new())
                    .collect()
            });
        }
        take_pending(&shared, &mut segs, &mut taken);
        let cur = shared.gp.seq();
        for s in &mut segs {
            s.advance(cur);
        }
        if invoke_batch(&shared, &mut segs) > 0 {
            continue;
        }
        // Nothing ready. A grace period for the oldest waiting callbacks,
        // or for a poller?
        let oldest = segs
            .iter()
            .filter_map(SegCbList::oldest_wait)
            .reduce(|a, b| if b.at_or_after(a) { a } else { b });
        if let Some(c) = oldest.or_else(|| shared.gp.needed()) {
            // Batch: let callbacks gather for the configured interval since
            // the last grace period this worker ran, instead of running
            // them back to back (each one IPIs every CPU running a thread
            // of the process). Stopping drains without delay.
            let since = last_gp.elapsed();
            if since < interval && !shared.stop.load(Ordering::Relaxed) {
                std::thread::sleep(interval - since);
                continue;
            }
            shared.gp.drive_to(c, WaitMode::Normal);
            last_gp = Instant::now();
            continue;
        }
        let pending = || shared.pending.iter().any(|(_, l)| !l.is_empty());
        if shared.stop.load(Ordering::SeqCst) && !pending() {
            break;
        }
        shared.wake.sleep(|| {
            pending()
                || shared.gp.needed().is_some()
                || shared.stop.load(Ordering::SeqCst)
                || fork::requested()
        });
    }
}

/// Takes every CPU's pending list and files it under one cookie snapped
/// after the takes.
fn take_pending(shared: &Shared, segs: &mut [SegCbList], taken: &mut Vec<(usize, CbList)>) {
    for (cpu, list) in shared.pending.iter() {
        if !list.is_empty() {
            taken.push((cpu, list.take()));
        }
    }
    if taken.is_empty() {
        return;
    }
    let cookie: GpCookie = shared.gp.snapshot();
    let mut n = 0;
    for (cpu, list) in taken.drain(..) {
        n += list.len() as u64;
        segs[cpu].accelerate(list, cookie);
    }
    shared.stats.taken.fetch_add(n, Ordering::Relaxed);
}

/// Invokes up to the batch limit of ready callbacks per CPU, in softirq
/// context (`rcu_do_batch`). Returns how many ran.
fn invoke_batch(shared: &Shared, segs: &mut [SegCbList]) -> u64 {
    if segs.iter().all(|s| s.done.is_empty()) {
        return 0;
    }
    let _softirq = context::enter_softirq();
    let limit = shared.config.batch_limit;
    let mut ran = 0;
    for s in segs.iter_mut() {
        for _ in 0..limit {
            let Some((head, func)) = s.done.pop() else {
                break;
            };
            // Counted before the call, so that whoever sees a callback's
            // effect (rcu_barrier) sees it counted.
            shared.stats.invoked.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the head was queued with `func` through `call_rcu`,
            // whose contract keeps it valid until now; a full grace period
            // has passed since (its segment's cookie is done); it is
            // invoked once, having been popped.
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| unsafe { func(head) }));
            if let Err(payload) = r {
                shared.stats.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!("krcu: an RCU callback panicked; the worker goes on");
                // Dropping the payload may panic too: never out of the worker.
                crate::unwind::drop_panic_payload(payload);
            }
            ran += 1;
        }
    }
    ran
}
