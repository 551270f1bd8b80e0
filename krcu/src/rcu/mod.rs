//! RCU in userspace: readers, grace periods, the polled grace-period API,
//! `call_rcu`, `rcu_barrier`, and stall warnings.
//!
//! # The design
//! Grace periods follow liburcu's **memb** flavour (`handshake.rs` has the
//! protocol and its memory-ordering argument). A reader's outermost
//! [`read_lock`](Rcu::read_lock) copies the instance's counter (with its
//! phase bit) into the thread's slot and issues a compiler fence; the
//! writer pays with `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` before
//! and after flipping the phase twice and waiting, after each flip, for the
//! slots still in the other phase. Where membarrier is missing (or
//! [`RcuConfig::force_fallback_fences`] says so) readers and writer use full
//! fences instead (where `membarrier(2)` is not available).
//!
//! Grace periods are numbered with the kernel's `rcu_seq` scheme (`rcu/seq.rs`):
//! [`Rcu::get_state`] returns a [`GpCookie`] that [`Rcu::poll_state`] can
//! check without waiting, correct across the counter's wrap-around.
//!
//! [`call_rcu`](Rcu::call_rcu) pushes an embedded [`RcuHead`] onto a per-CPU
//! lock-free list (`callback.rs`); the instance's worker thread (`worker.rs`)
//! takes the lists, files them by grace-period cookie in per-CPU segmented
//! lists, runs grace periods while callbacks wait, and invokes the ready
//! ones in batches in softirq context. [`rcu_barrier`](Rcu::rcu_barrier)
//! queues a callback on every CPU's list and waits for all of them.
//!
//! # Kernel map
//! | kernel | krcu |
//! |---|---|
//! | `rcu_read_lock()` / `rcu_read_unlock()` | [`Rcu::read_lock`], [`ReaderHandle::read_lock`], dropping the [`ReadGuard`] |
//! | `rcu_read_lock_held()` | [`Rcu::is_reading`] |
//! | `synchronize_rcu()`, `synchronize_rcu_expedited()` | [`Rcu::synchronize`], [`Rcu::synchronize_expedited`] |
//! | `get_state_synchronize_rcu()`, `start_poll_synchronize_rcu()` | [`Rcu::get_state`], [`Rcu::start_poll`] |
//! | `poll_state_synchronize_rcu()`, `cond_synchronize_rcu()` | [`Rcu::poll_state`], [`Rcu::cond_synchronize`] |
//! | `get_completed_synchronize_rcu()` | [`GpCookie::COMPLETED`] |
//! | `struct rcu_head`, `call_rcu()` | [`RcuHead`], [`Rcu::call_rcu`], [`Rcu::call_rcu_box`] |
//! | `rcu_barrier()` | [`Rcu::rcu_barrier`] |
//! | `rcu_state.gp_seq`, `rcu_seq_*` | `rcu/seq.rs` ([`GpCookie`]) |
//! | `rcu_segcblist` (done / wait / next-ready / next) | `callback.rs` |
//! | `rcu_gp_kthread`, `rcu_core` softirq, `rcu_do_batch`, `blimit` | `worker.rs`, [`RcuConfig::batch_limit`], [`RcuConfig::gp_interval`] |
//! | RCU CPU stall warnings | `stall.rs`, [`RcuConfig::stall_timeout`] |
//! | liburcu `rcu_register_thread()` | [`Rcu::register_thread`] |
//!
//! # Contexts and the validator
//! Readers raise the thread's RCU read-side depth (where the validator is
//! compiled in), so the validator caps the locks a reader may take at
//! CONFIG and reports sleeping inside a reader. `synchronize*` and
//! `rcu_barrier` declare that they sleep ([`Domain::might_sleep`](crate::Domain::might_sleep)): called
//! while atomic, with irqs off or inside a reader, they are reported.
//! Called inside a read-side section *of the same instance* they would wait
//! for themselves forever, as in the kernel; krcu reports it (when the
//! validator runs) and then **panics** with a message saying so, in every
//! build, rather than hang. `rcu_barrier` on the instance's own worker
//! thread (from a callback) panics for the same reason.
//!
//! `call_rcu` takes no lock, allocates nothing and makes no system call but
//! a rare futex wake-up: it is callable with a [`RawSpinLock`](crate::lock::RawSpinLock)
//! held and from a signal handler (enter [`enter_hardirq`](crate::context::enter_hardirq) first),
//! even one that interrupted a `call_rcu` on the same thread.
//!
//! # Instances
//! [`Rcu::new`] builds an instance in a [`Domain`](crate::Domain); it owns its worker
//! thread, which it stops and joins on drop after running every queued
//! callback. Instances are independent: a thread has one slot per instance
//! it reads under, and **a guard protects only against its own instance's
//! grace periods**: an object retired with another instance's `call_rcu`,
//! `synchronize` or `kfree_rcu` can be freed while the guard is held. Where
//! the validator runs, a `kfree_rcu` made inside a read-side section of
//! another instance only is reported
//! ([`SuspiciousRcuUsage`](crate::lockdep::ReportKind::SuspiciousRcuUsage)).
//!
//! [`global`] is the one process-wide instance, in
//! [`Domain::global`](crate::Domain::global), built on first use; the free
//! functions of this module use it, and so does the process-wide `kfree_rcu`
//! instance (`krcu::Krcu::global().rcu()` *is* [`global`]), so
//! [`read_lock`] holds off `krcu::kfree_rcu` and the other crate-level free
//! functions. Using only this module builds nothing else: the `kfree_rcu`
//! workers and the page allocator's arena start on the first call that
//! needs them.
//!
//! After `fork()` the child's instances work: the worker is parked across
//! the fork and restarted in the child, which also forgets the read-side
//! sections of the parent's other threads (see the crate docs).
//!
//! # For deferred freeing (kvfree_rcu)
//! A batch of retired objects takes a cookie with [`Rcu::get_state`] when it
//! is closed (or [`Rcu::start_poll`] to make sure a grace period comes), is
//! freed as soon as [`Rcu::poll_state`] says so, and can be waited for with
//! [`Rcu::cond_synchronize`]. To be *called* after a grace period instead,
//! embed an [`RcuHead`] in the batch and hand it to [`Rcu::call_rcu`]: the
//! callback runs on the instance's worker in softirq context (the kernel's
//! `queue_rcu_work` does the same with a workqueue); from there it can free
//! in place or wake a worker of its own.

