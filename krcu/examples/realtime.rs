//! A real-time thread that publishes and retires values without
//! allocating, with no `unsafe`.
//!
//! The "audio" thread registers with `krcu::register_thread()`,
//! which makes it real-time for krcu and prepares, ahead of time, its RCU
//! reader and its `kfree_rcu` front block. A control thread prepares each
//! new `Setting` as an [`RcuBox`] (that is where the allocation happens)
//! and hands it over a bounded `sync_channel`. The audio thread, once per
//! period, takes at most one with `try_recv` (a bounded channel's
//! `try_recv` does not allocate, and takes no lock while no sender waits:
//! the control thread uses `try_send`, never a blocking `send`), publishes
//! it with `store_box`, which retires the old setting with `kfree_rcu`
//! without allocating, and then processes a block of samples with the
//! current setting. The old setting, and its heap buffer, are dropped
//! after a grace period on a reclaimer thread, never on the audio thread.
//! Reader threads check the current setting meanwhile.
//!
//! The proof: the whole real-time loop runs inside `assert_no_alloc`
//! (crate `assert_no_alloc`, whose global allocator counts each
//! allocation or free on a thread inside that closure, in release builds
//! too); the loop checks the count after every period and the program
//! fails on the first. At start it also shows that `RcuCell::store`, which
//! would box the value, is refused on the real-time thread with
//! `UpdateError::Realtime` and hands the value back.
//!
//! Every setting's `Drop` poisons its check word, so a reader that reached
//! a dropped setting would fail its check. At the end, after
//! `kvfree_rcu_barrier`, every setting created has been dropped exactly
//! once.
//!
//! Run it with `cargo run --release -p krcu --example realtime` (add a
//! number of seconds, default 3: `... --example realtime -- 10`). It exits
//! non-zero on any bad check or any allocation on the audio thread. The
//! same program with crossbeam-epoch is `crossbeam_realtime.rs`.

#![forbid(unsafe_code)]

