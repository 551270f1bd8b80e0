//! The page allocator: paths, modes, watermarks, reclaim, bad input, fault
//! injection and concurrency.

mod common;

use common::pages::{assert_all_pages_back, quiet_allocator, quiet_config};
use krcu::BuildError;
use krcu::Domain;
use krcu::lock::thread_counters;
use krcu::page::{
    AllocError, FaultSites, Gfp, MAX_ORDER, PAGE_SIZE, Page, PageAllocator, PageConfig, PageError,
    Watermarks,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One modelled CPU: every thread uses slot 0's lists, whatever CPU it runs
/// on, so per-CPU assertions hold even if the test thread migrates.
fn one_cpu() -> Domain {
    Domain::builder().cpus(1).build()
}

/// Every page back, off the per-CPU lists, merged into max-order blocks.
fn assert_all_merged(pa: &PageAllocator) {
    let s = assert_all_pages_back(pa);
    assert_eq!(s.pcp_pages, 0);
    assert_eq!(
        s.free_blocks[MAX_ORDER as usize] << MAX_ORDER,
        s.total_pages,
        "everything merges back to max-order blocks: {s:#?}"
    );
}

#[test]
fn every_order_allocates_aligned_and_merges_back() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 32 << 20, Watermarks::NONE);
    let mut pages = Vec::new();
    for order in 0..=MAX_ORDER {
        for gfp in [Gfp::KERNEL, Gfp::NOWAIT, Gfp::ATOMIC] {
            let p = pa.alloc_pages(gfp, order).unwrap();
            assert_eq!(p.order(), order);
            assert_eq!(p.len(), PAGE_SIZE << order);
            assert!(pa.contains(p.as_ptr()));
            // Blocks are aligned to their size relative to the arena, and
            // at least page-aligned in the address space.
            assert_eq!(p.as_ptr() as usize % PAGE_SIZE, 0);
            // SAFETY: the block is ours.
            unsafe { p.as_ptr().write_bytes(0xa5, p.len()) };
            pages.push(p);
        }
    }
    let s = pa.stats();
    let allocated: usize = pages.iter().map(|p| 1usize << p.order()).sum();
    assert!(s.allocated_pages() >= allocated);
    assert!(s.paths.refills > 0 && s.paths.buddy_allocs > 0, "{s:#?}");
    for p in pages {
        pa.free(p);
    }
    assert_all_merged(&pa);
}

#[test]
fn zero_flag_zeroes() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let p = pa.alloc_pages(Gfp::KERNEL, 1).unwrap();
    // SAFETY: ours.
    unsafe { p.as_ptr().write_bytes(0xff, p.len()) };
    let addr = p.addr();
    pa.free(p);
    // LIFO per-CPU lists hand the same, dirty block back.
    let q = pa.alloc_pages(Gfp::KERNEL | Gfp::ZERO, 1).unwrap();
    assert_eq!(q.addr(), addr);
    // SAFETY: ours, `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(q.as_ptr(), q.len()) };
    assert!(bytes.iter().all(|&b| b == 0));
    pa.free(q);
}

