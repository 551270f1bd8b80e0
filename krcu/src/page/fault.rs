//! Fault injection: tell allocation sites to fail, so that every fallback
//! path can be exercised (the kernel's `fail_page_alloc`).
//!
//! Two knobs, combinable, each limited to a set of [`FaultSites`]:
//! - [`FaultInjector::fail_next`]: the next `n` allocations at those sites
//!   fail;
//! - [`FaultInjector::fail_every`]: every `n`-th allocation at those sites
//!   fails (deterministic, so tests are reproducible).
//!
//! Disarmed, the check costs one relaxed load on the allocation path.
//!
//! Uses nothing else of the crate.

use bitflags::bitflags;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};

bitflags! {
    /// Which allocation sites a fault applies to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct FaultSites: u32 {
        /// `Gfp::NO_LOCKS` allocations.
        const NO_LOCKS = 1 << 0;
        /// `alloc_pages_nolock`.
        const NOLOCK = 1 << 1;
        /// Allocations that may take the zone lock but never sleep
        /// (`NOWAIT`, `ATOMIC`).
        const NON_SLEEPING = 1 << 2;
        /// Allocations that may sleep (`KERNEL`).
        const SLEEPING = 1 << 3;
        /// Every allocation.
        const ALL = 0b1111;
        /// Not an allocation: the slab caches' node-lock trylock (taken
        /// with `NO_LOCKS` and in signal handlers) fails as if contended.
        /// Not part of `ALL`.
        const SLAB_NODE_TRYLOCK = 1 << 4;
        /// Not an allocation: a slab cache's `kfree_rcu` into sheaves
        /// hands the object back as if no sheaf could be had, so that the
        /// kvfree blocks (or the last resort) carry it. Not part of `ALL`.
        const SLAB_RCU_SHEAF = 1 << 5;
    }
}

/// The allocator's fault injector ([`PageAllocator::faults`](super::PageAllocator::faults)).
#[derive(Debug, Default)]
#[doc(alias = "fail_page_alloc")]
pub struct FaultInjector {
    armed: AtomicBool,
    next_sites: AtomicU32,
    next: AtomicU64,
    every_sites: AtomicU32,
    every: AtomicU64,
    seq: AtomicU64,
}

impl FaultInjector {
    /// The next `n` allocations at `sites` fail.
    pub fn fail_next(&self, n: u64, sites: FaultSites) {
        self.next_sites.store(sites.bits(), Relaxed);
        self.next.store(n, Relaxed);
        self.rearm();
    }

    /// Every `n`-th allocation at `sites` fails (`n == 0`: off).
    pub fn fail_every(&self, n: u64, sites: FaultSites) {
        self.every_sites.store(sites.bits(), Relaxed);
        self.seq.store(0, Relaxed);
        self.every.store(n, Relaxed);
        self.rearm();
    }

    /// Turns all faults off.
    pub fn clear(&self) {
        self.next.store(0, Relaxed);
        self.every.store(0, Relaxed);
        self.rearm();
    }

    fn rearm(&self) {
        let on = self.next.load(Relaxed) > 0 || self.every.load(Relaxed) > 0;
        self.armed.store(on, Release);
    }

    /// Whether this allocation at `site` must fail.
    #[inline]
    pub(crate) fn should_fail(&self, site: FaultSites) -> bool {
        if !self.armed.load(Relaxed) {
            return false;
        }
        self.should_fail_slow(site)
    }

    #[cold]
    fn should_fail_slow(&self, site: FaultSites) -> bool {
        if FaultSites::from_bits_truncate(self.next_sites.load(Relaxed)).intersects(site)
            && self
                .next
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            if self.next.load(Relaxed) == 0 {
                self.rearm();
            }
            return true;
        }
        let every = self.every.load(Relaxed);
        every > 0
            && FaultSites::from_bits_truncate(self.every_sites.load(Relaxed)).intersects(site)
            && (self.seq.fetch_add(1, Relaxed) + 1).is_multiple_of(every)
    }
}
