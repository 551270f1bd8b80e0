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
//! [`might_sleep`] or [`Domain::might_sleep`], while atomic, with irqs off,
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
//! Reports go to the [`ReportHandler`] of the [`Domain`] the offending lock
//! belongs to: print each distinct report once (the default), collect them
//! ([`ReportLog`], for tests), panic, or a function of your own.
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

// Without the validator compiled in, most of these are only the public
// types; the machinery behind them is unused by design.
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod class;
#[cfg(krcu_lockdep)]
mod deferred;
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod graph;
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod held;
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod report;
#[cfg_attr(not(krcu_lockdep), allow(dead_code, unused_imports))]
mod table;

pub use class::{ClassId, ClassInfo, info as class_info};
pub use held::MAX_LOCK_DEPTH;
pub use report::{HeldLockInfo, Report, ReportHandler, ReportKind, ReportLog};

#[cfg(krcu_lockdep)]
use crate::context;
use crate::context::ContextKind;
use crate::domain::Domain;
use core::panic::Location;
use core::sync::atomic::{AtomicBool, Ordering};
use table::{FNV_OFFSET, KeySet, Slot, hash_bytes};

/// Whether the validator is compiled into this build.
pub const COMPILED: bool = cfg!(krcu_lockdep);

/// How many reports found in hardirq or NMI context can wait, unformatted,
/// for delivery at once; more are dropped and counted.
#[doc(alias = "printk_deferred")]
pub const DEFERRED_REPORTS: usize = 16;

/// Formats and delivers, each to its domain's handler, the reports found
/// in hardirq or NMI context and not delivered yet (see the module
/// documentation); waits for a delivery in progress on another thread. Does
/// nothing in hardirq or NMI context, where it may not allocate, nor
/// without the validator.
#[doc(alias = "printk_safe_flush")]
pub fn flush_deferred_reports() {
    #[cfg(krcu_lockdep)]
    if !must_defer() {
        deferred::flush(true);
    }
}

/// True where a report may not be formatted: hardirq or NMI context (a
/// signal handler, which may have interrupted its thread inside `malloc`).
#[cfg(krcu_lockdep)]
#[inline]
fn must_defer() -> bool {
    matches!(context::kind(), ContextKind::Hardirq | ContextKind::Nmi)
}

/// True where delivering deferred reports on the way is harmless: a
/// preemptible task that is about to block or sleep anyway (never a path
/// with a raw lock held, so never a real-time fast path).
#[cfg(krcu_lockdep)]
#[inline]
fn may_flush_here() -> bool {
    context::kind() == ContextKind::Task && !context::in_atomic() && !context::irqs_disabled()
}

/// Delivers a report now, or, where the heap may not be touched, records it
/// for later delivery.
#[cfg(krcu_lockdep)]
fn emit(domain: &Domain, finding: report::Finding, nesting_proof: bool) {
    if must_defer() {
        deferred::defer(domain, &report::Record::new(finding, nesting_proof, true));
    } else {
        let record = report::Record::new(finding, nesting_proof, false);
        domain
            .validator()
            .deliver(report::format(&record, false, 0));
    }
}

/// A lockdep wait type. The numbers are lockdep's (`LD_WAIT_*`), as reports
/// print them in `{outer:inner}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum WaitType {
    /// Wait-free: may be done anywhere (`LD_WAIT_FREE`).
    Free = 1,
    /// Spins: a raw spinlock (`LD_WAIT_SPIN`).
    Spin = 2,
    /// Spins, or sleeps under PREEMPT_RT: `spinlock_t` (`LD_WAIT_CONFIG`).
    Config = 3,
    /// Sleeps: a mutex (`LD_WAIT_SLEEP`).
    Sleep = 4,
    /// No restriction: the level of task context (`LD_WAIT_MAX`).
    Max = 5,
}

impl WaitType {
    /// The type as the validator sees it: with nesting proof off, CONFIG
    /// counts as SPIN.
    #[inline]
    pub fn effective(self, prove_raw_lock_nesting: bool) -> WaitType {
        if !prove_raw_lock_nesting && self == WaitType::Config {
            WaitType::Spin
        } else {
            self
        }
    }

    /// Lockdep's number for this type.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The level a context allows before any lock is held.
    pub fn context_level(kind: ContextKind) -> WaitType {
        match kind {
            ContextKind::Task => WaitType::Max,
            ContextKind::Softirq => WaitType::Config,
            ContextKind::Hardirq => WaitType::Spin,
            ContextKind::Nmi => WaitType::Free,
        }
    }
}

