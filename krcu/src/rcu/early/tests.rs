//! Callbacks queued for the process-wide instance before it exists.

use super::*;
use crate::rcu::HasRcuHead;
use crate::rcu::callback;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::time::Duration;

static RAN: AtomicUsize = AtomicUsize::new(0);

struct Node {
    head: RcuHead,
}

// SAFETY: `head` is an RcuHead field of Node.
unsafe impl HasRcuHead for Node {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node, head);

    fn rcu_callback(self: Box<Self>) {
        RAN.fetch_add(1, Ordering::SeqCst);
    }
}

fn node() -> NonNull<RcuHead> {
    let raw = Box::into_raw(Box::new(Node {
        head: RcuHead::new(),
    }));
    // SAFETY: the head lies at RCU_HEAD_OFFSET inside the allocation.
    NonNull::new(unsafe { raw.byte_add(Node::RCU_HEAD_OFFSET) }.cast()).unwrap()
}

/// A barrier on a thread whose own adoption it interrupted (a signal
/// handler's, simulated here by holding the count) does not wait for
/// it; an adoption that panics is uncounted.
#[test]
fn a_barrier_never_waits_for_its_own_threads_adoption() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let g = global_arc();
        let r = std::panic::catch_unwind(|| {
            let _counted = Adopting::enter();
            panic!("an adopter's call_rcu panics");
        });
        let uncounted = r.is_err() && MY_ADOPTING.with(|m| m.load(Ordering::Relaxed)) == 0;
        let interrupted = Adopting::enter();
        g.rcu_barrier();
        drop(interrupted);
        let _ = tx.send(uncounted);
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the barrier waited for its own thread's adoption"),
        "a panicking adoption stayed counted"
    );
}

/// Both cases in one test: they share EARLY and the counter.
#[test]
fn a_global_barrier_waits_for_callbacks_parked_or_being_adopted() {
    let g = global_arc();
    let before = RAN.load(Ordering::SeqCst);
    // Parked while the builder had published GLOBAL but not adopted
    // yet (the window): the barrier adopts it.
    // SAFETY: a fresh, unqueued head of a leaked Box; box_callback
    // reclaims exactly that Box.
    unsafe { EARLY.push(node(), callback::box_callback::<Node>) };
    g.rcu_barrier();
    assert_eq!(RAN.load(Ordering::SeqCst), before + 1);

    // Taken off EARLY by an adopter that has not queued it yet: the
    // barrier waits for the adopter.
    // SAFETY: as above.
    unsafe { EARLY.push(node(), callback::box_callback::<Node>) };
    // Counted as `adopt_early` counts itself, with the same guard.
    let adopting = Adopting::enter();
    let mut list = EARLY.take();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        global_arc().rcu_barrier();
        let _ = tx.send(RAN.load(Ordering::SeqCst));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the barrier ended before a callback being adopted was queued"
    );
    while let Some((head, func)) = list.pop() {
        // SAFETY: taken off EARLY, queued there with the contract above.
        unsafe { g.call_rcu(head, func) };
    }
    drop(adopting);
    let ran = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    t.join().unwrap();
    assert_eq!(ran, before + 2);
}
