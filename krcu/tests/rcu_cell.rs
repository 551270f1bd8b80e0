//! `RcuCell` and `defer`: values published, read under guards, replaced
//! and retired, never freed while a reader can reach them; the refusals
//! (NMI, real-time thread, another instance's guard) hand the value back.

use krcu::cell::{CompareExchangeError, RcuBox, UpdateError};
use krcu::{DeferError, Krcu, RcuCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

const LIVE: u64 = 0x11FE_11FE_11FE_11FE;
const POISON: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// A value with a poison word its drop sets, and a count of drops.
struct Val {
    state: AtomicU64,
    n: u64,
    drops: Arc<AtomicU64>,
}

impl Val {
    fn new(n: u64, drops: &Arc<AtomicU64>) -> Val {
        Val {
            state: AtomicU64::new(LIVE),
            n,
            drops: drops.clone(),
        }
    }

    fn check(&self) {
        assert_eq!(self.state.load(Acquire), LIVE, "use after free");
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        assert_eq!(self.state.swap(POISON, AcqRel), LIVE, "double drop");
        self.drops.fetch_add(1, Relaxed);
    }
}

fn instance() -> Arc<Krcu> {
    Arc::new(
        Krcu::builder()
            .arena_size(16 << 20)
            .cpus(2)
            .build()
            .expect("build"),
    )
}

/// Readers check every value they reach while writers store, replace and
/// compare-exchange for a few seconds: no value is ever dropped while a
/// reader holds it, every value is dropped exactly once in the end.
#[test]
fn readers_never_see_a_retired_value() {
    let k = instance();
    let drops = Arc::new(AtomicU64::new(0));
    let cell = RcuCell::new_in(k.clone(), Val::new(0, &drops));
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let made = AtomicU64::new(1);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let mut last = 0;
                while !stop.load(Relaxed) {
                    let g = k.rcu().read_lock();
                    let v = cell.load(&g).expect("never empty");
                    v.check();
                    // Hold the reference a little while writers retire it.
                    std::hint::spin_loop();
                    v.check();
                    last = last.max(v.n);
                    reads.fetch_add(1, Relaxed);
                }
                last
            });
        }
        for w in 0..2u64 {
            let (cell, stop, drops, made, k) = (&cell, &stop, &drops, &made, &k);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    i += 1;
                    let n = (w << 40) | i;
                    made.fetch_add(1, Relaxed);
                    match i % 3 {
                        0 => cell.store(Val::new(n, drops)).expect("not in NMI"),
                        1 => {
                            let g = k.rcu().read_lock();
                            let old = cell.replace(Val::new(n, drops), &g).expect("not in NMI");
                            // The old value is retired but still ours to read.
                            old.expect("never empty").check();
                        }
                        _ => {
                            let g = k.rcu().read_lock();
                            let cur = cell.load(&g);
                            match cell.compare_exchange(cur, Val::new(n, drops), &g) {
                                Ok(old) => old.expect("never empty").check(),
                                // Lost to the other writer: the value comes back.
                                Err(CompareExchangeError::Changed { new, current }) => {
                                    assert_eq!(new.n, n);
                                    current.expect("never empty").check();
                                }
                                Err(CompareExchangeError::Refused(_)) => panic!("task context"),
                            }
                        }
                    }
                }
            });
        }
        // At least 3 s, and on until readers and writers both did real work:
        // under valgrind, which runs one thread at a time and not fairly,
        // 3 s may not be enough for the readers to get their turn.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(3)
            || (reads.load(Relaxed) <= 1000 || made.load(Relaxed) <= 100)
                && start.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Relaxed);
    });
    assert!(reads.load(Relaxed) > 1000, "readers ran");
    let made = made.load(Relaxed);
    assert!(made > 100, "writers ran");
    drop(cell);
    k.kvfree_rcu_barrier();
    assert_eq!(
        drops.load(Relaxed),
        made,
        "every value dropped exactly once"
    );
}

/// A guard of another instance of yours does not hold the cell's values
/// off: the cell refuses it at run time (mixing the process-wide instance
/// with one of yours does not compile: see the doc tests on `RcuCell`).
#[test]
#[should_panic(expected = "read guard of another RCU instance")]
fn guard_of_another_instance_is_refused() {
    let k = instance();
    let other = instance();
    let cell = RcuCell::new_in(k, 1u64);
    let g = other.rcu().read_lock();
    let _ = cell.load(&g);
}

