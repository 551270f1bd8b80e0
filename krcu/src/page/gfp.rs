//! GFP flags: what an allocation may do to get its pages.
//!
//! The bits are the kernel's "action modifiers" (`__GFP_DIRECT_RECLAIM`,
//! `__GFP_KSWAPD_RECLAIM`, `__GFP_HIGH`, ...) and the common masks are built
//! from them exactly as `include/linux/gfp_types.h` builds them:
//!
//! | mask | bits | may sleep | takes the zone lock | wakes kswapd | below min |
//! |---|---|---|---|---|---|
//! | [`Gfp::KERNEL`] | `DIRECT_RECLAIM \| KSWAPD_RECLAIM` | yes (direct reclaim) | yes | yes | no |
//! | [`Gfp::NOWAIT`] | `KSWAPD_RECLAIM` | no | yes | yes | no |
//! | [`Gfp::ATOMIC`] | `HIGH \| KSWAPD_RECLAIM` | no | yes | yes | down to min/2 |
//! | [`Gfp::NO_LOCKS`] | `NO_LOCKS` | no | **never** | never | n/a: per-CPU lists only |
//!
//! `alloc_pages_nolock` is not a flag but its own entry point
//! ([`PageAllocator::alloc_pages_nolock`](super::PageAllocator::alloc_pages_nolock)),
//! as in the kernel.
//!
//! Uses nothing else of the crate.

use bitflags::bitflags;

bitflags! {
    /// Allocation flags (`gfp_t`).
    ///
    /// ```
    /// use krcu::page::{Gfp, Migratetype};
    /// assert_eq!(Gfp::KERNEL, Gfp::DIRECT_RECLAIM | Gfp::KSWAPD_RECLAIM);
    /// assert!(Gfp::KERNEL.may_sleep());
    /// assert!(!Gfp::NOWAIT.may_sleep() && !Gfp::ATOMIC.may_sleep());
    /// assert!(Gfp::ATOMIC.contains(Gfp::HIGH), "may dip below the min watermark");
    /// assert!(!(Gfp::KERNEL | Gfp::NO_LOCKS).may_sleep(), "NO_LOCKS never sleeps");
    /// assert_eq!((Gfp::KERNEL | Gfp::MOVABLE).migratetype(), Migratetype::Movable);
    /// assert_eq!(Gfp::from_name("NOWAIT"), Some(Gfp::NOWAIT));
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[doc(alias = "gfp_t")]
    pub struct Gfp: u32 {
        /// The caller may sleep to reclaim memory itself (`__GFP_DIRECT_RECLAIM`).
        #[doc(alias = "__GFP_DIRECT_RECLAIM")]
        const DIRECT_RECLAIM = 1 << 0;
        /// Wake the reclaim worker when free pages drop below the low
        /// watermark (`__GFP_KSWAPD_RECLAIM`).
        #[doc(alias = "__GFP_KSWAPD_RECLAIM")]
        const KSWAPD_RECLAIM = 1 << 1;
        /// High priority: may dip below the min watermark, down to half of
        /// it (`__GFP_HIGH`).
        #[doc(alias = "__GFP_HIGH")]
        const HIGH = 1 << 2;
        /// Do not warn when the allocation fails (`__GFP_NOWARN`).
        #[doc(alias = "__GFP_NOWARN")]
        const NOWARN = 1 << 3;
        /// Give up after one round of direct reclaim (`__GFP_NORETRY`).
        #[doc(alias = "__GFP_NORETRY")]
        const NORETRY = 1 << 4;
        /// Never use the reserves below the min watermark, even with
        /// [`Gfp::HIGH`] (`__GFP_NOMEMALLOC`).
        #[doc(alias = "__GFP_NOMEMALLOC")]
        const NOMEMALLOC = 1 << 5;
        /// Zero the pages before returning them (`__GFP_ZERO`).
        #[doc(alias = "__GFP_ZERO")]
        const ZERO = 1 << 6;
        /// Take pages from this CPU's per-CPU lists only, trying every
        /// migratetype; never refill from the buddy, never take the zone
        /// lock, never wake reclaim; fail fast. Uladzislau Rezki's 2020
        /// `__GFP_FAST_TRY`, proposed as `__GFP_NO_LOCKS`. Under
        /// PREEMPT_RT it is refused in hardirq (signal handler) and NMI
        /// context ([`AllocError::Context`](super::AllocError::Context)),
        /// where even a trylock of the sleeping per-CPU lock is unsafe.
        #[doc(alias = "__GFP_FAST_TRY")]
        #[doc(alias = "__GFP_NO_LOCKS")]
        const NO_LOCKS = 1 << 7;
        /// The pages may be moved (`__GFP_MOVABLE`): the movable free lists.
        #[doc(alias = "__GFP_MOVABLE")]
        const MOVABLE = 1 << 8;
        /// The pages are reclaimable (`__GFP_RECLAIMABLE`): the reclaimable
        /// free lists.
        #[doc(alias = "__GFP_RECLAIMABLE")]
        const RECLAIMABLE = 1 << 9;

        /// `GFP_KERNEL`: may sleep and reclaim.
        #[doc(alias = "GFP_KERNEL")]
        const KERNEL = Self::DIRECT_RECLAIM.bits() | Self::KSWAPD_RECLAIM.bits();
        /// `GFP_NOWAIT`: never sleeps; may take the zone lock and wake kswapd.
        #[doc(alias = "GFP_NOWAIT")]
        const NOWAIT = Self::KSWAPD_RECLAIM.bits();
        /// `GFP_ATOMIC`: never sleeps; may dip below the min watermark.
        #[doc(alias = "GFP_ATOMIC")]
        const ATOMIC = Self::HIGH.bits() | Self::KSWAPD_RECLAIM.bits();
    }
}

