//! `kfree_rcu` of a `SlabBox` (`Krcu::kfree_rcu_slab`, the free function
//! `kfree_rcu_slab`): freed once, never before readers are done (readers
//! check a poison word while a writer replaces and retires), through the
//! blocks and through the hidden-head last resort; refused in NMI context
//! and for a cache of another instance; from a signal handler and from a
//! real-time thread without allocating or blocking; a cache dropped while
//! its objects wait for their grace period.

mod common;

use common::counting_alloc::{CountingAlloc, thread_allocs, thread_frees};
use common::instances::{assert_no_reports, collecting_instance};
use common::slabs::{assert_shrinks_to_no_slab, replace_and_retire};
use common::{Ledger, Obj, set_handler, signal_lock};
use krcu::kvfree::Policy;
use krcu::lock::thread_counters;
use krcu::lockdep::{ReportHandler, ReportLog};
use krcu::page::FaultSites;
use krcu::slab::{SlabBox, SlabCache};
use krcu::{Krcu, SlabRetireError};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn retired_boxes_are_freed_once_after_their_readers() {
    let k = collecting_instance(Policy::default(), 5);
    // The sheaves turn every object away: the blocks carry them.
    k.pages().faults().fail_every(1, FaultSites::SLAB_RCU_SHEAF);
    let ledger = Ledger::new(20_100);
    let cache = k.slab_cache::<Obj>("objs").unwrap();
    replace_and_retire(&k, &cache, &ledger, 20_000);
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    let s = k.stats();
    assert!(s.to_block > 0, "{s:?}");
    let st = cache.stats();
    assert!(st.bulk_frees > 0, "freed in bulk: {st:?}");
    assert_eq!(st.bad_frees, 0);
    assert_shrinks_to_no_slab(&cache);
}

/// No block can ever be had: every object takes the last resort, the
/// lock-free `rcu_head` list, through its slot's hidden head.
#[test]
fn with_no_block_the_hidden_head_carries_the_object() {
    let k = collecting_instance(Policy::Prohibit, 0);
    // The sheaves turn every object away, and no block can be had.
    k.pages().faults().fail_every(1, FaultSites::SLAB_RCU_SHEAF);
    let ledger = Ledger::new(5_100);
    let cache = k.slab_cache::<Obj>("objs").unwrap();
    replace_and_retire(&k, &cache, &ledger, 5_000);
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    let s = k.stats();
    assert_eq!(s.to_block, 0, "{s:?}");
    assert!(s.list_fallbacks > 0, "{s:?}");
    assert_shrinks_to_no_slab(&cache);
}

/// A cache whose grace periods are another instance's is refused, the box
/// handed back intact; so is a cache of the process-wide RCU on an
/// instance of its own.
#[test]
fn a_cache_of_another_instance_is_refused() {
    let a = collecting_instance(Policy::default(), 5);
    let b = collecting_instance(Policy::default(), 5);
    let ledger = Ledger::new(3);
    let cache_a = a.slab_cache::<Obj>("a").unwrap();
    let x = cache_a.alloc_box(Obj::value(&ledger)).ok().unwrap();
    let x = match b.kfree_rcu_slab(x) {
        Err(SlabRetireError::OtherInstance(x)) => x,
        other => panic!("not refused: {other:?}"),
    };
    x.check();
    a.kfree_rcu_slab(x).unwrap();
    let global_rcu_cache = SlabCache::<Obj>::new(a.pages(), "global rcu").unwrap();
    let y = global_rcu_cache
        .alloc_box(Obj::value(&ledger))
        .ok()
        .unwrap();
    let e = a.kfree_rcu_slab(y).unwrap_err();
    assert!(e.to_string().contains("another RCU instance"), "{e}");
    let y = e.into_inner();
    y.check();
    drop(y); // never published: may go at once
    a.kvfree_rcu_barrier();
    assert_eq!(ledger.dropped.load(SeqCst), 2);
}

