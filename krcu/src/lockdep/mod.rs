//! A lockdep-style validator: it proves that a path never takes a lock, or
//! sleeps, where it must not, and that locks are always taken in one order.
//!
//! # The rules (the kernel's, from `kernel/locking/lockdep.c`)
//!
//! **Wait types.** Every lock has an outer wait type (what taking it may do)
//! and an inner one (what may be done while holding it), lowest first:
//! [`WaitType::Free`] < [`WaitType::Spin`] (raw spinlock) <
//! [`WaitType::Config`] (`spinlock_t`, which sleeps under PREEMPT_RT) <
//! [`WaitType::Sleep`] (mutex). Taking a lock without trylock, the validator
//! computes the level the context allows: it starts from the context
//! (task: anything; softirq: CONFIG; hardirq: SPIN; NMI: FREE, that is
//! trylocks only), each lock held *in the same context* lowers it to that
//! lock's inner type, and an RCU read-side section lowers it to CONFIG. A
//! lock whose outer type is above the level gives `BUG: Invalid wait
//! context`. With `prove_raw_lock_nesting` off, CONFIG counts as SPIN, as
//! without `CONFIG_PROVE_RAW_LOCK_NESTING`. Trylocks are exempt: they cannot
//! wait.
//!
//! **Might-sleep.** A sleeping lock, or any operation declared sleeping with
//! [`might_sleep`] or [`Domain::might_sleep`](crate::Domain::might_sleep), while atomic, with irqs off,
//! or inside an RCU reader gives `BUG: sleeping function called from invalid
//! context`.
//!
//! **Lock order.** Classes (one per construction site, or per name) form a
//! graph with an edge A → B when B is taken while A is held in the same
//! context (trylocks add no edge of their own). A new edge that closes a
//! cycle, whichever threads took the orders, gives `WARNING: possible
//! circular locking dependency detected`: once, when the edge first appears.
//! Two locks of the same class nested are not reported (the kernel would
//! want a nesting annotation).
//!
//! # Reports and handlers
//! Reports go to the [`ReportHandler`] of the [`Domain`](crate::Domain) the offending lock
//! belongs to: print each distinct report once (the default), collect them
//! ([`ReportLog`], for tests), panic, or a function of your own.
//!
//! To get a report in a test, build the locks in a domain that collects,
//! run the path, and look at the log (the [guide](crate::guide#reading-a-validator-report)
//! explains each line of the text):
//! ```
//! use krcu::lock::{RawSpinLock, SpinLock};
//! use krcu::lockdep::{ReportHandler, ReportKind, ReportLog};
//!
//! let log = ReportLog::new();
//! let domain = krcu::Domain::builder().report_handler(ReportHandler::Collect(log.clone())).build();
//! let krcp = RawSpinLock::named(&domain, "krcp->lock", ());
//! let zone = SpinLock::named(&domain, "zone->lock", ());
//! {
//!     let _raw = krcp.lock();
//!     let _zone = zone.lock(); // spinlock_t under a raw spinlock: sleeps under RT
//! }
//! if krcu::lockdep::COMPILED {
//!     // Debug builds, or the `lockdep` feature.
//!     let reports = log.take();
//!     assert_eq!(reports.len(), 1);
//!     let report = &reports[0];
//!     assert_eq!(report.kind, ReportKind::InvalidWaitContext);
//!     assert_eq!(report.class, Some("zone->lock"));
//!     assert_eq!(report.held[0].name, "krcp->lock");
//!     assert!(report.text.contains("[ BUG: Invalid wait context ]"));
//! } else {
//!     assert!(log.is_empty(), "compiled out: no checks at all");
//! }
//! ```
//!
//! Lock order is checked across threads and time: the second order below
//! closes a cycle, reported once, though no deadlock happened:
//! ```
//! use krcu::lock::Mutex;
//! use krcu::lockdep::{ReportHandler, ReportKind, ReportLog};
//!
//! let log = ReportLog::new();
//! let domain = krcu::Domain::builder().report_handler(ReportHandler::Collect(log.clone())).build();
//! let a = Mutex::named(&domain, "a", ());
//! let b = Mutex::named(&domain, "b", ());
//! for _ in 0..2 {
//!     let _a = a.lock();
//!     let _b = b.lock(); // a -> b
//! }
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         let _b = b.lock();
//!         let _a = a.lock(); // b -> a: a circle
//!     });
//! });
//! if krcu::lockdep::COMPILED {
//!     assert_eq!(log.count(ReportKind::CircularDependency), 1);
//!     let report = &log.reports()[0];
//!     assert_eq!(report.headline(), "WARNING: possible circular locking dependency detected");
//!     assert!(report.text.contains("*** DEADLOCK ***"));
//! }
//! ```
//!
//! A strict test can make any report a panic instead
//! ([`ReportHandler::Panic`]):
//! ```
//! use krcu::lockdep::ReportHandler;
//! use std::panic::{AssertUnwindSafe, catch_unwind};
//! let domain = krcu::Domain::builder().report_handler(ReportHandler::Panic).build();
//! let outcome = catch_unwind(AssertUnwindSafe(|| {
//!     let _atomic = krcu::context::preempt_disable();
//!     domain.might_sleep(); // BUG: sleeping function called from invalid context
//! }));
//! assert_eq!(outcome.is_err(), krcu::lockdep::COMPILED);
//! assert!(!krcu::context::in_atomic(), "the guard was dropped by the unwind");
//! ```
//!
//! **Reports from a signal handler.** In hardirq or NMI context (a signal
//! handler, which may have interrupted its thread inside `malloc`) a report
//! is not formatted: what it needs is recorded, without allocating or
//! locking, into one of [`DEFERRED_REPORTS`] fixed slots, as the kernel
//! defers printk from NMI. The records are formatted and delivered, oldest
//! first and marked [`Report::deferred`], from a context that may allocate:
//! by the next blocking lock acquisition or might-sleep check in preemptible
//! task context on any thread, by every [`ReportLog`] query, and by
//! [`flush_deferred_reports`]. When the slots are full a report is dropped
//! and counted, and the next one delivered says how many
//! ([`Report::dropped`]). A handler is therefore never called in hardirq or
//! NMI context; a [`ReportHandler::Panic`] domain panics on the thread that
//! delivers the report.
//!
//! # Cost
//! The validator is compiled in with debug assertions and with the cargo
//! feature `lockdep`; otherwise its hooks compile to nothing and locks carry
//! no validator state. Compiled in, a domain can still switch it off at
//! run time, which leaves one relaxed atomic load per acquisition.
//! Steady-state checks neither allocate nor lock (tables are fixed and
//! lock-free); only formatting a report allocates, and that never happens
//! in hardirq or NMI context.
//!
//! Uses: `context`.

