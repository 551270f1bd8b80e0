//! `SlabBox`: the safe owning handle to a slab object. Every value dropped
//! exactly once (the ledger), boxes moved to other threads and dropped
//! there, and a cache dropped while boxes live: their memory stays valid,
//! and once they are dropped every slab and the cache's own state go.

mod common;

use common::pages::{allocator_on_cpus, assert_all_pages_back};
use common::slabs::assert_shrinks_to_no_slab;
use common::{LIVE, Ledger, Obj};
use krcu::slab::{SlabBox, SlabCache};
use std::sync::Arc;

/// An `Obj` moved out of its `Box` into the cache.
#[test]
fn every_value_is_dropped_once_and_every_slab_goes_back() {
    let pa = allocator_on_cpus(2, 16 << 20);
    let ledger = Ledger::new(5000);
    let cache = SlabCache::<Obj>::new(&pa, "objs").unwrap();
    let mut boxes: Vec<SlabBox<Obj>> = (0..5000)
        .map(|_| cache.alloc_box(Obj::value(&ledger)).ok().unwrap())
        .collect();
    for b in &boxes {
        b.check();
    }
    // DerefMut reaches the object in place.
    boxes[7].payload = [1, !1];
    boxes[7].check();
    assert_eq!(boxes[7].payload[0], 1);
    // Distinct objects: no address handed out twice.
    let mut addrs: Vec<usize> = boxes.iter().map(|b| SlabBox::as_ptr(b) as usize).collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), 5000);
    assert!(cache.stats().slabs > 0);
    // Half dropped in order, half in reverse.
    let rest = boxes.split_off(2500);
    drop(boxes);
    for b in rest.into_iter().rev() {
        drop(b);
    }
    ledger.assert_all_freed_once();
    assert_shrinks_to_no_slab(&cache);
    assert_all_pages_back(&pa);
}

#[test]
fn boxes_dropped_on_other_threads() {
    let pa = allocator_on_cpus(2, 16 << 20);
    let ledger = Ledger::new(4 * 1000);
    let cache = Arc::new(SlabCache::<Obj>::new(&pa, "moved").unwrap());
    let batches: Vec<Vec<SlabBox<Obj>>> = (0..4)
        .map(|_| {
            (0..1000)
                .map(|_| SlabBox::new_in(&cache, Obj::value(&ledger)).ok().unwrap())
                .collect()
        })
        .collect();
    let threads: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            // Each thread also allocates from the shared cache.
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                let mine: Vec<SlabBox<u64>> = Vec::new();
                for b in batch {
                    b.check();
                    drop(b);
                }
                drop(mine);
                drop(cache);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    ledger.assert_all_freed_once();
    assert_shrinks_to_no_slab(&cache);
    assert_all_pages_back(&pa);
}

#[test]
fn into_raw_and_from_raw_round_trip() {
    let pa = allocator_on_cpus(1, 8 << 20);
    let ledger = Ledger::new(1);
    let cache = SlabCache::<Obj>::new(&pa, "raw").unwrap();
    let b = cache.alloc_box(Obj::value(&ledger)).ok().unwrap();
    let p = SlabBox::into_raw(b);
    // SAFETY: allocated above and given up once: still an initialised Obj.
    let o = unsafe { p.as_ref() };
    assert_eq!(o.state.load(std::sync::atomic::Ordering::SeqCst), LIVE);
    assert_eq!(ledger.dropped.load(std::sync::atomic::Ordering::SeqCst), 0);
    // SAFETY: from into_raw above, made a box once.
    drop(unsafe { SlabBox::from_raw(p) });
    ledger.assert_all_freed_once();
}

/// The cache's handle goes first: the boxes stay valid (their slabs hold
/// the cache's state and its page allocator), are dropped later on other
/// threads, and then every slab, and the cache's state with its reference
/// to the page allocator, are gone.
#[test]
fn cache_dropped_while_boxes_live() {
    let pa = allocator_on_cpus(2, 16 << 20);
    let ledger = Ledger::new(3000);
    let cache = SlabCache::<Obj>::new(&pa, "orphan").unwrap();
    let boxes: Vec<SlabBox<Obj>> = (0..3000)
        .map(|_| cache.alloc_box(Obj::value(&ledger)).ok().unwrap())
        .collect();
    // Some freed while the cache lives: they sit in per-CPU caches.
    let (early, late) = {
        let mut b = boxes;
        let late = b.split_off(1000);
        (b, late)
    };
    drop(early);
    let refs_with_cache = Arc::strong_count(&pa);
    drop(cache);
    // The boxes' memory is intact.
    for b in &late {
        b.check();
    }
    // The cache's state still holds the page allocator.
    assert_eq!(Arc::strong_count(&pa), refs_with_cache);
    let halves: Vec<Vec<SlabBox<Obj>>> = {
        let mut l = late;
        let second = l.split_off(1000);
        vec![l, second]
    };
    std::thread::scope(|s| {
        for half in halves {
            s.spawn(move || {
                for b in half {
                    b.check();
                    drop(b);
                }
            });
        }
    });
    ledger.assert_all_freed_once();
    // Every slab went back, and with the last the cache's state (and its
    // count of the page allocator).
    assert_all_pages_back(&pa);
    assert_eq!(Arc::strong_count(&pa), 1, "the cache's state was not freed");
}

/// A cache dropped with no box alive goes at once (its state included).
#[test]
fn cache_without_boxes_goes_at_once() {
    let pa = allocator_on_cpus(1, 8 << 20);
    let cache = SlabCache::<u64>::new(&pa, "plain").unwrap();
    let b = cache.alloc_box(5).unwrap();
    assert_eq!(*b, 5);
    drop(b);
    drop(cache);
    assert_eq!(Arc::strong_count(&pa), 1);
    assert_all_pages_back(&pa);
}
