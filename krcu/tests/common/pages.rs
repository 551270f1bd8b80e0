//! Page allocators for tests: the configuration they start from (no
//! watermarks unless a test asks for some, no kswapd thread, so that
//! nothing reclaims behind a test's back) and the check that every page
//! came back.

use krcu::Domain;
use krcu::page::{PageAllocator, PageConfig, PageStats, Watermarks};
use std::sync::Arc;

/// Watermarks for an 8 MiB arena (2048 pages) that a test drives into
/// reclaim: below `low` (256 free pages) the shrinkers run.
pub const SHRINK_8MIB: Watermarks = Watermarks::new(128, 256, 1024);

/// `arena_size` bytes with `watermarks`, no kswapd thread, the rest
/// default. Tests that set more chain the setters: `quiet_config(..).pcp_lists(false)`.
pub fn quiet_config(arena_size: usize, watermarks: Watermarks) -> PageConfig {
    PageConfig::default()
        .arena_size(arena_size)
        .watermarks(watermarks)
        .kswapd(false)
}

/// A page allocator on `domain` with [`quiet_config`].
pub fn quiet_allocator(
    domain: &Domain,
    arena_size: usize,
    watermarks: Watermarks,
) -> Arc<PageAllocator> {
    PageAllocator::new(domain, quiet_config(arena_size, watermarks)).unwrap()
}

/// A page allocator of `arena_size` bytes, no watermarks, on a domain of
/// its own with `cpus` modelled CPUs.
pub fn allocator_on_cpus(cpus: usize, arena_size: usize) -> Arc<PageAllocator> {
    let domain = Domain::builder().cpus(cpus).build();
    quiet_allocator(&domain, arena_size, Watermarks::NONE)
}

/// An allocator small enough for loom's models: 8 pages on one modelled
/// CPU without the validator, its per-CPU list moving 2 pages at a time
/// and holding at most 4.
pub fn tiny_allocator() -> Arc<PageAllocator> {
    let domain = Domain::builder().cpus(1).lockdep(false).build();
    PageAllocator::new(
        &domain,
        quiet_config(8 * 4096, Watermarks::NONE)
            .pcp_batch(2)
            .pcp_high(4),
    )
    .unwrap()
}

/// Drains every per-CPU list and asserts that every page is free again.
/// Returns the statistics for the caller's further checks.
pub fn assert_all_pages_back(pa: &PageAllocator) -> PageStats {
    pa.drain_all();
    let s = pa.stats();
    assert_eq!(s.free_pages, s.total_pages, "pages not back: {s:#?}");
    s
}
