//! The per-thread execution context: what the kernel keeps in the preempt
//! count, the irq flags and `current`.
//!
//! Every thread carries
//! - an **atomic depth** (the kernel's preempt count): raised by
//!   [`preempt_disable`], by holding a spinning lock, and by hard-interrupt
//!   and NMI context; [`in_atomic`] is true while it is above zero;
//! - an **irqs-off depth**: raised by [`local_irq_save`] and the `_irqsave`
//!   lock forms, and by hard-interrupt and NMI context;
//! - the **context kind** ([`ContextKind`]): task unless the thread says
//!   otherwise with [`enter_softirq`], [`enter_hardirq`] or [`enter_nmi`];
//! - the **RCU read-side depth**;
//! - whether the thread is **real-time** ([`set_realtime`]): a promise krcu
//!   keeps for the thread whatever instance it calls (see [`is_realtime`]).
//!
//! In userspace nothing enforces these: they are declarations that the
//! validator ([`crate::lockdep`]) checks against, and that krcu's own code
//! consults (for example to refuse NMI context). Declaring irqs off does not
//! mask signals; see [`local_irq_save`].
//!
//! # Contexts in krcu
//! - *task*: an ordinary thread.
//! - *softirq*: krcu's own worker context (RCU callbacks, block refill). It is
//!   modelled on PREEMPT_RT's threaded softirqs: it is not atomic, so a worker
//!   may sleep, but the validator caps the locks it may take at the CONFIG
//!   wait type, as lockdep does for softirq context.
//! - *hardirq*: a POSIX signal handler. Entering it raises the atomic and
//!   irqs-off depths, as a hard interrupt does.
//! - *NMI*: declared by the caller; `kfree_rcu` refuses it, as the kernel does.
//!
//! ```
//! use krcu::context::{self, ContextKind};
//! assert_eq!(context::kind(), ContextKind::Task);
//! {
//!     let _handler = context::enter_hardirq(); // first thing in a signal handler
//!     assert_eq!(context::kind(), ContextKind::Hardirq);
//!     assert!(context::in_atomic() && context::irqs_disabled());
//! }
//! {
//!     let _atomic = context::preempt_disable();
//!     assert_eq!(context::atomic_depth(), 1);
//! }
//! assert!(context::in_task() && !context::in_atomic());
//! ```
//!
//! # Signal safety
//! The state lives in `const`-initialised thread-locals of types without
//! destructors, so reading or changing it from a signal handler never
//! allocates or registers anything. A signal handler that interrupts an
//! update leaves the state as it found it, because every guard restores what
//! it changed before the handler returns.

use core::cell::Cell;
use core::marker::PhantomData;

/// Which kind of context the current thread is executing in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContextKind {
    /// An ordinary thread.
    Task,
    /// krcu's worker context (the kernel's softirq, threaded as on PREEMPT_RT).
    Softirq,
    /// A hard interrupt: in userspace, a signal handler.
    Hardirq,
    /// A non-maskable interrupt, declared by the caller.
    Nmi,
}

impl ContextKind {
    /// The kernel's word for this context, as lockdep prints it.
    pub fn name(self) -> &'static str {
        match self {
            ContextKind::Task => "task",
            ContextKind::Softirq => "softirq",
            ContextKind::Hardirq => "hardirq",
            ContextKind::Nmi => "nmi",
        }
    }
}

/// The preemption model of the (simulated) kernel an instance runs under.
///
/// It decides what a [`SpinLock`](crate::lock::SpinLock) is (a spinning lock,
/// or under [`PreemptModel::Rt`] a sleeping one) and what [`preemptible`]
/// can know.
///
/// ```
/// use krcu::context::{self, PreemptModel};
/// assert_eq!(PreemptModel::default(), PreemptModel::Full);
/// let rt: PreemptModel = "rt".parse().unwrap();
/// assert!(rt.spinlock_sleeps() && !PreemptModel::Full.spinlock_sleeps());
/// // Without a preempt count, whether the caller may be preempted is unknown.
/// assert!(!context::preemptible(PreemptModel::None));
/// assert!(context::preemptible(PreemptModel::Full), "task context, nothing held");
/// assert!("fast".parse::<PreemptModel>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[doc(alias = "CONFIG_PREEMPT")]
pub enum PreemptModel {
    /// `CONFIG_PREEMPT_NONE`: no preempt count, so `preemptible()` cannot know
    /// whether the caller is atomic and answers `false` (as the 2020 kfree_rcu thread points out).
    None,
    /// `CONFIG_PREEMPT_VOLUNTARY`: like `None`, without a preempt count.
    Voluntary,
    /// `CONFIG_PREEMPT`: full preemption with a preempt count.
    #[default]
    Full,
    /// `CONFIG_PREEMPT_RT`: `spinlock_t` becomes a sleeping lock.
    Rt,
}