/// A domain's validator: whether it runs, its nesting-proof switch, and
/// where its reports go.
pub struct Validator {
    enabled: AtomicBool,
    prove_raw_lock_nesting: AtomicBool,
    handler: ReportHandler,
    #[cfg_attr(not(krcu_lockdep), allow(dead_code))]
    printed: KeySet<1024>,
}

impl core::fmt::Debug for Validator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Validator")
            .field("enabled", &self.enabled())
            .field("prove_raw_lock_nesting", &self.prove_raw_lock_nesting())
            .field("handler", &self.handler)
            .finish()
    }
}

impl Validator {
    pub(crate) fn new(enabled: bool, prove_raw_lock_nesting: bool, handler: ReportHandler) -> Self {
        Validator {
            enabled: AtomicBool::new(enabled && COMPILED),
            prove_raw_lock_nesting: AtomicBool::new(prove_raw_lock_nesting),
            handler,
            printed: KeySet::new(),
        }
    }

    /// Whether the validator checks this domain's locks (always false when
    /// it is not compiled in).
    #[inline]
    pub fn enabled(&self) -> bool {
        COMPILED && self.enabled.load(Ordering::Relaxed)
    }

    /// Switches checking on or off (a no-op when not compiled in).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on && COMPILED, Ordering::Relaxed);
    }

    /// Whether CONFIG locks are told apart from SPIN ones
    /// (`CONFIG_PROVE_RAW_LOCK_NESTING`).
    #[inline]
    pub fn prove_raw_lock_nesting(&self) -> bool {
        self.prove_raw_lock_nesting.load(Ordering::Relaxed)
    }

    /// Switches the raw-lock nesting proof.
    pub fn set_prove_raw_lock_nesting(&self, on: bool) {
        self.prove_raw_lock_nesting.store(on, Ordering::Relaxed);
    }

    /// The handler reports go to.
    pub fn handler(&self) -> &ReportHandler {
        &self.handler
    }

    #[cfg_attr(not(krcu_lockdep), allow(dead_code))]
    pub(crate) fn deliver(&self, report: Report) {
        match &self.handler {
            ReportHandler::PrintOnce => {
                let mut h = hash_bytes(FNV_OFFSET, &[report.kind as u8]);
                h = hash_bytes(h, report.class.unwrap_or("").as_bytes());
                h = hash_bytes(h, report.at.as_bytes());
                for l in &report.held {
                    h = hash_bytes(h, l.name.as_bytes());
                }
                // A report that says others were dropped is printed even if
                // it repeats one.
                if report.dropped > 0
                    || matches!(self.printed.insert(h), Slot::Inserted(_) | Slot::Full)
                {
                    // Never eprintln!: it panics when stderr is gone (a
                    // closed pipe), and a report must never unwind into
                    // the caller it describes.
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stderr().lock(), "{}", report.text);
                }
            }
            ReportHandler::Collect(log) => report::push(log, report),
            ReportHandler::Panic => panic!("{}", report.text),
            ReportHandler::Custom(f) => f(&report),
        }
    }
}

/// The validator state every lock carries: its class, its domain, and its
/// wait types. Empty when the validator is not compiled in.
pub(crate) struct LockDep {
    #[cfg(krcu_lockdep)]
    class: ClassId,
    #[cfg(krcu_lockdep)]
    domain: Option<Domain>,
    #[cfg(krcu_lockdep)]
    outer: WaitType,
    #[cfg(krcu_lockdep)]
    inner: WaitType,
}

impl LockDep {
    /// Not tracked (for `lock_api`'s `INIT`, which krcu does not expose).
    pub(crate) const UNTRACKED: LockDep = LockDep {
        #[cfg(krcu_lockdep)]
        class: ClassId::NONE,
        #[cfg(krcu_lockdep)]
        domain: None,
        #[cfg(krcu_lockdep)]
        outer: WaitType::Free,
        #[cfg(krcu_lockdep)]
        inner: WaitType::Free,
    };

