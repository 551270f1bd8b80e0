//! Zone watermarks (`min`, `low`, `high`), in pages.
//!
//! Computed from the arena size the way the kernel computes them from
//! memory size (`init_per_zone_wmark_min`, `__setup_per_zone_wmarks`):
//! `min_free_kbytes = sqrt(arena_kib * 16)`, clamped to 128 KiB..256 MiB;
//! then `low = min + min/4` and `high = min + min/2` (the kernel's
//! `watermark_scale_factor` gap, taken as a quarter of min).
//!
//! | allocation | must leave at least |
//! |---|---|
//! | first attempt of every normal allocation | `low` |
//! | retry after waking kswapd | `min` |
//! | [`Gfp::ATOMIC`](super::Gfp::ATOMIC) (`HIGH` without `NOMEMALLOC`) | `min / 2` |
//! | `alloc_pages_nolock` | `min` |
//!
//! kswapd is woken when an allocation leaves fewer than `low` free pages
//! and reclaims until there are `high`.
//!
//! Uses: in this module `consts.rs`, `error.rs`.

use super::consts::PAGE_SIZE;
use crate::error::BuildError;

/// The three watermarks, in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[doc(alias = "_watermark")]
#[non_exhaustive]
pub struct Watermarks {
    /// Below this only high-priority allocations succeed (`WMARK_MIN`).
    pub min: usize,
    /// Below this kswapd is woken (`WMARK_LOW`).
    pub low: usize,
    /// kswapd reclaims until this many pages are free (`WMARK_HIGH`).
    pub high: usize,
}

impl Watermarks {
    /// The marks `min`, `low` and `high`, in pages (checked when an
    /// allocator is built: `min <= low <= high`, high at most half the
    /// arena).
    pub const fn new(min: usize, low: usize, high: usize) -> Watermarks {
        Watermarks { min, low, high }
    }

    /// No watermarks at all: every page may be allocated and kswapd is never
    /// woken. For tests and models that want exact accounting.
    pub const NONE: Watermarks = Watermarks {
        min: 0,
        low: 0,
        high: 0,
    };

    /// The kernel's formula for an arena of `arena_bytes`.
    ///
    /// ```
    /// use krcu::page::{PAGE_SIZE, Watermarks};
    /// let marks = Watermarks::for_arena(256 << 20);
    /// // min_free_kbytes = sqrt(256 MiB in KiB * 16) = 2048 KiB: 512 pages.
    /// assert_eq!(marks.min, 2048 * 1024 / PAGE_SIZE);
    /// assert_eq!((marks.low, marks.high), (marks.min * 5 / 4, marks.min * 3 / 2));
    /// ```
    #[doc(alias = "min_free_kbytes")]
    pub fn for_arena(arena_bytes: usize) -> Watermarks {
        let kib = (arena_bytes / 1024) as u64;
        let min_kib = ((kib * 16) as f64).sqrt() as u64;
        let min_kib = min_kib.clamp(128, 256 * 1024);
        let min = (min_kib as usize * 1024).div_ceil(PAGE_SIZE);
        Watermarks {
            min,
            low: min + min / 4,
            high: min + min / 2,
        }
    }

    /// Checks the marks against an arena of `pages` pages: ordered, and the
    /// high mark at most half the arena.
    pub(crate) fn validate(&self, pages: usize) -> Result<(), BuildError> {
        if !(self.min <= self.low && self.low <= self.high) {
            return Err(BuildError::Watermarks {
                min: self.min,
                low: self.low,
                high: self.high,
            });
        }
        if self.high > pages / 2 {
            return Err(BuildError::ArenaTooSmall {
                pages,
                high: self.high,
            });
        }
        Ok(())
    }

    /// The mark an allocation must stay above on its retry after kswapd
    /// was woken.
    #[inline]
    pub(crate) fn min_for(&self, reserve: bool) -> usize {
        if reserve { self.min / 2 } else { self.min }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_formula() {
        // 256 MiB: sqrt(262144 * 16) = 2048 KiB = 512 pages.
        let w = Watermarks::for_arena(256 << 20);
        assert_eq!(
            w,
            Watermarks {
                min: 512,
                low: 640,
                high: 768
            }
        );
        // Small arenas clamp at 128 KiB.
        assert_eq!(Watermarks::for_arena(1 << 20).min, 32);
        assert!(w.validate(65536).is_ok());
        assert!(matches!(
            Watermarks::for_arena(1 << 20).validate(64),
            Err(BuildError::ArenaTooSmall {
                pages: 64,
                high: 48
            })
        ));
        assert!(matches!(
            Watermarks {
                min: 3,
                low: 2,
                high: 4
            }
            .validate(100),
            Err(BuildError::Watermarks { .. })
        ));
    }
}
