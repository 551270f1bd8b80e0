//! Unit tests of the callback lists.

use super::*;
use crate::rcu::seq;

unsafe fn noop(_: NonNull<RcuHead>) {}

fn heads(n: usize) -> Vec<RcuHead> {
    (0..n).map(|_| RcuHead::new()).collect()
}

fn ptr(h: &RcuHead) -> NonNull<RcuHead> {
    NonNull::from(h)
}

/// The derive's output names `::krcu`, which resolves inside krcu
/// through `extern crate self as krcu`.
#[cfg(feature = "derive")]
#[test]
fn the_derive_works_inside_krcu() {
    #[derive(crate::rcu::HasRcuHead)]
    #[repr(C)]
    struct Inside {
        value: u64,
        rcu: RcuHead,
    }
    assert_eq!(Inside::RCU_HEAD_OFFSET, core::mem::offset_of!(Inside, rcu));
    assert_ne!(Inside::RCU_HEAD_OFFSET, 0);
    let inside = Inside {
        value: 7,
        rcu: RcuHead::new(),
    };
    assert_eq!(inside.value, 7);
}

#[test]
fn pending_list_takes_fifo() {
    let hs = heads(5);
    let l = PendingList::new();
    assert!(l.is_empty());
    for h in &hs {
        // SAFETY: the heads outlive the list's use of them.
        unsafe { l.push(ptr(h), noop) };
    }
    assert!(!l.is_empty());
    let mut list = l.take();
    assert!(l.is_empty());
    assert_eq!(list.len(), 5);
    for h in &hs {
        assert_eq!(list.pop().map(|p| p.0), Some(ptr(h)));
    }
    assert!(list.pop().is_none());
}

#[test]
fn segments_advance_in_cookie_order() {
    let hs = heads(4);
    let l = PendingList::new();
    let mut seg = SegCbList::new();
    let s0 = seq::SEQ_INITIAL;
    let c1 = GpCookie(seq::seq_snap(s0));
    let running = seq::seq_start(s0);
    let c2 = GpCookie(seq::seq_snap(running));
    let mut take = |hs: &[RcuHead], c| {
        for h in hs {
            // SAFETY: the heads outlive the list's use of them.
            unsafe { l.push(ptr(h), noop) };
        }
        seg.accelerate(l.take(), c);
    };
    take(&hs[0..1], c1);
    take(&hs[1..2], c1);
    take(&hs[2..4], c2);
    assert_eq!(seg.len(), 4);
    assert_eq!(seg.oldest_wait(), Some(c1));
    seg.advance(running);
    assert!(seg.done.is_empty());
    let after_one = seq::seq_end(running);
    seg.advance(after_one);
    assert_eq!(seg.done.len(), 2);
    assert_eq!(seg.oldest_wait(), Some(c2));
    seg.advance(seq::seq_end(seq::seq_start(after_one)));
    assert_eq!(seg.done.len(), 4);
    assert_eq!(seg.oldest_wait(), None);
    let order: Vec<_> = core::iter::from_fn(|| seg.done.pop().map(|p| p.0)).collect();
    assert_eq!(order, hs.iter().map(ptr).collect::<Vec<_>>());
}

#[test]
fn a_third_cookie_merges_into_the_later_segment() {
    let hs = heads(3);
    let l = PendingList::new();
    let mut seg = SegCbList::new();
    for (i, h) in hs.iter().enumerate() {
        // SAFETY: the heads outlive the list's use of them.
        unsafe { l.push(ptr(h), noop) };
        seg.accelerate(l.take(), GpCookie(4 * (i as u64 + 1)));
    }
    seg.advance(8);
    assert_eq!(
        seg.done.len(),
        1,
        "only the first segment's grace period ended"
    );
    seg.advance(12);
    assert_eq!(seg.done.len(), 3);
}
