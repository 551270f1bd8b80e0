//! A read-mostly configuration behind an [`RcuCell`], with no `unsafe`:
//! readers on every thread look at the current configuration under a guard,
//! without any lock; a writer replaces the whole value now and then, and the
//! old one is retired with `kfree_rcu` in the same call.
//!
//! Every configuration carries a generation number and a check word derived
//! from it; readers verify the pair on every look (a torn or freed value
//! would fail) and that the generation they see never goes backwards.
//!
//! Run it with `cargo run --release -p krcu --example config` (add a number
//! of seconds, default 3: `... --example config -- 10`).

use krcu::RcuCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The application's configuration: replaced as a whole, never mutated.
struct Config {
    generation: u64,
    /// `generation` scrambled: readers check the pair.
    check: u64,
    servers: Vec<String>,
    timeout: Duration,
}

fn check_of(generation: u64) -> u64 {
    generation.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_5A5A_5A5A_5A5A
}

impl Config {
    fn new(generation: u64) -> Config {
        Config {
            generation,
            check: check_of(generation),
            servers: (0..1 + generation % 4)
                .map(|i| format!("10.0.0.{i}:{}", 8000 + generation % 100))
                .collect(),
            timeout: Duration::from_millis(100 + generation % 50),
        }
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // Poison it: a reader that still reached it would see a bad pair.
        self.check = !self.check;
    }
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // The process-wide instance: guards come from `krcu::rcu::read_lock`.
    let config = Arc::new(RcuCell::new(Config::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let (config, stop, reads) = (config.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let guard = krcu::rcu::read_lock();
                    let c = config.load(&guard).expect("always configured");
                    assert_eq!(c.check, check_of(c.generation), "torn or freed config");
                    assert!(c.generation >= last, "generation went backwards");
                    assert!(!c.servers.is_empty() && c.timeout >= Duration::from_millis(100));
                    last = c.generation;
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();

    let mut generation = 0;
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::time::Instant::now() < end {
        generation += 1;
        // Publishes the new value; the old one is freed after a grace
        // period. Refused only in NMI context, which this thread never is.
        config
            .store(Config::new(generation))
            .expect("refused only in NMI context");
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("a reader failed its check");
    }
    let guard = krcu::rcu::read_lock();
    let last = config.load(&guard).map(|c| c.generation);
    drop(guard);
    assert_eq!(last, Some(generation));
    println!(
        "{} configurations published, {} reads checked, last generation {}",
        generation,
        reads.load(Ordering::Relaxed),
        generation
    );
    drop(config);
    krcu::kvfree_rcu_barrier();
}