impl PreemptModel {
    /// All models, in the kernel's order.
    pub const ALL: [PreemptModel; 4] = [
        PreemptModel::None,
        PreemptModel::Voluntary,
        PreemptModel::Full,
        PreemptModel::Rt,
    ];

    /// Whether the model keeps a preempt count (`CONFIG_PREEMPT_COUNT`), which
    /// is what lets `preemptible()` answer truthfully.
    pub fn has_preempt_count(self) -> bool {
        matches!(self, PreemptModel::Full | PreemptModel::Rt)
    }

    /// Whether `spinlock_t` is a sleeping lock under this model.
    pub fn spinlock_sleeps(self) -> bool {
        self == PreemptModel::Rt
    }

    /// The short name used on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            PreemptModel::None => "none",
            PreemptModel::Voluntary => "voluntary",
            PreemptModel::Full => "full",
            PreemptModel::Rt => "rt",
        }
    }
}

impl core::fmt::Display for PreemptModel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// A preemption model name [`PreemptModel`]'s `FromStr` does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown preempt model '{name}' (expected none, voluntary, full or rt)")]
pub struct ParsePreemptModelError {
    /// The name given.
    pub name: String,
}

impl core::str::FromStr for PreemptModel {
    type Err = ParsePreemptModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PreemptModel::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParsePreemptModelError { name: s.into() })
    }
}

struct ThreadContext {
    atomic_depth: Cell<u32>,
    irqs_off: Cell<u32>,
    kind: Cell<ContextKind>,
    rcu_depth: Cell<u32>,
    realtime: Cell<bool>,
}

#[cfg(not(loom))]
thread_local! {
    static CONTEXT: ThreadContext = const {
        ThreadContext {
            atomic_depth: Cell::new(0),
            irqs_off: Cell::new(0),
            kind: Cell::new(ContextKind::Task),
            rcu_depth: Cell::new(0),
            realtime: Cell::new(false),
        }
    };
}

#[cfg(loom)]
loom::thread_local! {
    static CONTEXT: ThreadContext = ThreadContext {
        atomic_depth: Cell::new(0),
        irqs_off: Cell::new(0),
        kind: Cell::new(ContextKind::Task),
        rcu_depth: Cell::new(0),
        realtime: Cell::new(false),
    };
}

#[inline(always)]
fn with<R>(f: impl FnOnce(&ThreadContext) -> R) -> R {
    CONTEXT.with(f)
}

/// The context kind of the current thread.
#[inline]
pub fn kind() -> ContextKind {
    with(|c| c.kind.get())
}

/// The atomic depth (the kernel's preempt count, without its bit fields).
#[inline]
#[doc(alias = "preempt_count")]
pub fn atomic_depth() -> u32 {
    with(|c| c.atomic_depth.get())
}

/// The irqs-off depth.
#[inline]
pub fn irqs_off_depth() -> u32 {
    with(|c| c.irqs_off.get())
}

/// The RCU read-side nesting depth of the current thread.
#[inline]
#[doc(alias = "rcu_preempt_depth")]
pub fn rcu_read_depth() -> u32 {
    with(|c| c.rcu_depth.get())
}