// The validator's machinery. Without the validator compiled in, most of it
// is only the public types; the rest is unused by design.
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod class;
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod deferred;
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod format;
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod graph;
mod handler;
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod held;
mod log;
mod report;
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod table;
mod validator;
mod wait;

// The hooks the lock paths call, chosen once, here: the validator, or the
// same items as inline no-ops (as parking_lot_core picks its thread parker).
#[cfg_attr(krcu_lockdep, path = "enabled.rs")]
#[cfg_attr(not(krcu_lockdep), path = "disabled.rs")]
mod imp;

pub(crate) use class::ClassId;
pub use handler::{ReportHandler, ReportLog};
pub use held::MAX_LOCK_DEPTH;
pub(crate) use imp::{LockDep, might_sleep_in, note_caller, take_caller};
// Its one caller, `kfree_rcu`, is not built under loom.
#[cfg_attr(loom, allow(unused_imports))]
pub(crate) use imp::rcu_suspicious;
pub use imp::{flush_deferred_reports, held_locks, might_sleep};
pub use report::{HeldLockInfo, Report, ReportKind};
pub(crate) use validator::HasValidator;
pub use validator::Validator;
pub(crate) use validator::global as global_validator;
pub use wait::WaitType;

/// Whether the validator is compiled into this build.
pub const COMPILED: bool = cfg!(krcu_lockdep);

/// How many reports found in hardirq or NMI context can wait, unformatted,
/// for delivery at once; more are dropped and counted.
#[doc(alias = "printk_deferred")]
pub const DEFERRED_REPORTS: usize = 16;
