//! A read-mostly configuration behind an [`RcuCell`], with no `unsafe`:
//! readers on every thread look at the current configuration under a guard,
//! without any lock; a writer replaces the whole value now and then, and the
//! old one is retired with `kfree_rcu` in the same call.
//!
//! Every configuration carries a generation number and a check word derived
//! from it; its `Drop` poisons the check word, so a reader that reached a
//! freed (or retired and already dropped) value would see a bad pair.
//! Readers verify the pair on every look and that the generation they see
//! never goes backwards. At the end, after `kvfree_rcu_barrier`, every
//! configuration created has been dropped exactly once.
//!
//! Run it with `cargo run --release -p krcu --example config` (add a number
//! of seconds, default 3: `... --example config -- 10`). It exits non-zero
//! on any bad check. The same program with crossbeam-epoch is
//! `crossbeam_config.rs`.

#![forbid(unsafe_code)]

use krcu::RcuCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

static CREATED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Failed checks: bad pairs seen by readers, values dropped twice.
static BAD_CHECKS: AtomicU64 = AtomicU64::new(0);

/// The application's configuration: replaced as a whole, never mutated.
struct Config {
    generation: u64,
    /// `generation` scrambled: readers check the pair; `Drop` inverts it.
    check: u64,
    servers: Vec<String>,
    timeout: Duration,
}

fn check_of(generation: u64) -> u64 {
    generation.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_5A5A_5A5A_5A5A
}

impl Config {
    fn new(generation: u64) -> Config {
        CREATED.fetch_add(1, Ordering::Relaxed);
        Config {
            generation,
            check: check_of(generation),
            servers: (0..1 + generation % 4)
                .map(|i| format!("10.0.0.{i}:{}", 8000 + generation % 100))
                .collect(),
            timeout: Duration::from_millis(100 + generation % 50),
        }
    }

    /// Whether the value is whole and not dropped.
    fn is_sound(&self) -> bool {
        self.check == check_of(self.generation)
            && !self.servers.is_empty()
            && self.timeout >= Duration::from_millis(100)
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        if self.check != check_of(self.generation) {
            eprintln!("config {} dropped twice", self.generation);
            BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
        }
        // Poison it: a reader that still reached it would see a bad pair.
        self.check = !self.check;
        DROPPED.fetch_add(1, Ordering::Relaxed);
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
                    if !c.is_sound() || c.generation < last {
                        eprintln!("bad config: generation {} after {last}", c.generation);
                        BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
                    }
                    last = c.generation;
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();

    let mut generation = 0;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        generation += 1;
        // Publishes the new value; the old one is retired with kfree_rcu and
        // dropped after a grace period. Refused only in NMI context, on a
        // real-time thread or in a signal handler: this thread is none.
        config
            .store(Config::new(generation))
            .expect("an ordinary thread");
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("a reader panicked");
    }
    let guard = krcu::rcu::read_lock();
    let last = config.load(&guard).map(|c| c.generation);
    drop(guard);
    if last != Some(generation) {
        eprintln!("the cell holds generation {last:?}, not the last stored {generation}");
        BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
    }

    // Everything retired so far is dropped; only the cell's value is live.
    krcu::kvfree_rcu_barrier();
    let retired = generation;
    let dropped_while_live = DROPPED.load(Ordering::Relaxed);
    // Dropping the cell retires its value too.
    drop(config);
    krcu::kvfree_rcu_barrier();
    let (created, dropped) = (
        CREATED.load(Ordering::Relaxed),
        DROPPED.load(Ordering::Relaxed),
    );
    if dropped_while_live != retired || dropped != created {
        eprintln!(
            "drop count: {dropped_while_live} of {retired} retired, then {dropped} of {created}"
        );
        BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
    }
    let bad = BAD_CHECKS.load(Ordering::Relaxed);
    println!(
        "config: {} reads, {generation} updates, {retired} retired, {dropped} of {created} \
         created dropped, {bad} bad checks",
        reads.load(Ordering::Relaxed),
    );
    if bad != 0 {
        std::process::exit(1);
    }
}