/// Declares (or, with `false`, withdraws) the calling thread real-time.
///
/// Real-time is a property of a thread, not of an instance: while it is set,
/// `kfree_rcu` on this thread, on any instance and whatever the instance's
/// [`Assist`](crate::kvfree::Assist) setting,
/// - never runs a destructor (it never helps free what is ready: the flood
///   brake is left to the other threads);
/// - never calls the global allocator (neither allocates nor frees);
/// - never takes a blocking lock, and makes no system call.
///
/// The last two also need the thread's front block made ahead: use
/// [`Krcu::register_thread`](crate::Krcu::register_thread), which declares
/// the thread real-time too. Without one, the calls take the per-CPU path
/// (trylocks only) rather than allocate a front. The exception is
/// [`Policy::Nowait`](crate::kvfree::Policy::Nowait), kept to show the bug the
/// 2020 kfree_rcu thread showed: its allocation may take the zone lock.
///
/// A plain store to a thread-local: callable from any context.
///
/// ```
/// use krcu::context;
/// context::set_realtime(true);
/// assert!(context::is_realtime());
/// let cell = krcu::RcuCell::new(1u8);
/// assert!(cell.store(2).is_err(), "would allocate on a real-time thread");
/// context::set_realtime(false);
/// assert!(cell.store(2).is_ok());
/// ```
pub fn set_realtime(realtime: bool) {
    with(|c| c.realtime.set(realtime));
}

/// Whether the calling thread declared itself real-time ([`set_realtime`]).
#[inline]
pub fn is_realtime() -> bool {
    with(|c| c.realtime.get())
}

/// True while the thread may not sleep because it is atomic: a spinning lock
/// is held, preemption is disabled, or it runs in hardirq or NMI context.
#[inline]
pub fn in_atomic() -> bool {
    atomic_depth() > 0
}

/// True while the thread has declared interrupts disabled.
#[inline]
pub fn irqs_disabled() -> bool {
    irqs_off_depth() > 0
}

/// True in softirq (worker) context.
#[inline]
pub fn in_softirq() -> bool {
    kind() == ContextKind::Softirq
}

/// True in hardirq (signal handler) context.
#[inline]
pub fn in_hardirq() -> bool {
    kind() == ContextKind::Hardirq
}

/// True in NMI context.
#[inline]
pub fn in_nmi() -> bool {
    kind() == ContextKind::Nmi
}

/// True in task context.
#[inline]
pub fn in_task() -> bool {
    kind() == ContextKind::Task
}

/// The kernel's `preemptible()` under `model`: without a preempt count
/// (`None`, `Voluntary`) the kernel cannot tell whether the caller is atomic
/// and the answer is always `false`; with one it is "not atomic and irqs on".
#[inline]
pub fn preemptible(model: PreemptModel) -> bool {
    model.has_preempt_count() && !in_atomic() && !irqs_disabled()
}

#[inline]
pub(crate) fn atomic_enter() {
    with(|c| c.atomic_depth.set(c.atomic_depth.get() + 1));
}

#[inline]
pub(crate) fn atomic_exit() {
    with(|c| {
        let d = c.atomic_depth.get();
        debug_assert!(d > 0, "atomic depth underflow");
        c.atomic_depth.set(d.saturating_sub(1));
    });
}

#[inline]
pub(crate) fn irqs_off_enter() {
    with(|c| c.irqs_off.set(c.irqs_off.get() + 1));
}

#[inline]
pub(crate) fn irqs_off_exit() {
    with(|c| {
        let d = c.irqs_off.get();
        debug_assert!(d > 0, "irqs-off depth underflow");
        c.irqs_off.set(d.saturating_sub(1));
    });
}

/// Raises the RCU read-side depth; for the RCU reader implementation.
#[inline]
pub(crate) fn rcu_read_enter() {
    with(|c| c.rcu_depth.set(c.rcu_depth.get() + 1));
}

/// Lowers the RCU read-side depth; for the RCU reader implementation.
#[inline]
pub(crate) fn rcu_read_exit() {
    with(|c| {
        let d = c.rcu_depth.get();
        debug_assert!(d > 0, "RCU read depth underflow");
        c.rcu_depth.set(d.saturating_sub(1));
    });
}

type NotSend = PhantomData<*const ()>;

/// Preemption disabled until dropped ([`preempt_disable`]).
#[must_use = "preemption is enabled again when the guard is dropped"]
#[derive(Debug)]
pub struct PreemptDisabled(NotSend);

/// Disables preemption (raises the atomic depth) until the guard drops.
pub fn preempt_disable() -> PreemptDisabled {
    atomic_enter();
    PreemptDisabled(PhantomData)
}

impl Drop for PreemptDisabled {
    fn drop(&mut self) {
        atomic_exit();
    }
}

