//! Slab caches: allocation, free, bulk free without touching the objects,
//! empty slabs back to the page allocator, bad frees, threads.

mod common;

use common::pages::{allocator_on_cpus, assert_all_pages_back};
use common::slabs::assert_shrinks_to_no_slab;
use krcu::Domain;
use krcu::page::{Gfp, PAGE_SIZE, PageAllocator, Watermarks};
use krcu::slab::{SlabCache, SlabError};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[test]
fn alloc_free_and_empty_slabs_go_back() {
    let pa = allocator_on_cpus(1, 16 << 20);
    let cache = SlabCache::<[u64; 3]>::new(&pa, "triples").unwrap();
    assert_eq!(cache.slab_order(), 0);
    // 24 bytes and the slot's hidden 16-byte RcuHead (for a retired
    // SlabBox's last-resort list): 40-byte slots, 98 in a page.
    assert!(cache.objects_per_slab() >= 90);
    let mut objs = Vec::new();
    for i in 0..1000u64 {
        let p = cache.alloc(Gfp::KERNEL, [i, i + 1, i + 2]).unwrap();
        assert_eq!(p.as_ptr() as usize % align_of::<[u64; 3]>(), 0);
        objs.push(p);
    }
    for (i, p) in objs.iter().enumerate() {
        // SAFETY: live objects of the cache.
        assert_eq!(unsafe { p.as_ptr().read() }[0], i as u64);
    }
    let mut sorted: Vec<usize> = objs.iter().map(|p| p.as_ptr() as usize).collect();
    sorted.sort_unstable();
    assert!(sorted.windows(2).all(|w| w[1] - w[0] >= 24), "no overlap");
    let s = cache.stats();
    assert!(s.slabs >= 1000 / cache.objects_per_slab());
    for p in objs {
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(p) };
    }
    cache.shrink();
    let s = cache.stats();
    assert_eq!(s.slabs, 0, "{s:#?}");
    assert_eq!(s.slabs_freed, s.slabs_allocated);
    assert_all_pages_back(&pa);
}

#[test]
fn drops_run_on_free_and_free_bulk() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    #[derive(Debug)]
    struct Counted(#[allow(dead_code)] u32);
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::Relaxed);
        }
    }
    let pa = allocator_on_cpus(1, 16 << 20);
    let cache = SlabCache::<Counted>::new(&pa, "counted").unwrap();
    let a = cache.alloc(Gfp::KERNEL, Counted(1)).unwrap();
    // SAFETY: live, freed once.
    unsafe { cache.free(a) };
    assert_eq!(DROPS.load(Ordering::Relaxed), 1);
    let mut many: Vec<_> = (0..500)
        .map(|i| cache.alloc(Gfp::NOWAIT, Counted(i)).unwrap())
        .collect();
    // SAFETY: live, freed once.
    unsafe { cache.free_bulk(&mut many) };
    assert_eq!(DROPS.load(Ordering::Relaxed), 501);
    drop(cache);
    assert_all_pages_back(&pa);
}

/// `free_bulk` of a type without drop glue touches only slab headers: the
/// objects' pages are made inaccessible first, and any read or write of
/// them would fault.
#[test]
fn free_bulk_never_touches_objects_without_drop_glue() {
    type Obj = [u8; 1024];
    let pa = allocator_on_cpus(1, 16 << 20);
    let cache = SlabCache::<Obj>::new(&pa, "kib").unwrap();
    let order = cache.slab_order();
    assert!(order >= 1, "objects beyond the header's page");
    let objs: Vec<NonNull<Obj>> = (0..cache.objects_per_slab())
        .map(|_| cache.alloc(Gfp::KERNEL, [7; 1024]).unwrap())
        .collect();
    // All from one fresh slab: its first page holds the header.
    let slab = objs[0].as_ptr() as usize & !((PAGE_SIZE << order) - 1);
    let base = objs.iter().map(|p| p.as_ptr() as usize).min().unwrap() & !(PAGE_SIZE - 1);
    let header_page = base.min(slab);
    let (lo, hi) = (header_page + PAGE_SIZE, header_page + (PAGE_SIZE << order));
    let mut beyond: Vec<NonNull<Obj>> = objs
        .iter()
        .copied()
        .filter(|p| (p.as_ptr() as usize) >= lo && (p.as_ptr() as usize) + 1024 <= hi)
        .collect();
    assert!(beyond.len() >= 4, "{} objects beyond page 0", beyond.len());
    // SAFETY: [lo, hi) lies inside the slab's block in the arena mapping;
    // protection is restored below before anything else touches it.
    unsafe {
        assert_eq!(libc::mprotect(lo as *mut _, hi - lo, libc::PROT_NONE), 0);
        cache.free_bulk(&mut beyond);
        assert_eq!(
            libc::mprotect(lo as *mut _, hi - lo, libc::PROT_READ | libc::PROT_WRITE),
            0
        );
    }
    let rest: Vec<_> = objs
        .iter()
        .copied()
        .filter(|p| !((p.as_ptr() as usize) >= lo && (p.as_ptr() as usize) + 1024 <= hi))
        .collect();
    for p in rest {
        // SAFETY: live, freed once.
        unsafe { cache.free(p) };
    }
    assert_shrinks_to_no_slab(&cache);
    assert_all_pages_back(&pa);
}

