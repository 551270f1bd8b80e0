//! Grace-period sequence numbers and the cookies of the polled API: the
//! kernel's `rcu_seq_*` helpers (`kernel/rcu/rcu.h`).
//!
//! A sequence number counts grace periods in its upper bits; its low
//! [`SEQ_CTR_SHIFT`] bits hold the state of the current one: zero when idle,
//! non-zero while a grace period is in progress. [`seq_start`] sets the state
//! to 1, [`seq_end`] clears it and advances the counter, so each grace
//! period adds `1 << SEQ_CTR_SHIFT` in all.
//!
//! [`seq_snap`] answers "which value must the counter reach before a full
//! grace period has elapsed from now?": the end of the next grace period to
//! *start* after now (if one is in progress it may have begun before the
//! caller's updates, so it does not count). [`seq_done`] compares with
//! [`cmp_ge`], the kernel's `ULONG_CMP_GE`, which is correct across the
//! counter's wrap-around as long as the two values are less than half the
//! counter's range apart. [`seq_done_exact`] narrows the "not yet" answer to
//! the few values a fresh snapshot can be ahead of the counter, so that a
//! cookie kept for arbitrarily long is never mistaken for a future one
//! after a wrap (`poll_state` uses it).
//!
//! Like the kernel (`rcu_state.gp_seq` starts at `(0UL - 300UL) <<
//! RCU_SEQ_CTR_SHIFT`), an instance starts its counter [`SEQ_INITIAL`], 300
//! grace periods before the wrap, so that every long-running test crosses it.

/// Bits of the sequence number that hold the grace-period state.
#[doc(alias = "RCU_SEQ_CTR_SHIFT")]
pub const SEQ_CTR_SHIFT: u32 = 2;
/// Mask of the state bits.
#[doc(alias = "RCU_SEQ_STATE_MASK")]
pub const SEQ_STATE_MASK: u64 = (1 << SEQ_CTR_SHIFT) - 1;
/// Where an instance's counter starts: 300 grace periods before the wrap.
pub const SEQ_INITIAL: u64 = 0u64.wrapping_sub(300) << SEQ_CTR_SHIFT;

/// `a >= b` in wrapping sequence arithmetic (`ULONG_CMP_GE`).
#[inline]
#[doc(alias = "ULONG_CMP_GE")]
pub const fn cmp_ge(a: u64, b: u64) -> bool {
    u64::MAX / 2 >= a.wrapping_sub(b)
}

/// `a < b` in wrapping sequence arithmetic (`ULONG_CMP_LT`).
#[inline]
#[doc(alias = "ULONG_CMP_LT")]
pub const fn cmp_lt(a: u64, b: u64) -> bool {
    u64::MAX / 2 < a.wrapping_sub(b)
}

/// The grace-period count in `s` (`rcu_seq_ctr`). Only the tests read it.
#[cfg(test)]
#[inline]
#[doc(alias = "rcu_seq_ctr")]
pub const fn seq_ctr(s: u64) -> u64 {
    s >> SEQ_CTR_SHIFT
}

/// The state bits of `s` (`rcu_seq_state`): 0 when idle.
#[inline]
#[doc(alias = "rcu_seq_state")]
pub const fn seq_state(s: u64) -> u64 {
    s & SEQ_STATE_MASK
}

/// The value after starting a grace period at idle value `s`
/// (`rcu_seq_start`).
#[inline]
#[doc(alias = "rcu_seq_start")]
pub const fn seq_start(s: u64) -> u64 {
    debug_assert!(seq_state(s) == 0, "grace period already in progress");
    s.wrapping_add(1)
}

/// The value after ending the grace period in progress at `s`
/// (`rcu_seq_end`): the next idle value.
#[inline]
#[doc(alias = "rcu_seq_end")]
pub const fn seq_end(s: u64) -> u64 {
    debug_assert!(seq_state(s) != 0, "no grace period in progress");
    (s | SEQ_STATE_MASK).wrapping_add(1)
}

/// The value the counter must reach for a full grace period to have
/// elapsed since it read `s` (`rcu_seq_snap`): the end of the next grace
/// period if idle, of the one after the current one otherwise.
#[inline]
#[doc(alias = "rcu_seq_snap")]
pub const fn seq_snap(s: u64) -> u64 {
    s.wrapping_add(2 * SEQ_STATE_MASK + 1) & !SEQ_STATE_MASK
}

/// Whether the counter value `cur` has reached the snapshot `snap`
/// (`rcu_seq_done`): wrap-safe for values less than half the range apart.
#[inline]
#[doc(alias = "rcu_seq_done")]
pub const fn seq_done(cur: u64, snap: u64) -> bool {
    cmp_ge(cur, snap)
}

