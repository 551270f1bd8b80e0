//! The validator's rules, with its reports captured and asserted.
//!
//! The validator is compiled into debug builds and with the `lockdep`
//! feature; in other builds these tests have nothing to check.
#![cfg(any(debug_assertions, feature = "lockdep"))]

use krcu::Domain;
use krcu::context::{self, PreemptModel};
use krcu::lock::{LocalLock, Mutex, RawSpinLock, SpinLock};
use krcu::lockdep::{ReportHandler, ReportKind, ReportLog};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn domain(model: PreemptModel, nesting_proof: bool) -> (Domain, ReportLog) {
    let log = ReportLog::new();
    let d = Domain::builder()
        .preempt_model(model)
        .prove_raw_lock_nesting(nesting_proof)
        .lockdep(true)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build();
    (d, log)
}

const WAIT: ReportKind = ReportKind::InvalidWaitContext;
const SLEEP: ReportKind = ReportKind::SleepInInvalidContext;

#[test]
fn spinlock_under_raw_spinlock_needs_nesting_proof() {
    for np in [true, false] {
        let (d, log) = domain(PreemptModel::Full, np);
        let raw = RawSpinLock::named(&d, "krcp->lock", ());
        let zone = SpinLock::named(&d, "zone->lock", ());
        {
            let _r = raw.lock();
            let _z = zone.lock();
        }
        let reports = log.take();
        if np {
            assert_eq!(reports.len(), 1, "{reports:#?}");
            let r = &reports[0];
            assert_eq!(r.kind, WAIT);
            assert_eq!(r.headline(), "BUG: Invalid wait context");
            assert!(r.text.contains("[ BUG: Invalid wait context ]"));
            assert_eq!(r.class, Some("zone->lock"));
            assert!(r.text.contains("(zone->lock){....}-{3:3}"), "{}", r.text);
            assert!(r.text.contains("context-{5:5}"), "task context: {}", r.text);
            // The held-lock stack: the raw lock, where it was taken.
            assert_eq!(r.held.len(), 1);
            assert_eq!(r.held[0].name, "krcp->lock");
            assert_eq!(r.held[0].wait, (2, 2));
            assert!(
                r.held[0].at.contains("tests/lockdep.rs"),
                "{}",
                r.held[0].at
            );
            assert!(r.text.contains("1 lock held by"));
            assert!(r.text.contains(" #0: "));
            assert!(r.at.contains("tests/lockdep.rs"));
        } else {
            assert!(reports.is_empty(), "nesting proof off: {reports:#?}");
        }
    }
}

/// How the nesting scenario below takes its locks.
#[derive(Clone, Copy, PartialEq)]
enum Acquire {
    Try,
    Blocking,
}

/// Under a raw spinlock, takes a `spinlock_t` and a mutex; then, in hardirq
/// context, the `spinlock_t` again; each with `how`. Returns the reports.
fn nest_under_raw_and_in_hardirq(model: PreemptModel, how: Acquire) -> Vec<krcu::lockdep::Report> {
    let (d, log) = domain(model, true);
    let raw = RawSpinLock::new_in(&d, ());
    let zone = SpinLock::new_in(&d, ());
    let m = Mutex::new_in(&d, ());
    let _r = raw.lock();
    match how {
        Acquire::Try => {
            assert!(zone.try_lock().is_some());
            assert!(m.try_lock().is_some());
        }
        Acquire::Blocking => {
            drop(zone.lock());
            drop(m.lock());
        }
    }
    let _h = context::enter_hardirq();
    match how {
        Acquire::Try => assert!(zone.try_lock().is_some()),
        Acquire::Blocking => drop(zone.lock()),
    }
    log.take()
}

#[test]
fn trylock_is_never_flagged() {
    for model in PreemptModel::ALL {
        let reports = nest_under_raw_and_in_hardirq(model, Acquire::Try);
        assert!(reports.is_empty(), "{model}: {reports:#?}");
    }
}

/// The positive control of `trylock_is_never_flagged`: the same nesting
/// with blocking acquisitions is reported in every preempt model.
#[test]
fn the_same_nesting_with_blocking_locks_is_flagged() {
    for model in PreemptModel::ALL {
        let reports = nest_under_raw_and_in_hardirq(model, Acquire::Blocking);
        let kinds: Vec<_> = reports.iter().map(|r| r.kind).collect();
        // All three acquisitions are reported, the spinlock_t ones as an
        // invalid wait context, the mutex as a sleep in atomic context.
        assert!(kinds.len() >= 3, "{model}: {kinds:?}");
        assert!(
            kinds.contains(&WAIT) && kinds.contains(&SLEEP),
            "{model}: {kinds:?}"
        );
    }
}

