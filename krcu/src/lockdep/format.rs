//! What a report is made from ([`Record`]: fixed-size `Copy` data that a
//! signal handler may fill in) and how it becomes the text the kernel would
//! print ([`format`]).
//!
//! Uses the validator's tables (`class`, `graph`, `held`), the wait types
//! and the public report types; nothing that delivers.

use super::class;
use super::graph::Chain;
use super::held::{HeldLock, HeldStack};
use super::report::{HeldLockInfo, Report, ReportKind};
use super::{ClassId, WaitType};
use crate::context::ContextKind;
use core::fmt::Write as _;
use core::panic::Location;

pub(crate) fn thread_label() -> String {
    let t = std::thread::current();
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    format!("{}/{}", t.name().unwrap_or("<unnamed>"), tid)
}

/// The thread a record was made on, captured without allocating.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThreadTag {
    tid: libc::pid_t,
    /// The kernel's name for the thread (`comm`), NUL-terminated; taken
    /// only for deferred records, which may be formatted on another thread.
    comm: Option<[u8; 16]>,
}

impl ThreadTag {
    /// The current thread; `with_comm` also takes its kernel name.
    pub(crate) fn current(with_comm: bool) -> ThreadTag {
        // SAFETY: gettid has no preconditions and cannot fail.
        let tid = unsafe { libc::gettid() };
        let comm = with_comm.then(|| {
            let mut buf = [0u8; 16];
            // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included,
            // into the buffer it is given, which is 16 bytes long. It is a
            // plain system call: no allocation, safe in a signal handler.
            let rc = unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
            if rc != 0 {
                buf = [0; 16];
            }
            buf
        });
        ThreadTag { tid, comm }
    }

    /// `name/tid`: the thread's Rust name when formatted on that thread,
    /// else its kernel name.
    fn label(&self) -> String {
        // SAFETY: gettid has no preconditions and cannot fail.
        if self.tid == unsafe { libc::gettid() } {
            return thread_label();
        }
        let name = self.comm.map_or_else(
            || "<unnamed>".to_string(),
            |c| {
                let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                String::from_utf8_lossy(&c[..end]).into_owned()
            },
        );
        format!("{name}/{}", self.tid)
    }
}

fn location(at: Option<&'static Location<'static>>) -> String {
    at.map_or_else(|| "<unknown>".to_string(), |l| l.to_string())
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
        at: location(h.at),
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
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taking {
    pub(crate) class: ClassId,
    pub(crate) addr: usize,
    pub(crate) outer: WaitType,
    pub(crate) inner: WaitType,
    pub(crate) at: Option<&'static Location<'static>>,
}

/// What a might-sleep report shows of the context.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SleepState {
    pub(crate) atomic_depth: u32,
    pub(crate) irqs_disabled: bool,
    pub(crate) rcu_depth: u32,
    pub(crate) context: ContextKind,
}

/// What the validator found, with what its report needs to say.
// Boxing the chain would allocate, which a record must never do.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Finding {
    InvalidWaitContext {
        next: Taking,
        /// The context's own level (`task_wait_context`).
        context_level: WaitType,
    },
    SleepInInvalidContext {
        at: Option<&'static Location<'static>>,
        state: SleepState,
    },
    Circular {
        next: Taking,
        prev: HeldLock,
        chain: Chain,
    },
    MaxDepth {
        next: Taking,
    },
    SuspiciousRcu {
        at: &'static Location<'static>,
        /// The retiring call, e.g. `kfree_rcu()`.
        what: &'static str,
        rcu_depth: u32,
    },
}

/// Everything a report is made from, in fixed-size storage of plain
/// `Copy` data: making one neither allocates nor locks, so a signal handler
/// may, and [`format`] can turn it into a [`Report`] later, elsewhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    pub(crate) finding: Finding,
    pub(crate) nesting_proof: bool,
    pub(crate) held: HeldStack,
    pub(crate) thread: ThreadTag,
}

impl Record {
    /// A record of `finding` on the current thread, with its held locks
    /// now; `deferred` when it will be formatted later.
    pub(crate) fn new(finding: Finding, nesting_proof: bool, deferred: bool) -> Record {
        Record {
            finding,
            nesting_proof,
            held: HeldStack::capture(),
            thread: ThreadTag::current(deferred),
        }
    }
}

