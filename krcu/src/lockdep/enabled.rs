//! The validator compiled in (debug builds, or the `lockdep` feature; see
//! `krcu/build.rs`): the per-lock state and the hooks the lock paths call.
//! `disabled.rs` has the same items as inline no-ops; `mod.rs` picks one.
//!
//! Uses the validator's tables (`class`, `graph`, `held`), `format` and
//! `deferred` to make and keep reports, the [`Validator`] to deliver them,
//! and `context` for where the caller is.

use super::class::{self, ClassId};
use super::deferred;
use super::format::{self, Finding, Record, SleepState, Taking};
use super::graph;
use super::held::{self, MAX_LOCK_DEPTH};
use super::report::HeldLockInfo;
use super::validator::{self, HasValidator, Validator};
use super::wait::WaitType;
use crate::context::{self, ContextKind};
use core::panic::Location;
use std::sync::Arc;

/// Formats and delivers, each to its domain's handler, the reports found
/// in hardirq or NMI context and not delivered yet (see the module
/// documentation); waits for a delivery in progress on another thread. Does
/// nothing in hardirq or NMI context, where it may not allocate, nor
/// without the validator.
#[doc(alias = "printk_safe_flush")]
pub fn flush_deferred_reports() {
    if !must_defer() {
        deferred::flush(true);
    }
}

/// True where a report may not be formatted: hardirq or NMI context (a
/// signal handler, which may have interrupted its thread inside `malloc`).
#[inline]
fn must_defer() -> bool {
    matches!(context::kind(), ContextKind::Hardirq | ContextKind::Nmi)
}

/// True where delivering deferred reports on the way is harmless: a
/// preemptible task that is about to block or sleep anyway (never a path
/// with a raw lock held, so never a real-time fast path).
#[inline]
fn may_flush_here() -> bool {
    context::kind() == ContextKind::Task && !context::in_atomic() && !context::irqs_disabled()
}

/// Delivers a report now, or, where the heap may not be touched, records it
/// for later delivery.
fn emit(validator: &Arc<Validator>, finding: Finding, nesting_proof: bool) {
    if must_defer() {
        deferred::defer(validator, &Record::new(finding, nesting_proof, true));
    } else {
        let record = Record::new(finding, nesting_proof, false);
        validator.deliver(format::format(&record, false, 0));
    }
}

/// The validator state every lock carries: its class, its domain's
/// validator, and its wait types.
pub(crate) struct LockDep {
    class: ClassId,
    /// None: the process-wide validator.
    validator: Option<Arc<Validator>>,
    outer: WaitType,
    inner: WaitType,
}

impl LockDep {
    /// Not tracked (for `lock_api`'s `INIT`, which krcu does not expose).
    pub(crate) const UNTRACKED: LockDep = LockDep {
        class: ClassId::NONE,
        validator: None,
        outer: WaitType::Free,
        inner: WaitType::Free,
    };

    /// A lock of the domain `owner`, of the class named `name` (or of its
    /// construction site `at`).
    pub(crate) fn new(
        owner: &impl HasValidator,
        name: Option<&'static str>,
        at: &'static Location<'static>,
        outer: WaitType,
        inner: WaitType,
    ) -> LockDep {
        LockDep {
            class: class::register(name, at),
            validator: Some(owner.validator_handle().clone()),
            outer,
            inner,
        }
    }

    fn validator(&self) -> &Arc<Validator> {
        self.validator
            .as_ref()
            .unwrap_or_else(|| validator::global())
    }

    /// Validates and records taking the lock at `addr`. Called before a
    /// blocking acquisition (so that a deadlock is reported before it
    /// hangs), after a successful trylock.
    #[inline]
    pub(crate) fn acquire(
        &self,
        addr: usize,
        trylock: bool,
        at: Option<&'static Location<'static>>,
    ) {
        if self.class != ClassId::NONE && self.validator().enabled() {
            self.acquire_slow(addr, trylock, at);
        }
    }

