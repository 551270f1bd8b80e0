//! The reader/writer handshake of the memb flavour, free of everything else
//! (slots, threads, waiting policy) so that the loom model checks exactly
//! the code the library runs.
//!
//! # The words
//! The instance's **grace-period counter** `gp_ctr` holds [`GP_COUNT`]
//! (a nesting count of one) and the **phase** bit [`GP_PHASE`]. A reader's
//! **slot** word holds zero when the thread is outside any read-side section;
//! otherwise the phase it copied from `gp_ctr` at its outermost `read_lock`
//! and its nesting count in the low bits ([`NEST_MASK`]). This is liburcu's
//! `rcu_gp.ctr` / `rcu_reader.ctr` layout.
//!
//! # The handshake
//! Reader, outermost `read_lock`: `slot = gp_ctr` (relaxed load, relaxed
//! store), then the light barrier; nested: `slot += 1`. Outermost
//! `read_unlock`: the light barrier, then `slot = 0`; nested: `slot -= 1`.
//!
//! Writer, a grace period ([`grace_period`]): heavy barrier; twice { flip
//! the phase; wait until no slot is active in the *other* phase }; heavy
//! barrier.
//!
//! # Why it is safe (memory ordering)
//! Let U be an update the writer made before the grace period (an unlink),
//! and R a reader that can still observe the state before U.
//! - *Readers that begin after the first heavy barrier* see U: their slot
//!   store is followed by the light barrier and then their loads; the heavy
//!   barrier is a full barrier on every CPU (membarrier) or pairs with the
//!   reader's full fence (fallback): either the reader's loads come after it
//!   and observe U, or its slot store comes before it and the writer's scans
//!   see the reader active.
//! - *Readers active when the grace period begins* are waited for: such a
//!   reader's slot holds the phase it copied, which every grace period
//!   starts with (each one flips twice, so it begins and ends in the same
//!   phase); the first flip makes that phase "other", and the first wait
//!   returns only once the slot reads zero or the current phase.
//! - *The flip is safe against a reader preempted between loading `gp_ctr`
//!   and storing its slot*: its store may land after the first wait's scan.
//!   It then did not hold up that scan, so by the first point its loads come
//!   after the heavy barrier and see U: it is harmless to this grace period.
//!   But its slot now holds a stale phase, the phase every grace period
//!   starts in; the *next* grace period's first flip makes it "other" and
//!   waits for it. With a single flip per grace period the next one would
//!   flip back to the stale phase, take the reader for a new one and free
//!   what it may still read: the reason for the second flip (liburcu's
//!   argument; the loom model explores exactly this interleaving).
//! - *Accesses in a reader happen before the writer's frees*: the reader's
//!   light barrier precedes its `slot = 0` store (Release); the writer reads
//!   that zero and its closing heavy barrier (a SeqCst fence, an acquire
//!   fence) follows, so everything the reader did happens before what the
//!   writer does after the grace period.
//!
//! The flip stores are relaxed and surrounded by SeqCst fences: the writer
//! side is not the fast path, so it takes the simplest sufficient argument
//! (liburcu adds the same "not formally required" barrier there).
//!
//! Uses: `sync`.

use crate::sync::atomic::{AtomicUsize, Ordering, fence};
use core::sync::atomic::compiler_fence;

/// The nesting count of one: the low bits of a slot count nesting.
pub(crate) const GP_COUNT: usize = 1;
/// The phase bit.
pub(crate) const GP_PHASE: usize = 1 << (usize::BITS / 2);
/// The nesting-count bits of a slot.
pub(crate) const NEST_MASK: usize = GP_PHASE - 1;

/// The value a new instance's `gp_ctr` starts with.
pub(crate) const GP_CTR_INIT: usize = GP_COUNT;

/// The light barrier: a compiler fence with membarrier, a full fence
/// without.
#[inline(always)]
fn light_barrier(full_fence: bool) {
    if full_fence {
        fence(Ordering::SeqCst);
    } else {
        compiler_fence(Ordering::SeqCst);
    }
}