use assert_no_alloc::{AllocDisabler, assert_no_alloc, violation_count};
use krcu::cell::UpdateError;
use krcu::{RcuBox, RcuCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{TryRecvError, TrySendError};
use std::time::Duration;

/// Counts every allocation and free made inside `assert_no_alloc`.
#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

/// Samples per audio period.
const BLOCK: usize = 256;
/// The length of a setting's filter.
const TAPS: usize = 16;

static CREATED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Failed checks: bad settings seen, double drops, allocations on the
/// audio thread.
static BAD_CHECKS: AtomicU64 = AtomicU64::new(0);

fn check_of(generation: u64) -> u64 {
    generation.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A5A_5A5A_5A5A_5A5A
}

/// What the audio thread plays with: replaced as a whole, never mutated.
struct Setting {
    generation: u64,
    /// `generation` scrambled; `Drop` inverts it.
    check: u64,
    gain: f32,
    /// On the heap: freeing it on the audio thread would call the allocator.
    filter: Vec<f32>,
}

impl Setting {
    fn new(generation: u64) -> Setting {
        CREATED.fetch_add(1, Ordering::Relaxed);
        Setting {
            generation,
            check: check_of(generation),
            gain: 0.5 + (generation % 10) as f32 / 20.0,
            filter: (0..TAPS).map(|i| 1.0 / (1 + i) as f32).collect(),
        }
    }

    fn is_sound(&self) -> bool {
        self.check == check_of(self.generation) && self.filter.len() == TAPS
    }
}

impl Drop for Setting {
    fn drop(&mut self) {
        if !self.is_sound() {
            eprintln!("setting {} dropped twice", self.generation);
            BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
        }
        self.check = !self.check;
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// One period of "audio": filter and scale a block of samples in place.
fn process(setting: &Setting, block: &mut [f32; BLOCK]) {
    for i in (TAPS..BLOCK).rev() {
        let filtered: f32 = (0..TAPS).map(|t| block[i - t] * setting.filter[t]).sum();
        block[i] = filtered * setting.gain;
    }
}

/// What the audio thread did.
#[derive(Default)]
struct AudioReport {
    periods: u64,
    published: u64,
    /// Periods in which the thread called the allocator (must stay 0).
    allocating_periods: u64,
}

fn audio_thread(
    cell: &RcuCell<Setting>,
    settings: &std::sync::mpsc::Receiver<RcuBox<Setting>>,
    stop: &AtomicBool,
) -> AudioReport {
    // Before the first period: declare the thread real-time and prepare it.
    let reader = krcu::register_thread();
    match cell.store(Setting::new(u64::MAX)) {
        Err(UpdateError::Realtime(refused)) => {
            println!(
                "realtime: store() on the audio thread refused with UpdateError::Realtime, \
                 setting {} handed back",
                refused.generation
            );
        }
        other => {
            eprintln!("store() on a real-time thread was not refused: {other:?}");
            BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut block = [0.0f32; BLOCK];
    let mut report = AudioReport::default();
    let violations_before = violation_count();

    assert_no_alloc(|| {
        while !stop.load(Ordering::Relaxed) {
            match settings.try_recv() {
                Ok(prepared) => {
                    // Publishes without allocating; the old setting is
                    // retired with kfree_rcu, which neither allocates nor
                    // frees here. Refused only in NMI context.
                    if cell.store_box(prepared).is_err() {
                        BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
                    }
                    report.published += 1;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            }
            {
                let guard = reader.read_lock();
                let setting = cell.load(&guard).expect("always set");
                if !setting.is_sound() {
                    BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
                }
                for (i, sample) in block.iter_mut().enumerate() {
                    *sample = ((report.periods as usize + i) % 64) as f32 / 64.0 - 0.5;
                }
                process(setting, &mut block);
            }
            report.periods += 1;
            if violation_count() != violations_before {
                report.allocating_periods += 1;
                // Fail at once; the message is printed outside.
                break;
            }
            // Wait for the next period (a system call, no allocation).
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    if report.allocating_periods != 0 {
        eprintln!(
            "the audio thread called the allocator in period {}",
            report.periods
        );
        BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
    }
    std::hint::black_box(block);
    report
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let cell = Arc::new(RcuCell::new(Setting::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let (to_audio, settings) = std::sync::mpsc::sync_channel::<RcuBox<Setting>>(4);

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (cell, stop, reads) = (cell.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let (mut n, mut last) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let guard = krcu::rcu::read_lock();
                    let s = cell.load(&guard).expect("always set");
                    if !s.is_sound() || s.generation < last {
                        eprintln!("bad setting: generation {} after {last}", s.generation);
                        BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
                    }
                    last = s.generation;
                    n += 1;
                }
                reads.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let audio = {
        let (cell, stop) = (cell.clone(), stop.clone());
        std::thread::spawn(move || audio_thread(&cell, &settings, &stop))
    };

    // The control thread: prepares settings (allocating) and offers them
    // without ever blocking the audio thread.
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut generation = 0;
    let mut pending = None;
    while std::time::Instant::now() < end {
        let prepared = pending.take().unwrap_or_else(|| {
            generation += 1;
            RcuBox::new(Setting::new(generation))
        });
        match to_audio.try_send(prepared) {
            Ok(()) => {}
            Err(TrySendError::Full(back)) => pending = Some(back),
            // The audio thread stopped early: it failed a check.
            Err(TrySendError::Disconnected(_)) => break,
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    stop.store(true, Ordering::Relaxed);
    let report = audio.join().expect("the audio thread panicked");
    for r in readers {
        r.join().expect("a reader panicked");
    }
    // Settings prepared but never published are dropped here, at once.
    drop(pending);
    drop(to_audio);

    // Every published setting but the cell's is retired and now dropped.
    krcu::kvfree_rcu_barrier();
    let (created, dropped_while_live) = (
        CREATED.load(Ordering::Relaxed),
        DROPPED.load(Ordering::Relaxed),
    );
    drop(cell);
    krcu::kvfree_rcu_barrier();
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped_while_live != created - 1 || dropped != created {
        eprintln!("drop count: {dropped_while_live}, then {dropped}, of {created} created");
        BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
    }
    let bad = BAD_CHECKS.load(Ordering::Relaxed);
    println!(
        "realtime: {} reads, {} audio periods, {} updates published on the audio thread, \
         {} retired, {dropped} of {created} created dropped, {} allocating periods, \
         {bad} bad checks",
        reads.load(Ordering::Relaxed),
        report.periods,
        report.published,
        report.published,
        report.allocating_periods,
    );
    if bad != 0 {
        std::process::exit(1);
    }
}
