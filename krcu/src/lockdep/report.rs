//! Reports, in the shape the kernel prints them, and the handler that
//! decides what happens to them.

use super::class;
use super::held::HeldLock;
use super::{ClassId, WaitType};
use crate::context::ContextKind;
use core::fmt::Write as _;
use std::sync::{Arc, Mutex};

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
#[derive(Debug, Clone)]
pub struct Report {
    /// What was found.
    pub kind: ReportKind,
    /// The thread it was found on, `name/tid`.
    pub thread: String,
    /// The class of the lock being taken (none for might-sleep reports).
    pub class: Option<&'static str>,
    /// Where the offending lock or sleeping operation was called from.
    pub at: String,
    /// The locks held at the time, outermost first.
    pub held: Vec<HeldLockInfo>,
    /// The whole report as the kernel would print it.
    pub text: String,
}

impl Report {
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

/// A shared, growing list of reports, for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct ReportLog(Arc<Mutex<Vec<Report>>>);

impl ReportLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
    /// A copy of every report so far.
    pub fn reports(&self) -> Vec<Report> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Removes and returns every report so far.
    pub fn take(&self) -> Vec<Report> {
        core::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
    /// How many reports of `kind` there are.
    pub fn count(&self, kind: ReportKind) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.kind == kind)
            .count()
    }
    /// How many reports there are.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What happens to a report.
#[derive(Clone, Default)]
pub enum ReportHandler {
    /// Print each distinct report once to standard error (the default).
    #[default]
    PrintOnce,
    /// Append every report to a log (tests).
    Collect(ReportLog),
    /// Panic with the report (strict mode).
    Panic,
    /// Call a function with every report.
    Custom(Arc<dyn Fn(&Report) + Send + Sync>),
}

impl core::fmt::Debug for ReportHandler {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ReportHandler::PrintOnce => "PrintOnce",
            ReportHandler::Collect(_) => "Collect",
            ReportHandler::Panic => "Panic",
            ReportHandler::Custom(_) => "Custom",
        })
    }
}

pub(crate) fn push(log: &ReportLog, r: Report) {
    log.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
}

pub(crate) fn thread_label() -> String {
    let t = std::thread::current();
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    format!("{}/{}", t.name().unwrap_or("<unnamed>"), tid)
}

pub(crate) fn held_info(h: &HeldLock, nesting_proof: bool) -> HeldLockInfo {
    HeldLockInfo {
        name: class::name(h.class),
        addr: h.addr,
        wait: (
            h.outer.effective(nesting_proof).number(),
            h.inner.effective(nesting_proof).number(),
        ),
        context: h.context,
        trylock: h.trylock,
        at: h
            .at
            .map_or_else(|| "<unknown>".to_string(), |l| l.to_string()),
    }
}

fn separator(f: &mut String, ch: char, len: usize) {
    f.extend(core::iter::repeat_n(ch, len));
    f.push('\n');
}

fn held_lines(out: &mut String, thread: &str, held: &[HeldLockInfo]) {
    match held.len() {
        0 => {
            let _ = writeln!(out, "no locks held by {thread}.");
        }
        1 => {
            let _ = writeln!(out, "1 lock held by {thread}:");
        }
        n => {
            let _ = writeln!(out, "{n} locks held by {thread}:");
        }
    }
    for (i, h) in held.iter().enumerate() {
        let _ = writeln!(
            out,
            " #{i}: {:#018x} ({}){{{}}}-{{{}:{}}}, at: {}",
            h.addr,
            h.name,
            if h.trylock { "try." } else { "...." },
            h.wait.0,
            h.wait.1,
            h.at
        );
    }
}

/// The lock being taken, as a report shows it.
pub(crate) struct Taking {
    pub(crate) class: ClassId,
    pub(crate) addr: usize,
    pub(crate) outer: WaitType,
    pub(crate) inner: WaitType,
    pub(crate) at: String,
}

const TAINT: &str = concat!("krcu ", env!("CARGO_PKG_VERSION"), " Not tainted");

pub(crate) fn invalid_wait_context(
    thread: String,
    next: &Taking,
    context_level: WaitType,
    held: Vec<HeldLockInfo>,
    nesting_proof: bool,
) -> Report {
    let mut t = String::new();
    let kind = ReportKind::InvalidWaitContext;
    t.push('\n');
    separator(&mut t, '=', 29);
    let _ = writeln!(t, "[ {} ]", kind.headline());
    let _ = writeln!(t, "{TAINT}");
    separator(&mut t, '-', 29);
    let _ = writeln!(t, "{thread} is trying to lock:");
    let _ = writeln!(
        t,
        "{:#018x} ({}){{....}}-{{{}:{}}}, at: {}",
        next.addr,
        class::name(next.class),
        next.outer.effective(nesting_proof).number(),
        next.inner.effective(nesting_proof).number(),
        next.at
    );
    let _ = writeln!(t, "other info that might help us debug this:");
    let level = context_level.effective(nesting_proof).number();
    let _ = writeln!(t, "context-{{{level}:{level}}}");
    held_lines(&mut t, &thread, &held);
    Report {
        kind,
        thread,
        class: Some(class::name(next.class)),
        at: next.at.clone(),
        held,
        text: t,
    }
}