/// Like [`seq_done`], but "not yet" only while `cur` lies in the window a
/// fresh snapshot can be ahead of the counter (`rcu_seq_done_exact`): a
/// cookie older than half the counter's range still reads as done.
///
/// A snapshot is at most `2 * SEQ_STATE_MASK + 1` above the counter it was
/// taken from (taken just after a grace period started), and the counter
/// never goes back, so `cur` below `snap` by more than that means `snap`
/// lies in the past, however many times the counter wrapped since.
#[inline]
#[doc(alias = "rcu_seq_done_exact")]
pub const fn seq_done_exact(cur: u64, snap: u64) -> bool {
    cmp_ge(cur, snap) || cmp_lt(cur, snap.wrapping_sub(2 * SEQ_STATE_MASK + 1))
}

/// A grace-period cookie from [`Rcu::get_state`](super::Rcu::get_state) or
/// [`Rcu::start_poll`](super::Rcu::start_poll): the value the instance's
/// grace-period counter must reach.
///
/// Cookies are plain values (copy them, store them in a batch); they mean
/// something only to the instance that issued them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[doc(alias = "rcu_gp_oldstate")]
pub struct GpCookie(pub(crate) u64);

impl GpCookie {
    /// A cookie that every instance reports as completed
    /// (`RCU_GET_STATE_COMPLETED`): no snapshot has non-zero state bits, so
    /// it cannot be confused with a real one.
    #[doc(alias = "get_completed_synchronize_rcu")]
    #[doc(alias = "RCU_GET_STATE_COMPLETED")]
    pub const COMPLETED: GpCookie = GpCookie(1);

    /// The raw sequence value (for diagnostics).
    pub fn raw(self) -> u64 {
        self.0
    }

    /// Whether the counter value `cur` satisfies this cookie.
    #[inline]
    pub(crate) fn done_at(self, cur: u64) -> bool {
        self == Self::COMPLETED || seq_done_exact(cur, self.0)
    }

    /// Whether this cookie asks for a grace period at or after `other`'s.
    #[cfg_attr(loom, allow(dead_code))]
    #[inline]
    pub(crate) fn at_or_after(self, other: GpCookie) -> bool {
        cmp_ge(self.0, other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_gp(s: u64) -> u64 {
        seq_end(seq_start(s))
    }

    #[test]
    fn wrapping_comparisons() {
        assert!(cmp_ge(5, 5) && cmp_ge(6, 5) && !cmp_ge(4, 5));
        assert!(cmp_lt(4, 5) && !cmp_lt(5, 5));
        // Across the wrap: 2 is "after" u64::MAX - 1.
        assert!(cmp_ge(2, u64::MAX - 1));
        assert!(cmp_lt(u64::MAX - 1, 2));
    }

    #[test]
    fn start_end_snap_done() {
        let s = 0;
        assert_eq!(seq_state(s), 0);
        let snap = seq_snap(s);
        assert_eq!(snap, 4, "idle: the end of the next grace period");
        let running = seq_start(s);
        assert_eq!(seq_state(running), 1);
        assert!(!seq_done(running, snap));
        let snap_during = seq_snap(running);
        assert_eq!(snap_during, 8, "in progress: the one after");
        let ended = seq_end(running);
        assert_eq!((ended, seq_ctr(ended)), (4, 1));
        assert!(seq_done(ended, snap) && !seq_done(ended, snap_during));
        assert!(seq_done(run_gp(ended), snap_during));
    }

    #[test]
    fn cookies_survive_the_wrap() {
        let mut cur = SEQ_INITIAL;
        let mut crossed = false;
        for _ in 0..1000 {
            let idle = GpCookie(seq_snap(cur));
            assert!(!idle.done_at(cur));
            let started = seq_start(cur);
            let during = GpCookie(seq_snap(started));
            assert!(!idle.done_at(started) && !during.done_at(started));
            let next = seq_end(started);
            assert!(
                idle.done_at(next),
                "one grace period satisfies an idle snapshot"
            );
            assert!(!during.done_at(next), "but not one taken mid-way");
            assert!(during.done_at(run_gp(next)));
            crossed |= next < cur;
            cur = next;
        }
        assert!(
            crossed,
            "the counter starts 300 grace periods before the wrap"
        );
    }

    #[test]
    fn old_cookies_stay_done_forever_with_done_exact() {
        let cookie = GpCookie(seq_snap(0));
        // Half the range later, plain rcu_seq_done flips; done_exact does not.
        let far = (u64::MAX / 2 + 8) & !SEQ_STATE_MASK;
        assert!(!seq_done(far, cookie.0));
        assert!(cookie.done_at(far));
        // Just before the cookie's value again, after a full wrap: the only
        // window that reads "not yet".
        assert!(!cookie.done_at(cookie.0.wrapping_sub(4)));
        assert!(!cookie.done_at(cookie.0.wrapping_sub(3)));
        assert!(cookie.done_at(cookie.0.wrapping_sub(8)));
        assert!(GpCookie::COMPLETED.done_at(0) && GpCookie::COMPLETED.done_at(far));
    }
}
