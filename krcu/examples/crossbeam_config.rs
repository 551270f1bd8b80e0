//! The program of `config.rs`, written with crossbeam-epoch 0.9 for the
//! README's comparison: a read-mostly configuration behind an `Atomic`,
//! readers on every thread under `epoch::pin()`, a writer that swaps in a
//! new value and retires the old one with `defer_destroy`. Each
//! dereference and each retirement is an `unsafe` block whose `SAFETY`
//! comment the programmer has to get right.
//!
//! Same checks as `config.rs`: every configuration's `Drop` poisons its
//! check word, readers verify it and the generation on every look, and at
//! the end every configuration created has been dropped exactly once.
//! crossbeam-epoch has no barrier: the end pins and flushes until the
//! garbage is collected (for at most ten seconds).
//!
//! Run it with `cargo run --release -p krcu --example crossbeam_config`
//! (add a number of seconds, default 3). It exits non-zero on any bad
//! check.

use crossbeam_epoch::{self as epoch, Atomic, Owned, Shared};
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

/// Pins and flushes until `expected` values have been dropped (or ten
/// seconds have passed): crossbeam-epoch frees garbage only as pinning
/// threads advance the epoch.
fn collect_garbage(expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while DROPPED.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        epoch::pin().flush();
    }
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // The default collector: guards come from `epoch::pin`.
    let config = Arc::new(Atomic::new(Config::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let (config, stop, reads) = (config.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let guard = epoch::pin();
                    let current = config.load(Ordering::Acquire, &guard);
                    // SAFETY: the pointer was loaded under `guard`; a value
                    // leaves `config` only by a swap followed by
                    // `defer_destroy`, which frees it after every guard
                    // pinned before that swap is gone, and `config` is
                    // never null until the end, after the readers stopped.
                    let c = unsafe { current.deref() };
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
        // Publishes the new value and retires the old one.
        let guard = epoch::pin();
        let old = config.swap(
            Owned::new(Config::new(generation)),
            Ordering::AcqRel,
            &guard,
        );
        // SAFETY: `old` left `config` in the swap, so no reader can load it
        // again; readers that still hold it are pinned and hold its
        // destruction off; only this swap retires it.
        unsafe { guard.defer_destroy(old) };
        drop(guard);
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("a reader panicked");
    }
    let guard = epoch::pin();
    // SAFETY: loaded under `guard`, as in the readers.
    let last = unsafe { config.load(Ordering::Acquire, &guard).as_ref() }.map(|c| c.generation);
    drop(guard);
    if last != Some(generation) {
        eprintln!("`config` holds generation {last:?}, not the last stored {generation}");
        BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
    }

    // Everything retired so far is dropped; only the current value is live.
    let retired = generation;
    collect_garbage(retired);
    let dropped_while_live = DROPPED.load(Ordering::Relaxed);
    // An `Atomic` does not own its value: retire it by hand.
    let guard = epoch::pin();
    let last = config.swap(Shared::null(), Ordering::AcqRel, &guard);
    // SAFETY: the readers are gone and `last` left `config` in the swap.
    unsafe { guard.defer_destroy(last) };
    drop(guard);
    collect_garbage(retired + 1);
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
        "crossbeam_config: {} reads, {generation} updates, {retired} retired, {dropped} of \
         {created} created dropped, {bad} bad checks",
        reads.load(Ordering::Relaxed),
    );
    if bad != 0 {
        std::process::exit(1);
    }
}