#[test]
fn bad_frees_name_the_address_and_change_nothing() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let p = pa.alloc_pages(Gfp::KERNEL, 2).unwrap();
    let a = p.as_ptr() as usize;
    let before = pa.stats();
    let at = |off: usize| std::ptr::NonNull::new((a + off) as *mut u8).unwrap();
    let try_free_pages = |addr, order| {
        // SAFETY: every free through this is bad input the allocator
        // detects and refuses, changing nothing: a wrong order, an address
        // inside the block, a misaligned one, one outside the arena, and a
        // double free of a block nothing reallocated in between.
        unsafe { pa.try_free_pages(addr, order) }
    };
    assert_eq!(
        try_free_pages(p.addr(), 1),
        Err(PageError::WrongOrder {
            addr: a,
            given: 1,
            allocated: 2
        })
    );
    assert_eq!(
        try_free_pages(at(PAGE_SIZE), 0),
        Err(PageError::NotAllocated {
            addr: a + PAGE_SIZE
        })
    );
    assert_eq!(
        try_free_pages(at(PAGE_SIZE), 2),
        Err(PageError::Misaligned {
            addr: a + PAGE_SIZE,
            order: 2
        })
    );
    assert_eq!(
        try_free_pages(at(8), 0),
        Err(PageError::Misaligned {
            addr: a + 8,
            order: 0
        })
    );
    let outside = Box::new(0u64);
    let outside = std::ptr::NonNull::from(&*outside).cast::<u8>();
    let e = try_free_pages(outside, 0).unwrap_err();
    assert_eq!(
        e,
        PageError::OutsideArena {
            addr: outside.as_ptr() as usize
        }
    );
    assert!(
        e.to_string()
            .contains(&format!("{:#x}", outside.as_ptr() as usize))
    );
    assert_eq!(pa.stats(), before, "refused frees change nothing");
    pa.try_free(p).unwrap();
    let e = try_free_pages(at(0), 2).unwrap_err();
    assert_eq!(e, PageError::DoubleFree { addr: a });
    assert_eq!(
        e.to_string(),
        format!("free of {a:#x}: double free (the page is already free)")
    );
    assert_all_merged(&pa);
}

#[test]
fn a_page_of_another_allocator_is_refused() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let pb = quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let p = pa.alloc_page(Gfp::KERNEL).unwrap();
    assert!(pa.owns(&p) && !pb.owns(&p));
    let addr = p.as_ptr() as usize;
    assert_eq!(pb.try_free(p), Err(PageError::OutsideArena { addr }));
    assert_all_merged(&pb);
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "double free")]
fn bad_free_panics_in_debug_builds() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let p = pa.alloc_page(Gfp::KERNEL).unwrap();
    let addr = p.addr();
    pa.free(p);
    // SAFETY: a double free of a block nothing reallocated since: detected
    // and refused (the behaviour under test), not undefined.
    unsafe { pa.free_pages(addr, 0) };
}

#[cfg(not(debug_assertions))]
#[test]
fn bad_free_is_counted_in_release_builds() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let p = pa.alloc_page(Gfp::KERNEL).unwrap();
    let addr = p.addr();
    pa.free(p);
    // SAFETY: double frees of a block nothing reallocated since: detected
    // and refused (the behaviour under test), not undefined.
    unsafe {
        pa.free_pages(addr, 0);
        pa.free_pages_nolock(addr, 0);
    }
    assert_eq!(pa.stats().global.bad_frees, 2);
    assert_all_merged(&pa);
}

#[test]
fn builder_refuses_bad_configurations() {
    let d = one_cpu();
    let build = |c: PageConfig| PageAllocator::new(&d, c).map(|_| ());
    let base = PageConfig::default().kswapd(false);
    let r = build(base.clone().arena_size(0));
    assert!(matches!(r, Err(BuildError::ArenaSize(0))), "{r:?}");
    let r = build(base.clone().arena_size(4097));
    assert!(matches!(r, Err(BuildError::ArenaSize(4097))), "{r:?}");
    // 128 KiB = 32 pages; the formula's high mark is 48 pages.
    let r = build(base.clone().arena_size(128 << 10));
    assert!(
        matches!(
            r,
            Err(BuildError::ArenaTooSmall {
                pages: 32,
                high: 48
            })
        ),
        "{r:?}"
    );
    assert!(matches!(
        build(base.clone().pcp_batch(0)),
        Err(BuildError::PcpSizes { .. })
    ));
    assert!(matches!(
        build(base.clone().watermarks(Watermarks::new(10, 5, 20))),
        Err(BuildError::Watermarks {
            min: 10,
            low: 5,
            high: 20
        })
    ));
    // The default: 256 MiB, kernel watermarks, costs nothing untouched.
    let pa = PageAllocator::new(&d, PageConfig::default()).unwrap();
    assert_eq!(pa.total_pages(), (256 << 20) / PAGE_SIZE);
    assert_eq!(pa.watermarks(), Watermarks::new(512, 640, 768));
}

