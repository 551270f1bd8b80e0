//! The process-wide instance, built on first use, and the callbacks queued
//! for it before it exists: from a signal handler (hardirq or NMI context)
//! or a caller that may not sleep, which must not build it, they are parked
//! on a lock-free list ([`EARLY`]) and adopted when it is built (or by a
//! barrier on it).
//!
//! Uses the instance (`instance.rs`) and the callback lists; the free
//! functions of `global.rs` use it.
#![cfg(not(loom))]

use super::callback::{PendingList, RcuCallbackFn, RcuHead};
use super::instance::Rcu;
use super::state::RcuConfig;
use crate::domain::Domain;
use crate::fork;
use core::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The process-wide instance, once built.
static GLOBAL: OnceLock<Arc<Rcu>> = OnceLock::new();

/// Callbacks queued with [`call_rcu`](super::call_rcu) / [`call_rcu_box`](super::call_rcu_box) from hardirq
/// (signal handler) or NMI context before [`GLOBAL`] was built: building
/// it there would allocate, take locks, spawn a thread, and deadlock if the
/// handler interrupted the thread building it. They wait here, lock-free,
/// until the instance is built from task context, which adopts them (and a
/// barrier on the global instance adopts any still here before it starts:
/// see `adopt_early_for_barrier`).
static EARLY: PendingList = PendingList::new();

/// The id of the process-wide instance, if it is built (a guard of it
/// exists only then).
pub(crate) fn global_id() -> Option<u64> {
    GLOBAL.get().map(|g| g.id())
}

/// [`global`](super::global) as the `Arc` that the process-wide `kfree_rcu` engine shares.
#[inline]
pub(crate) fn global_arc() -> &'static Arc<Rcu> {
    match GLOBAL.get() {
        Some(g) => g,
        None => global_arc_slow(),
    }
}

#[cold]
fn global_arc_slow() -> &'static Arc<Rcu> {
    // Built through the fork module, so that a fork waits for a first build
    // in progress instead of copying it half done.
    let g = fork::init_global(&GLOBAL, || {
        Arc::new(Rcu::new(Domain::global(), RcuConfig::default()))
    });
    // Store-buffering handshake with `call_rcu_early`: this side stored
    // GLOBAL (inside get_or_init) and now loads EARLY; the handler side
    // stores to EARLY and then loads GLOBAL. With a SeqCst fence between
    // store and load on both sides, at least one side sees the other's
    // store: either this take finds the early callback, or the handler
    // finds GLOBAL and adopts it itself. None is stranded.
    std::sync::atomic::fence(Ordering::SeqCst);
    adopt_early(g);
    g
}

/// Adoptions in progress: a callback taken off [`EARLY`] is on neither
/// list until its adopter has queued it on the instance, and a barrier must
/// wait for it. The low 32 bits count adopters; the high 32 bits are the
/// process id they were counted in, so that an adopter that vanished in a
/// `fork` (another thread of the parent) counts for nothing in the child:
/// a value tagged with another process's id reads as zero. (An adoption the
/// forking thread itself had in progress, from a signal handler, is then
/// not waited for in the child. Only a stale value from an ancestor whose
/// pid the child reuses would be miscounted: no barrier can rely on an
/// adoption that process started anyway, but it would wait for it.)
static ADOPTING: AtomicU64 = AtomicU64::new(0);

fn adopting_tag() -> u64 {
    // SAFETY: getpid has no preconditions (and is async-signal-safe).
    u64::from(unsafe { libc::getpid() }.cast_unsigned()) << 32
}

/// Moves the callbacks parked on [`EARLY`] to `g`, oldest first. Lock-free
/// and allocation-free (a swap, then one push per callback, two counter
/// updates and a `getpid`): callable from a signal handler. Concurrent
/// adopters each take a disjoint part.
fn adopt_early(g: &Rcu) {
    if EARLY.is_empty() {
        return;
    }
    // Counted before the take (AcqRel, sequenced before it): a barrier
    // that finds EARLY empty because of this take sees the count (see
    // `adopt_early_for_barrier`). Uncounted when the guard drops, even if
    // a `call_rcu` below panics.
    let _counted = Adopting::enter();
    let mut list = EARLY.take();
    while let Some((head, func)) = list.pop() {
        // SAFETY: the head was queued by `call_rcu_early` with the caller's
        // `call_rcu` contract (valid, unmoved until `func` runs); taking it
        // off EARLY made it unqueued again, so it may be queued once more.
        unsafe { g.call_rcu(head, func) };
    }
}

thread_local! {
    /// This thread's adoptions in progress: `adopt_early` frames on its
    /// stack (one in a signal handler nested on the one it interrupted).
    /// A barrier on this thread never waits for them: they cannot finish
    /// before it returns. No destructor, so reachable at any time (and
    /// async-signal-safe).
    static MY_ADOPTING: AtomicU64 = const { AtomicU64::new(0) };
}

/// One adoption counted in [`ADOPTING`] and [`MY_ADOPTING`], until dropped.
struct Adopting {
    tag: u64,
}

impl Adopting {
    fn enter() -> Self {
        // Relaxed: only this thread and its handlers read it, and the
        // AcqRel update below keeps it before (its release half), as the
        // one in `drop` keeps the decrement after: a handler that sees
        // this adoption in ADOPTING sees it here too.
        MY_ADOPTING.with(|m| m.fetch_add(1, Ordering::Relaxed));
        let tag = adopting_tag();
        let _ = ADOPTING.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
            Some(if v & !0xffff_ffff == tag {
                v + 1
            } else {
                tag | 1
            })
        });
        Adopting { tag }
    }
}