/// Enters a read-side section on `slot`. Returns true when it was the
/// outermost one.
///
/// Only the slot's owning thread (and signal handlers on it, which restore
/// what they change) writes the slot, so a load-then-store is not a lost
/// update.
#[inline(always)]
pub(crate) fn read_lock(slot: &AtomicUsize, gp_ctr: &AtomicUsize, full_fence: bool) -> bool {
    let tmp = slot.load(Ordering::Relaxed);
    if tmp & NEST_MASK == 0 {
        slot.store(gp_ctr.load(Ordering::Relaxed), Ordering::Relaxed);
        light_barrier(full_fence);
        true
    } else {
        // One more would carry into the phase bit and hide the reader from
        // grace periods (reachable from safe code by leaking guards).
        assert!(
            tmp & NEST_MASK != NEST_MASK,
            "krcu: RCU read-side sections nested too deep"
        );
        slot.store(tmp + GP_COUNT, Ordering::Relaxed);
        false
    }
}

/// Leaves a read-side section on `slot`. Returns true when it was the
/// outermost one.
#[inline(always)]
pub(crate) fn read_unlock(slot: &AtomicUsize, full_fence: bool) -> bool {
    let tmp = slot.load(Ordering::Relaxed);
    debug_assert!(tmp & NEST_MASK != 0, "read_unlock without read_lock");
    if tmp & NEST_MASK == GP_COUNT {
        light_barrier(full_fence);
        // Release: see the module doc's last point (free on x86).
        slot.store(0, Ordering::Release);
        true
    } else {
        slot.store(tmp - GP_COUNT, Ordering::Relaxed);
        false
    }
}

/// Whether a slot word shows a reader the writer must wait for, given the
/// counter's current value: active, and in the other phase.
#[inline]
pub(crate) fn holds_up(slot_value: usize, gp_value: usize) -> bool {
    slot_value & NEST_MASK != 0 && (slot_value ^ gp_value) & GP_PHASE != 0
}

/// Whether a slot word shows an active reader.
#[cfg_attr(loom, allow(dead_code))]
#[inline]
pub(crate) fn active(slot_value: usize) -> bool {
    slot_value & NEST_MASK != 0
}

/// One grace period: `heavy` is the writer's barrier; `wait_other_phase`
/// is called with the counter's new value after each flip and must return
/// only once no slot holds up that value ([`holds_up`]), reading each slot
/// with at least `Relaxed` order.
///
/// The caller serialises grace periods of one counter (the gp mutex).
pub(crate) fn grace_period(
    gp_ctr: &AtomicUsize,
    mut heavy: impl FnMut(),
    mut wait_other_phase: impl FnMut(usize),
) {
    heavy();
    for _ in 0..2 {
        // Finish reading slots of the previous wait before the flip is seen.
        fence(Ordering::SeqCst);
        let flipped = gp_ctr.load(Ordering::Relaxed) ^ GP_PHASE;
        gp_ctr.store(flipped, Ordering::Relaxed);
        // Make the flip visible before the scan reads slots.
        fence(Ordering::SeqCst);
        wait_other_phase(flipped);
    }
    heavy();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn nesting_and_phases() {
        let gp = AtomicUsize::new(GP_CTR_INIT);
        let slot = AtomicUsize::new(0);
        assert!(read_lock(&slot, &gp, false));
        assert!(!read_lock(&slot, &gp, true));
        assert_eq!(slot.load(Ordering::Relaxed) & NEST_MASK, 2);
        let v = gp.load(Ordering::Relaxed);
        assert!(!holds_up(slot.load(Ordering::Relaxed), v));
        assert!(holds_up(slot.load(Ordering::Relaxed), v ^ GP_PHASE));
        assert!(!read_unlock(&slot, false));
        assert!(active(slot.load(Ordering::Relaxed)));
        assert!(read_unlock(&slot, false));
        assert_eq!(slot.load(Ordering::Relaxed), 0);
        assert!(!holds_up(0, v) && !holds_up(0, v ^ GP_PHASE));
    }

    #[test]
    #[should_panic(expected = "nested too deep")]
    fn nesting_never_overflows_into_the_phase_bit() {
        // 2^32 - 1 sections deep (leaked guards can get there in safe code):
        // one more must not carry into the phase and leave the slot
        // looking inactive to grace periods.
        let gp = AtomicUsize::new(GP_CTR_INIT | GP_PHASE);
        let slot = AtomicUsize::new(GP_PHASE | NEST_MASK);
        read_lock(&slot, &gp, false);
        assert!(
            active(slot.load(Ordering::Relaxed)),
            "the slot looks inactive"
        );
    }

    #[test]
    fn a_grace_period_flips_twice_and_waits_for_each_phase() {
        let gp = AtomicUsize::new(GP_CTR_INIT);
        let mut seen = Vec::new();
        let mut heavies = 0;
        grace_period(&gp, || heavies += 1, |v| seen.push(v));
        assert_eq!(heavies, 2);
        assert_eq!(seen, vec![GP_CTR_INIT ^ GP_PHASE, GP_CTR_INIT]);
        assert_eq!(gp.load(Ordering::Relaxed), GP_CTR_INIT);
    }
}