#[test]
fn no_locks_serves_this_cpus_lists_only_and_never_refills() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    // Fresh: the per-CPU lists are empty, so NO_LOCKS fails fast and
    // refills nothing.
    let before = pa.stats();
    let c0 = thread_counters();
    assert_eq!(pa.alloc_pages(Gfp::NO_LOCKS, 0), Err(AllocError::PcpEmpty));
    let c = thread_counters() - c0;
    assert_eq!(c.blocking, 0, "NO_LOCKS took a lock without trylock");
    assert_eq!(c.try_ok + c.try_failed, 1, "only the pcp trylock");
    let after = pa.stats();
    assert_eq!(after.paths.refills, before.paths.refills);
    assert_eq!(after.free_pages, before.free_pages);
    assert_eq!(after.paths.no_locks_failures, 1);
    assert_eq!(after.global.kswapd_wakeups, 0);
    // Orders above the per-CPU ones are never served.
    assert_eq!(pa.alloc_pages(Gfp::NO_LOCKS, 4), Err(AllocError::BadOrder));

    // Put one movable and one reclaimable page on the lists.
    let m = pa.alloc_pages(Gfp::NOWAIT | Gfp::MOVABLE, 0).unwrap();
    let r = pa.alloc_pages(Gfp::NOWAIT | Gfp::RECLAIMABLE, 0).unwrap();
    pa.drain_all();
    let mut want = [m.addr(), r.addr()];
    pa.free(m);
    pa.free(r);
    assert_eq!(pa.stats().pcp_pages, 2);
    // An unmovable NO_LOCKS request takes them from the other
    // migratetypes' lists, with nothing but the pcp trylock.
    let free_before = pa.stats().free_pages;
    let c0 = thread_counters();
    let a = pa.alloc_pages(Gfp::NO_LOCKS, 0).unwrap();
    let b = pa.alloc_pages(Gfp::NO_LOCKS | Gfp::ZERO, 0).unwrap();
    let c = thread_counters() - c0;
    assert_eq!(c.blocking, 0);
    assert_eq!(c.try_ok, 2);
    let mut got = [a.addr(), b.addr()];
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // Empty again: fails, and still refilled nothing.
    assert_eq!(pa.alloc_pages(Gfp::NO_LOCKS, 0), Err(AllocError::PcpEmpty));
    let s = pa.stats();
    assert_eq!(
        s.free_pages, free_before,
        "NO_LOCKS never touched the buddy"
    );
    assert_eq!(s.paths.no_locks_hits, 2);
    pa.free(a);
    pa.free(b);
    assert_all_merged(&pa);
}

#[test]
fn nolock_only_trylocks_and_never_wakes_kswapd() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, Watermarks::new(8, 460, 500));
    let c0 = thread_counters();
    let big = pa.alloc_pages_nolock(9).unwrap();
    let p = pa.alloc_pages_nolock(0).unwrap();
    let q = pa.alloc_pages_nolock(5).unwrap();
    pa.free_nolock(p);
    let s = pa.stats();
    assert!(s.free_pages < 460, "below low: {s:#?}");
    pa.free_nolock(q);
    pa.free_nolock(big);
    let c = thread_counters() - c0;
    assert_eq!(c.blocking, 0, "nolock took a lock without trylock");
    assert!(c.try_ok >= 6);
    let s = pa.stats();
    assert_eq!(s.paths.nolock_allocs, 3);
    assert_eq!(s.global.kswapd_wakeups, 0, "free < low, yet no wake-up");
    assert_eq!(
        pa.alloc_pages_nolock(MAX_ORDER + 1),
        Err(AllocError::BadOrder)
    );
    assert_all_merged(&pa);
}