#[test]
fn bad_frees_are_refused_with_the_address() {
    let pa = allocator_on_cpus(1, 16 << 20);
    let a = SlabCache::<u64>::with_checks(&pa, "a", true).unwrap();
    let b = SlabCache::<u64>::with_checks(&pa, "b", false).unwrap();
    let p = a.alloc(Gfp::KERNEL, 5).unwrap();
    let addr = p.as_ptr() as usize;
    // SAFETY: the pointers are into the arena or a live heap box; the
    // cache checks them before dropping or freeing anything.
    unsafe {
        assert_eq!(b.try_free(p), Err(SlabError::NotFromCache { addr }));
        let inside = NonNull::new((addr + 1) as *mut u64).unwrap();
        assert_eq!(
            a.try_free(inside),
            Err(SlabError::NotAnObject { addr: addr + 1 })
        );
        assert_eq!(a.try_free(p), Ok(()));
        let e = a.try_free(p).unwrap_err();
        assert_eq!(e, SlabError::DoubleFree { addr });
        assert!(e.to_string().contains(&format!("{addr:#x}")));
        let heap = Box::into_raw(Box::new(1u64));
        assert_eq!(
            a.try_free(NonNull::new(heap).unwrap()),
            Err(SlabError::NotFromCache {
                addr: heap as usize
            })
        );
        drop(Box::from_raw(heap));
    }
    assert!(matches!(
        SlabCache::<[u8; 64 << 10]>::new(&pa, "huge"),
        Err(krcu::BuildError::SlabTooLarge { .. })
    ));
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "double free")]
fn slab_double_free_panics_in_debug_builds() {
    let pa = allocator_on_cpus(1, 16 << 20);
    let a = SlabCache::<u64>::new(&pa, "a").unwrap();
    let p = a.alloc(Gfp::KERNEL, 5).unwrap();
    // SAFETY: the second free is the bad input under test; it is refused
    // before anything is dropped.
    unsafe {
        a.free(p);
        a.free(p);
    }
}

/// Which objects are live: one bit per 8 bytes of the arena, set while an
/// object starting there is handed out. A slot handed out twice, to one
/// thread or two, finds its bit already set.
struct LiveObjects {
    pa: Arc<PageAllocator>,
    bits: Vec<AtomicU64>,
}

impl LiveObjects {
    const GRAIN: usize = 8;

