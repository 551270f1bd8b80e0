//! The one error of building anything in krcu: an instance
//! ([`KrcuBuilder::build`](crate::KrcuBuilder::build)), a page allocator
//! ([`PageAllocator::new`](crate::page::PageAllocator::new)), a slab cache
//! ([`SlabCache::new`](crate::slab::SlabCache::new)) or a slab channel. Each variant says what was wrong with the values that were
//! wrong, so a caller can match on it instead of reading text.
//!
//! Uses nothing in the crate (a leaf: page and the instance both use it).

use std::io;

/// Why an instance, a page allocator, a slab cache or a slab channel could
/// not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The arena is not a positive multiple of the page size, or too large
    /// for 32-bit page numbers.
    #[error("arena size {0} bytes is not a positive multiple of 4096 below 16 TiB")]
    ArenaSize(usize),
    /// The watermarks leave too little of the arena usable.
    #[error(
        "arena of {pages} pages is too small for its watermarks (high {high} pages; at most half the arena)"
    )]
    ArenaTooSmall {
        /// Pages in the arena.
        pages: usize,
        /// The high watermark.
        high: usize,
    },
    /// Watermarks out of order (min ≤ low ≤ high is required).
    #[error("watermarks out of order: min {min}, low {low}, high {high} (min <= low <= high)")]
    Watermarks {
        /// The configured min mark, in pages.
        min: usize,
        /// The configured low mark, in pages.
        low: usize,
        /// The configured high mark, in pages.
        high: usize,
    },
    /// `batch` is zero or `high` is below `batch`.
    #[error("per-CPU list sizes: batch {batch} must be at least 1 and high {high} at least batch")]
    PcpSizes {
        /// The configured batch.
        batch: u32,
        /// The configured high mark.
        high: u32,
    },
    /// `mmap` of the arena failed.
    #[error("mmap of a {size}-byte arena failed: {source}")]
    Mmap {
        /// The arena size.
        size: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A worker thread (the page allocator's reclaim worker or a
    /// `kfree_rcu` worker) could not be started.
    #[error("could not start a worker thread: {0}")]
    Thread(#[source] io::Error),
    /// `cache_blocks` is above `max_cache_blocks`.
    #[error(
        "invalid kfree_rcu setting: cache_blocks ({cache_blocks}) is above max_cache_blocks ({max_cache_blocks})"
    )]
    CacheBlocks {
        /// The configured `cache_blocks`.
        cache_blocks: usize,
        /// The configured `max_cache_blocks`.
        max_cache_blocks: usize,
    },
    /// `refill_mark` is above `cache_blocks`.
    #[error(
        "invalid kfree_rcu setting: refill_mark ({refill_mark}) is above cache_blocks ({cache_blocks})"
    )]
    RefillMark {
        /// The configured `refill_mark`.
        refill_mark: usize,
        /// The configured `cache_blocks`.
        cache_blocks: usize,
    },
    /// `drain_delay` or `active_poll` is zero.
    #[error("invalid kfree_rcu setting: drain_delay and active_poll must be above zero")]
    ZeroPeriod,
    /// The type cannot be cached: too large (or too aligned) for a slab of
    /// at most 8 pages.
    #[error("objects of {size} bytes aligned to {align} do not fit in a slab")]
    SlabTooLarge {
        /// `size_of::<T>()`.
        size: usize,
        /// `align_of::<T>()`.
        align: usize,
    },
    /// Every slab channel slot is taken.
    #[error("too many slab channels at once ({max})")]
    TooManySlabChannels {
        /// How many can exist at once.
        max: usize,
    },
}