/// Formats a record into the report the kernel would print. `dropped`
/// deferred reports were lost before it was delivered (it says so).
pub(crate) fn format(rec: &Record, deferred: bool, dropped: u64) -> Report {
    let np = rec.nesting_proof;
    let thread = rec.thread.label();
    let held: Vec<HeldLockInfo> = rec
        .held
        .as_slice()
        .iter()
        .map(|h| held_info(h, np))
        .collect();
    let mut report = match &rec.finding {
        Finding::InvalidWaitContext {
            next,
            context_level,
        } => invalid_wait_context(thread, next, *context_level, held, np),
        Finding::SleepInInvalidContext { at, state } => {
            sleep_in_invalid_context(thread, location(*at), state, held)
        }
        Finding::Circular { next, prev, chain } => {
            let prev = held_info(prev, np);
            circular(thread, next, &prev, chain, held)
        }
        Finding::MaxDepth { next } => max_depth(thread, next, held),
        Finding::SuspiciousRcu {
            at,
            what,
            rcu_depth,
        } => suspicious_rcu(thread, at.to_string(), what, *rcu_depth, held),
    };
    report.deferred = deferred;
    report.dropped = dropped;
    if dropped > 0 {
        let _ = writeln!(
            report.text,
            "{dropped} further report(s) from contexts that may not allocate were dropped: \
             the deferred report storage ({} entries) was full",
            super::DEFERRED_REPORTS
        );
    }
    report
}

const TAINT: &str = concat!("krcu ", env!("CARGO_PKG_VERSION"), " Not tainted");

fn invalid_wait_context(
    thread: String,
    next: &Taking,
    context_level: WaitType,
    held: Vec<HeldLockInfo>,
    nesting_proof: bool,
) -> Report {
    let mut t = String::new();
    let kind = ReportKind::InvalidWaitContext;
    let at = location(next.at);
    t.push('\n');
    separator(&mut t, '=', 29);
    let _ = writeln!(t, "[ {} ]", kind.headline());
    let _ = writeln!(t, "{TAINT}");
    separator(&mut t, '-', 29);
    let _ = writeln!(t, "{thread} is trying to lock:");
    let _ = writeln!(
        t,
        "{:#018x} ({}){{....}}-{{{}:{}}}, at: {at}",
        next.addr,
        class::name(next.class),
        next.outer.effective(nesting_proof).number(),
        next.inner.effective(nesting_proof).number(),
    );
    let _ = writeln!(t, "other info that might help us debug this:");
    let level = context_level.effective(nesting_proof).number();
    let _ = writeln!(t, "context-{{{level}:{level}}}");
    held_lines(&mut t, &thread, &held);
    Report::formatted(kind, thread, Some(class::name(next.class)), at, held, t)
}

fn sleep_in_invalid_context(
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
    Report::formatted(kind, thread, None, at, held, t)
}

fn circular(
    thread: String,
    next: &Taking,
    prev: &HeldLockInfo,
    chain: &Chain,
    held: Vec<HeldLockInfo>,
) -> Report {
    let kind = ReportKind::CircularDependency;
    let next_name = class::name(next.class);
    let at = location(next.at);
    let mut t = String::new();
    t.push('\n');
    separator(&mut t, '=', 54);
    let _ = writeln!(t, "{}", kind.headline());
    let _ = writeln!(t, "{TAINT}");
    separator(&mut t, '-', 54);
    let _ = writeln!(t, "{thread} is trying to acquire lock:");
    let _ = writeln!(t, "{:#018x} ({next_name}), at: {at}", next.addr);
    let _ = writeln!(t, "\nbut task is already holding lock:");
    let _ = writeln!(t, "{:#018x} ({}), at: {}", prev.addr, prev.name, prev.at);
    let _ = writeln!(t, "\nwhich lock already depends on the new lock.\n");
    let _ = writeln!(t, "the existing dependency chain (in reverse order) is:");
    if chain.omitted() > 0 {
        let _ = writeln!(
            t,
            "\n-> ({} more links, to the held lock, not shown)",
            chain.omitted()
        );
    }
    for (i, link) in chain.links().iter().enumerate().rev() {
        let _ = writeln!(
            t,
            "\n-> #{i} ({}) after ({}):\n       {}",
            class::name(link.to),
            class::name(link.from),
            location(link.at)
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
    Report::formatted(kind, thread, Some(next_name), at, held, t)
}

fn max_depth(thread: String, next: &Taking, held: Vec<HeldLockInfo>) -> Report {
    let kind = ReportKind::MaxLockDepth;
    let at = location(next.at);
    let mut t = String::new();
    let _ = writeln!(t, "{}", kind.headline());
    let _ = writeln!(t, "depth: {}  max: {}", held.len(), super::MAX_LOCK_DEPTH);
    let _ = writeln!(t, "while taking ({}) at {at}", class::name(next.class));
    held_lines(&mut t, &thread, &held);
    Report::formatted(kind, thread, Some(class::name(next.class)), at, held, t)
}

#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn suspicious_rcu(
    thread: String,
    at: String,
    what: &str,
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
    let _ = writeln!(
        t,
        "{at} {what} called inside an RCU read-side section of another RCU instance only: \
         that guard does not hold the object off!"
    );
    let _ = writeln!(t, "\nother info that might help us debug this:\n");
    let _ = writeln!(t, "RCU nest depth: {rcu_depth} (all instances)");
    held_lines(&mut t, &thread, &held);
    Report::formatted(kind, thread, None, at, held, t)
}