pub(crate) struct SleepState {
    pub(crate) atomic_depth: u32,
    pub(crate) irqs_disabled: bool,
    pub(crate) rcu_depth: u32,
    pub(crate) context: ContextKind,
}

pub(crate) fn sleep_in_invalid_context(
    thread: String,
    at: String,
    state: &SleepState,
    held: Vec<HeldLockInfo>,
) -> Report {
    let kind = ReportKind::SleepInInvalidContext;
    let mut t = String::new();
    let _ = writeln!(t, "{} at {at}", kind.headline());
    let (name, pid) = thread.rsplit_once('/').unwrap_or((&thread, "?"));
    let _ = writeln!(
        t,
        "in_atomic(): {}, irqs_disabled(): {}, non_block: 0, pid: {pid}, name: {name}",
        u8::from(state.atomic_depth > 0),
        u8::from(state.irqs_disabled)
    );
    let _ = writeln!(t, "preempt_count: {}, expected: 0", state.atomic_depth);
    let _ = writeln!(t, "RCU nest depth: {}, expected: 0", state.rcu_depth);
    if state.context != ContextKind::Task {
        let _ = writeln!(t, "context: {}", state.context.name());
    }
    held_lines(&mut t, &thread, &held);
    Report {
        kind,
        thread,
        class: None,
        at,
        held,
        text: t,
    }
}

pub(crate) fn circular(
    thread: String,
    next: &Taking,
    prev: &HeldLockInfo,
    chain: &[super::graph::ChainLink],
    held: Vec<HeldLockInfo>,
) -> Report {
    let kind = ReportKind::CircularDependency;
    let next_name = class::name(next.class);
    let mut t = String::new();
    t.push('\n');
    separator(&mut t, '=', 54);
    let _ = writeln!(t, "{}", kind.headline());
    let _ = writeln!(t, "{TAINT}");
    separator(&mut t, '-', 54);
    let _ = writeln!(t, "{thread} is trying to acquire lock:");
    let _ = writeln!(t, "{:#018x} ({next_name}), at: {}", next.addr, next.at);
    let _ = writeln!(t, "\nbut task is already holding lock:");
    let _ = writeln!(t, "{:#018x} ({}), at: {}", prev.addr, prev.name, prev.at);
    let _ = writeln!(t, "\nwhich lock already depends on the new lock.\n");
    let _ = writeln!(t, "the existing dependency chain (in reverse order) is:");
    for (i, link) in chain.iter().enumerate().rev() {
        let at = link
            .at
            .map_or_else(|| "<unknown>".to_string(), |l| l.to_string());
        let _ = writeln!(
            t,
            "\n-> #{i} ({}) after ({}):\n       {at}",
            class::name(link.to),
            class::name(link.from)
        );
    }
    let _ = writeln!(t, "\nother info that might help us debug this:\n");
    let _ = writeln!(t, " Possible unsafe locking scenario:\n");
    let _ = writeln!(t, "       CPU0                    CPU1");
    let _ = writeln!(t, "       ----                    ----");
    let _ = writeln!(t, "  lock({});", prev.name);
    let _ = writeln!(t, "                               lock({next_name});");
    let _ = writeln!(t, "                               lock({});", prev.name);
    let _ = writeln!(t, "  lock({next_name});");
    let _ = writeln!(t, "\n *** DEADLOCK ***\n");
    held_lines(&mut t, &thread, &held);
    Report {
        kind,
        thread,
        class: Some(next_name),
        at: next.at.clone(),
        held,
        text: t,
    }
}

pub(crate) fn max_depth(thread: String, next: &Taking, held: Vec<HeldLockInfo>) -> Report {
    let kind = ReportKind::MaxLockDepth;
    let mut t = String::new();
    let _ = writeln!(t, "{}", kind.headline());
    let _ = writeln!(t, "depth: {}  max: {}", held.len(), super::MAX_LOCK_DEPTH);
    let _ = writeln!(
        t,
        "while taking ({}) at {}",
        class::name(next.class),
        next.at
    );
    held_lines(&mut t, &thread, &held);
    Report {
        kind,
        thread,
        class: Some(class::name(next.class)),
        at: next.at.clone(),
        held,
        text: t,
    }
}

#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn suspicious_rcu(
    thread: String,
    at: String,
    message: &str,
    rcu_depth: u32,
    held: Vec<HeldLockInfo>,
) -> Report {
    let kind = ReportKind::SuspiciousRcuUsage;
    let mut t = String::new();
    t.push('\n');
    separator(&mut t, '=', 29);
    let _ = writeln!(t, "{}", kind.headline());
    let _ = writeln!(t, "{TAINT}");
    separator(&mut t, '-', 29);
    let _ = writeln!(t, "{at} {message}!");
    let _ = writeln!(t, "\nother info that might help us debug this:\n");
    let _ = writeln!(t, "RCU nest depth: {rcu_depth} (all instances)");
    held_lines(&mut t, &thread, &held);
    Report {
        kind,
        thread,
        class: None,
        at,
        held,
        text: t,
    }
}
