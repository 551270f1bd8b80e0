//! Slab caches for tests: a cache with sheaves of a chosen capacity, on
//! the process-wide RCU or on an RCU instance of the test's own.

use krcu::page::PageAllocator;
use krcu::rcu::{Rcu, RcuConfig};
use krcu::slab::SlabCache;
use std::sync::Arc;

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
