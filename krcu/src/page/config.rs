//! [`PageConfig`]: the page allocator's settings, built with `Default`
//! and one setter per field.
//!
//! Uses: in this module `watermark.rs`.

use super::Watermarks;

/// The allocator's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageConfig {
    /// Bytes in the arena: a multiple of [`PAGE_SIZE`](super::PAGE_SIZE) (default 256 MiB).
    pub arena_size: usize,
    /// Pages moved per per-CPU refill or bulk free (default 31).
    pub pcp_batch: u32,
    /// Pages on a CPU's lists at which a free returns `batch` to the buddy
    /// (default 6 × 31 = 186).
    pub pcp_high: u32,
    /// The watermarks; `None` computes them from the arena size.
    pub watermarks: Option<Watermarks>,
    /// Whether to start the kswapd thread (default true). Without it,
    /// wake-ups are counted but nothing reclaims in the background.
    pub kswapd: bool,
    /// Whether the per-CPU lists are used (default true). Off, every
    /// allocation and free goes to the buddy under the zone lock and
    /// `NO_LOCKS` always fails: the kernel's `zone_pcp_disable`, and the
    /// baseline the per-CPU lists are measured against.
    #[doc(alias = "zone_pcp_disable")]
    pub pcp_lists: bool,
}

impl Default for PageConfig {
    fn default() -> Self {
        PageConfig {
            arena_size: 256 << 20,
            pcp_batch: 31,
            pcp_high: 6 * 31,
            watermarks: None,
            kswapd: true,
            pcp_lists: true,
        }
    }
}

/// Setters, one per field, for `PageConfig::default().kswapd(false)...`:
/// the struct is `#[non_exhaustive]` (fields may be added), so it is built
/// from its `Default` rather than with a struct expression.
impl PageConfig {
    /// Sets [`arena_size`](Self::arena_size).
    pub fn arena_size(mut self, bytes: usize) -> Self {
        self.arena_size = bytes;
        self
    }
    /// Sets [`pcp_batch`](Self::pcp_batch).
    pub fn pcp_batch(mut self, pages: u32) -> Self {
        self.pcp_batch = pages;
        self
    }
    /// Sets [`pcp_high`](Self::pcp_high).
    pub fn pcp_high(mut self, pages: u32) -> Self {
        self.pcp_high = pages;
        self
    }
    /// Sets [`watermarks`](Self::watermarks) (instead of computing them
    /// from the arena size).
    pub fn watermarks(mut self, marks: Watermarks) -> Self {
        self.watermarks = Some(marks);
        self
    }
    /// Sets [`kswapd`](Self::kswapd).
    pub fn kswapd(mut self, on: bool) -> Self {
        self.kswapd = on;
        self
    }
    /// Sets [`pcp_lists`](Self::pcp_lists).
    pub fn pcp_lists(mut self, on: bool) -> Self {
        self.pcp_lists = on;
        self
    }
}
