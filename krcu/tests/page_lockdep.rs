//! The page allocator under the validator: the 2020 kfree_rcu bug (a NOWAIT
//! allocation under a raw spinlock takes `zone->lock`, a `spinlock_t`), and
//! the modes that avoid it.
#![cfg(any(debug_assertions, feature = "lockdep"))]

mod common;

use krcu::Domain;
use krcu::context::{self, PreemptModel};
use krcu::lock::RawSpinLock;
use krcu::lockdep::{ReportHandler, ReportKind, ReportLog};
use krcu::page::{Gfp, PageAllocator, Watermarks};
use std::sync::Arc;

fn setup(model: PreemptModel, nesting_proof: bool) -> (Domain, ReportLog, Arc<PageAllocator>) {
    let log = ReportLog::new();
    let d = Domain::builder()
        .cpus(1)
        .preempt_model(model)
        .prove_raw_lock_nesting(nesting_proof)
        .lockdep(true)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build();
    let pa = common::pages::quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    (d, log, pa)
}

#[test]
fn nowait_under_a_raw_spinlock_is_the_2020_kfree_rcu_bug() {
    for model in PreemptModel::ALL {
        for np in [true, false] {
            let (d, log, pa) = setup(model, np);
            let krcp = RawSpinLock::named(&d, "krcp->lock", ());
            let page = {
                let _g = krcp.lock();
                // Fresh lists: the allocation refills from the buddy under
                // zone->lock, as GFP_NOWAIT may.
                pa.alloc_page(Gfp::NOWAIT).unwrap()
            };
            pa.free(page);
            let wait = log.count(ReportKind::InvalidWaitContext);
            let sleep = log.count(ReportKind::SleepInInvalidContext);
            let reports = log.take();
            // The lockdep half of that bug: with nesting proof on, taking
            // zone->lock under a raw spinlock is an invalid wait context.
            assert_eq!(wait, usize::from(np), "{model}: {reports:#?}");
            // The RT half: there zone->lock sleeps, and sleeping while
            // atomic is reported whatever the nesting proof says.
            assert_eq!(
                sleep,
                usize::from(model == PreemptModel::Rt),
                "{model}: {reports:#?}"
            );
            assert_eq!(reports.len(), wait + sleep, "{model}: {reports:#?}");
            if let Some(r) = reports
                .iter()
                .find(|r| r.kind == ReportKind::InvalidWaitContext)
            {
                assert_eq!(r.headline(), "BUG: Invalid wait context");
                assert_eq!(r.class, Some("zone->lock"));
                // Held: the caller's raw lock, and this CPU's pcp lock,
                // trylocked, under which rmqueue_bulk refills.
                let held: Vec<_> = r.held.iter().map(|h| (h.name, h.trylock)).collect();
                assert_eq!(
                    held,
                    [("krcp->lock", false), ("pcp->lock", true)],
                    "{}",
                    r.text
                );
                assert!(r.text.contains("(zone->lock){....}-{3:3}"), "{}", r.text);
            }
        }
    }
}

#[test]
fn no_locks_and_nolock_under_a_raw_spinlock_report_nothing() {
    for model in PreemptModel::ALL {
        let (d, log, pa) = setup(model, true);
        // Give this CPU's lists a page for NO_LOCKS to find.
        let p = pa.alloc_page(Gfp::KERNEL).unwrap();
        pa.free(p);
        let krcp = RawSpinLock::named(&d, "krcp->lock", ());
        {
            let _g = krcp.lock();
            let a = pa.alloc_page(Gfp::NO_LOCKS).unwrap();
            // Every nolock path: pcp hit, refill under a trylocked zone
            // lock, straight from the buddy (order 5), and their frees.
            let b = pa.alloc_pages_nolock(0).unwrap();
            let c = pa.alloc_pages_nolock(5).unwrap();
            pa.free_nolock(a);
            pa.free_nolock(b);
            pa.free_nolock(c);
            // The lists hold the pages just freed; NO_LOCKS takes them
            // and, once they are gone, fails rather than refill.
            let mut taken = Vec::new();
            while let Ok(p) = pa.alloc_page(Gfp::NO_LOCKS) {
                taken.push(p);
            }
            assert!(!taken.is_empty());
            for p in taken {
                pa.free_nolock(p);
            }
        }
        assert!(log.is_empty(), "{model}: {:#?}", log.reports());
    }
}

#[test]
fn sleeping_allocation_in_atomic_context_is_reported() {
    let (d, log, pa) = setup(PreemptModel::Full, true);
    let raw = RawSpinLock::named(&d, "some_raw_lock", ());
    {
        let _g = raw.lock();
        let p = pa.alloc_page(Gfp::KERNEL).unwrap();
        pa.free_nolock(p);
    }
    {
        let _h = context::enter_hardirq();
        assert!(pa.alloc_page(Gfp::NO_LOCKS).is_ok_and(|p| {
            pa.free_nolock(p);
            true
        }));
    }
    let reports = log.take();
    assert!(
        reports
            .iter()
            .any(|r| r.kind == ReportKind::SleepInInvalidContext),
        "{reports:#?}"
    );
    // In task context with nothing held, KERNEL is fine.
    let p = pa.alloc_page(Gfp::KERNEL).unwrap();
    pa.free(p);
    assert!(log.is_empty(), "{:#?}", log.reports());
}

#[test]
fn nolock_refuses_hardirq_under_rt_and_works_elsewhere() {
    let (_d, log, pa) = setup(PreemptModel::Rt, true);
    {
        let _h = context::enter_hardirq();
        assert_eq!(
            pa.alloc_pages_nolock(0),
            Err(krcu::page::AllocError::Context)
        );
    }
    let (_d2, _log2, pa2) = setup(PreemptModel::Full, true);
    {
        let _h = context::enter_hardirq();
        let p = pa2.alloc_pages_nolock(0).unwrap();
        pa2.free_nolock(p);
    }
    assert!(log.is_empty());
}
