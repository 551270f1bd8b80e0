//! The slab and pages channels: freed once, after the grace period, in
//! bulk; the slab channel's `rcu_head` fallback finds the cache.

mod common;

use common::instances::collecting_instance;
use common::*;
use krcu::Krcu;
use krcu::kvfree::Policy;
use krcu::lockdep::{ReportHandler, ReportLog};
use krcu::page::{FaultSites, Gfp};
use krcu::slab::SlabCache;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use std::time::Duration;

/// Readers check slab objects while a writer replaces them and retires the
/// old ones on the slab channel.
fn slab_torture(k: &Krcu, ledger: &Arc<Ledger>) -> krcu::slab::SlabStats {
    let cache = Arc::new(SlabCache::<Obj>::new(k.pages(), "obj").unwrap());
    let chan = k.slab_channel(&cache).unwrap();
    let alloc = |ledger: &Arc<Ledger>| {
        cache
            .alloc(Gfp::KERNEL, Obj::value(ledger))
            .unwrap_or_else(|_| panic!("slab allocation"))
    };
    let slots: Vec<AtomicPtr<Obj>> = (0..32)
        .map(|_| AtomicPtr::new(alloc(ledger).as_ptr()))
        .collect();
    let (stop, reads) = (AtomicBool::new(false), AtomicU64::new(0));
    std::thread::scope(|s| {
        // SAFETY: the writer below retires every object it unlinks on the
        // slab channel, freed a grace period of `k` later.
        s.spawn(|| unsafe { check_published(k, &slots, &stop, &reads) });
        for i in 0..20_000 {
            let new = alloc(ledger);
            let old = slots[i % slots.len()].swap(new.as_ptr(), AcqRel);
            // SAFETY: unlinked just now; an object of this cache.
            unsafe {
                chan.kfree_rcu(core::ptr::NonNull::new(old).unwrap())
                    .unwrap()
            };
        }
        stop.store(true, Relaxed);
    });
    for slot in &slots {
        // SAFETY: the reader is gone; objects of this cache.
        unsafe {
            chan.kfree_rcu(core::ptr::NonNull::new(slot.load(Acquire)).unwrap())
                .unwrap()
        };
    }
    drop(chan); // waits for everything queued on it
    let st = cache.stats();
    assert_eq!(st.bad_frees, 0, "{st:?}");
    st
}

#[test]
fn slab_objects_are_freed_once_in_bulk_after_their_grace_period() {
    let k = collecting_instance(Policy::default(), 5);
    let ledger = Ledger::new(100_000);
    let st = slab_torture(&k, &ledger);
    ledger.assert_all_freed_once();
    let s = k.stats();
    assert!(s.to_block > 0 && s.list_fallbacks == 0, "{s:?}");
    assert!(st.bulk_frees > 0, "freed with free_bulk: {st:?}");
}

#[test]
fn slab_objects_on_the_rcu_head_list_find_their_cache() {
    // No block can ever be had: every object takes the list fallback.
    let k = collecting_instance(Policy::Prohibit, 0);
    let ledger = Ledger::new(100_000);
    slab_torture(&k, &ledger);
    ledger.assert_all_freed_once();
    let s = k.stats();
    assert_eq!(s.to_block, 0, "{s:?}");
    assert!(s.list_fallbacks > 0, "{s:?}");
}

#[test]
fn slab_channel_with_failing_block_allocations() {
    // `alloc_pages_nolock` for every block, inline: with a cache of spare
    // blocks, a refill worker that keeps up under load left no block to
    // allocate inline, and no fault fired (4 runs in 5 on a loaded
    // machine).
    let k = collecting_instance(Policy::AllocPagesNolock, 2);
    // The sites a block comes from without sleeping (the slab itself allocates
    // with GFP_KERNEL and must succeed for the test to go on).
    k.pages().faults().fail_every(
        2,
        FaultSites::NO_LOCKS | FaultSites::NOLOCK | FaultSites::NON_SLEEPING,
    );
    let ledger = Ledger::new(100_000);
    slab_torture(&k, &ledger);
    ledger.assert_all_freed_once();
    // Without faults that fired, this is the default-policy test again:
    // faults were injected, and block allocations met them.
    let injected = k.pages().stats().global.injected_failures;
    let s = k.stats();
    assert!(injected > 0, "no fault was injected: {s:?}");
    assert!(
        s.inline_alloc_failures > 0,
        "no block allocation failed: {s:?}"
    );
}

#[test]
fn pages_wait_for_readers_and_go_back_to_the_allocator() {
    let k = Krcu::builder()
        .arena_size(64 << 20)
        .drain_delay(Duration::from_millis(1))
        .report_handler(ReportHandler::Collect(ReportLog::new()))
        .build()
        .unwrap();
    let before = k.pages().stats().allocated_pages();
    let pages: Vec<_> = (0..100)
        .map(|i| k.pages().alloc_pages(Gfp::KERNEL, i % 3).unwrap())
        .collect();
    let held: usize = pages.iter().map(|p| 1usize << p.order()).sum();
    let reader = k.rcu().register_thread();
    let guard = reader.read_lock();
    std::thread::scope(|s| {
        s.spawn(|| {
            for p in pages {
                k.free_pages_rcu_mightsleep(p).unwrap();
            }
        });
    });
    // A reader that began before the pages were retired holds them: none
    // of them is reclaimed (every free of a retired object is counted, after
    // it happens). The page count is no measure of that: the refill worker
    // allocates and trims block pages of its own at any time.
    std::thread::sleep(Duration::from_millis(20));
    let s = k.stats();
    assert_eq!(
        (s.reclaimed_objects, s.pending_objects),
        (0, 100),
        "a page was freed while a reader could see it"
    );
    assert!(k.pages().stats().allocated_pages() >= held);
    drop(guard);
    k.kvfree_rcu_barrier();
    // Block pages are cached or returned: only they may remain allocated.
    let s = k.stats();
    let after = k.pages().stats().allocated_pages();
    assert!(
        after <= before + s.blocks_cached as usize,
        "pages leaked: {after} vs {before}"
    );
    assert_eq!(s.pending_objects, 0);
}