    #[cold]
    fn acquire_slow(&self, addr: usize, trylock: bool, at: Option<&'static Location<'static>>) {
        // Nothing on this path allocates unless a report is delivered here
        // and now; in hardirq and NMI context reports are only recorded
        // (`emit`), so a signal handler may take its locks.
        let v = self.validator();
        if !trylock && may_flush_here() {
            deferred::flush(false);
        }
        let np = v.prove_raw_lock_nesting();
        let ctx = context::kind();
        let next = Taking {
            class: self.class,
            addr,
            outer: self.outer,
            inner: self.inner,
            at,
        };
        let depth = held::depth();
        if depth >= MAX_LOCK_DEPTH {
            emit(v, Finding::MaxDepth { next }, np);
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
                let finding = Finding::InvalidWaitContext {
                    next,
                    context_level: WaitType::context_level(ctx),
                };
                emit(v, finding, np);
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
                    emit(v, Finding::Circular { next, prev, chain }, np);
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
    pub(crate) fn release(&self, addr: usize) {
        if held::depth() > 0 {
            held::pop(addr);
        }
    }

    /// Reports if sleeping is not allowed here (for sleeping locks).
    #[inline]
    pub(crate) fn might_sleep(&self, at: Option<&'static Location<'static>>) {
        if self.class != ClassId::NONE {
            check_might_sleep(self.validator(), at);
        }
    }
}

/// Takes the location a `#[track_caller]` lock wrapper recorded for the
/// acquisition that follows (None when the validator is not compiled in).
#[inline(always)]
pub(crate) fn take_caller() -> Option<&'static Location<'static>> {
    held::take_caller()
}

/// Records the caller of a lock operation, for the raw lock to attribute
/// its acquisition to. Compiles to nothing without the validator.
#[inline(always)]
#[track_caller]
pub(crate) fn note_caller() {
    held::set_caller(Location::caller());
}

#[inline(always)]
fn check_might_sleep(v: &Arc<Validator>, at: Option<&'static Location<'static>>) {
    // Inline: a validator compiled in but switched off costs one load.
    if v.enabled() {
        check_might_sleep_on(v, at);
    }
}

#[inline(never)]
fn check_might_sleep_on(v: &Arc<Validator>, at: Option<&'static Location<'static>>) {
    let state = SleepState {
        atomic_depth: context::atomic_depth(),
        irqs_disabled: context::irqs_disabled(),
        rcu_depth: context::rcu_read_depth(),
        context: context::kind(),
    };
    if state.atomic_depth > 0 || state.irqs_disabled || state.rcu_depth > 0 {
        let finding = Finding::SleepInInvalidContext { at, state };
        emit(v, finding, v.prove_raw_lock_nesting());
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
    check_might_sleep(validator::global(), Some(Location::caller()));
}

/// Reports to `domain`'s handler if sleeping is not allowed here.
#[inline]
pub(crate) fn might_sleep_in(domain: &impl HasValidator, at: &'static Location<'static>) {
    check_might_sleep(domain.validator_handle(), Some(at));
}

/// Reports suspicious RCU usage (`lockdep_rcu_suspicious`) at `at` to
/// `domain`'s handler, if its validator is on. Compiles to nothing without
/// the validator.
#[cold]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn rcu_suspicious(
    domain: &impl HasValidator,
    at: &'static Location<'static>,
    what: &'static str,
) {
    let v = domain.validator_handle();
    if v.enabled() {
        let finding = Finding::SuspiciousRcu {
            at,
            what,
            rcu_depth: context::rcu_read_depth(),
        };
        if context::is_realtime() && !must_defer() {
            // A real-time thread's `kfree_rcu` (which checks this) never
            // allocates nor takes a blocking lock: the report is
            // recorded in fixed storage, as in hardirq context, and
            // delivered by the next flush.
            deferred::defer(v, &Record::new(finding, v.prove_raw_lock_nesting(), true));
        } else {
            emit(v, finding, v.prove_raw_lock_nesting());
        }
    }
}

/// The locks the current thread holds, as the validator sees them
/// (outermost first; empty when the validator is not compiled in).
#[doc(alias = "lockdep_print_held_locks")]
pub fn held_locks() -> Vec<HeldLockInfo> {
    held::snapshot()
        .iter()
        .map(|h| format::held_info(h, true))
        .collect()
}