#[cfg(all(test, loom))]
mod loom_model {
    //! The reader/writer handshake under loom: a reader that began before a
    //! grace period is waited for, and the phase flip is safe against a
    //! reader preempted between loading the counter and storing its slot.
    //!
    //! Loom has no membarrier: the model runs the fallback (a SeqCst fence
    //! in the reader and in the writer), the in-model form of the same
    //! protocol. Objects are loom `UnsafeCell`s: a read by the reader not
    //! ordered before the writer's "free" (a write) is a data race that loom
    //! reports, and the poison checks catch the rest.
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;

    const LIVE: u32 = 0xA11CE;
    const POISON: u32 = 0xDEAD;

    struct World {
        gp: AtomicUsize,
        slot: AtomicUsize,
        /// Index of the object readers reach.
        current: AtomicUsize,
        objects: [UnsafeCell<u32>; 3],
    }

    fn wait(world: &World, v: usize) {
        while holds_up(world.slot.load(Ordering::Relaxed), v) {
            loom::thread::yield_now();
        }
    }

    fn synchronize(world: &World) {
        grace_period(&world.gp, || fence(Ordering::SeqCst), |v| wait(world, v));
    }

    fn reader(world: &World, sections: usize) {
        for _ in 0..sections {
            read_lock(&world.slot, &world.gp, true);
            let i = world.current.load(Ordering::Acquire);
            let v = world.objects[i].with(|p| {
                // SAFETY: a loom cell; loom checks the access is not racing.
                unsafe { *p }
            });
            assert_eq!(v, LIVE, "reader reached freed object {i}");
            read_unlock(&world.slot, true);
        }
    }

    fn run(replacements: usize, sections: usize) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(move || {
            let world = Arc::new(World {
                gp: AtomicUsize::new(GP_CTR_INIT),
                slot: AtomicUsize::new(0),
                current: AtomicUsize::new(0),
                objects: [
                    UnsafeCell::new(LIVE),
                    UnsafeCell::new(LIVE),
                    UnsafeCell::new(LIVE),
                ],
            });
            let w = world.clone();
            let r = loom::thread::spawn(move || reader(&w, sections));
            for next in 1..=replacements {
                let old = world.current.swap(next, Ordering::Release);
                synchronize(&world);
                world.objects[old].with_mut(|p| {
                    // SAFETY: a loom cell; loom checks the access is not racing.
                    unsafe { *p = POISON }
                });
            }
            r.join().unwrap();
        });
    }

    #[test]
    fn reader_before_synchronize_is_waited_for() {
        run(1, 1);
    }

    #[test]
    fn phase_flip_is_safe_across_two_grace_periods() {
        run(2, 1);
    }

    #[test]
    fn back_to_back_readers_across_a_grace_period() {
        run(1, 2);
    }
}
