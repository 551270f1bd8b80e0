//! The process-wide instance starts in parts: using only `krcu::rcu::*`
//! builds the RCU (one worker thread) and neither the `kfree_rcu` workers
//! nor the page allocator's arena; the first `kfree_rcu` builds those, on
//! top of the same RCU. One test in its own binary, so that nothing else in
//! the process builds the global instance first.

mod common;

use common::CountedNode;
use krcu::Krcu;
use krcu::rcu;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim_end().to_owned())
        .collect()
}

fn count_threads(prefix: &str) -> usize {
    thread_names()
        .iter()
        .filter(|n| n.starts_with(prefix))
        .count()
}

/// `count_threads(prefix)` once it reaches `at_least`, or after 10 s: a
/// thread names itself when it starts running, a moment after it was
/// spawned, so a fresh one may still carry its parent's name.
fn count_threads_settled(prefix: &str, at_least: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = count_threads(prefix);
        if n >= at_least || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The largest mapping of the process, in bytes.
fn largest_mapping() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter_map(|l| {
            let range = l.split_whitespace().next()?;
            let (a, b) = range.split_once('-')?;
            Some(usize::from_str_radix(b, 16).ok()? - usize::from_str_radix(a, 16).ok()?)
        })
        .max()
        .unwrap_or(0)
}

const ARENA: usize = 256 << 20;

#[test]
fn rcu_alone_does_not_start_kvfree_or_pages() {
    let freed = Arc::new(AtomicUsize::new(0));
    let node = || CountedNode::new(&freed);
    assert!(
        largest_mapping() < ARENA,
        "a 256 MiB mapping before krcu ran"
    );

    // Every krcu::rcu free function.
    {
        let _g = rcu::read_lock();
        assert!(rcu::global().is_reading());
    }
    let _h = rcu::register_thread();
    rcu::synchronize();
    rcu::synchronize_expedited();
    let c = rcu::start_poll();
    rcu::cond_synchronize(c);
    assert!(rcu::poll_state(c));
    let _ = rcu::get_state();
    rcu::call_rcu_box(node());
    rcu::rcu_barrier();
    assert_eq!(freed.load(SeqCst), 1);

    assert_eq!(count_threads("krcu-rcu-gp"), 1, "{:?}", thread_names());
    assert_eq!(count_threads("krcu-kvfree"), 0, "{:?}", thread_names());
    assert_eq!(count_threads("krcu-reclaim"), 0, "{:?}", thread_names());
    assert!(
        largest_mapping() < ARENA,
        "krcu::rcu::* reserved the page allocator's arena"
    );

    // The first kfree_rcu starts the rest, on the same RCU.
    krcu::kfree_rcu(node()).unwrap();
    krcu::kvfree_rcu_barrier();
    assert_eq!(freed.load(SeqCst), 2);
    assert!(core::ptr::eq(Krcu::global().rcu(), rcu::global()));
    assert_eq!(count_threads("krcu-rcu-gp"), 1, "{:?}", thread_names());
    assert_eq!(
        count_threads_settled("krcu-kvfree", 1),
        1,
        "{:?}",
        thread_names()
    );
    assert!(
        count_threads_settled("krcu-reclaim", 1) >= 1,
        "{:?}",
        thread_names()
    );
    assert!(largest_mapping() >= ARENA, "no arena after kfree_rcu");
}
