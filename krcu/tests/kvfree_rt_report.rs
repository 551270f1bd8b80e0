//! A real-time thread's `kfree_rcu` made inside another instance's reader
//! is reported (suspicious RCU usage) without allocating on that thread:
//! the report is deferred, as in hardirq context.

mod common;

use common::counting_alloc::{CountingAlloc, thread_allocs};
use krcu::Krcu;
use krcu::lockdep::{ReportHandler, ReportKind, ReportLog};
use krcu::rcu::{HasRcuHead, RcuHead};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

static FREED: AtomicUsize = AtomicUsize::new(0);

struct Node {
    head: RcuHead,
}

// SAFETY: `head` is an RcuHead field of Node.
unsafe impl HasRcuHead for Node {
    const RCU_HEAD_OFFSET: usize = core::mem::offset_of!(Node, head);
}

impl Drop for Node {
    fn drop(&mut self) {
        FREED.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_real_time_threads_suspicious_kfree_rcu_is_reported_without_allocating() {
    if !krcu::lockdep::COMPILED {
        return;
    }
    let log = ReportLog::new();
    let k = Krcu::builder()
        .arena_size(16 << 20)
        .cpus(1)
        .report_handler(ReportHandler::Collect(log.clone()))
        .build()
        .unwrap();
    let other = Krcu::builder().arena_size(4 << 20).cpus(1).build().unwrap();
    let allocs = std::thread::scope(|s| {
        s.spawn(|| {
            let _reader = k.register_thread();
            let _other_reader = other.rcu().register_thread();
            let obj = Box::new(Node {
                head: RcuHead::new(),
            });
            // A reader of the other instance only: suspicious.
            let g = other.rcu().read_lock();
            let a0 = thread_allocs();
            k.kfree_rcu(obj).unwrap();
            let a1 = thread_allocs();
            drop(g);
            a1 - a0
        })
        .join()
        .unwrap()
    });
    krcu::lockdep::flush_deferred_reports();
    k.kvfree_rcu_barrier();
    assert_eq!(FREED.load(SeqCst), 1);
    assert!(
        log.count(ReportKind::SuspiciousRcuUsage) >= 1,
        "no report: {:?}",
        log.reports()
    );
    assert_eq!(
        allocs, 0,
        "a real-time thread's kfree_rcu allocated {allocs} times to report"
    );
}
