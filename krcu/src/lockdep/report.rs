//! The reports the validator delivers: what was found, on which thread,
//! with which locks held, and the kernel-shaped text. Plain public data;
//! making them is [`format`](super::format)'s job and delivering them the
//! [`Validator`](super::Validator)'s.
//!
//! Uses only `context` (for [`ContextKind`]).

use crate::context::ContextKind;

/// What the validator found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportKind {
    /// A lock whose wait type is above what the context allows
    /// (`check_wait_context`).
    InvalidWaitContext,
    /// A sleeping operation while atomic, with irqs off, or in an RCU reader
    /// (`__might_sleep`).
    SleepInInvalidContext,
    /// A new lock-order edge that closes a cycle (`check_noncircular`).
    CircularDependency,
    /// More locks held than the validator tracks.
    MaxLockDepth,
    /// An RCU API used in a way that cannot be right
    /// (`lockdep_rcu_suspicious`): for now, an object retired with
    /// `kfree_rcu` while the caller is inside a read-side section of
    /// another RCU instance only, whose guard does not protect it.
    SuspiciousRcuUsage,
}

impl ReportKind {
    /// The headline, exactly as the kernel prints it.
    pub fn headline(self) -> &'static str {
        match self {
            ReportKind::InvalidWaitContext => "BUG: Invalid wait context",
            ReportKind::SleepInInvalidContext => {
                "BUG: sleeping function called from invalid context"
            }
            ReportKind::CircularDependency => {
                "WARNING: possible circular locking dependency detected"
            }
            ReportKind::MaxLockDepth => "BUG: MAX_LOCK_DEPTH too low!",
            ReportKind::SuspiciousRcuUsage => "WARNING: suspicious RCU usage",
        }
    }
}

/// A held lock as a report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldLockInfo {
    /// The lock's class name.
    pub name: &'static str,
    /// The lock's address.
    pub addr: usize,
    /// `{outer:inner}` wait types as lockdep numbers them.
    pub wait: (u8, u8),
    /// The context it was taken in.
    pub context: ContextKind,
    /// Whether it was taken with a trylock.
    pub trylock: bool,
    /// Where it was taken, `file:line:column`.
    pub at: String,
}

/// One report of the validator.
///
/// A report found where the heap may not be touched (hardirq or NMI
/// context: a signal handler) is recorded into fixed storage there and
/// formatted and delivered later, from a context that may allocate (see
/// [`flush_deferred_reports`](super::flush_deferred_reports)); it is then
/// marked [`deferred`](Report::deferred).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// What was found.
    pub kind: ReportKind,
    /// The thread it was found on, `name/tid`. A deferred report formatted
    /// on another thread names it by its kernel name (`comm`, at most 15
    /// bytes), as the thread's Rust name is out of reach there.
    pub thread: String,
    /// The class of the lock being taken (none for might-sleep reports).
    pub class: Option<&'static str>,
    /// Where the offending lock or sleeping operation was called from.
    pub at: String,
    /// The locks held at the time, outermost first.
    pub held: Vec<HeldLockInfo>,
    /// The whole report as the kernel would print it.
    pub text: String,
    /// Whether the report was found where the heap may not be touched and
    /// was formatted later, from a context that may allocate.
    pub deferred: bool,
    /// How many further reports were lost, just before this one was
    /// delivered, because the fixed storage for deferred reports was full
    /// (the text says so too). Zero almost always.
    pub dropped: u64,
}

impl Report {
    /// A report just formatted where it was found: not deferred, nothing
    /// dropped before it ([`format`](super::format::format) sets both for deferred records).
    pub(super) fn formatted(
        kind: ReportKind,
        thread: String,
        class: Option<&'static str>,
        at: String,
        held: Vec<HeldLockInfo>,
        text: String,
    ) -> Report {
        Report {
            kind,
            thread,
            class,
            at,
            held,
            text,
            deferred: false,
            dropped: 0,
        }
    }

    /// The kernel's headline for this report.
    pub fn headline(&self) -> &'static str {
        self.kind.headline()
    }
}

impl core::fmt::Display for Report {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.text)
    }
}
