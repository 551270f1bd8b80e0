//! Slab sheaves: the barn between two threads, shrink taking back every
//! sheaf (idle and exited threads' included), a ledger of frees, no object
//! handed out twice, fault injection on the refill path, the cache dropped
//! before a thread that used it exits, and `kfree_rcu` into sheaves with
//! readers checking a poison word.

mod common;

use common::pages::{allocator_on_cpus, assert_all_pages_back};
use common::slabs::{assert_shrinks_to_no_slab, sheaf_cache};
use krcu::page::{AllocError, FaultSites, Gfp};
use krcu::slab::SlabCache;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

/// An object that fills its whole self with a pattern of its id, checks
/// the whole pattern before it is freed, and counts its drop in a ledger.
struct Stamped {
    words: [u64; 6],
    ledger: Option<Arc<Ledger>>,
}

const POISON: u64 = 0xdead_dead_dead_dead;

impl Stamped {
    fn new(id: u64, ledger: &Arc<Ledger>) -> Stamped {
        ledger.made.fetch_add(1, Relaxed);
        Stamped {
            words: core::array::from_fn(|i| id.rotate_left(i as u32 * 7) ^ i as u64),
            ledger: Some(Arc::clone(ledger)),
        }
    }

    fn id(&self) -> u64 {
        self.words[0]
    }

    /// The whole object still holds the pattern of its id.
    fn check(&self) {
        let id = self.id();
        for (i, w) in self.words.iter().enumerate() {
            assert_eq!(
                *w,
                id.rotate_left(i as u32 * 7) ^ i as u64,
                "object {id:#x}: word {i} overwritten"
            );
        }
    }
}

impl Drop for Stamped {
    fn drop(&mut self) {
        self.check();
        self.words = [POISON; 6];
        if let Some(l) = self.ledger.take() {
            l.dropped.fetch_add(1, Relaxed);
        }
    }
}

#[derive(Default)]
struct Ledger {
    made: AtomicUsize,
    dropped: AtomicUsize,
}

