//! What keeps `krcu compare` honest: the object it churns carries a state
//! word (LIVE from construction, POISON from its destructor on), readers
//! check that word in every published object, and a ledger counts every
//! destructor run, so that a system which frees before its readers are done
//! or never frees at all is caught rather than measured.

use krcu::rcu::{HasRcuHead, RcuHead};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering::Relaxed};

/// The state word of a constructed, not yet dropped object.
pub const LIVE: u64 = 0x4C49_5645_6C69_7665;
/// The state word once the destructor ran.
pub const POISON: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// The churned object: a head (two words) and the state word, 24 bytes like
/// rcuscale's `struct kfree_obj`.
pub struct Checked {
    pub head: RcuHead,
    state: AtomicU64,
}

// SAFETY: `head` is an RcuHead field of Checked.
unsafe impl HasRcuHead for Checked {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Checked, head);
}

const _: () = assert!(size_of::<Checked>() == 24);

/// Destructors run, in this process.
static DROPS: AtomicU64 = AtomicU64::new(0);
/// Destructors run on an object already dropped.
static DOUBLE_DROPS: AtomicU64 = AtomicU64::new(0);

impl Checked {
    #[inline]
    pub fn new() -> Checked {
        Checked {
            head: RcuHead::new(),
            state: AtomicU64::new(LIVE),
        }
    }

    /// Whether the object is live: not dropped (and, as far as one word
    /// tells, not freed and reused for something else).
    #[inline]
    pub fn is_live(&self) -> bool {
        // Relaxed: the object was published with a release store (the slot's
        // swap) and loaded with acquire, so its LIVE is seen; any other value
        // seen means a destructor or a free overlapped the read, whatever
        // the order it is seen in.
        self.state.load(Relaxed) == LIVE
    }
}

impl Drop for Checked {
    #[inline]
    fn drop(&mut self) {
        // Only the dropping thread writes the word now (the object is
        // unlinked and past its grace period), so a load and a store suffice.
        if self.state.load(Relaxed) != LIVE {
            DOUBLE_DROPS.fetch_add(1, Relaxed);
        }
        self.state.store(POISON, Relaxed);
        DROPS.fetch_add(1, Relaxed);
    }
}

/// The destructor counts so far: (drops, double drops).
pub fn drops() -> (u64, u64) {
    (DROPS.load(Relaxed), DOUBLE_DROPS.load(Relaxed))
}

/// One reader's pass over the published slots, under the caller's
/// read-side protection: `load` reads a slot the system's way; returns the
/// objects checked and the violations (objects not live).
#[inline]
pub fn check_slots<S>(slots: &[S], mut load: impl FnMut(&S) -> *const Checked) -> (u64, u64) {
    let (mut checked, mut bad) = (0, 0);
    for s in slots {
        let p = load(s);
        if !p.is_null() {
            checked += 1;
            // SAFETY: loaded from a slot under the system's read-side
            // protection, which keeps a published object's memory until the
            // protection ends; a system that breaks this is what the check
            // is for (its memory stays mapped: glibc and the slab arena
            // keep small freed objects' pages).
            if !unsafe { &*p }.is_live() {
                bad += 1;
            }
        }
    }
    (checked, bad)
}

/// A slot's raw load, for systems whose protection is a section around it.
#[inline]
pub fn load_acquire(slot: &AtomicPtr<Checked>) -> *const Checked {
    slot.load(std::sync::atomic::Ordering::Acquire)
}

/// What a run's readers saw and its ledger counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Ledger {
    /// Objects the writers constructed.
    pub allocated: u64,
    /// Destructors run by the time the clock stopped.
    pub dropped: u64,
    /// Destructors run twice on one object.
    pub double_drops: u64,
    /// Reader threads during the timed part.
    pub readers: u64,
    /// Published objects the readers checked.
    pub checked: u64,
    /// Objects readers found not live (dropped, or freed and overwritten).
    pub violations: u64,
}

impl Ledger {
    /// Adds another run's counts (readers: the most of either).
    pub fn add(&mut self, o: &Ledger) {
        self.allocated += o.allocated;
        self.dropped += o.dropped;
        self.double_drops += o.double_drops;
        self.readers = self.readers.max(o.readers);
        self.checked += o.checked;
        self.violations += o.violations;
    }

    /// What is wrong with this run, if anything.
    pub fn fault(&self) -> Option<String> {
        if self.violations != 0 {
            return Some(format!(
                "{} of {} objects readers checked were already dropped or freed",
                self.violations, self.checked
            ));
        }
        if self.double_drops != 0 {
            return Some(format!("{} objects were dropped twice", self.double_drops));
        }
        if self.dropped != self.allocated {
            return Some(format!(
                "{} objects allocated but {} dropped when the clock stopped",
                self.allocated, self.dropped
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::ManuallyDrop;

    #[test]
    fn a_reader_sees_a_dropped_object_and_the_ledger_counts_its_destructor() {
        let (d0, _) = drops();
        let mut objs = [
            ManuallyDrop::new(Checked::new()),
            ManuallyDrop::new(Checked::new()),
        ];
        let slots: Vec<AtomicPtr<Checked>> = objs
            .iter_mut()
            .map(|o| AtomicPtr::new(&raw mut **o))
            .collect();
        assert_eq!(check_slots(&slots, load_acquire), (2, 0));
        // SAFETY: dropped once here; the storage stays (ManuallyDrop), so
        // the reader's look at it below reads valid memory.
        unsafe { ManuallyDrop::drop(&mut objs[1]) };
        assert_eq!(check_slots(&slots, load_acquire), (2, 1));
        // Other tests may drop objects concurrently: at least ours counted.
        assert!(drops().0 > d0);
        // SAFETY: the other object, dropped once.
        unsafe { ManuallyDrop::drop(&mut objs[0]) };
    }

    #[test]
    fn the_ledger_fails_on_a_violation_a_double_drop_or_a_missing_drop() {
        let ok = Ledger {
            allocated: 10,
            dropped: 10,
            readers: 1,
            checked: 5,
            ..Ledger::default()
        };
        assert_eq!(ok.fault(), None);
        let seen = Ledger {
            violations: 1,
            ..ok
        };
        assert!(seen.fault().unwrap().contains("already dropped"));
        let twice = Ledger {
            double_drops: 1,
            dropped: 11,
            ..ok
        };
        assert!(twice.fault().unwrap().contains("twice"));
        let leaked = Ledger { dropped: 9, ..ok };
        assert!(leaked.fault().unwrap().contains("9 dropped"));
        let mut sum = ok;
        sum.add(&leaked);
        assert_eq!((sum.allocated, sum.dropped, sum.readers), (20, 19, 1));
    }
}