#[test]
fn mutex_under_any_spinlock_or_in_hardirq_is_flagged() {
    for np in [true, false] {
        let (d, log) = domain(PreemptModel::Full, np);
        let raw = RawSpinLock::new_in(&d, ());
        let spin = SpinLock::new_in(&d, ());
        let m = Mutex::named(&d, "some_mutex", ());
        {
            let _r = raw.lock();
            drop(m.lock());
        }
        assert_eq!(log.count(WAIT), 1, "np={np}");
        assert_eq!(log.count(SLEEP), 1, "np={np}");
        log.take();
        {
            let _s = spin.lock();
            drop(m.lock());
        }
        assert_eq!(log.count(WAIT), 1, "np={np}");
        assert_eq!(log.count(SLEEP), 1, "np={np}");
        log.take();
        {
            let _h = context::enter_hardirq();
            drop(m.lock());
        }
        assert_eq!(log.count(WAIT), 1, "np={np}");
        assert_eq!(log.count(SLEEP), 1, "np={np}");
        let r = log.take().into_iter().find(|r| r.kind == SLEEP).unwrap();
        assert!(r.text.contains("context: hardirq"), "{}", r.text);
    }
}

#[test]
fn spinlock_in_hardirq_is_flagged_with_nesting_proof() {
    for np in [true, false] {
        let (d, log) = domain(PreemptModel::Full, np);
        let zone = SpinLock::named(&d, "zone->lock", ());
        let raw = RawSpinLock::new_in(&d, ());
        {
            let _h = context::enter_hardirq();
            drop(raw.lock());
            drop(zone.lock());
        }
        assert_eq!(
            log.count(WAIT),
            usize::from(np),
            "np={np}: {:#?}",
            log.reports()
        );
    }
}

#[test]
fn softirq_follows_the_config_rule() {
    let (d, log) = domain(PreemptModel::Full, true);
    let raw = RawSpinLock::new_in(&d, ());
    let spin = SpinLock::new_in(&d, ());
    let local = LocalLock::new_in(&d, |_| 0u32);
    let m = Mutex::named(&d, "softirq_mutex", ());
    let _s = context::enter_softirq();
    drop(raw.lock());
    drop(spin.lock());
    *local.lock() += 1;
    assert!(log.is_empty(), "{:#?}", log.reports());
    drop(m.lock());
    let reports = log.take();
    assert_eq!(
        reports.len(),
        1,
        "softirq is not atomic: only the wait type is wrong"
    );
    assert_eq!(reports[0].kind, WAIT);
    assert!(
        reports[0].text.contains("context-{3:3}"),
        "{}",
        reports[0].text
    );
}

#[test]
fn locks_taken_before_an_interrupt_do_not_lower_its_level() {
    // A spinlock taken in task context, then a hardirq that takes a raw
    // spinlock: fine. The held lock belongs to another context.
    let (d, log) = domain(PreemptModel::Full, true);
    let spin = SpinLock::new_in(&d, ());
    let raw = RawSpinLock::new_in(&d, ());
    let m = Mutex::new_in(&d, ());
    let _m = m.lock();
    let _s = spin.lock();
    let _h = context::enter_hardirq();
    drop(raw.lock());
    assert!(log.is_empty(), "{:#?}", log.reports());
}

// `rcu_reader_allows_config_at_most` needs a pretend RCU reader that no
// grace period waits for: it is a unit test, in `src/lockdep/tests.rs`.