#[test]
fn guard_of_another_instance_is_refused_by_replace_and_compare_exchange() {
    let k = instance();
    let other = instance();
    let cell = RcuCell::new_in(k.clone(), 1u64);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let g = other.rcu().read_lock();
        let _ = cell.replace(2, &g);
    }));
    assert!(r.is_err(), "replace refuses another instance's guard");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let g = other.rcu().read_lock();
        let _ = cell.compare_exchange(None, 3, &g);
    }));
    assert!(
        r.is_err(),
        "compare_exchange refuses another instance's guard"
    );
    let g = k.rcu().read_lock();
    assert_eq!(
        cell.load(&g),
        Some(&1),
        "the refused updates swapped nothing"
    );
}

/// The process-wide instance's guard, taken through `Krcu::global()`, is a
/// global cell's once converted (checked); another instance's is handed
/// back.
#[test]
fn a_plain_guard_of_the_global_instance_converts_and_no_other() {
    let global = RcuCell::new(1u64);
    let g = krcu::rcu::GlobalReadGuard::try_from(Krcu::global().rcu().read_lock())
        .expect("a section of the process-wide instance");
    assert_eq!(global.load(&g), Some(&1));
    let k: &'static Krcu = Box::leak(Box::new(
        Krcu::builder()
            .arena_size(16 << 20)
            .build()
            .expect("instance"),
    ));
    assert!(krcu::rcu::GlobalReadGuard::try_from(k.rcu().read_lock()).is_err());
}

/// In NMI context every update refuses before it swaps: the new value comes
/// back, the old one is neither dropped nor unpublished.
#[test]
fn nmi_refuses_before_the_swap() {
    let k = instance();
    let drops = Arc::new(AtomicU64::new(0));
    let cell = RcuCell::new_in(k.clone(), Val::new(1, &drops));
    {
        let _nmi = krcu::context::enter_nmi();
        let UpdateError::InNmi(back) = cell.store(Val::new(2, &drops)).unwrap_err() else {
            panic!("refused as NMI")
        };
        assert_eq!(back.n, 2);
        std::mem::forget(back); // in a real handler: never drop there
        let g = k.rcu().read_lock();
        let UpdateError::InNmi(back) = cell
            .replace(Val::new(3, &drops), &g)
            .map(|_| ())
            .unwrap_err()
        else {
            panic!("refused as NMI")
        };
        assert_eq!(back.n, 3);
        std::mem::forget(back);
        let cur = cell.load(&g);
        match cell.compare_exchange(cur, Val::new(4, &drops), &g) {
            Err(CompareExchangeError::Refused(UpdateError::InNmi(back))) => {
                assert_eq!(back.n, 4);
                std::mem::forget(back);
            }
            _ => panic!("compare_exchange in NMI must refuse"),
        }
        // A prepared box is refused too, and handed back.
        let back = cell
            .store_box(RcuBox::new(Val::new(6, &drops)))
            .unwrap_err()
            .into_inner();
        assert_eq!(back.n, 6);
        std::mem::forget(back);
        assert!(cell.clear().is_err());
        assert_eq!(cell.load(&g).map(|v| v.n), Some(1), "nothing swapped");
    }
    k.kvfree_rcu_barrier();
    assert_eq!(drops.load(Relaxed), 0, "the old value was not retired");
    cell.store(Val::new(5, &drops)).expect("task context");
    k.kvfree_rcu_barrier();
    assert_eq!(
        drops.load(Relaxed),
        1,
        "outside NMI the old value is retired"
    );
}

/// Dropping the cell retires its value after a grace period: a reader of
/// the instance inside a section holds the drop off.
#[test]
fn dropping_the_cell_waits_for_readers() {
    let k = instance();
    let drops = Arc::new(AtomicU64::new(0));
    let cell = RcuCell::new_in(k.clone(), Val::new(1, &drops));
    let inside = Barrier::new(2);
    let (release, released) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (k, inside) = (&k, &inside);
        let reader = s.spawn(move || {
            let g = k.rcu().read_lock();
            inside.wait();
            // Bounded, so that a failed assertion below cannot hang the test.
            let _ = released.recv_timeout(Duration::from_secs(10));
            drop(g);
        });
        inside.wait();
        drop(cell);
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            assert_eq!(drops.load(Relaxed), 0, "dropped while a reader was inside");
            std::thread::sleep(Duration::from_millis(10));
        }
        release.send(()).unwrap();
        reader.join().unwrap();
    });
    k.kvfree_rcu_barrier();
    assert_eq!(drops.load(Relaxed), 1, "dropped after the reader left");
}