#[test]
fn nolock_frees_defer_when_every_lock_is_taken() {
    // Two threads hammer nolock allocation and free while the main thread
    // drains: some frees find both locks busy and take the deferred list;
    // nothing is lost.
    let d = Domain::builder().cpus(1).build();
    let pa = quiet_allocator(&d, 8 << 20, Watermarks::NONE);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (pa, stop) = (Arc::clone(&pa), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) || n < 2000 {
                    if let Ok(p) = pa.alloc_pages_nolock((n % 5) as u32) {
                        pa.free_nolock(p);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(200) {
        pa.drain_all();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let s = pa.stats();
    assert!(s.paths.nolock_allocs > 0, "{s:#?}");
    assert_all_merged(&pa);
}

#[test]
fn per_cpu_lists_refill_in_batches_and_return_batches_over_high() {
    let d = one_cpu();
    let pa = PageAllocator::new(
        &d,
        quiet_config(8 << 20, Watermarks::NONE)
            .pcp_batch(8)
            .pcp_high(24),
    )
    .unwrap();
    let first = pa.alloc_page(Gfp::KERNEL).unwrap();
    let s = pa.stats();
    assert_eq!((s.paths.refills, s.paths.refill_pages), (1, 8));
    assert_eq!(s.pcp_pages, 7);
    let mut pages = vec![first];
    for _ in 0..7 {
        pages.push(pa.alloc_page(Gfp::KERNEL).unwrap());
    }
    let s = pa.stats();
    assert_eq!((s.paths.pcp_hits, s.paths.refills), (7, 1));
    for _ in 0..40 {
        pages.push(pa.alloc_page(Gfp::KERNEL).unwrap());
    }
    for p in pages.drain(..) {
        pa.free(p);
        assert!(pa.pcp_pages(0) < 24, "count stays below high");
    }
    let s = pa.stats();
    assert!(s.paths.high_drains >= 2, "{s:#?}");
    // A remote-style drain of CPU 0 empties its lists.
    assert!(pa.drain_cpu(0) > 0);
    assert_eq!(pa.pcp_pages(0), 0);
    assert_all_merged(&pa);
}

/// Watermarks high enough in a 4 MiB arena to reach quickly.
const TIGHT: Watermarks = Watermarks::new(64, 96, 128);

/// Pages held by a test "cache" that a shrinker can give back.
struct Stash {
    pa: std::sync::Weak<PageAllocator>,
    pages: Mutex<Vec<Page>>,
    /// How long `scan` lingers after freeing its pages and before it
    /// returns: widens the window in which the pages are back but the
    /// shrinker's count is not yet published.
    linger: Duration,
}

impl Stash {
    fn register(pa: &Arc<PageAllocator>) -> (Arc<Stash>, krcu::page::ShrinkerHandle) {
        Self::register_lingering(pa, Duration::ZERO)
    }

    fn register_lingering(
        pa: &Arc<PageAllocator>,
        linger: Duration,
    ) -> (Arc<Stash>, krcu::page::ShrinkerHandle) {
        let stash = Arc::new(Stash {
            pa: Arc::downgrade(pa),
            pages: Mutex::new(Vec::new()),
            linger,
        });
        let (c, s) = (Arc::clone(&stash), Arc::clone(&stash));
        let h = pa.register_shrinker(
            "stash",
            move || c.pages.lock().unwrap().len(),
            move |n| {
                let Some(pa) = s.pa.upgrade() else { return 0 };
                let mut pages = s.pages.lock().unwrap();
                let k = n.min(pages.len());
                for p in pages.drain(..k) {
                    pa.free(p);
                }
                drop(pages);
                std::thread::sleep(s.linger);
                k
            },
        );
        (stash, h)
    }

    fn free_all(&self, pa: &PageAllocator) {
        for p in self.pages.lock().unwrap().drain(..) {
            pa.free(p);
        }
    }
}

#[test]
fn kswapd_wakes_below_low_and_shrinks_to_high() {
    let d = one_cpu();
    let pa = PageAllocator::new(
        &d,
        PageConfig::default()
            .arena_size(4 << 20)
            .watermarks(Watermarks::new(64, 128, 256)),
    )
    .unwrap();
    // A shrinker that returns late: its pages are back well before kswapd
    // publishes what the round freed.
    let (stash, _h) = Stash::register_lingering(&pa, Duration::from_millis(50));
    // Fill the stash until an allocation leaves fewer than `low` pages.
    while pa.stats().free_pages >= 128 {
        let p = pa.alloc_pages(Gfp::NOWAIT, 3).unwrap();
        stash.pages.lock().unwrap().push(p);
    }
    let taken = stash.pages.lock().unwrap().len();
    // A shrinker's pages are back before it returns, and kswapd publishes
    // what a round freed (`shrinker_freed`) only after the round: wait
    // until the zone is at `high` *and* the count covers every page the
    // stash gave up. The stash is read first, so a scan that runs between
    // the two reads makes them disagree and the wait goes on.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (s, given_up) = loop {
        let given_up = (taken - stash.pages.lock().unwrap().len()) as u64;
        let s = pa.stats();
        let settled = s.free_pages >= 256 && s.global.shrinker_freed == given_up;
        if settled || Instant::now() >= deadline {
            break (s, given_up);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(s.global.kswapd_wakeups >= 1, "{s:#?}");
    assert!(s.global.reclaim_runs >= 1, "{s:#?}");
    assert!(s.free_pages >= 256, "kswapd reclaimed to high: {s:#?}");
    assert!(s.global.shrinker_freed > 0, "{s:#?}");
    assert_eq!(
        s.global.shrinker_freed, given_up,
        "every page the shrinker gave up is counted: {s:#?}"
    );
    stash.free_all(&pa);
    assert_all_merged(&pa);
}

#[test]
fn below_min_atomic_dips_nowait_fails_kernel_reclaims() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, TIGHT);
    let (stash, _h) = Stash::register(&pa);
    // Take everything NOWAIT can get.
    while let Ok(p) = pa.alloc_pages(Gfp::NOWAIT | Gfp::NOWARN, 0) {
        stash.pages.lock().unwrap().push(p);
    }
    pa.drain_all();
    let free = pa.stats().free_pages;
    assert!(free <= 65, "NOWAIT stops at min: {free}");
    assert_eq!(
        pa.alloc_pages(Gfp::NOWAIT | Gfp::NOWARN, 0),
        Err(AllocError::NoMemory)
    );
    // ATOMIC may go down to min/2; with NOMEMALLOC it may not.
    assert_eq!(
        pa.alloc_pages(Gfp::ATOMIC | Gfp::NOMEMALLOC | Gfp::NOWARN, 0),
        Err(AllocError::NoMemory)
    );
    let atomic = pa.alloc_pages(Gfp::ATOMIC, 0).unwrap();
    // Take everything ATOMIC can get too: down to min/2.
    while let Ok(p) = pa.alloc_pages(Gfp::ATOMIC | Gfp::NOWARN, 0) {
        stash.pages.lock().unwrap().push(p);
    }
    pa.drain_all();
    assert!(pa.stats().free_pages <= 33, "{:#?}", pa.stats());
    // KERNEL reclaims directly (runs the stash's shrinker) and succeeds.
    let before = pa.stats().global;
    let k = pa.alloc_pages(Gfp::KERNEL, 0).unwrap();
    let after = pa.stats().global;
    assert!(after.direct_reclaims > before.direct_reclaims);
    assert!(after.shrinker_freed > before.shrinker_freed);
    pa.free(k);
    pa.free(atomic);
    stash.free_all(&pa);
    assert_all_merged(&pa);
}

#[test]
fn noretry_gives_up_after_one_round() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, TIGHT);
    let mut held = Vec::new();
    while let Ok(p) = pa.alloc_pages(Gfp::NOWAIT | Gfp::NOWARN, 0) {
        held.push(p);
    }
    // A shrinker that never frees anything.
    let calls = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&calls);
    let _h = pa.register_shrinker(
        "empty",
        || 1,
        move |_| {
            c.fetch_add(1, Ordering::Relaxed);
            0
        },
    );
    let before = pa.stats().global.direct_reclaims;
    assert_eq!(
        pa.alloc_pages(Gfp::KERNEL | Gfp::NORETRY | Gfp::NOWARN, 4),
        Err(AllocError::NoMemory)
    );
    assert_eq!(pa.stats().global.direct_reclaims - before, 1);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    // Without NORETRY it keeps going while a round makes progress; here the
    // first round's drain made none, so it stops too, but never fewer.
    assert!(pa.alloc_pages(Gfp::KERNEL | Gfp::NOWARN, 4).is_err());
    assert!(pa.stats().global.direct_reclaims - before >= 2);
    drop(_h);
    for p in held {
        pa.free(p);
    }
    assert_all_merged(&pa);
}