#[test]
fn nmi_context_hands_the_box_back() {
    let k = collecting_instance(Policy::default(), 5);
    let ledger = Ledger::new(1);
    let cache = k.slab_cache::<Obj>("nmi").unwrap();
    let x = cache.alloc_box(Obj::value(&ledger)).ok().unwrap();
    let back = {
        let _nmi = krcu::context::enter_nmi();
        match k.kfree_rcu_slab(x) {
            Err(SlabRetireError::InNmi(x)) => x,
            other => panic!("not refused: {other:?}"),
        }
    };
    back.check();
    assert_eq!(ledger.dropped.load(SeqCst), 0);
    k.kfree_rcu_slab(back).unwrap();
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

/// The cache's handle goes while its retired objects wait: they are freed
/// after their grace period all the same, and then every slab and the
/// cache's state go.
#[test]
fn cache_dropped_while_its_objects_wait() {
    let k = collecting_instance(Policy::default(), 5);
    let ledger = Ledger::new(2000);
    let cache = k.slab_cache::<Obj>("orphan").unwrap();
    let pages_refs = Arc::strong_count(k.pages());
    let boxes: Vec<_> = (0..2000)
        .map(|_| cache.alloc_box(Obj::value(&ledger)).ok().unwrap())
        .collect();
    let g = k.rcu().read_lock();
    for b in boxes {
        k.kfree_rcu_slab(b).unwrap();
    }
    drop(cache);
    // The reader holds them off.
    assert_eq!(ledger.dropped.load(SeqCst), 0);
    drop(g);
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    assert_eq!(
        Arc::strong_count(k.pages()),
        pages_refs - 1,
        "the cache's state was not freed with its last slab"
    );
}

/// The free function on the process-wide instance, with a cache of the
/// process-wide RCU.
#[test]
fn the_free_function_retires_on_the_process_wide_instance() {
    let ledger = Ledger::new(1000);
    let cache = SlabCache::<Obj>::new(Krcu::global().pages(), "global").unwrap();
    for _ in 0..1000 {
        let b = cache.alloc_box(Obj::value(&ledger)).ok().unwrap();
        krcu::kfree_rcu_slab(b).unwrap();
    }
    krcu::kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    let other = collecting_instance(Policy::default(), 5);
    let theirs = other.slab_cache::<Obj>("theirs").unwrap();
    let ledger2 = Ledger::new(1);
    let b = theirs.alloc_box(Obj::value(&ledger2)).ok().unwrap();
    assert!(matches!(
        krcu::kfree_rcu_slab(b),
        Err(SlabRetireError::OtherInstance(_))
    ));
}

/// A `T` that is neither `HasRcuHead` nor `Sync`: retired all the same.
#[test]
fn any_send_type_can_be_retired() {
    let k = collecting_instance(Policy::Prohibit, 0);
    let cache = k.slab_cache::<std::cell::Cell<Vec<u8>>>("cells").unwrap();
    for i in 0..100u8 {
        let b = cache
            .alloc_box(std::cell::Cell::new(vec![i; 100]))
            .unwrap_or_else(|_| panic!("no memory"));
        k.kfree_rcu_slab(b).unwrap();
    }
    k.kvfree_rcu_barrier();
    assert_shrinks_to_no_slab(&cache);
}

/// A real-time thread retires boxes with no global-allocator call (alloc
/// or free) and no blocking lock.
#[test]
fn a_real_time_thread_retires_without_allocating_or_blocking() {
    let k = collecting_instance(Policy::default(), 5);
    let ledger = Ledger::new(300);
    let cache = k.slab_cache::<Obj>("rt").unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut boxes: Vec<SlabBox<Obj>> = (0..300)
                .map(|_| cache.alloc_box(Obj::value(&ledger)).ok().unwrap())
                .collect();
            let _h = k.register_thread();
            // A first retire sets up what the thread's later ones use.
            k.kfree_rcu_slab(boxes.pop().unwrap()).unwrap();
            let (a0, f0, c0) = (thread_allocs(), thread_frees(), thread_counters());
            for _ in 0..200 {
                k.kfree_rcu_slab(boxes.pop().unwrap()).unwrap();
            }
            let (a1, f1, c1) = (thread_allocs(), thread_frees(), thread_counters());
            krcu::context::set_realtime(false);
            assert_eq!(a1 - a0, 0, "global-allocator allocations");
            assert_eq!(f1 - f0, 0, "global-allocator frees");
            assert_eq!((c1 - c0).blocking, 0, "blocking locks: {:?}", c1 - c0);
            drop(boxes);
        });
    });
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
}