/// Interrupts declared disabled until dropped ([`local_irq_save`]).
#[must_use = "interrupts are enabled again when the guard is dropped"]
#[derive(Debug)]
pub struct IrqsDisabled(NotSend);

/// Declares interrupts disabled until the guard drops.
///
/// This is bookkeeping for the validator and for [`irqs_disabled`]: it does
/// **not** block signals (that would cost a system call, which krcu's fast
/// paths promise never to make). krcu's own code that may run in a signal
/// handler takes its locks with trylock, so it cannot deadlock against the
/// thread it interrupted.
pub fn local_irq_save() -> IrqsDisabled {
    irqs_off_enter();
    IrqsDisabled(PhantomData)
}

impl Drop for IrqsDisabled {
    fn drop(&mut self) {
        irqs_off_exit();
    }
}

/// The current thread runs in another context kind until this drops.
#[must_use = "the previous context is restored when the guard is dropped"]
#[derive(Debug)]
pub struct ContextGuard {
    previous: ContextKind,
    raised_atomic: bool,
    _not_send: NotSend,
}

fn enter(kind: ContextKind, atomic: bool) -> ContextGuard {
    let previous = with(|c| {
        let previous = c.kind.get();
        if atomic {
            c.atomic_depth.set(c.atomic_depth.get() + 1);
            c.irqs_off.set(c.irqs_off.get() + 1);
        }
        c.kind.set(kind);
        previous
    });
    ContextGuard {
        previous,
        raised_atomic: atomic,
        _not_send: PhantomData,
    }
}

/// Enters krcu's softirq (worker) context until the guard drops.
#[doc(alias = "local_bh_disable")]
pub fn enter_softirq() -> ContextGuard {
    enter(ContextKind::Softirq, false)
}

/// Enters hardirq context until the guard drops: call it first thing in a
/// signal handler that uses krcu. Raises the atomic and irqs-off depths.
#[doc(alias = "irq_enter")]
pub fn enter_hardirq() -> ContextGuard {
    enter(ContextKind::Hardirq, true)
}

/// Enters NMI context until the guard drops. Raises the atomic and irqs-off
/// depths.
#[doc(alias = "nmi_enter")]
pub fn enter_nmi() -> ContextGuard {
    enter(ContextKind::Nmi, true)
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        with(|c| {
            c.kind.set(self.previous);
            if self.raised_atomic {
                c.atomic_depth.set(c.atomic_depth.get().saturating_sub(1));
                c.irqs_off.set(c.irqs_off.get().saturating_sub(1));
            }
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn task_context_is_preemptible_only_with_a_preempt_count() {
        assert_eq!(kind(), ContextKind::Task);
        assert!(!in_atomic());
        assert!(!preemptible(PreemptModel::None));
        assert!(!preemptible(PreemptModel::Voluntary));
        assert!(preemptible(PreemptModel::Full));
        assert!(preemptible(PreemptModel::Rt));
    }

    #[test]
    fn guards_nest_and_restore() {
        {
            let _p = preempt_disable();
            assert!(in_atomic());
            assert!(!preemptible(PreemptModel::Full));
            {
                let _i = local_irq_save();
                assert!(irqs_disabled());
            }
            assert!(!irqs_disabled());
        }
        assert!(!in_atomic());
        {
            let _s = enter_softirq();
            assert!(in_softirq());
            assert!(!in_atomic(), "krcu's softirq is threaded, not atomic");
            {
                let _h = enter_hardirq();
                assert!(in_hardirq() && in_atomic() && irqs_disabled());
                let _n = enter_nmi();
                assert!(in_nmi());
                assert_eq!(atomic_depth(), 2);
            }
            assert!(in_softirq() && !in_atomic() && !irqs_disabled());
        }
        assert!(in_task());
    }

    #[test]
    fn realtime_is_per_thread() {
        assert!(!is_realtime());
        set_realtime(true);
        assert!(is_realtime());
        std::thread::spawn(|| assert!(!is_realtime()))
            .join()
            .unwrap();
        set_realtime(false);
        assert!(!is_realtime());
    }

    #[test]
    fn preempt_model_parses_its_names() {
        for m in PreemptModel::ALL {
            assert_eq!(m.name().parse::<PreemptModel>(), Ok(m));
        }
        assert!("rtx".parse::<PreemptModel>().is_err());
    }
}
