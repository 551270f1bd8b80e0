//! Reports found where the heap may not be touched (hardirq and NMI context,
//! that is a signal handler) are recorded into fixed storage and formatted
//! later, from a context that may allocate.
//!
//! A counting global allocator (a per-thread counter in a `const`
//! thread-local, so that counting never allocates) shows that producing
//! such a report makes no heap call at all, and the report then arrives in
//! its domain's handler as a task-context one would.
#![cfg(any(debug_assertions, feature = "lockdep"))]

mod common;

use common::counting_alloc::{CountingAlloc, thread_heap_calls};
use krcu::Domain;
use krcu::context::{self, PreemptModel};
use krcu::lock::{Mutex, RawSpinLock, SpinLock};
use krcu::lockdep::{
    DEFERRED_REPORTS, MAX_LOCK_DEPTH, Report, ReportHandler, ReportKind, ReportLog,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, MutexGuard, OnceLock};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// The deferred storage is process-wide: the tests in this file take turns
/// so that one's reports never fill the storage under another.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn domain() -> (Domain, ReportLog) {
    let log = ReportLog::new();
    let d = Domain::builder()
        .preempt_model(PreemptModel::Full)
        .prove_raw_lock_nesting(true)
        .lockdep(true)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build();
    (d, log)
}

/// What must survive the trip through the deferred storage.
fn essence(
    r: &Report,
) -> (
    ReportKind,
    &'static str,
    Option<&'static str>,
    Vec<&'static str>,
) {
    (
        r.kind,
        r.headline(),
        r.class,
        r.held.iter().map(|h| h.name).collect(),
    )
}

fn assert_intact(irq: &Report, task: &Report) {
    assert_eq!(
        essence(irq),
        essence(task),
        "{}\n---\n{}",
        irq.text,
        task.text
    );
    assert!(irq.text.contains(irq.headline()), "{}", irq.text);
    assert_eq!(irq.thread, task.thread);
    assert!(irq.at.contains("tests/lockdep_deferred.rs"), "{}", irq.at);
    for (h, t) in irq.held.iter().zip(&task.held) {
        assert_eq!(h.wait, t.wait);
        assert!(h.at.contains("tests/lockdep_deferred.rs"), "{}", h.at);
        assert!(irq.text.contains(&format!("({})", h.name)), "{}", irq.text);
    }
    if let Some(class) = irq.class {
        assert!(irq.text.contains(&format!("({class})")), "{}", irq.text);
    }
}

#[test]
fn a_report_in_hardirq_context_makes_no_heap_call_and_arrives_intact() {
    let _serial = serial();
    let (d, log) = domain();
    let raw = RawSpinLock::named(&d, "krcp->lock", ());
    let zone = SpinLock::named(&d, "zone->lock", ());
    let m = Mutex::named(&d, "some_mutex", ());
    // Two pairs with the same names, each its own class (built at its own
    // line), so that each context closes a cycle of its own. Raw spinlocks,
    // which hardirq context may take.
    let (task_a, task_b) = (
        RawSpinLock::named(&d, "lock_A", ()),
        RawSpinLock::named(&d, "lock_B", ()),
    );
    let (irq_a, irq_b) = (
        RawSpinLock::named(&d, "lock_A", ()),
        RawSpinLock::named(&d, "lock_B", ()),
    );
    let deep: Vec<_> = (0..=MAX_LOCK_DEPTH)
        .map(|_| RawSpinLock::named(&d, "deep", ()))
        .collect();
    let mut guards = Vec::with_capacity(MAX_LOCK_DEPTH + 1);

    // The same offences, in task context first, then in hardirq context.
    let offend = |a: &RawSpinLock<()>, b: &RawSpinLock<()>, guards: &mut Vec<_>| {
        {
            let _r = raw.lock();
            drop(zone.lock()); // invalid wait context
            drop(m.lock()); // might-sleep, and invalid wait context
        }
        drop((a.lock(), b.lock()));
        {
            let _b = b.lock();
            drop(a.lock()); // circular
        }
        for l in &deep {
            guards.push(l.lock()); // the last one: max depth
        }
        guards.clear();
    };
    offend(&task_a, &task_b, &mut guards);
    let task = log.take();
    let kinds: Vec<_> = task.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            ReportKind::InvalidWaitContext,
            ReportKind::SleepInInvalidContext,
            ReportKind::InvalidWaitContext,
            ReportKind::CircularDependency,
            ReportKind::MaxLockDepth,
        ],
        "{task:#?}"
    );

    let before = thread_heap_calls();
    {
        let _irq = context::enter_hardirq();
        offend(&irq_a, &irq_b, &mut guards);
    }
    let made = thread_heap_calls() - before;
    assert_eq!(
        made, 0,
        "producing reports in hardirq context made {made} heap calls"
    );

    let irq = log.take();
    assert_eq!(irq.len(), task.len(), "{irq:#?}");
    for (i, t) in irq.iter().zip(&task) {
        assert_intact(i, t);
    }
    assert!(irq[0].text.contains("context-{2:2}"), "{}", irq[0].text);
    assert!(irq[1].text.contains("context: hardirq"), "{}", irq[1].text);
    assert!(
        irq[1].text.contains("in_atomic(): 1, irqs_disabled(): 1"),
        "{}",
        irq[1].text
    );
}

struct SignalFixture {
    raw: RawSpinLock<()>,
    zone: SpinLock<()>,
}