#[test]
fn might_sleep_reports_the_context() {
    let (d, log) = domain(PreemptModel::Full, true);
    let raw = RawSpinLock::named(&d, "raw", ());
    let m = Mutex::named(&d, "m", ());
    // Inside a raw spinlock.
    {
        let _r = raw.lock();
        drop(m.lock());
    }
    let r = log.take().into_iter().find(|r| r.kind == SLEEP).unwrap();
    assert_eq!(
        r.headline(),
        "BUG: sleeping function called from invalid context"
    );
    assert!(
        r.text
            .starts_with("BUG: sleeping function called from invalid context at ")
    );
    assert!(
        r.text.contains("in_atomic(): 1, irqs_disabled(): 0"),
        "{}",
        r.text
    );
    assert!(r.text.contains("preempt_count: 1, expected: 0"));
    assert_eq!(r.held.len(), 1);
    assert_eq!(r.held[0].name, "raw");
    // With irqs off and nothing else.
    {
        let _i = context::local_irq_save();
        drop(m.lock());
    }
    let r = log.take().into_iter().find(|r| r.kind == SLEEP).unwrap();
    assert!(
        r.text.contains("in_atomic(): 0, irqs_disabled(): 1"),
        "{}",
        r.text
    );
    assert!(r.held.is_empty());
    // In hardirq context.
    {
        let _h = context::enter_hardirq();
        drop(m.lock());
    }
    assert_eq!(log.count(SLEEP), 1);
    log.take();
    // A declared sleeping operation, in a raw_spin_lock_irqsave section.
    {
        let _r = raw.lock_irqsave();
        d.might_sleep();
    }
    let r = log.take().into_iter().find(|r| r.kind == SLEEP).unwrap();
    assert!(
        r.text.contains("in_atomic(): 1, irqs_disabled(): 1"),
        "{}",
        r.text
    );
    // And where sleeping is fine: nothing.
    drop(m.lock());
    d.might_sleep();
    assert!(log.is_empty());
}

#[test]
fn rt_spinlock_under_raw_spinlock_would_sleep() {
    for np in [true, false] {
        let (d, log) = domain(PreemptModel::Rt, np);
        let raw = RawSpinLock::new_in(&d, ());
        let zone = SpinLock::named(&d, "zone->lock", ());
        assert!(zone.sleeps());
        {
            let _r = raw.lock();
            drop(zone.lock());
        }
        assert_eq!(log.count(SLEEP), 1, "np={np}: PREEMPT_RT spinlock_t sleeps");
        assert_eq!(log.count(WAIT), usize::from(np));
    }
}

#[test]
fn rt_spinlock_parks_a_contended_waiter() {
    let (d, _log) = domain(PreemptModel::Rt, true);
    let lock = Arc::new(SpinLock::new_in(&d, 0u64));
    let guard = lock.lock();
    assert!(
        !context::in_atomic(),
        "an RT spinlock holder stays preemptible"
    );
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            let before = krcu::lock::thread_counters();
            *lock.lock() += 1;
            krcu::lock::thread_counters() - before
        })
    };
    // Wait until the waiter has gone to sleep in the parking lot.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock.stats().parks == 0 {
        assert!(Instant::now() < deadline, "the waiter never parked");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(guard);
    let counters = waiter.join().unwrap();
    assert_eq!(*lock.lock(), 1);
    assert!(
        counters.parks >= 1 && counters.contended == 1,
        "{counters:?}"
    );
    assert!(lock.stats().parks >= 1);
}