// --- from a signal handler -------------------------------------------------

static SIG_KRCU: AtomicPtr<Krcu> = AtomicPtr::new(core::ptr::null_mut());
static SIG_POOL: [AtomicPtr<Obj>; 64] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 64];
static SIG_NEXT: AtomicUsize = AtomicUsize::new(0);
static SIG_QUEUED: AtomicU64 = AtomicU64::new(0);
static SIG_ALLOCS: AtomicU64 = AtomicU64::new(0);
static SIG_BLOCKING: AtomicU64 = AtomicU64::new(0);

extern "C" fn retire_in_handler(_: libc::c_int) {
    let _hardirq = krcu::context::enter_hardirq();
    let k = SIG_KRCU.load(Acquire);
    if k.is_null() {
        return;
    }
    let i = SIG_NEXT.fetch_add(1, Relaxed);
    let Some(slot) = SIG_POOL.get(i) else { return };
    let Some(p) = NonNull::new(slot.swap(core::ptr::null_mut(), AcqRel)) else {
        return;
    };
    let (a0, c0) = (thread_allocs() + thread_frees(), thread_counters());
    // SAFETY: the pool holds boxes given up with into_raw, each taken once;
    // the instance is published only while the test that owns it runs.
    let r = unsafe { (*k).kfree_rcu_slab(SlabBox::from_raw(p)) };
    let (a1, c1) = (thread_allocs() + thread_frees(), thread_counters());
    SIG_ALLOCS.fetch_add(a1 - a0, Relaxed);
    SIG_BLOCKING.fetch_add((c1 - c0).blocking, Relaxed);
    match r {
        Ok(()) => {
            SIG_QUEUED.fetch_add(1, Relaxed);
        }
        // Not freed there: leaked rather than freed in the handler.
        Err(e) => core::mem::forget(e),
    }
}

#[test]
fn retired_from_a_signal_handler() {
    let _l = signal_lock();
    let k = collecting_instance(Policy::default(), 5);
    let ledger = Ledger::new(64);
    let cache = k.slab_cache::<Obj>("signal").unwrap();
    for slot in &SIG_POOL {
        let b = cache.alloc_box(Obj::value(&ledger)).ok().unwrap();
        slot.store(SlabBox::into_raw(b).as_ptr(), Release);
    }
    SIG_NEXT.store(0, SeqCst);
    SIG_KRCU.store(core::ptr::from_ref(&k).cast_mut(), Release);
    // SAFETY: the handler only touches atomics, const thread-locals and
    // krcu's signal-safe retire path.
    unsafe { set_handler(libc::SIGUSR2, retire_in_handler, libc::SA_RESTART) };
    for _ in 0..64 {
        // SAFETY: raise has no preconditions; the handler runs on this
        // thread before it returns.
        unsafe { libc::raise(libc::SIGUSR2) };
    }
    SIG_KRCU.store(core::ptr::null_mut(), Release);
    assert_eq!(SIG_QUEUED.load(SeqCst), 64);
    assert_eq!(SIG_ALLOCS.load(SeqCst), 0, "allocator calls in the handler");
    assert_eq!(
        SIG_BLOCKING.load(SeqCst),
        0,
        "blocking locks in the handler"
    );
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    assert_shrinks_to_no_slab(&cache);
    drop(cache);
    drop(k);
}