static FIXTURE: OnceLock<SignalFixture> = OnceLock::new();
static HANDLER_RAN: AtomicBool = AtomicBool::new(false);
static HANDLER_HEAP_CALLS: AtomicU64 = AtomicU64::new(u64::MAX);

extern "C" fn on_sigusr1(_: libc::c_int) {
    let Some(f) = FIXTURE.get() else { return };
    let before = thread_heap_calls();
    {
        let _irq = context::enter_hardirq();
        let _r = f.raw.lock();
        drop(f.zone.lock()); // invalid wait context: a report
    }
    HANDLER_HEAP_CALLS.store(thread_heap_calls() - before, SeqCst);
    HANDLER_RAN.store(true, SeqCst);
}

#[test]
fn a_report_in_a_real_signal_handler_makes_no_heap_call() {
    let _serial = serial();
    let (d, log) = domain();
    let fixture = SignalFixture {
        raw: RawSpinLock::named(&d, "krcp->lock", ()),
        zone: SpinLock::named(&d, "zone->lock", ()),
    };
    assert!(FIXTURE.set(fixture).is_ok());
    // SAFETY: the handler touches only the fixture (already built), const
    // thread-locals and atomics besides the code under test.
    unsafe { common::set_handler(libc::SIGUSR1, on_sigusr1, 0) };
    // A signal a thread sends itself is delivered before pthread_kill
    // returns.
    // SAFETY: signalling this thread, which is alive.
    let r = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };
    assert_eq!(r, 0);
    assert!(HANDLER_RAN.load(SeqCst), "the handler did not run");
    let made = HANDLER_HEAP_CALLS.load(SeqCst);
    assert_eq!(
        made, 0,
        "the report in the signal handler made {made} heap calls"
    );
    let reports = log.take();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let r = &reports[0];
    assert_eq!(r.kind, ReportKind::InvalidWaitContext);
    assert_eq!(r.class, Some("zone->lock"));
    assert_eq!(r.held.len(), 1);
    assert_eq!(r.held[0].name, "krcp->lock");
    assert!(
        r.text.contains("[ BUG: Invalid wait context ]"),
        "{}",
        r.text
    );
    assert!(r.text.contains("context-{2:2}"), "{}", r.text);
}

#[test]
fn a_full_deferred_storage_counts_the_drops_and_says_so() {
    let _serial = serial();
    let (d, log) = domain();
    let zone = SpinLock::named(&d, "zone->lock", ());
    let extra = 5;
    let before = thread_heap_calls();
    {
        let _irq = context::enter_hardirq();
        for _ in 0..DEFERRED_REPORTS + extra {
            drop(zone.lock()); // invalid wait context, each time
        }
    }
    assert_eq!(thread_heap_calls() - before, 0);
    let reports = log.take();
    assert_eq!(
        reports.len(),
        DEFERRED_REPORTS,
        "the storage holds that many"
    );
    assert!(
        reports
            .iter()
            .all(|r| r.deferred && r.class == Some("zone->lock"))
    );
    let (last, rest) = reports.split_last().unwrap();
    assert!(rest.iter().all(|r| r.dropped == 0), "{rest:#?}");
    assert_eq!(last.dropped, extra as u64);
    assert!(
        last.text.contains(&format!("{extra} further report(s)")),
        "{}",
        last.text
    );
    // The count was said once: the storage works again, without it.
    {
        let _irq = context::enter_hardirq();
        drop(zone.lock());
    }
    let again = log.take();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].dropped, 0);
}

#[test]
fn deferred_reports_reach_the_handler_later_outside_hardirq() {
    let _serial = serial();
    type Seen = Vec<(ReportKind, bool, String)>;
    let seen: Arc<std::sync::Mutex<Seen>> = Arc::default();
    let handler = {
        let seen = seen.clone();
        ReportHandler::Custom(Arc::new(move |r: &Report| {
            let hardirq = context::in_hardirq() || context::in_nmi();
            seen.lock()
                .unwrap()
                .push((r.kind, hardirq, r.thread.clone()));
        }))
    };
    let d = Domain::builder()
        .lockdep(true)
        .prove_raw_lock_nesting(true)
        .report_handler(handler)
        .build();
    let zone = Arc::new(SpinLock::named(&d, "zone->lock", ()));
    // An offence in hardirq context on a thread of its own, which exits.
    let irq_thread = {
        let zone = zone.clone();
        std::thread::Builder::new()
            .name("irq-thread".into())
            .spawn(move || {
                let _irq = context::enter_hardirq();
                drop(zone.lock());
                // SAFETY: gettid has no preconditions.
                unsafe { libc::gettid() }
            })
            .unwrap()
    };
    let tid = irq_thread.join().unwrap();
    assert!(seen.lock().unwrap().is_empty(), "delivered in the handler");
    // The next blocking acquisition in preemptible task context, here,
    // delivers it.
    let m = Mutex::new_in(&d, ());
    drop(m.lock());
    let got = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(
        got,
        [(
            ReportKind::InvalidWaitContext,
            false,
            format!("irq-thread/{tid}")
        )]
    );
    // And so does the explicit flush.
    {
        let _nmi = context::enter_nmi();
        drop(zone.try_lock()); // a trylock is never an offence
        krcu::lockdep::flush_deferred_reports(); // nothing, in NMI context
        d.might_sleep(); // might-sleep in NMI context
        krcu::lockdep::flush_deferred_reports(); // still nothing
    }
    assert!(seen.lock().unwrap().is_empty());
    krcu::lockdep::flush_deferred_reports();
    let got = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, ReportKind::SleepInInvalidContext);
    assert!(!got[0].1);
}