/// `defer` runs the closure after a grace period, not before.
#[test]
fn defer_runs_after_a_grace_period() {
    let k = instance();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let g = k.rcu().read_lock();
    let (tx, rx) = mpsc::channel();
    // Retired from another thread while this one is inside a section.
    std::thread::scope(|s| {
        s.spawn(|| {
            k.defer(move || r.store(true, Release))
                .expect("task context");
            tx.send(()).unwrap();
        });
    });
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!ran.load(Acquire), "ran inside a reader's section");
    drop(g);
    k.kvfree_rcu_barrier();
    assert!(ran.load(Acquire), "ran after the grace period");

    // The free function, on the process-wide instance.
    let ran2 = Arc::new(AtomicBool::new(false));
    let r2 = ran2.clone();
    krcu::defer(move || r2.store(true, Release)).expect("task context");
    krcu::kvfree_rcu_barrier();
    assert!(ran2.load(Acquire));
}

/// `defer` hands the closure back in NMI context and on a real-time thread,
/// without running it.
#[test]
fn defer_refuses_nmi_and_realtime() {
    let k = instance();
    let ran = Arc::new(AtomicU64::new(0));
    {
        let _nmi = krcu::context::enter_nmi();
        let r = ran.clone();
        match k.defer(move || {
            r.fetch_add(1, Relaxed);
        }) {
            Err(e @ DeferError::InNmi(_)) => std::mem::forget(e.into_inner()),
            _ => panic!("defer in NMI must refuse"),
        }
        let r = ran.clone();
        assert!(matches!(
            krcu::defer(move || {
                r.fetch_add(1, Relaxed);
            }),
            Err(DeferError::InNmi(_))
        ));
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let _h = k.register_thread(); // makes the thread real-time
            let r = ran.clone();
            let back = k
                .defer(move || {
                    r.fetch_add(1, Relaxed);
                })
                .unwrap_err();
            assert!(matches!(back, DeferError::Realtime(_)));
            // Handed back intact: it can still run.
            (back.into_inner())();
            krcu::context::set_realtime(false);
        });
    });
    k.kvfree_rcu_barrier();
    krcu::kvfree_rcu_barrier();
    assert_eq!(ran.load(Relaxed), 1, "only the handed-back closure ran");
}

/// `compare_exchange` swaps when the cell holds `current`, and otherwise
/// hands the new value back with what the cell holds.
#[test]
fn compare_exchange_success_and_failure() {
    let k = instance();
    let drops = Arc::new(AtomicU64::new(0));
    let cell = RcuCell::empty_in(k.clone());
    let g = k.rcu().read_lock();
    assert!(cell.load(&g).is_none());
    // Empty -> 1.
    assert!(
        cell.compare_exchange(None, Val::new(1, &drops), &g)
            .expect("was empty")
            .is_none()
    );
    let one = cell.load(&g);
    assert_eq!(one.map(|v| v.n), Some(1));
    // Expecting empty fails now: 2 comes back, with the current value.
    match cell.compare_exchange(None, Val::new(2, &drops), &g) {
        Err(CompareExchangeError::Changed { current, new }) => {
            assert_eq!(current.map(|v| v.n), Some(1));
            assert_eq!(new.n, 2);
        }
        _ => panic!("must fail"),
    }
    assert_eq!(
        drops.load(Relaxed),
        1,
        "the handed-back 2 was dropped by us"
    );
    // 1 -> 3 succeeds and returns 1, readable under the guard.
    let old = cell
        .compare_exchange(one, Val::new(3, &drops), &g)
        .expect("held 1");
    assert_eq!(old.map(|v| v.n), Some(1));
    // A stale expectation (1) fails.
    match cell.compare_exchange(one, Val::new(4, &drops), &g) {
        Err(CompareExchangeError::Changed { current, new }) => {
            assert_eq!(current.map(|v| v.n), Some(3));
            assert_eq!(new.n, 4);
        }
        _ => panic!("must fail"),
    }
    // An equal value at another address is not `current`.
    let other = Val::new(3, &drops);
    assert!(
        cell.compare_exchange(Some(&other), Val::new(5, &drops), &g)
            .is_err()
    );
    old.unwrap().check(); // still readable: the guard holds it off
    drop(g);
    drop(other);
    k.kvfree_rcu_barrier();
    // 2, 4, 5 and `other` dropped by us; 1 retired after the guard.
    assert_eq!(drops.load(Relaxed), 5);
    drop(cell);
    k.kvfree_rcu_barrier();
    assert_eq!(drops.load(Relaxed), 6);
}