#[test]
fn fault_injection_fails_the_chosen_sites() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    pa.faults().fail_next(2, FaultSites::ALL);
    assert_eq!(
        pa.alloc_page(Gfp::KERNEL | Gfp::NOWARN),
        Err(AllocError::Injected)
    );
    assert_eq!(pa.alloc_pages_nolock(0), Err(AllocError::Injected));
    let p = pa.alloc_page(Gfp::KERNEL).unwrap();
    pa.free(p);
    // Every 2nd NO_LOCKS allocation fails; other sites are untouched.
    pa.faults().fail_every(2, FaultSites::NO_LOCKS);
    let a = pa.alloc_page(Gfp::NOWAIT).unwrap();
    let b = pa.alloc_page(Gfp::NOWAIT).unwrap();
    pa.free(a);
    pa.free(b);
    assert!(pa.alloc_page(Gfp::NO_LOCKS).is_ok_and(|p| {
        pa.free(p);
        true
    }));
    assert_eq!(pa.alloc_page(Gfp::NO_LOCKS), Err(AllocError::Injected));
    let c = pa.alloc_page(Gfp::NO_LOCKS).unwrap();
    pa.free(c);
    pa.faults().clear();
    assert!(pa.alloc_page(Gfp::NO_LOCKS).is_ok_and(|p| {
        pa.free(p);
        true
    }));
    assert_eq!(pa.stats().global.injected_failures, 3);
    assert_all_merged(&pa);
}

