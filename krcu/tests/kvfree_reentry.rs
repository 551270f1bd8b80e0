//! A `kfree_rcu` made from inside another `kfree_rcu`'s front-block
//! section on the same thread (a lockdep report handler, a tracing
//! subscriber) loses nothing.

mod common;

use common::CountedNode;
use krcu::Krcu;
use krcu::kvfree::Policy;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};

static INSTANCE: AtomicPtr<Krcu> = AtomicPtr::new(core::ptr::null_mut());
static FREED: AtomicPtr<AtomicUsize> = AtomicPtr::new(core::ptr::null_mut());
static NESTED: AtomicUsize = AtomicUsize::new(0);
static IN_HANDLER: AtomicBool = AtomicBool::new(false);

/// With `Policy::Nowait`, a new front block's page is allocated under the
/// raw `krc` lock, inside the thread's front section; the allocation takes
/// the zone lock, which the validator reports (the 2020 kfree_rcu bug:
/// a `spinlock_t` under a raw spinlock). The report
/// handler retires an object on the same instance, from inside that
/// section: it must neither clear the section early nor have its block
/// overwritten by the outer call.
#[test]
fn a_kfree_rcu_from_inside_the_front_section_loses_nothing() {
    if !krcu::lockdep::COMPILED {
        return;
    }
    let handler = krcu::lockdep::ReportHandler::Custom(Arc::new(|_report| {
        let k = INSTANCE.load(SeqCst);
        let freed = FREED.load(SeqCst);
        if k.is_null() || freed.is_null() || IN_HANDLER.swap(true, SeqCst) {
            return;
        }
        // SAFETY: both are set while the test's instance and counter live,
        // and cleared before they go.
        let (k, freed) = unsafe { (&*k, Arc::from_raw(freed)) };
        let obj = CountedNode::new(&freed);
        core::mem::forget(freed);
        k.kfree_rcu(obj).unwrap();
        NESTED.fetch_add(1, SeqCst);
        IN_HANDLER.store(false, SeqCst);
    }));
    let k = Krcu::builder()
        .arena_size(16 << 20)
        .cpus(1)
        .policy(Policy::Nowait)
        .report_handler(handler)
        .build()
        .unwrap();
    let freed = Arc::new(AtomicUsize::new(0));
    INSTANCE.store(core::ptr::from_ref(&k).cast_mut(), SeqCst);
    FREED.store(Arc::as_ptr(&freed).cast_mut(), SeqCst);
    const N: usize = 3000;
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..N {
                k.kfree_rcu(CountedNode::new(&freed)).unwrap();
            }
        });
    });
    INSTANCE.store(core::ptr::null_mut(), SeqCst);
    FREED.store(core::ptr::null_mut(), SeqCst);
    k.kvfree_rcu_barrier();
    let nested = NESTED.load(SeqCst);
    assert!(
        nested > 0,
        "setup: the handler never ran inside the section"
    );
    assert_eq!(
        freed.load(SeqCst),
        N + nested,
        "objects retired from inside the front section were lost"
    );
}

/// Blocks whose grace period elapsed before the monitor hands them over go
/// straight to the ready list (drain-ready): the reclaimer is woken for
/// them, not left to its 100 ms timeout.
#[test]
fn drain_ready_blocks_are_freed_without_waiting_for_the_reclaimers_timeout() {
    let drain = std::time::Duration::from_millis(5);
    let k = Krcu::builder()
        .arena_size(16 << 20)
        .cpus(1)
        .drain_delay(drain)
        .assist(krcu::kvfree::Assist::Never)
        .build()
        .unwrap();
    let freed = Arc::new(AtomicUsize::new(0));
    let mut worst = std::time::Duration::ZERO;
    for round in 1..=8 {
        k.kfree_rcu(CountedNode::new(&freed)).unwrap();
        // The object's grace period elapses long before the drain delay.
        k.rcu().synchronize_expedited();
        let start = std::time::Instant::now();
        while freed.load(SeqCst) < round {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        worst = worst.max(start.elapsed());
    }
    assert!(
        k.stats().drain_ready_blocks > 0,
        "setup: no drain-ready block"
    );
    assert!(
        worst < std::time::Duration::from_millis(60),
        "a drain-ready object waited {worst:?} (drain delay {drain:?})"
    );
}
