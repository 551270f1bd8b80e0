//! The real-time promise: with a block available, `kfree_rcu` makes no heap
//! allocation and takes no lock but trylocks: from task context, with a raw
//! spinlock held, and from a signal handler.
//!
//! A global allocator counts the allocations of each thread; the locks count
//! each thread's blocking acquisitions and trylocks.

mod common;

use common::counting_alloc::{CountingAlloc, thread_allocs, thread_frees};
use common::*;
use krcu::Krcu;
use krcu::context;
use krcu::kvfree::Policy;
use krcu::lock::{RawSpinLock, thread_counters};
use krcu::lockdep::{ReportHandler, ReportLog};
use std::sync::atomic::{AtomicU64, Ordering::*};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn with_a_block_available_kfree_rcu_neither_allocates_nor_blocks() {
    for policy in Policy::ALL {
        // Before the instance, so it outlives every object the instance
        // frees when it drops (the objects count their drops in it).
        let ledger = Ledger::new(1000);
        let k = Krcu::builder()
            .arena_size(32 << 20)
            .cpus(1)
            .policy(policy)
            .report_handler(ReportHandler::Collect(ReportLog::new()))
            .build()
            .unwrap();
        let mut objs: Vec<Box<Obj>> = (0..300).map(|_| Obj::new(&ledger)).collect();
        let raw = RawSpinLock::new_in(k.domain(), ());
        // A page freed on this CPU warms its per-CPU lists, as any running
        // system has them (NO_LOCKS never refills an empty list).
        let page = k.pages().alloc_page(krcu::page::Gfp::KERNEL).unwrap();
        k.pages().free(page);
        // A first call installs a block (Prohibit, which never allocates
        // under the lock and keeps no cache, finds none: nothing to check).
        k.kfree_rcu(objs.pop().unwrap()).unwrap();
        if k.stats().to_block == 0 {
            assert!(
                matches!(policy, Policy::Prohibit),
                "{policy}: {:?}",
                k.stats()
            );
            drop(objs);
            continue;
        }

        // Statistics are read outside the measured window (they lock).
        let s0 = k.stats();
        let (a0, c0) = (thread_allocs(), thread_counters());
        for _ in 0..100 {
            k.kfree_rcu(objs.pop().unwrap()).unwrap();
        }
        let (a1, c1) = (thread_allocs(), thread_counters());
        let s1 = k.stats();
        assert_eq!(a1 - a0, 0, "{policy}: heap allocations on the call path");
        let d = c1 - c0;
        assert_eq!(
            d.blocking, 0,
            "{policy}: a blocking lock on the call path: {d:?}"
        );
        // A call appends to the thread's front block (no lock at all) or
        // trylocks a per-CPU state; it never waits on a lock. One that
        // starts a block by the policy's allocation also trylocks the page
        // allocator (its per-CPU list, then the zone) and, for a policy
        // that allocates with the lock dropped, a `krc` state again: at
        // most three more per allocation tried, whether it succeeded,
        // failed, or got a page it gave back because that last trylock
        // failed (which the old count missed: 102 trylocks for 100 calls
        // under load).
        let tried = |s: &krcu::kvfree::KvfreeStats| {
            s.inline_allocs + s.inline_alloc_failures + s.inline_allocs_returned
        };
        let page_tries = 3 * (tried(&s1) - tried(&s0));
        assert!(d.try_ok <= 100 + page_tries, "{policy}: {d:?}");

        // With a raw spinlock held.
        let g = raw.lock();
        let (a0, c0) = (thread_allocs(), thread_counters());
        for _ in 0..100 {
            k.kfree_rcu(objs.pop().unwrap()).unwrap();
        }
        let (a1, c1) = (thread_allocs(), thread_counters());
        drop(g);
        assert_eq!(
            a1 - a0,
            0,
            "{policy}: heap allocations under a raw spinlock"
        );
        assert_eq!((c1 - c0).blocking, 0, "{policy}");
        assert!(context::atomic_depth() == 0);

        // From a signal handler that interrupts this thread.
        let lock_busy0 = k.stats().lock_busy_fallbacks;
        let pool = Pool::new(&ledger, 50);
        let target = SignalTarget {
            krcu: &k,
            pool: &pool,
            handled: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        };
        {
            let _l = signal_lock();
            install_handler();
            let _t = set_target(&target);
            let (a0, c0) = (thread_allocs(), thread_counters());
            for _ in 0..50 {
                // SAFETY: raise has no preconditions; the handler runs on
                // this thread before it returns.
                unsafe { libc::raise(libc::SIGUSR1) };
            }
            let (a1, c1) = (thread_allocs(), thread_counters());
            assert_eq!(
                a1 - a0,
                0,
                "{policy}: heap allocations in the signal handler"
            );
            assert_eq!((c1 - c0).blocking, 0, "{policy}");
        }
        assert_eq!(target.queued.load(SeqCst), 50);
        // A call that found every per-CPU lock held (the monitor's, for a
        // moment) went to the lock-free list and is counted there.
        let s = k.stats();
        assert_eq!(s.calls_hardirq + (s.lock_busy_fallbacks - lock_busy0), 50);
        drop(pool);
        drop(objs);
        k.kvfree_rcu_barrier();
        ledger.assert_all_freed_once();
    }
}

