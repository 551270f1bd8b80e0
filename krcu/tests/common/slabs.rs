//! Slab caches for tests: a cache with sheaves of a chosen capacity, on
//! the process-wide RCU or on an RCU instance of the test's own.

use super::{Ledger, Obj, check_published, wait_for};
use krcu::Krcu;
use krcu::page::PageAllocator;
use krcu::rcu::{Rcu, RcuConfig};
use krcu::slab::{SlabBox, SlabCache};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use std::time::Duration;

/// An RCU instance of the test's own on the process-wide domain, for
/// caches whose `rcu_free` sheaves must not wait for other tests' readers.
pub fn rcu_instance() -> Arc<Rcu> {
    Arc::new(Rcu::new(krcu::Domain::global(), RcuConfig::default()))
}

/// A cache of `T` over `pa` named `name`, `capacity` objects a sheaf; its
/// `rcu_free` sheaves wait for the process-wide RCU.
pub fn sheaf_cache<T>(
    pa: &Arc<PageAllocator>,
    name: &'static str,
    capacity: usize,
) -> SlabCache<T> {
    SlabCache::builder(pa)
        .name(name)
        .sheaf_capacity(capacity)
        .build()
        .unwrap()
}

/// As [`sheaf_cache`], its `rcu_free` sheaves waiting for `rcu`'s grace
/// periods.
pub fn rcu_sheaf_cache<T>(
    pa: &Arc<PageAllocator>,
    name: &'static str,
    capacity: usize,
    rcu: Arc<Rcu>,
) -> SlabCache<T> {
    SlabCache::builder(pa)
        .name(name)
        .sheaf_capacity(capacity)
        .rcu(rcu)
        .build()
        .unwrap()
}

/// Shrinks `cache` and asserts that it holds no slab any more: every
/// object went back.
pub fn assert_shrinks_to_no_slab<T>(cache: &SlabCache<T>) {
    cache.shrink();
    let st = cache.stats();
    assert_eq!(st.slabs, 0, "{st:#?}");
}

/// Readers check every published object (its poison word and payload)
/// while a writer replaces them with new boxes and retires the old ones
/// with `kfree_rcu_slab`.
pub fn replace_and_retire(k: &Krcu, cache: &SlabCache<Obj>, ledger: &Arc<Ledger>, n: usize) {
    let mut owned: Vec<SlabBox<Obj>> = (0..32)
        .map(|_| cache.alloc_box(Obj::value(ledger)).ok().unwrap())
        .collect();
    let slots: Vec<AtomicPtr<Obj>> = owned
        .iter()
        .map(|b| AtomicPtr::new(SlabBox::as_ptr(b).cast_mut()))
        .collect();
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|s| {
        // SAFETY: the writer below retires every object it unlinks with
        // kfree_rcu_slab, freed a grace period of `k` later.
        s.spawn(|| unsafe { check_published(k, &slots, &stop, &reads) });
        for i in 0..n {
            let new = cache.alloc_box(Obj::value(ledger)).ok().unwrap();
            let j = i % slots.len();
            slots[j].store(SlabBox::as_ptr(&new).cast_mut(), Release);
            let old = std::mem::replace(&mut owned[j], new);
            k.kfree_rcu_slab(old).unwrap();
        }
        // The readers overlapped the retires.
        wait_for("a reader pass", Duration::from_secs(120), || {
            reads.load(Relaxed) > 0
        });
        stop.store(true, Relaxed);
    });
    for b in owned {
        k.kfree_rcu_slab(b).unwrap();
    }
}