#[test]
fn non_rt_spinlock_spins_and_never_parks() {
    let (d, _log) = domain(PreemptModel::Full, true);
    let lock = Arc::new(SpinLock::new_in(&d, 0u64));
    assert!(!lock.sleeps());
    let guard = lock.lock();
    assert!(context::in_atomic());
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || *lock.lock() += 1)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock.stats().contended == 0 {
        assert!(Instant::now() < deadline, "the waiter never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    drop(guard);
    waiter.join().unwrap();
    assert_eq!(lock.stats().parks, 0);
    assert_eq!(*lock.lock(), 1);
}

#[test]
fn ab_ba_across_threads_is_reported_once() {
    let (d, log) = domain(PreemptModel::Full, true);
    let a = Arc::new(SpinLock::named(&d, "lock_A", ()));
    let b = Arc::new(SpinLock::named(&d, "lock_B", ()));
    // One thread takes A then B, and finishes; then another takes B then A.
    // Never at the same time, so the run cannot deadlock.
    for round in 0..3 {
        let (a1, b1) = (a.clone(), b.clone());
        std::thread::Builder::new()
            .name(format!("ab-{round}"))
            .spawn(move || {
                let _a = a1.lock();
                let _b = b1.lock();
            })
            .unwrap()
            .join()
            .unwrap();
        let (a2, b2) = (a.clone(), b.clone());
        std::thread::Builder::new()
            .name(format!("ba-{round}"))
            .spawn(move || {
                let _b = b2.lock();
                let _a = a2.lock();
            })
            .unwrap()
            .join()
            .unwrap();
    }
    let reports = log.take();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let r = &reports[0];
    assert_eq!(r.kind, ReportKind::CircularDependency);
    assert_eq!(
        r.headline(),
        "WARNING: possible circular locking dependency detected"
    );
    assert!(
        r.text
            .contains("WARNING: possible circular locking dependency detected\n")
    );
    assert!(r.thread.starts_with("ba-0/"), "{}", r.thread);
    assert_eq!(r.class, Some("lock_A"));
    assert_eq!(r.held.len(), 1);
    assert_eq!(r.held[0].name, "lock_B");
    assert!(r.text.contains("*** DEADLOCK ***"));
    assert!(r.text.contains("lock(lock_B);"));
}

#[test]
fn trylock_adds_no_order_edge() {
    let (d, log) = domain(PreemptModel::Full, true);
    let a = SpinLock::named(&d, "try_A", ());
    let b = SpinLock::named(&d, "try_B", ());
    {
        let _a = a.lock();
        let _b = b.try_lock().unwrap();
    }
    {
        let _b = b.lock();
        let _a = a.lock();
    }
    assert!(log.is_empty(), "{:#?}", log.reports());
}

#[test]
fn a_disabled_validator_reports_nothing() {
    let log = ReportLog::new();
    let d = Domain::builder()
        .lockdep(false)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build();
    let raw = RawSpinLock::new_in(&d, ());
    let m = Mutex::new_in(&d, ());
    let _r = raw.lock();
    drop(m.lock());
    assert!(log.is_empty());
    assert!(krcu::lockdep::held_locks().is_empty());
}

#[test]
#[should_panic(expected = "BUG: Invalid wait context")]
fn the_strict_handler_panics() {
    let d = Domain::builder()
        .report_handler(ReportHandler::Panic)
        .build();
    let raw = RawSpinLock::new_in(&d, ());
    let spin = SpinLock::new_in(&d, ());
    let _r = raw.lock();
    let _s = spin.lock();
}

#[test]
fn held_lock_stack_follows_out_of_order_release() {
    let (d, _log) = domain(PreemptModel::Full, true);
    let a = RawSpinLock::named(&d, "stack_a", ());
    let b = RawSpinLock::named(&d, "stack_b", ());
    let c = RawSpinLock::named(&d, "stack_c", ());
    let ga = a.lock();
    let gb = b.lock();
    let gc = c.try_lock().unwrap();
    let names: Vec<_> = krcu::lockdep::held_locks().iter().map(|h| h.name).collect();
    assert_eq!(names, ["stack_a", "stack_b", "stack_c"]);
    assert!(krcu::lockdep::held_locks()[2].trylock);
    assert_eq!(context::atomic_depth(), 3);
    drop(gb);
    let names: Vec<_> = krcu::lockdep::held_locks().iter().map(|h| h.name).collect();
    assert_eq!(names, ["stack_a", "stack_c"]);
    drop(ga);
    drop(gc);
    assert!(krcu::lockdep::held_locks().is_empty());
    assert_eq!(context::atomic_depth(), 0);
}

/// An RCU read-side section allows a `spinlock_t` (CONFIG) at most: a
/// spinlock inside one is fine, a mutex is an invalid wait context and a
/// sleep in an RCU reader. (A reader of an instance of its own, which no
/// grace period is asked of.)
#[test]
fn rcu_reader_allows_config_at_most() {
    let (d, log) = domain(PreemptModel::Full, true);
    let rcu = krcu::rcu::Rcu::new(&d, krcu::rcu::RcuConfig::default());
    let spin = SpinLock::new_in(&d, ());
    let m = Mutex::new_in(&d, ());
    let guard = rcu.read_lock();
    drop(spin.lock());
    assert!(log.is_empty());
    drop(m.lock());
    drop(guard);
    assert_eq!(log.count(WAIT), 1);
    let s = log
        .take()
        .into_iter()
        .find(|r| r.kind == SLEEP)
        .expect("a sleep in an RCU reader is reported");
    assert!(
        s.text.contains("RCU nest depth: 1, expected: 0"),
        "{}",
        s.text
    );
}