/// Runs `retire` on a fresh thread (nothing of it known to the new
/// instance it gets) with ten objects to retire into that instance, then
/// checks that each was freed once.
fn on_a_fresh_thread(retire: impl FnOnce(&Krcu, Vec<Box<Obj>>) + Send) {
    let ledger = Ledger::new(100);
    let k = Krcu::builder()
        .arena_size(32 << 20)
        .report_handler(ReportHandler::Collect(ReportLog::new()))
        .build()
        .unwrap();
    let objs: Vec<Box<Obj>> = (0..10).map(|_| Obj::new(&ledger)).collect();
    std::thread::scope(|s| {
        s.spawn(|| retire(&k, objs));
    });
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

#[test]
fn a_registered_thread_never_allocates_not_even_on_its_first_call() {
    on_a_fresh_thread(|k, objs| {
        let reader = k.register_thread();
        let before = thread_allocs();
        for o in objs {
            let _g = reader.read_lock();
            k.kfree_rcu(o).unwrap();
        }
        assert_eq!(thread_allocs() - before, 0, "the first calls allocated");
    });
}

#[test]
fn a_realtime_thread_makes_no_front_on_an_instance_it_did_not_register_with() {
    on_a_fresh_thread(|k, objs| {
        context::set_realtime(true);
        let (a0, c0) = (thread_allocs(), thread_counters());
        for o in objs {
            k.kfree_rcu(o).unwrap();
        }
        let (a1, c1) = (thread_allocs(), thread_counters());
        assert_eq!(a1 - a0, 0, "a front was made on the call path");
        assert_eq!((c1 - c0).blocking, 0);
    });
}

#[test]
fn an_unregistered_thread_in_atomic_context_makes_no_front_on_its_first_call() {
    let ledger = Ledger::new(100);
    let log = ReportLog::new();
    let k = Krcu::builder()
        .arena_size(32 << 20)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build()
        .unwrap();
    let raw = RawSpinLock::new_in(k.domain(), ());
    for how in ["raw spinlock", "irqs off", "preemption off"] {
        let objs: Vec<Box<Obj>> = (0..4).map(|_| Obj::new(&ledger)).collect();
        let (k, raw) = (&k, &raw);
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut objs = objs;
                // A fresh thread: no front yet, nothing registered ahead.
                let (a, c) = {
                    let _g = (how == "raw spinlock").then(|| raw.lock());
                    let _i = (how == "irqs off").then(context::local_irq_save);
                    let _p = (how == "preemption off").then(context::preempt_disable);
                    let (a0, c0) = (thread_allocs(), thread_counters());
                    for _ in 0..2 {
                        k.kfree_rcu(objs.pop().unwrap()).unwrap();
                    }
                    (thread_allocs() - a0, thread_counters() - c0)
                };
                assert_eq!(a, 0, "{how}: the first call allocated (made a front)");
                assert_eq!(c.blocking, 0, "{how}: {c:?}");
                // Where sleeping is allowed, the thread may make its front.
                for o in objs {
                    k.kfree_rcu(o).unwrap();
                }
            });
        });
    }
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    assert!(log.is_empty(), "{:?}", log);
}

/// The positive control for every "no allocation" check in this file: the
/// counting allocator does see this thread's allocations and frees.
#[test]
fn the_counting_allocator_counts_this_threads_heap_calls() {
    let (a0, f0) = (thread_allocs(), thread_frees());
    drop(std::hint::black_box(Box::new(7u64)));
    let mut v: Vec<u64> = Vec::with_capacity(1);
    v.extend([1, 2, 3]); // a reallocation
    drop(std::hint::black_box(v));
    assert_eq!(thread_allocs() - a0, 3, "one box, one vector, one growth");
    assert_eq!(thread_frees() - f0, 2, "the box and the vector");
}