impl Gfp {
    /// Whether an allocation with these flags may sleep
    /// (`gfpflags_allow_blocking`).
    #[inline]
    #[doc(alias = "gfpflags_allow_blocking")]
    pub fn may_sleep(self) -> bool {
        self.contains(Gfp::DIRECT_RECLAIM) && !self.contains(Gfp::NO_LOCKS)
    }

    /// The free lists these flags allocate from (`gfp_migratetype`).
    #[inline]
    #[doc(alias = "gfp_migratetype")]
    pub fn migratetype(self) -> Migratetype {
        if self.contains(Gfp::MOVABLE) {
            Migratetype::Movable
        } else if self.contains(Gfp::RECLAIMABLE) {
            Migratetype::Reclaimable
        } else {
            Migratetype::Unmovable
        }
    }

    /// Whether the allocation may go below the min watermark (to half of
    /// it): [`Gfp::HIGH`] without [`Gfp::NOMEMALLOC`].
    #[inline]
    pub(crate) fn may_use_reserve(self) -> bool {
        self.contains(Gfp::HIGH) && !self.contains(Gfp::NOMEMALLOC)
    }
}

/// Which free lists a block lives on: the kernel's migratetypes, kept apart
/// so that long-lived unmovable pages do not fragment the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[doc(alias = "migratetype")]
pub enum Migratetype {
    /// `MIGRATE_UNMOVABLE`: the default.
    Unmovable = 0,
    /// `MIGRATE_MOVABLE`.
    Movable = 1,
    /// `MIGRATE_RECLAIMABLE`.
    Reclaimable = 2,
}

impl Migratetype {
    /// The number of migratetypes with their own lists
    /// (`MIGRATE_PCPTYPES`).
    pub const COUNT: usize = 3;
    /// All of them, in index order.
    pub const ALL: [Migratetype; 3] = [
        Migratetype::Unmovable,
        Migratetype::Movable,
        Migratetype::Reclaimable,
    ];

    /// The list index.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    #[inline]
    pub(crate) fn from_index(i: usize) -> Migratetype {
        Self::ALL[i % Self::COUNT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_the_kernels() {
        assert!(Gfp::KERNEL.may_sleep());
        assert!(!Gfp::NOWAIT.may_sleep());
        assert!(!Gfp::ATOMIC.may_sleep());
        assert!(!(Gfp::KERNEL | Gfp::NO_LOCKS).may_sleep());
        assert!(Gfp::ATOMIC.may_use_reserve());
        assert!(!(Gfp::ATOMIC | Gfp::NOMEMALLOC).may_use_reserve());
        assert!(!Gfp::NOWAIT.may_use_reserve());
        assert_eq!(Gfp::KERNEL.migratetype(), Migratetype::Unmovable);
        assert_eq!(
            (Gfp::KERNEL | Gfp::MOVABLE).migratetype(),
            Migratetype::Movable
        );
        assert_eq!(
            (Gfp::NOWAIT | Gfp::RECLAIMABLE).migratetype(),
            Migratetype::Reclaimable
        );
        for mt in Migratetype::ALL {
            assert_eq!(Migratetype::from_index(mt.index()), mt);
        }
    }
}
