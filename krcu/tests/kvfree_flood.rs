//! The flood: 2 threads × 20 M objects retired as fast as they can be made.
//! Pending memory stays bounded and at most 1 % of calls take a fallback
//! under the default policy. Heavy: run in release
//! (`cargo test --release -p krcu --test kvfree_flood`; CI does).

#[path = "../benches/common/small.rs"]
mod small;

use krcu::Krcu;
use krcu::kvfree::Policy;
use small::{Small, small};
use std::time::Instant;

const THREADS: usize = 2;
const PER_THREAD: u64 = 20_000_000;

#[test]
#[cfg_attr(debug_assertions, ignore = "heavy: run with --release")]
fn a_two_thread_flood_stays_bounded_with_few_fallbacks() {
    assert_eq!(size_of::<Small>(), 24);
    let k = Krcu::builder().lockdep(false).build().unwrap();
    assert_eq!(k.kvfree_config().policy, Policy::default());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let k = &k;
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    k.kfree_rcu(small(i ^ t as u64)).unwrap();
                }
            });
        }
    });
    let queued = t0.elapsed();
    k.kvfree_rcu_barrier();
    let total = t0.elapsed();
    let s = k.stats();
    let n = THREADS as u64 * PER_THREAD;
    println!(
        "flood: {n} objects, {:.1} M/s queued, {:.1} M/s end to end; peak pending {} objects, {:.1} MiB; fallbacks {:.4} %",
        n as f64 / queued.as_secs_f64() / 1e6,
        n as f64 / total.as_secs_f64() / 1e6,
        s.peak_pending_objects,
        s.peak_pending_bytes as f64 / (1 << 20) as f64,
        s.fallback_ratio() * 100.0
    );
    println!("{s:#?}");
    assert_eq!(s.calls(), n);
    assert_eq!(s.reclaimed_objects, n);
    assert_eq!(s.pending_objects, 0);
    // Bounded: far below what was retired (960 MB of objects).
    assert!(
        s.peak_pending_bytes < (n * 24) / 10,
        "pending memory was not bounded: {} bytes",
        s.peak_pending_bytes
    );
    assert!(
        s.fallback_ratio() <= 0.01,
        "fallbacks {:.3} %",
        s.fallback_ratio() * 100.0
    );
}
