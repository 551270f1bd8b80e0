//! The kvfree worker thread: refills block caches and runs the monitor, in
//! softirq context, never under a raw lock.
//!
//! The call path never wakes it with a system call (that would break the
//! real-time promise): it sets flags that the worker polls, every
//! `active_poll` while anything is pending and every drain delay when all is
//! quiet. Barriers, the shrinker and shutdown, which may make system calls,
//! wake it at once.

use super::engine::Engine;
use crate::context;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(crate) fn run(engine: Arc<Engine>) {
    let _softirq = context::enter_softirq();
    loop {
        crate::fork::checkpoint();
        let flush = engine.take_flush_request();
        engine.refill_pass();
        let (_, busy) = engine.monitor_pass(flush);
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