    fn new(pa: &Arc<PageAllocator>) -> LiveObjects {
        let grains = pa.total_pages() * PAGE_SIZE / Self::GRAIN;
        LiveObjects {
            pa: Arc::clone(pa),
            bits: (0..grains.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn bit_of(&self, p: *const u8) -> (usize, u64) {
        let pfn = self.pa.pfn_of(p).expect("an object outside the arena");
        let grain = (pfn * PAGE_SIZE + p as usize % PAGE_SIZE) / Self::GRAIN;
        (grain / 64, 1 << (grain % 64))
    }

    /// `p` was just handed out: no live object may start there.
    fn claim(&self, p: *const u8) {
        let (word, bit) = self.bit_of(p);
        let prev = self.bits[word].fetch_or(bit, Ordering::AcqRel);
        assert_eq!(prev & bit, 0, "{p:p} handed out while still live");
    }

    /// `p` is about to be freed: it was live.
    fn release(&self, p: *const u8) {
        let (word, bit) = self.bit_of(p);
        let prev = self.bits[word].fetch_and(!bit, Ordering::AcqRel);
        assert_ne!(prev & bit, 0, "{p:p} freed but not live");
    }
}

#[test]
fn threads_share_a_cache() {
    // Every object holds (id, !id), with the id unique per thread and
    // object; the owner checks it before every free, and the live set
    // checks no address is handed out twice while live.
    let pa = allocator_on_cpus(2, 16 << 20);
    let cache = Arc::new(SlabCache::<(u64, u64)>::new(&pa, "pairs").unwrap());
    let live = Arc::new(LiveObjects::new(&pa));
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let (cache, live) = (Arc::clone(&cache), Arc::clone(&live));
            std::thread::spawn(move || {
                let intact = |&(p, id): &(NonNull<(u64, u64)>, u64)| {
                    // SAFETY: a live object of this thread's.
                    let v = unsafe { p.as_ptr().read() };
                    assert_eq!(v, (id, !id), "object {id:#x} overwritten");
                    live.release(p.as_ptr().cast());
                    p
                };
                let mut held: Vec<(NonNull<(u64, u64)>, u64)> = Vec::new();
                for i in 0..20_000u64 {
                    if i % 3 != 2 {
                        let id = t << 32 | i;
                        let p = cache.alloc(Gfp::NOWAIT, (id, !id)).unwrap();
                        live.claim(p.as_ptr().cast());
                        held.push((p, id));
                    } else if let Some(obj) = held.pop() {
                        let p = intact(&obj);
                        // SAFETY: ours, checked, freed once.
                        unsafe { cache.free(p) };
                    }
                    if held.len() >= 256 {
                        let mut batch: Vec<_> = held.iter().map(intact).collect();
                        // SAFETY: ours, checked, freed once.
                        unsafe { cache.free_bulk(&mut batch) };
                        held.clear();
                    }
                }
                let mut batch: Vec<_> = held.iter().map(intact).collect();
                // SAFETY: ours, checked, freed once.
                unsafe { cache.free_bulk(&mut batch) };
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_shrinks_to_no_slab(&cache);
    drop(cache);
    drop(live);
    assert_all_pages_back(&pa);
}

struct MaybePanics(bool, Arc<AtomicUsize>);

impl Drop for MaybePanics {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::Relaxed);
        if self.0 {
            panic!("destructor panics (on purpose)");
        }
    }
}

#[test]
fn free_bulk_with_panicking_destructors_frees_every_object() {
    let pa = allocator_on_cpus(1, 16 << 20);
    let cache = SlabCache::<MaybePanics>::new(&pa, "maybe-panics").unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let mut objs: Vec<NonNull<MaybePanics>> = (0..300)
        .map(|i| {
            let v = MaybePanics(i % 100 == 7, Arc::clone(&drops));
            cache.alloc(Gfp::KERNEL, v).ok().unwrap()
        })
        .collect();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: all allocated above, each freed once, not used after.
        unsafe { cache.free_bulk(&mut objs) }
    }));
    assert!(r.is_err(), "the first destructor panic is resumed");
    assert_eq!(drops.load(Ordering::Relaxed), 300, "every object dropped");
    cache.shrink();
    let s = cache.stats();
    assert_eq!(s.slabs, 0, "every slot went back: {s:#?}");
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn no_locks_refill_that_loses_the_node_trylock_returns_its_new_slab() {
    use krcu::page::{AllocError, FaultSites};
    let pa = allocator_on_cpus(1, 16 << 20);
    let cache = SlabCache::<u64>::new(&pa, "nolock-leak").unwrap();
    // Stock this CPU's page lists: a NO_LOCKS slab comes from them only.
    let p = pa.alloc_page(Gfp::KERNEL).unwrap();
    pa.free(p);
    // The refill's first trylock (to look at the partial slabs) succeeds,
    // the second (to file the new slab) fails.
    pa.faults().fail_every(2, FaultSites::SLAB_NODE_TRYLOCK);
    let r = cache.alloc(Gfp::NO_LOCKS | Gfp::NOWARN, 1);
    pa.faults().clear();
    assert!(matches!(r, Err(1)), "refused: the node lock was contended");
    let s = cache.stats();
    assert_eq!(s.slabs_allocated, 1, "{s:#?}");
    assert_eq!(
        s.slabs_freed, 1,
        "the new slab went straight back to the page allocator: {s:#?}"
    );
    assert_eq!(s.slabs, 0);
    drop(cache);
    assert_all_pages_back(&pa);
    let _ = AllocError::Contended;
}

#[test]
fn free_in_a_signal_handler_under_rt_touches_no_lock_and_defers() {
    use krcu::context::{self, PreemptModel};
    use krcu::lock::thread_counters;
    let d = Domain::builder()
        .cpus(1)
        .preempt_model(PreemptModel::Rt)
        .build();
    let pa = common::pages::quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let cache = SlabCache::<u64>::new(&pa, "rt-handler").unwrap();
    let objs: Vec<NonNull<u64>> = (0..3)
        .map(|i| cache.alloc(Gfp::KERNEL, i).unwrap())
        .collect();
    let before = cache.stats();
    let ops = {
        let _hardirq = context::enter_hardirq();
        let c0 = thread_counters();
        for &o in &objs {
            // SAFETY: allocated above, freed once, not used again.
            unsafe { cache.free(o) };
        }
        let c = thread_counters() - c0;
        c.blocking + c.try_ok + c.try_failed
    };
    assert_eq!(ops, 0, "no lock touched, not even with trylock");
    let s = cache.stats();
    assert_eq!(s.deferred_frees, before.deferred_frees + 3, "{s:#?}");
    assert_eq!(s.cpu_frees, before.cpu_frees, "{s:#?}");
    // Task context gives the deferred objects back, and so the slab.
    cache.shrink();
    let s = cache.stats();
    assert_eq!(s.slabs, 0, "{s:#?}");
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn deferred_frees_are_reused_by_later_allocations() {
    use krcu::context::{self, PreemptModel};
    let d = Domain::builder()
        .cpus(1)
        .preempt_model(PreemptModel::Rt)
        .build();
    let pa = common::pages::quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let cache = SlabCache::<u8>::new(&pa, "tiny").unwrap();
    let n = cache.objects_per_slab();
    let objs: Vec<NonNull<u8>> = (0..n)
        .map(|_| cache.alloc(Gfp::KERNEL, 7).unwrap())
        .collect();
    // All but one (so that giving them back empties no slab).
    {
        let _hardirq = context::enter_hardirq();
        for &o in &objs[1..] {
            // SAFETY: allocated above, freed once, not used again.
            unsafe { cache.free(o) };
        }
    }
    assert_eq!(cache.stats().deferred_frees, n as u64 - 1);
    // The refill takes the deferred objects back first: no new slab.
    let allocated = cache.stats().slabs_allocated;
    let mut again: Vec<NonNull<u8>> = (1..n)
        .map(|_| cache.alloc(Gfp::KERNEL, 9).unwrap())
        .collect();
    assert_eq!(cache.stats().slabs_allocated, allocated);
    again.push(objs[0]);
    for o in again {
        // SAFETY: allocated above, freed once.
        unsafe { cache.free(o) };
    }
    assert_shrinks_to_no_slab(&cache);
    drop(cache);
    assert_all_pages_back(&pa);
}

#[test]
fn bad_free_in_a_signal_handler_is_counted_not_panicked() {
    let pa = allocator_on_cpus(1, 16 << 20);
    let cache = SlabCache::<u64>::with_checks(&pa, "handler-bad", true).unwrap();
    let o = cache.alloc(Gfp::KERNEL, 1).unwrap();
    // SAFETY: allocated above, freed once.
    unsafe { cache.free(o) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _hardirq = krcu::context::enter_hardirq();
        // SAFETY: a double free, detected (consistency checks on) and
        // refused.
        unsafe { cache.free(o) };
    }));
    assert!(r.is_ok(), "no panic in hardirq context");
    assert_eq!(cache.stats().bad_frees, 1);
}
