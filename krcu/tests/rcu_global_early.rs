//! Callbacks queued on the global instance from hardirq context before it
//! exists are parked, not lost: the instance adopts them when task context
//! builds it. Its own test binary, so nothing has built `rcu::global()`.

use std::sync::atomic::{AtomicUsize, Ordering};

static RAN: AtomicUsize = AtomicUsize::new(0);

struct Node {
    rcu: krcu::rcu::RcuHead,
}

// SAFETY: `rcu` is an RcuHead field of Node.
unsafe impl krcu::rcu::HasRcuHead for Node {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node, rcu);

    fn rcu_callback(self: Box<Self>) {
        RAN.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn early_hardirq_callbacks_run_once_the_global_instance_is_built() {
    {
        let _hardirq = krcu::context::enter_hardirq();
        for _ in 0..3 {
            krcu::rcu::call_rcu_box(Box::new(Node {
                rcu: krcu::rcu::RcuHead::new(),
            }));
        }
    }
    assert_eq!(RAN.load(Ordering::SeqCst), 0);
    // Task context: builds the instance, which adopts the parked callbacks
    // before the barrier starts, so the barrier waits for them.
    krcu::rcu::rcu_barrier();
    assert_eq!(RAN.load(Ordering::SeqCst), 3);
}