mod handshake;
mod seq;

// The modules below carry `#![cfg(not(loom))]` themselves: under loom only
// the handshake and the sequence numbers are modelled.
mod barrier;
mod callback;
mod early;
mod global;
mod gp;
mod instance;
pub(crate) mod membarrier;
mod reader;
mod stall;
mod state;
mod wake;
mod worker;

#[cfg(not(loom))]
pub(crate) use callback::{CbList, PendingList};
#[cfg(not(loom))]
pub use callback::{HasRcuHead, RcuCallbackFn, RcuHead};
#[cfg(not(loom))]
pub(crate) use early::{call_rcu_global_nobuild, global_arc, global_id};
#[cfg(not(loom))]
pub use global::{
    GlobalReadGuard, GlobalReaderHandle, call_rcu, call_rcu_box, cond_synchronize, get_state,
    global, poll_state, rcu_barrier, read_lock, register_thread, start_poll, synchronize,
    synchronize_expedited,
};
#[cfg(not(loom))]
pub use instance::{Rcu, RcuStats};
/// `#[derive(HasRcuHead)]`: implements the trait [`HasRcuHead`] for a
/// struct from its `RcuHead` field. `use krcu::rcu::HasRcuHead;` brings
/// both the trait and the derive.
#[cfg(all(feature = "derive", not(loom)))]
pub use krcu_derive::HasRcuHead;
#[cfg(not(loom))]
pub use reader::{ReadGuard, ReaderHandle};
pub use seq::GpCookie;
#[cfg(not(loom))]
pub use stall::StallReport;
#[cfg(not(loom))]
pub use state::RcuConfig;