    #[cfg_attr(not(krcu_lockdep), allow(unused_variables))]
    pub(crate) fn new(
        domain: &Domain,
        name: Option<&'static str>,
        at: &'static Location<'static>,
        outer: WaitType,
        inner: WaitType,
    ) -> LockDep {
        LockDep {
            #[cfg(krcu_lockdep)]
            class: class::register(name, at),
            #[cfg(krcu_lockdep)]
            domain: Some(domain.clone()),
            #[cfg(krcu_lockdep)]
            outer,
            #[cfg(krcu_lockdep)]
            inner,
        }
    }

    /// The lock's class (NONE when the validator is not compiled in).
    pub(crate) fn class(&self) -> ClassId {
        #[cfg(krcu_lockdep)]
        return self.class;
        #[cfg(not(krcu_lockdep))]
        ClassId::NONE
    }

    #[cfg(krcu_lockdep)]
    fn domain(&self) -> &Domain {
        self.domain.as_ref().unwrap_or_else(|| Domain::global())
    }

    /// Validates and records taking the lock at `addr`. Called before a
    /// blocking acquisition (so that a deadlock is reported before it
    /// hangs), after a successful trylock.
    #[inline]
    #[cfg_attr(not(krcu_lockdep), allow(unused_variables))]
    pub(crate) fn acquire(
        &self,
        addr: usize,
        trylock: bool,
        at: Option<&'static Location<'static>>,
    ) {
        #[cfg(krcu_lockdep)]
        if self.class != ClassId::NONE && self.domain().validator().enabled() {
            self.acquire_slow(addr, trylock, at);
        }
    }

    #[cfg(krcu_lockdep)]
    #[cold]
    fn acquire_slow(&self, addr: usize, trylock: bool, at: Option<&'static Location<'static>>) {
        // Nothing on this path allocates unless a report is delivered here
        // and now; in hardirq and NMI context reports are only recorded
        // (`emit`), so a signal handler may take its locks.
        let domain = self.domain();
        let v = domain.validator();
        if !trylock && may_flush_here() {
            deferred::flush(false);
        }
        let np = v.prove_raw_lock_nesting();
        let ctx = context::kind();
        let next = report::Taking {
            class: self.class,
            addr,
            outer: self.outer,
            inner: self.inner,
            at,
        };
        let depth = held::depth();
        if depth >= MAX_LOCK_DEPTH {
            emit(domain, report::Finding::MaxDepth { next }, np);
            return;
        }
        if !trylock {
            // check_wait_context: the level allowed by the context and the
            // locks held in it.
            let mut start = depth;
            while start > 0 && held::get(start - 1).context == ctx {
                start -= 1;
            }
            let mut level = WaitType::context_level(ctx).effective(np);
            for i in start..depth {
                level = level.min(held::get(i).inner.effective(np));
            }
            if context::rcu_read_depth() > 0 {
                level = level.min(WaitType::Config.effective(np));
            }
            if self.outer.effective(np) > level {
                // Like the kernel, the report names the context's own level
                // (task_wait_context), not the one the held locks lowered.
                let finding = report::Finding::InvalidWaitContext {
                    next,
                    context_level: WaitType::context_level(ctx),
                };
                emit(domain, finding, np);
            }
            // check_prevs_add: an edge from the innermost held lock of this
            // context, and on through the trylocks above the first plain one.
            for i in (0..depth).rev() {
                let prev = held::get(i);
                if prev.context != ctx {
                    break;
                }
                if prev.class != ClassId::NONE
                    && prev.class != self.class
                    && let Some(chain) = graph::add_edge(prev.class, self.class, at)
                {
                    emit(domain, report::Finding::Circular { next, prev, chain }, np);
                }
                if !prev.trylock {
                    break;
                }
            }
        }
        held::push(held::HeldLock {
            addr,
            class: self.class,
            outer: self.outer,
            inner: self.inner,
            context: ctx,
            trylock,
            at,
        });
    }

    /// Records releasing the lock at `addr`.
    #[inline]
    #[cfg_attr(not(krcu_lockdep), allow(unused_variables))]
    pub(crate) fn release(&self, addr: usize) {
        #[cfg(krcu_lockdep)]
        if held::depth() > 0 {
            held::pop(addr);
        }
    }

    /// Reports if sleeping is not allowed here (for sleeping locks).
    #[inline]
    #[cfg_attr(not(krcu_lockdep), allow(unused_variables))]
    pub(crate) fn might_sleep(&self, at: Option<&'static Location<'static>>) {
        #[cfg(krcu_lockdep)]
        if self.class != ClassId::NONE {
            check_might_sleep(self.domain(), at);
        }
    }
}