#[test]
fn the_barn_moves_whole_sheaves_between_two_threads() {
    // A producer allocates, a consumer frees: the producer's sheaves run
    // empty and the consumer's fill, so whole sheaves travel through the
    // barn (full ones to the producer, empty ones back).
    let pa = allocator_on_cpus(2, 32 << 20);
    let cache = Arc::new(sheaf_cache::<Stamped>(&pa, "barn", 8));
    let ledger = Arc::new(Ledger::default());
    let (tx, rx) = mpsc::sync_channel::<usize>(64);
    const N: u64 = 20_000;
    std::thread::scope(|s| {
        let (c, l) = (&cache, &ledger);
        s.spawn(move || {
            for i in 0..N {
                let p = c.alloc(Gfp::KERNEL, Stamped::new(i, l)).ok().unwrap();
                tx.send(p.as_ptr() as usize).unwrap();
            }
        });
        s.spawn(move || {
            let mut seen = 0;
            for addr in rx {
                let p = NonNull::new(addr as *mut Stamped).unwrap();
                // SAFETY: handed over by the producer, live, ours now.
                let id = unsafe { p.as_ref() }.id();
                assert_eq!(id, seen, "objects arrive in order, each once");
                seen += 1;
                // SAFETY: as above; freed once.
                unsafe { c.free(p) };
            }
            assert_eq!(seen, N);
        });
    });
    let st = cache.stats();
    assert_eq!(ledger.dropped.load(Relaxed), N as usize);
    assert!(st.barn_gets > 0 && st.barn_puts > 0, "{st:#?}");
    assert!(st.sheaf_alloc_hits + st.sheaf_free_hits > N, "{st:#?}");
    assert_shrinks_to_no_slab(&cache);
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn shrink_takes_back_idle_and_exited_threads_sheaves() {
    let pa = allocator_on_cpus(2, 16 << 20);
    let cache = Arc::new(SlabCache::<[u64; 4]>::new(&pa, "idle").unwrap());
    let ready = Arc::new(Barrier::new(2));
    let go_on = Arc::new(Barrier::new(2));
    let worker = |exit_early: bool| {
        let (cache, ready, go_on) = (cache.clone(), ready.clone(), go_on.clone());
        std::thread::spawn(move || {
            // Leaves objects in this thread's own sheaf.
            let v: Vec<_> = (0..10u64)
                .map(|i| cache.alloc(Gfp::KERNEL, [i; 4]).unwrap())
                .collect();
            for p in v {
                // SAFETY: allocated above, freed once.
                unsafe { cache.free(p) };
            }
            if !exit_early {
                ready.wait();
                // Idle here while the main thread shrinks.
                go_on.wait();
            }
        })
    };
    // An exited thread's sheaf.
    worker(true).join().unwrap();
    // An idle (living) thread's sheaf.
    let idle = worker(false);
    ready.wait();
    assert!(cache.stats().slabs > 0);
    let moved = cache.shrink();
    let st = cache.stats();
    assert_eq!(st.slabs, 0, "every sheaf came back: {st:#?}");
    assert!(moved >= 10, "moved {moved}");
    go_on.wait();
    idle.join().unwrap();
    // The idle thread's next use finds its slot empty and goes on.
    let p = cache.alloc(Gfp::KERNEL, [1; 4]).unwrap();
    // SAFETY: allocated above, freed once.
    unsafe { cache.free(p) };
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn shrink_gives_the_pages_of_sheaves_back() {
    // With sheaves holding every object of its slabs, shrink gives the
    // pages back (the page allocator's per-CPU lists drained too).
    let pa = allocator_on_cpus(1, 8 << 20);
    let cache = sheaf_cache::<[u8; 200]>(&pa, "pages", 128);
    let v: Vec<_> = (0..2000)
        .map(|_| cache.alloc(Gfp::KERNEL, [5; 200]).unwrap())
        .collect();
    for p in v {
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(p) };
    }
    let before = pa.stats().free_pages;
    cache.shrink();
    pa.drain_all();
    assert!(pa.stats().free_pages > before, "pages came back");
    assert_eq!(cache.stats().slabs, 0);
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn the_page_allocators_shrinker_empties_sheaves_under_memory_pressure() {
    use krcu::page::{PageAllocator, PageConfig};
    // With kswapd, which runs the shrinkers below the low watermark.
    let pa = PageAllocator::new(
        &krcu::Domain::builder().cpus(1).build(),
        PageConfig::default()
            .arena_size(8 << 20)
            .watermarks(common::pages::SHRINK_8MIB),
    )
    .unwrap();
    let cache = sheaf_cache::<[u8; 200]>(&pa, "shrinker", 8);
    let v: Vec<_> = (0..3000)
        .map(|_| cache.alloc(Gfp::KERNEL, [1; 200]).unwrap())
        .collect();
    for p in v {
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(p) };
    }
    let st = cache.stats();
    assert!(
        st.slabs > 0 && st.barn_full > 0,
        "sheaves hold objects: {st:#?}"
    );
    // Take pages until the allocator falls below its low watermark.
    let mut held = Vec::new();
    while pa.stats().free_pages >= 256 {
        match pa.alloc_pages(Gfp::NOWAIT | Gfp::NOWARN, 0) {
            Ok(p) => held.push(p),
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while cache.stats().slabs > 0 {
        assert!(
            Instant::now() < deadline,
            "the shrinker never emptied the sheaves: {:#?}",
            cache.stats()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let st = cache.stats();
    assert_eq!((st.barn_full, st.barn_empty), (0, 0), "{st:#?}");
    for p in held {
        pa.free(p);
    }
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn every_object_is_freed_once_and_none_handed_out_twice() {
    let pa = allocator_on_cpus(2, 32 << 20);
    let cache = Arc::new(sheaf_cache::<Stamped>(&pa, "ledger", 16));
    let ledger = Arc::new(Ledger::default());
    let live = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let (cache, ledger, live) = (cache.clone(), ledger.clone(), live.clone());
            std::thread::spawn(move || {
                let mut held: Vec<NonNull<Stamped>> = Vec::new();
                for i in 0..6000u64 {
                    if i % 5 < 3 {
                        let p = cache
                            .alloc(Gfp::KERNEL, Stamped::new(t << 32 | i, &ledger))
                            .ok()
                            .unwrap();
                        assert!(live.lock().unwrap().insert(p.as_ptr() as usize));
                        held.push(p);
                    } else if let Some(p) = held.pop() {
                        assert!(live.lock().unwrap().remove(&(p.as_ptr() as usize)));
                        // SAFETY: ours, freed once (Drop checks the whole
                        // object).
                        unsafe { cache.free(p) };
                    }
                    if held.len() > 300 {
                        let mut batch = std::mem::take(&mut held);
                        for p in &batch {
                            assert!(live.lock().unwrap().remove(&(p.as_ptr() as usize)));
                        }
                        // SAFETY: ours, each freed once.
                        unsafe { cache.free_bulk(&mut batch) };
                    }
                }
                for p in held {
                    assert!(live.lock().unwrap().remove(&(p.as_ptr() as usize)));
                    // SAFETY: ours, freed once.
                    unsafe { cache.free(p) };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        ledger.made.load(Relaxed),
        ledger.dropped.load(Relaxed),
        "every object dropped exactly once"
    );
    assert_shrinks_to_no_slab(&cache);
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn free_bulk_of_objects_from_many_slabs_in_any_order_gives_every_slab_back() {
    // More slabs than the detached free lists gathered at once (16), the
    // objects interleaved so that consecutive ones come from different
    // slabs: every group is applied, every slab emptied.
    let pa = allocator_on_cpus(1, 16 << 20);
    let cache = SlabCache::<[u8; 500]>::new(&pa, "bulk-many").unwrap();
    let mut objs: Vec<_> = (0..2000u32)
        .map(|i| cache.alloc(Gfp::KERNEL, [i as u8; 500]).unwrap())
        .collect();
    assert!(cache.stats().slabs > 100, "{:#?}", cache.stats());
    // A fixed stride permutation (coprime with the length) scatters them.
    let n = objs.len();
    let mut scattered: Vec<_> = (0..n).map(|i| objs[i * 757 % n]).collect();
    objs.clear();
    // SAFETY: all allocated above, each freed once.
    unsafe { cache.free_bulk(&mut scattered) };
    cache.shrink();
    let st = cache.stats();
    assert_eq!(st.slabs, 0, "{st:#?}");
    assert_eq!(st.slabs_freed, st.slabs_allocated);
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn a_failed_refill_reports_its_error_and_leaks_nothing() {
    let pa = allocator_on_cpus(1, 8 << 20);
    let cache = sheaf_cache::<[u64; 2]>(&pa, "faults", 4);
    // The first refill needs a slab: fail every page allocation.
    pa.faults().fail_next(1000, FaultSites::ALL);
    let r = cache.alloc_uninit(Gfp::KERNEL | Gfp::NOWARN);
    assert!(
        matches!(r, Err(AllocError::Injected | AllocError::NoMemory)),
        "{r:?}"
    );
    assert_eq!(cache.alloc(Gfp::KERNEL | Gfp::NOWARN, [1, 2]), Err([1, 2]));
    pa.faults().clear();
    // It works again, and everything goes back.
    let v: Vec<_> = (0..50u64)
        .map(|i| cache.alloc(Gfp::KERNEL, [i, i]).unwrap())
        .collect();
    for p in v {
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(p) };
    }
    cache.shrink();
    let st = cache.stats();
    assert_eq!(st.slabs, 0, "{st:#?}");
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn a_thread_may_outlive_the_cache_it_used() {
    let pa = allocator_on_cpus(1, 8 << 20);
    let cache = Box::new(SlabCache::<u64>::new(&pa, "outlived").unwrap());
    let (to_thread, from_main) = mpsc::channel::<()>();
    let (to_main, from_thread) = mpsc::channel::<()>();
    /// The cache's address, used by the thread only before it signals.
    struct CacheRef(*const SlabCache<u64>);
    // SAFETY: the cache is Sync; the thread uses the reference only while
    // the main thread keeps the cache alive (until `to_main` is sent).
    unsafe impl Send for CacheRef {}
    let r = CacheRef(&*cache);
    let t = std::thread::spawn(move || {
        let r = r;
        // SAFETY: alive until we signal (see CacheRef).
        let c = unsafe { &*r.0 };
        let p = c.alloc(Gfp::KERNEL, 1).unwrap();
        // SAFETY: allocated above, freed once.
        unsafe { c.free(p) };
        to_main.send(()).unwrap();
        // Holds its (emptied) slot until after the cache is gone.
        from_main.recv().unwrap();
    });
    from_thread.recv().unwrap();
    // The thread holds a sheaf of the cache and is still alive.
    drop(cache);
    to_thread.send(()).unwrap();
    t.join().unwrap();
    // A new cache (its slots are new) on this thread and another works.
    let again = SlabCache::<u64>::new(&pa, "again").unwrap();
    let p = again.alloc(Gfp::KERNEL, 2).unwrap();
    // SAFETY: allocated above, freed once.
    unsafe { again.free(p) };
    drop(again);
    assert_all_pages_back(&pa);
}

#[test]
fn frees_from_thread_local_destructors_after_the_slots_are_gone() {
    // A value in a thread-local whose Drop frees into the cache may run
    // after the thread's sheaf slots are gone: it takes the CPU path.
    struct FreeOnDrop(Arc<SlabCache<u64>>, Option<NonNull<u64>>);
    impl Drop for FreeOnDrop {
        fn drop(&mut self) {
            if let Some(p) = self.1.take() {
                // SAFETY: allocated for this value, freed once.
                unsafe { self.0.free(p) };
            }
        }
    }
    thread_local! {
        static HELD: std::cell::RefCell<Option<FreeOnDrop>> = const { std::cell::RefCell::new(None) };
    }
    let pa = allocator_on_cpus(1, 8 << 20);
    let cache = Arc::new(SlabCache::<u64>::new(&pa, "tls").unwrap());
    let c = cache.clone();
    std::thread::spawn(move || {
        let p = c.alloc(Gfp::KERNEL, 9).unwrap();
        HELD.with(|h| *h.borrow_mut() = Some(FreeOnDrop(c.clone(), Some(p))));
    })
    .join()
    .unwrap();
    assert_shrinks_to_no_slab(&cache);
    drop(cache);
    assert_all_pages_back(&pa);
}

mod rcu_free {
    use super::*;
    use common::slabs::{rcu_instance, rcu_sheaf_cache};
    use krcu::slab::DEFAULT_SHEAF_CAPACITY;

    /// Readers under the cache's RCU read lock traverse published objects
    /// and check their poison word while writers replace and retire them
    /// with `kfree_rcu_sheaf`: no reader sees a dropped object, every
    /// object is dropped once, and the pages come back.
    #[test]
    fn readers_never_see_an_object_retired_into_a_sheaf_dropped() {
        let pa = allocator_on_cpus(2, 32 << 20);
        let rcu = rcu_instance();
        let cache = Arc::new(rcu_sheaf_cache::<Stamped>(&pa, "rcu-free", 16, rcu.clone()));
        let ledger = Arc::new(Ledger::default());
        const SLOTS: usize = 32;
        let slots: Arc<Vec<AtomicPtr<Stamped>>> = Arc::new(
            (0..SLOTS)
                .map(|i| {
                    let p = cache
                        .alloc(Gfp::KERNEL, Stamped::new(i as u64, &ledger))
                        .ok()
                        .unwrap();
                    AtomicPtr::new(p.as_ptr())
                })
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (rcu, slots, stop, reads) =
                    (rcu.clone(), slots.clone(), stop.clone(), reads.clone());
                std::thread::spawn(move || {
                    while !stop.load(Acquire) {
                        let _g = rcu.read_lock();
                        for s in slots.iter() {
                            let p = s.load(Acquire);
                            // SAFETY: published and not yet past a grace
                            // period since its retirement: alive.
                            let o = unsafe { &*p };
                            assert_ne!(o.words[0], POISON, "read an object after its drop");
                            o.check();
                        }
                        reads.fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (cache, slots, ledger, rcu) =
                    (cache.clone(), slots.clone(), ledger.clone(), rcu.clone());
                std::thread::spawn(move || {
                    let mut fallbacks = 0;
                    for i in 0..4000u64 {
                        let id = (w + 1) << 40 | i;
                        let p = cache
                            .alloc(Gfp::KERNEL, Stamped::new(id, &ledger))
                            .ok()
                            .unwrap();
                        let old =
                            slots[(i as usize * 7 + w as usize) % SLOTS].swap(p.as_ptr(), AcqRel);
                        let old = NonNull::new(old).unwrap();
                        // SAFETY: unpublished above, retired once.
                        if let Err(old) = unsafe { cache.testing_kfree_rcu_sheaf(old) } {
                            fallbacks += 1;
                            // The caller's fallback: a grace period, then
                            // a plain free.
                            rcu.synchronize();
                            // SAFETY: unpublished a grace period ago.
                            unsafe { cache.free(old) };
                        }
                    }
                    fallbacks
                })
            })
            .collect();
        let fallbacks: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
        // Readers keep going until they did real work.
        let t = Instant::now();
        while reads.load(Relaxed) < 100 && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Release);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(fallbacks, 0, "sheaves could always be had here");
        let submitted = cache.testing_submit_rcu_sheaves();
        cache.testing_rcu_sheaf_barrier();
        let st = cache.stats();
        assert!(
            st.rcu_sheaves > 0 && st.rcu_sheaves == st.rcu_sheaves_done,
            "{st:#?}"
        );
        assert!(submitted <= st.rcu_sheaves as usize);
        // The retired objects were dropped, each once; the published ones
        // are still alive.
        assert_eq!(
            ledger.dropped.load(Relaxed) + SLOTS,
            ledger.made.load(Relaxed),
            "{st:#?}"
        );
        for s in slots.iter() {
            // SAFETY: the published objects, freed once at the end.
            unsafe { cache.free(NonNull::new(s.load(Acquire)).unwrap()) };
        }
        assert_eq!(ledger.dropped.load(Relaxed), ledger.made.load(Relaxed));
        assert_shrinks_to_no_slab(&cache);
        drop(cache);
        assert_all_pages_back(&pa);
    }

    /// Sheaves back from RCU are allocated from: the barn hands them out,
    /// no new slab is needed.
    #[test]
    fn sheaves_back_from_rcu_are_allocated_from() {
        let pa = allocator_on_cpus(1, 8 << 20);
        let rcu = rcu_instance();
        let cache = rcu_sheaf_cache::<u64>(&pa, "recycle", 8, rcu);
        let v: Vec<_> = (0..64u64)
            .map(|i| cache.alloc(Gfp::KERNEL, i).unwrap())
            .collect();
        for p in v {
            // SAFETY: allocated above, retired once.
            unsafe { cache.testing_kfree_rcu_sheaf(p) }.unwrap();
        }
        cache.testing_submit_rcu_sheaves();
        cache.testing_rcu_sheaf_barrier();
        let st = cache.stats();
        assert!(st.barn_full > 0, "{st:#?}");
        let slabs = st.slabs_allocated;
        let v: Vec<_> = (0..64u64)
            .map(|i| cache.alloc(Gfp::KERNEL, i).unwrap())
            .collect();
        assert_eq!(cache.stats().slabs_allocated, slabs, "no new slab");
        for p in v {
            // SAFETY: allocated above, freed once.
            unsafe { cache.free(p) };
        }
        assert_shrinks_to_no_slab(&cache);
        drop(cache);
        assert_all_pages_back(&pa);
    }

    /// A destructor that panics in a sheaf's callback (or, where this
    /// thread recycled the sheaf after its grace period, in the recycle)
    /// loses none of the other objects: all dropped, all slots back.
    #[test]
    fn a_panicking_destructor_loses_no_object_of_its_sheaf() {
        struct MaybePanics(bool, Arc<AtomicUsize>);
        impl Drop for MaybePanics {
            fn drop(&mut self) {
                self.1.fetch_add(1, Relaxed);
                if self.0 {
                    panic!("destructor panics (on purpose)");
                }
            }
        }
        let pa = allocator_on_cpus(1, 8 << 20);
        let rcu = rcu_instance();
        let cache = rcu_sheaf_cache::<MaybePanics>(&pa, "panics", 16, rcu.clone());
        let drops = Arc::new(AtomicUsize::new(0));
        for i in 0..100 {
            let p = cache
                .alloc(Gfp::KERNEL, MaybePanics(i % 10 == 3, drops.clone()))
                .ok()
                .unwrap();
            // SAFETY: allocated above, retired once.
            assert!(unsafe { cache.testing_kfree_rcu_sheaf(p) }.is_ok());
        }
        cache.testing_submit_rcu_sheaves();
        cache.testing_rcu_sheaf_barrier();
        assert_eq!(drops.load(Relaxed), 100, "every object dropped");
        // Resumed to the RCU worker (which counts it) from a callback,
        // counted by the cache from a recycle: which one ran depends on
        // when grace periods ended (under valgrind, between fills).
        let caught = rcu.stats().callback_panics + cache.stats().destructor_panics;
        assert!(caught > 0, "the panics were caught and counted");
        assert_shrinks_to_no_slab(&cache);
        drop(cache);
        assert_all_pages_back(&pa);
    }

    /// NMI context is refused; a signal handler uses its CPU's sheaf
    /// under trylocks and is refused when the CPU's lock is taken.
    #[test]
    fn nmi_is_refused_and_a_handler_only_trylocks() {
        use krcu::context;
        let pa = allocator_on_cpus(1, 8 << 20);
        let cache = rcu_sheaf_cache::<u64>(&pa, "contexts", DEFAULT_SHEAF_CAPACITY, rcu_instance());
        // Prime the barn with an empty sheaf for the handler (it allocates
        // none itself).
        let p = cache.alloc(Gfp::KERNEL, 0).unwrap();
        // SAFETY: allocated above, retired once.
        unsafe { cache.testing_kfree_rcu_sheaf(p) }.unwrap();
        cache.testing_submit_rcu_sheaves();
        cache.testing_rcu_sheaf_barrier();
        cache.shrink(); // the barn's sheaves flushed and freed
        let a = cache.alloc(Gfp::KERNEL, 1).unwrap();
        {
            let _nmi = context::enter_nmi();
            // SAFETY: allocated above; handed back on Err.
            let r = unsafe { cache.testing_kfree_rcu_sheaf(a) };
            assert_eq!(r, Err(a));
        }
        {
            let _irq = context::enter_hardirq();
            // No empty sheaf in the barn, and a handler allocates none.
            // SAFETY: as above.
            let r = unsafe { cache.testing_kfree_rcu_sheaf(a) };
            assert_eq!(r, Err(a));
        }
        assert_eq!(cache.stats().rcu_fallbacks, 2);
        // SAFETY: handed back, ours; freed once.
        unsafe { cache.free(a) };
        cache.shrink();
        drop(cache);
        assert_all_pages_back(&pa);
    }
}

mod nolock {
    use super::*;
    use krcu::context::{self, PreemptModel};
    use krcu::slab::NolockError;

    /// In a signal handler whose node trylock always fails, `free_nolock`
    /// never fails and never waits: the objects it cannot place are
    /// deferred, and task context gives them back.
    #[test]
    fn free_nolock_defers_what_it_cannot_place() {
        let pa = allocator_on_cpus(1, 8 << 20);
        let cache = sheaf_cache::<u64>(&pa, "nolock", 2);
        let objs: Vec<_> = (0..50u64)
            .map(|i| cache.alloc(Gfp::KERNEL, i).unwrap())
            .collect();
        pa.faults().fail_every(1, FaultSites::SLAB_NODE_TRYLOCK);
        {
            let _irq = context::enter_hardirq();
            for &p in &objs {
                // SAFETY: allocated above, freed once.
                unsafe { cache.free_nolock(p) };
            }
        }
        pa.faults().clear();
        let st = cache.stats();
        assert!(st.deferred_frees > 0, "{st:#?}");
        assert_shrinks_to_no_slab(&cache);
        drop(cache);
        assert_all_pages_back(&pa);
    }

    #[test]
    fn alloc_nolock_works_in_a_handler_and_reports_typed_errors() {
        let pa = allocator_on_cpus(1, 8 << 20);
        let cache = SlabCache::<u64>::new(&pa, "nolock-alloc").unwrap();
        // No page to be had: a typed error, the value back.
        pa.faults().fail_next(1000, FaultSites::ALL);
        assert_eq!(cache.alloc_nolock(7), Err((7, NolockError::NoMemory)));
        pa.faults().clear();
        // Objects in the slabs (one allocated and kept, the rest of the
        // refill back in the slabs after a shrink).
        let keep = cache.alloc(Gfp::KERNEL, 1).unwrap();
        cache.shrink();
        let got = {
            let _irq = context::enter_hardirq();
            let p = cache.alloc_nolock(9).unwrap();
            // SAFETY: allocated above.
            assert_eq!(unsafe { p.as_ptr().read() }, 9);
            // SAFETY: freed once.
            unsafe { cache.free_nolock(p) };
            p
        };
        assert_ne!(got, keep);
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(keep) };
        assert_shrinks_to_no_slab(&cache);
        drop(cache);
        assert_all_pages_back(&pa);
    }

    #[test]
    fn alloc_nolock_in_a_handler_under_rt_is_refused() {
        let d = krcu::Domain::builder()
            .cpus(1)
            .preempt_model(PreemptModel::Rt)
            .build();
        let pa = common::pages::quiet_allocator(&d, 4 << 20, krcu::page::Watermarks::NONE);
        let cache = SlabCache::<u64>::new(&pa, "nolock-rt").unwrap();
        let _irq = context::enter_hardirq();
        assert_eq!(cache.alloc_nolock(3), Err((3, NolockError::Context)));
    }
}

mod prefill {
    use super::*;
    use krcu::lock::thread_counters;

    #[test]
    fn a_prefilled_sheaf_cannot_fail_until_empty_and_takes_no_lock() {
        let pa = allocator_on_cpus(1, 8 << 20);
        let cache = sheaf_cache::<[u64; 2]>(&pa, "prefill", 16);
        for n in [5, 16, 40] {
            let mut sheaf = cache.prefill_sheaf(Gfp::KERNEL, n).unwrap();
            assert!(sheaf.len() >= n, "{n}: {sheaf:?}");
            let have = sheaf.len();
            let c0 = thread_counters();
            let got: Vec<_> = (0..have as u64)
                .map(|i| sheaf.alloc([i, !i]).unwrap())
                .collect();
            let c = thread_counters() - c0;
            assert_eq!(c.blocking + c.try_ok + c.try_failed, 0, "no lock taken");
            assert_eq!(sheaf.alloc([0, 0]), Err([0, 0]), "empty now");
            sheaf.return_sheaf();
            let mut addrs: Vec<usize> = got.iter().map(|p| p.as_ptr() as usize).collect();
            addrs.sort_unstable();
            addrs.dedup();
            assert_eq!(addrs.len(), have, "no object handed out twice");
            for (i, p) in got.into_iter().enumerate() {
                // SAFETY: allocated above, freed once.
                assert_eq!(unsafe { p.as_ptr().read() }, [i as u64, !(i as u64)]);
                // SAFETY: as above.
                unsafe { cache.free(p) };
            }
        }
        // A sheaf dropped with objects in it gives them back.
        let sheaf = cache.prefill_sheaf(Gfp::KERNEL, 8).unwrap();
        drop(sheaf);
        assert_shrinks_to_no_slab(&cache);
        drop(cache);
        assert_all_pages_back(&pa);
    }
}