#[test]
fn threads_with_remote_drains_never_share_a_page() {
    // 2 CPUs modelled (whatever the machine has), 3 allocating threads and
    // a drainer: every page handed out is marked in a bitmap (a second
    // owner would find its bit set) and stamped with its owner (checked on
    // free).
    let d = Domain::builder().cpus(2).build();
    let pa = quiet_allocator(&d, 16 << 20, Watermarks::NONE);
    let pages = pa.total_pages();
    let owned: Arc<Vec<AtomicU64>> =
        Arc::new((0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drainer = {
        let (pa, stop) = (Arc::clone(&pa), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Drain both CPUs' lists, remote or not, until the workers are
            // done and at least one drain found pages.
            let mut cpu = 0;
            loop {
                pa.drain_cpu(cpu % 2);
                cpu += 1;
                let s = pa.stats();
                if stop.load(Ordering::Relaxed) && (s.global.cpu_drains > 0 || s.pcp_pages == 0) {
                    break;
                }
                std::thread::yield_now();
            }
        })
    };
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let (pa, owned) = (Arc::clone(&pa), Arc::clone(&owned));
            std::thread::spawn(move || {
                let mut held: Vec<(Page, u64)> = Vec::new();
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                for i in 0..100_000u64 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if held.len() < 64 && !rng.is_multiple_of(3) {
                        let order = [0, 0, 0, 1, 2, 3, 5][(rng >> 8) as usize % 7];
                        let gfp = [Gfp::KERNEL, Gfp::NOWAIT, Gfp::ATOMIC][(rng >> 16) as usize % 3];
                        let got = if rng.is_multiple_of(11) {
                            pa.alloc_pages_nolock(order)
                        } else {
                            pa.alloc_pages(gfp | Gfp::NOWARN, order)
                        };
                        if let Ok(p) = got {
                            let pfn = pa.pfn_of(p.as_ptr()).unwrap();
                            for q in pfn..pfn + (1 << order) {
                                let prev = owned[q / 64].fetch_or(1 << (q % 64), Ordering::Relaxed);
                                assert_eq!(prev & (1 << (q % 64)), 0, "page {q} handed out twice");
                            }
                            let stamp = t << 56 | i;
                            // SAFETY: ours; first and last word of the block.
                            unsafe {
                                p.as_ptr().cast::<u64>().write(stamp);
                                p.as_ptr().add(p.len() - 8).cast::<u64>().write(stamp);
                            }
                            held.push((p, stamp));
                        }
                    } else if !held.is_empty() {
                        let (p, stamp) = held.swap_remove((rng >> 24) as usize % held.len());
                        // SAFETY: ours until freed below.
                        unsafe {
                            assert_eq!(p.as_ptr().cast::<u64>().read(), stamp);
                            assert_eq!(p.as_ptr().add(p.len() - 8).cast::<u64>().read(), stamp);
                        }
                        let pfn = pa.pfn_of(p.as_ptr()).unwrap();
                        for q in pfn..pfn + (1 << p.order()) {
                            owned[q / 64].fetch_and(!(1 << (q % 64)), Ordering::Relaxed);
                        }
                        if rng.is_multiple_of(7) {
                            pa.free_nolock(p);
                        } else {
                            pa.free(p);
                        }
                    }
                }
                for (p, _) in held {
                    let pfn = pa.pfn_of(p.as_ptr()).unwrap();
                    for q in pfn..pfn + (1 << p.order()) {
                        owned[q / 64].fetch_and(!(1 << (q % 64)), Ordering::Relaxed);
                    }
                    pa.free(p);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    drainer.join().unwrap();
    assert_all_merged(&pa);
}

#[test]
fn disabled_per_cpu_lists_send_everything_to_the_buddy() {
    let d = one_cpu();
    let pa =
        PageAllocator::new(&d, quiet_config(4 << 20, Watermarks::NONE).pcp_lists(false)).unwrap();
    let p = pa.alloc_page(Gfp::NOWAIT).unwrap();
    let q = pa.alloc_pages_nolock(0).unwrap();
    pa.free(p);
    pa.free_nolock(q);
    assert_eq!(pa.alloc_page(Gfp::NO_LOCKS), Err(AllocError::BadOrder));
    let s = pa.stats();
    assert_eq!(s.paths.buddy_allocs, 2);
    assert_eq!(s.paths.buddy_frees, 2);
    assert_eq!(s.paths.pcp_hits + s.paths.refills + s.paths.pcp_frees, 0);
    assert_eq!(s.pcp_pages, 0);
    assert_all_merged(&pa);
}

#[test]
fn bad_free_in_a_signal_handler_neither_panics_nor_logs_there() {
    let d = one_cpu();
    let pa = quiet_allocator(&d, 4 << 20, Watermarks::NONE);
    let p = pa.alloc_page(Gfp::KERNEL).unwrap();
    let raw = p.into_raw();
    // SAFETY: ours, given up here.
    unsafe { pa.free_pages(raw, 0) };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _hardirq = krcu::context::enter_hardirq();
        // A double free in a handler: a panic there would abort a real
        // process (and in release builds `tracing` may allocate).
        // SAFETY: a double free, detected and refused (the block is free
        // and was not reallocated since).
        unsafe { pa.free_pages_nolock(raw, 0) };
    }));
    assert!(r.is_ok(), "no panic in hardirq context");
    let s = pa.stats();
    assert_eq!(s.global.bad_frees, 1, "{s:#?}");
    assert_eq!(s.global.handler_bad_frees, 1, "{s:#?}");
    // Task context reports it (with tracing), and the page is intact.
    pa.drain_all();
    assert_eq!(s.free_pages + s.pcp_pages, s.total_pages);
}