/// Takes the location a `#[track_caller]` lock wrapper recorded for the
/// acquisition that follows (None when the validator is not compiled in).
#[inline(always)]
pub(crate) fn take_caller() -> Option<&'static Location<'static>> {
    #[cfg(krcu_lockdep)]
    return held::take_caller();
    #[cfg(not(krcu_lockdep))]
    None
}

/// Records the caller of a lock operation, for the raw lock to attribute
/// its acquisition to. Compiles to nothing without the validator.
#[inline(always)]
#[track_caller]
pub(crate) fn note_caller() {
    #[cfg(krcu_lockdep)]
    held::set_caller(Location::caller());
}

#[cfg(krcu_lockdep)]
fn check_might_sleep(domain: &Domain, at: Option<&'static Location<'static>>) {
    let v = domain.validator();
    if !v.enabled() {
        return;
    }
    let state = report::SleepState {
        atomic_depth: context::atomic_depth(),
        irqs_disabled: context::irqs_disabled(),
        rcu_depth: context::rcu_read_depth(),
        context: context::kind(),
    };
    if state.atomic_depth > 0 || state.irqs_disabled || state.rcu_depth > 0 {
        let finding = report::Finding::SleepInInvalidContext { at, state };
        emit(domain, finding, v.prove_raw_lock_nesting());
    } else if may_flush_here() {
        // A place where the caller may sleep: deliver what signal handlers
        // left behind.
        deferred::flush(false);
    }
}

/// Declares that the caller may sleep here: reports, to the process-wide
/// default domain's handler, if it is atomic, has irqs off, or is inside an
/// RCU reader. Compiles to nothing without the validator.
#[track_caller]
#[inline]
pub fn might_sleep() {
    Domain::global().might_sleep_at(Location::caller());
}

/// Reports to `domain`'s handler if sleeping is not allowed here.
#[inline]
#[cfg_attr(not(krcu_lockdep), allow(unused_variables))]
pub(crate) fn might_sleep_in(domain: &Domain, at: &'static Location<'static>) {
    #[cfg(krcu_lockdep)]
    check_might_sleep(domain, Some(at));
}

/// Reports suspicious RCU usage (`lockdep_rcu_suspicious`) at `at` to
/// `domain`'s handler, if its validator is on. Compiles to nothing without
/// the validator.
#[cold]
#[cfg_attr(not(krcu_lockdep), allow(unused_variables))]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn rcu_suspicious(domain: &Domain, at: &'static Location<'static>, what: &'static str) {
    #[cfg(krcu_lockdep)]
    {
        let v = domain.validator();
        if v.enabled() {
            let finding = report::Finding::SuspiciousRcu {
                at,
                what,
                rcu_depth: context::rcu_read_depth(),
            };
            if context::is_realtime() && !must_defer() {
                // A real-time thread's `kfree_rcu` (which checks this) never
                // allocates nor takes a blocking lock: the report is
                // recorded in fixed storage, as in hardirq context, and
                // delivered by the next flush.
                deferred::defer(
                    domain,
                    &report::Record::new(finding, v.prove_raw_lock_nesting(), true),
                );
            } else {
                emit(domain, finding, v.prove_raw_lock_nesting());
            }
        }
    }
}

/// The locks the current thread holds, as the validator sees them
/// (outermost first; empty when the validator is not compiled in).
#[doc(alias = "lockdep_print_held_locks")]
pub fn held_locks() -> Vec<HeldLockInfo> {
    #[cfg(krcu_lockdep)]
    return held::snapshot()
        .iter()
        .map(|h| report::held_info(h, true))
        .collect();
    #[cfg(not(krcu_lockdep))]
    Vec::new()
}

/// Hooks for tests of the validator itself. Not part of the API.
#[doc(hidden)]
pub mod testing {
    use crate::context;

    /// Raises the thread's RCU read-side depth, as a reader does, without
    /// being a reader (grace periods do not wait for it).
    pub struct RcuReadDepth(core::marker::PhantomData<*const ()>);

    impl RcuReadDepth {
        /// Enters the pretend read-side section.
        pub fn enter() -> Self {
            context::rcu_read_enter();
            RcuReadDepth(core::marker::PhantomData)
        }
    }

    impl Drop for RcuReadDepth {
        fn drop(&mut self) {
            context::rcu_read_exit();
        }
    }
}
