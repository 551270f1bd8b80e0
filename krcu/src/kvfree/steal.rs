//! The handshake by which the monitor takes a thread's front block without
//! the thread's cooperation (`front.rs` has the protocol's prose). On its
//! own, and built on the crate's `sync` switch, so that a loom model can
//! check it (`tests/loom_steal.rs`; loom cannot model `membarrier`, so the
//! model runs the full-fence variant, which the same code selects when
//! `membarrier` is not used).
//!
//! # Orderings
//! - owner: `busy = true` (Relaxed); a barrier B_o; load `steal`
//!   (Acquire); its section; `busy = false` (Release).
//! - monitor: `steal = true` (SeqCst); a barrier B_m; wait while `busy`
//!   (Acquire); take the data; `steal = false` (Release).
//!
//! With membarrier, B_o is a compiler fence and B_m is `membarrier()`,
//! which runs a full barrier in the owner between any two of its
//! instructions: either the owner's `busy = true` precedes it (and the
//! monitor, after the membarrier, sees it and waits), or the owner's load
//! of `steal` follows it (and sees `true`). With full fences, B_o and B_m
//! are `fence(SeqCst)`: the store-buffering pattern, where two SeqCst
//! fences forbid both loads missing the other side's store.
//!
//! The owner's load of `steal` is Acquire: if it reads the monitor's final
//! `steal = false` (Release), it also sees everything the monitor did with
//! the data before (the block pointer it took and cleared), and so never
//! uses the old block. The monitor's Acquire load of `busy = false` reads
//! the owner's Release store after its last writes to the data, so it
//! sees the data whole.
//!
//! Owns: [`StealGate`]. Uses: the crate's `sync` switch only (so that
//! loom can model it).

use crate::sync::atomic::{AtomicBool, Ordering::*, fence};
use core::sync::atomic::compiler_fence;

/// The owner's section flag and the monitor's request, for one front.
#[derive(Debug)]
pub struct StealGate {
    busy: AtomicBool,
    steal: AtomicBool,
    /// Full fences on both sides instead of compiler fence / membarrier.
    fences: bool,
}

impl StealGate {
    /// A gate; `fences` selects the full-fence variant (no membarrier).
    pub fn new(fences: bool) -> Self {
        StealGate {
            busy: AtomicBool::new(false),
            steal: AtomicBool::new(false),
            fences,
        }
    }

    /// The owner enters its section; false (and left) if a steal is asked:
    /// the data is then not the owner's to touch.
    #[inline]
    pub fn begin(&self) -> bool {
        self.busy.store(true, Relaxed);
        if self.fences {
            fence(SeqCst);
        } else {
            compiler_fence(SeqCst);
        }
        // Acquire: see the module doc (the final `steal = false`).
        if self.steal.load(Acquire) {
            self.end();
            return false;
        }
        true
    }

    /// In the child of a `fork`, for a front whose owner does not exist
    /// there: clears `busy`. The fork's gate waited for the owner to leave
    /// its section, but an owner that tried to enter one afterwards set
    /// `busy` for the instant before it saw `steal` and left; a fork in that
    /// instant copies `busy` set, and no thread would ever clear it (the
    /// child's monitor would wait for it on every pass, and a barrier
    /// never end).
    #[cfg_attr(loom, allow(dead_code))]
    pub fn forget_owner(&self) {
        self.busy.store(false, Release);
    }

    /// The owner leaves its section.
    #[inline]
    pub fn end(&self) {
        // Release: the monitor that reads this sees the section's writes.
        self.busy.store(false, Release);
    }

    /// The monitor asks for the data and waits until the owner is out of
    /// its section; the data is then the monitor's until
    /// [`release`](Self::release). (The engine uses
    /// [`try_steal`](Self::try_steal); the loom model checks this.)
    #[cfg_attr(not(loom), allow(dead_code))]
    pub fn steal(&self) {
        self.ask();
        self.barrier();
        self.wait_owner();
    }

    /// The first step of [`steal`](Self::steal): sets `steal`. With several
    /// gates, ask each, then one [`barrier`](Self::barrier) serves them
    /// all (a membarrier orders every owner's section against every store
    /// made before it), then [`wait_owner`](Self::wait_owner) each.
    pub fn ask(&self) {
        self.steal.store(true, SeqCst);
    }

    /// The monitor's barrier B_m (see the module doc), after `ask`.
    pub fn barrier(&self) {
        if self.fences {
            fence(SeqCst);
        } else {
            #[cfg(not(loom))]
            crate::rcu::membarrier::heavy(true);
            #[cfg(loom)]
            unreachable!("loom cannot model membarrier: model the fence variant");
        }
    }

    /// Waits until the owner is out of its section (after `ask` and
    /// `barrier`): the data is then the caller's until `release`.
    pub fn wait_owner(&self) {
        // Acquire: pairs with the owner's Release in `end`.
        while self.busy.load(Acquire) {
            crate::sync::yield_now();
        }
    }

    /// [`steal`](Self::steal), giving up (and withdrawing the request)
    /// if the owner is still inside its section after `spins` looks: an
    /// owner preempted there must not hold the monitor up. True if the
    /// data is the caller's until [`release`](Self::release).
    ///
    /// Withdrawing is safe: the owner reads `steal` once, at the start of
    /// its section, and the data was never touched here.
    pub fn try_steal(&self, spins: usize) -> bool {
        self.ask();
        self.barrier();
        for _ in 0..spins {
            // Acquire: pairs with the owner's Release in `end`.
            if !self.busy.load(Acquire) {
                return true;
            }
            crate::sync::yield_now();
        }
        if !self.busy.load(Acquire) {
            return true;
        }
        self.release();
        false
    }

    /// The monitor gives the data back to the owner.
    pub fn release(&self) {
        // Release: pairs with the owner's Acquire load in `begin`.
        self.steal.store(false, Release);
    }
}
