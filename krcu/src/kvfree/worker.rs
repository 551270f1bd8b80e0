//! The kvfree worker threads, in softirq context, never under a raw lock:
//! the monitor (the kernel's `kfree_rcu_monitor`), which hands blocks to
//! RCU, and the refill thread (the kernel's `fill_page_cache_func`), which
//! tops the block caches up.
//!
//! They are two threads, as they are two works in the kernel: the refill's
//! sleeping allocation may enter direct reclaim and run every shrinker,
//! and a shrinker may block there (on its own lock, on I/O). The monitor
//! never makes a reclaiming allocation, so `kfree_rcu` reclaim goes on
//! while memory is short. (The refill thread keeps the name
//! `krcu-kvfree`; the monitor is `krcu-kvmon`.)
//!
//! The call path never wakes them with a system call (that would break the
//! real-time promise): it sets flags that they poll, every `active_poll`
//! while anything is pending and every drain delay when all is quiet (the
//! monitor kicks the refill thread when it sees a request). Barriers, the
//! shrinker and shutdown, which may make system calls, wake them at once.

use super::engine::Engine;
use crate::context;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The monitor thread's body.
pub(crate) fn run(engine: Arc<Engine>) {
    let _softirq = context::enter_softirq();
    loop {
        crate::fork::checkpoint();
        let flush = engine.take_flush_request();
        let (_, busy) = engine.monitor_pass(flush);
        if engine.refill_wanted() {
            engine.kick_refill();
        }
        if engine.stop.load(Ordering::Acquire) {
            break;
        }
        let cfg = &engine.config;
        engine.sleep(if busy {
            cfg.active_poll
        } else {
            cfg.drain_delay
        });
    }
}

/// The refill thread's body.
pub(crate) fn run_refill(engine: Arc<Engine>) {
    let _softirq = context::enter_softirq();
    loop {
        crate::fork::checkpoint();
        engine.refill_pass();
        if engine.stop.load(Ordering::Acquire) {
            break;
        }
        let cfg = &engine.config;
        engine.sleep_refill(if engine.refill_wanted() {
            cfg.active_poll
        } else {
            cfg.drain_delay
        });
    }
}