impl Drop for Adopting {
    fn drop(&mut self) {
        let tag = self.tag;
        // Release: the adopter's pushes happen before a barrier's Acquire
        // load that reads this count (or a later one).
        let _ = ADOPTING.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
            // A value tagged otherwise was reset by a fork: this adoption is
            // not counted there.
            (v & !0xffff_ffff == tag && v & 0xffff_ffff != 0).then(|| v - 1)
        });
        MY_ADOPTING.with(|m| m.fetch_sub(1, Ordering::Relaxed));
    }
}

/// Before a barrier on `rcu`: if it is the global instance, every callback
/// parked on [`EARLY`] before the barrier is queued on it first, so that
/// the barrier waits for it.
///
/// Only the barrier needs this: it is the one operation that promises to
/// wait for callbacks already queued (`kvfree_rcu_barrier` is this barrier
/// on the global instance). The instance's builder adopts the parked
/// callbacks only after publishing [`GLOBAL`], and a thread that finds
/// `GLOBAL` set takes `global_arc`'s fast path (which stays one load, for
/// `read_lock`'s sake), so without this a barrier starting in that window
/// could end before them. A grace period (`synchronize`, polling) promises
/// nothing about callbacks and needs no adoption; the callbacks themselves
/// are only delayed until the builder (or the next barrier) adopts them.
///
/// Ordering: let callback X be parked (its push on EARLY, a Release RMW)
/// before this barrier starts (happens-before). Then this `adopt_early`'s
/// load of EARLY sees X's push or a later take. If X is still there, this
/// call adopts it itself, before queueing the barrier's heads. If another
/// adopter took it, that adopter counted itself in [`ADOPTING`] before its
/// take; every later RMW of EARLY continues the take's release sequence,
/// so our SeqCst load of EARLY synchronises with the take, and the count
/// we load (Acquire) after it includes that adopter until it has finished,
/// and its decrement (Release, after its pushes) makes those pushes happen
/// before our barrier's. Either way X is on a per-CPU pending list before
/// the barrier head of that list, and runs first.
///
/// Except for adoptions of the barrier's own thread ([`MY_ADOPTING`]): a
/// barrier in a signal handler that interrupted an adoption on its thread
/// would wait for it forever (it cannot go on until the handler returns),
/// so it waits only for the others, and the interrupted adoption's
/// callbacks may run after it. (`rcu_barrier` sleeps: calling it from a
/// handler is reported as such, and only this wait is kept from hanging.)
pub(super) fn adopt_early_for_barrier(rcu: &Rcu) {
    let Some(g) = GLOBAL.get() else { return };
    if !core::ptr::eq(&**g, rcu) {
        return;
    }
    adopt_early(g);
    // Counted in ADOPTING since before this call (in the frames it
    // interrupted), and still counted: see `Adopting`.
    let mine = MY_ADOPTING.with(|m| m.load(Ordering::Relaxed));
    loop {
        let v = ADOPTING.load(Ordering::Acquire);
        let counted = if v & !0xffff_ffff == adopting_tag() {
            v & 0xffff_ffff
        } else {
            0
        };
        if counted <= mine {
            return;
        }
        // An adopter is between its take and its pushes (a few pushes:
        // it holds no lock and never blocks).
        std::thread::yield_now();
    }
}

/// `call_rcu` on the global instance, never building it in hardirq or NMI
/// context (see [`EARLY`]).
///
/// # Safety
/// As for [`Rcu::call_rcu`].
#[inline]
pub(super) unsafe fn call_rcu_global(head: NonNull<RcuHead>, func: RcuCallbackFn) {
    if let Some(g) = GLOBAL.get() {
        // SAFETY: forwarded from the caller.
        return unsafe { g.call_rcu(head, func) };
    }
    if crate::context::in_hardirq() || crate::context::in_nmi() {
        // SAFETY: forwarded from the caller.
        unsafe { call_rcu_early(head, func) };
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { global_arc().call_rcu(head, func) };
    }
}

/// `call_rcu` on the global instance that never builds it, whatever the
/// context: for callers that may not sleep (atomic, irqs off, inside a
/// reader, a real-time thread), where building it would allocate, take
/// locks and spawn its worker. Before the instance exists the callback is
/// parked on [`EARLY`], adopted when it is built (by any task-context use,
/// or [`rcu_barrier`](super::rcu_barrier)).
///
/// # Safety
/// As for [`Rcu::call_rcu`].
pub(crate) unsafe fn call_rcu_global_nobuild(head: NonNull<RcuHead>, func: RcuCallbackFn) {
    match GLOBAL.get() {
        // A real-time thread makes no system call, not even the worker's
        // wake-up: the worker finds the callback within its idle check.
        // SAFETY: forwarded from the caller.
        Some(g) if crate::context::is_realtime() => unsafe { g.call_rcu_nowake(head, func) },
        // SAFETY: forwarded from the caller.
        Some(g) => unsafe { g.call_rcu(head, func) },
        // SAFETY: forwarded from the caller.
        None => unsafe { call_rcu_early(head, func) },
    }
}

/// Parks a callback on [`EARLY`] (no global instance yet, hardirq or NMI
/// context); adopts it at once if the instance was built meanwhile.
///
/// # Safety
/// As for [`Rcu::call_rcu`].
#[cold]
unsafe fn call_rcu_early(head: NonNull<RcuHead>, func: RcuCallbackFn) {
    // SAFETY: forwarded from the caller.
    unsafe { EARLY.push(head, func) };
    // See `global_arc_slow` for the handshake this fence is half of.
    std::sync::atomic::fence(Ordering::SeqCst);
    if let Some(g) = GLOBAL.get() {
        adopt_early(g);
    }
}

#[cfg(test)]
mod tests;