#[test]
fn every_slab_goes_back_after_a_barrier() {
    let k = collecting_instance(Policy::default(), 5);
    let cache = k.slab_cache::<[u64; 8]>("arrays").unwrap();
    for i in 0..10_000u64 {
        let b = cache.alloc_box([i; 8]).unwrap();
        k.kfree_rcu_slab(b).unwrap();
    }
    k.kvfree_rcu_barrier();
    assert_shrinks_to_no_slab(&cache);
    assert_eq!(cache.stats().slabs_freed, cache.stats().slabs_allocated);
}

/// A one-CPU PREEMPT_RT instance that proves raw-lock nesting, its
/// validator reports collected in `log`.
#[cfg(any(debug_assertions, feature = "lockdep"))]
fn rt_instance(log: &ReportLog) -> Krcu {
    Krcu::builder()
        .arena_size(64 << 20)
        .cpus(1)
        .preempt_model(krcu::context::PreemptModel::Rt)
        .prove_raw_lock_nesting(true)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build()
        .unwrap()
}

/// 2 000 boxes of `cache` (many sheaves' worth), allocated outside any
/// lock, and the raw lock the test frees them under.
#[cfg(any(debug_assertions, feature = "lockdep"))]
fn boxes_and_raw_lock(
    k: &Krcu,
    cache: &SlabCache<Obj>,
    ledger: &Arc<Ledger>,
) -> (Vec<SlabBox<Obj>>, krcu::lock::RawSpinLock<()>) {
    let boxes = (0..2000)
        .map(|_| cache.alloc_box(Obj::value(ledger)).ok().unwrap())
        .collect();
    (
        boxes,
        krcu::lock::RawSpinLock::named(k.domain(), "caller_raw_lock", ()),
    )
}

/// Under PREEMPT_RT the cache's own locks sleep: a `kfree_rcu_slab` under
/// a raw lock (atomic context) must take none of them, not even by trylock
/// (an invalid wait context), and must allocate no sheaf. Its thread's own
/// sheaf takes the objects while it has room; then the pointer blocks do.
/// (The torture found this: 12 548 "sleeping function called from invalid
/// context" reports at the barn's lock.)
#[cfg(any(debug_assertions, feature = "lockdep"))]
#[test]
fn retiring_under_a_raw_lock_on_preempt_rt_takes_no_sleeping_lock() {
    let log = ReportLog::new();
    let k = rt_instance(&log);
    let ledger = Ledger::new(2000);
    let cache = k.slab_cache::<Obj>("under raw").unwrap();
    // Allocated outside the lock; retired under it, many sheaves' worth.
    let (boxes, raw) = boxes_and_raw_lock(&k, &cache, &ledger);
    {
        let _g = raw.lock();
        for b in boxes {
            k.kfree_rcu_slab(b).unwrap();
        }
    }
    k.kvfree_rcu_barrier();
    ledger.assert_all_freed_once();
    assert_no_reports(&log);
}

/// As above, for boxes dropped (freed at once, never published) under a
/// raw lock on PREEMPT_RT: the free takes no sleeping lock of the cache.
#[cfg(any(debug_assertions, feature = "lockdep"))]
#[test]
fn dropping_boxes_under_a_raw_lock_on_preempt_rt_takes_no_sleeping_lock() {
    let log = ReportLog::new();
    let k = rt_instance(&log);
    let ledger = Ledger::new(2000);
    let cache = k.slab_cache::<Obj>("dropped under raw").unwrap();
    let (boxes, raw) = boxes_and_raw_lock(&k, &cache, &ledger);
    {
        let _g = raw.lock();
        drop(boxes);
    }
    ledger.assert_all_freed_once();
    assert_shrinks_to_no_slab(&cache);
    assert_no_reports(&log);
}
