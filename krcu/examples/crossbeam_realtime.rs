//! The program of `realtime.rs`, written with crossbeam-epoch 0.9 for the
//! README's comparison: a control thread prepares each `Setting` as an
//! `Owned` (allocating) and hands it over a bounded `sync_channel`; the
//! audio thread takes at most one per period with `try_recv`, swaps it into
//! an `Atomic` and retires the old one with `defer_destroy`, then processes
//! a block of samples with the current setting. Reader threads check the
//! current setting meanwhile.
//!
//! What it shows: crossbeam-epoch has no notion of a real-time thread.
//! `defer_destroy` allocates when the thread's bag of garbage fills (the
//! full bag is pushed on a global queue, one node each), and pinning now
//! and then collects garbage on the pinning thread, which runs the old
//! settings' destructors and frees them there. The real-time loop runs
//! inside `assert_no_alloc` as in `realtime.rs`, which here counts the
//! periods in which the audio thread called the allocator rather than
//! fail on the first; the summary line reports them.
//!
//! Same checks as `realtime.rs`: every setting's `Drop` poisons its check
//! word, readers verify it on every look, and at the end every setting
//! created has been dropped exactly once. crossbeam-epoch has no barrier:
//! the end pins and flushes until the garbage is collected (for at most
//! ten seconds).
//!
//! Run it with `cargo run --release -p krcu --example crossbeam_realtime`
//! (add a number of seconds, default 3). It exits non-zero on any bad
//! check (not on allocations: they are what it shows).

use assert_no_alloc::{AllocDisabler, assert_no_alloc, violation_count};
use crossbeam_epoch::{self as epoch, Atomic, Owned, Shared};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{TryRecvError, TrySendError};
use std::time::{Duration, Instant};

/// Counts every allocation and free made inside `assert_no_alloc`.
#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

/// Samples per audio period.
const BLOCK: usize = 256;
/// The length of a setting's filter.
const TAPS: usize = 16;

static CREATED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Failed checks: bad settings seen, double drops.
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
    /// Periods in which the thread called the allocator.
    allocating_periods: u64,
}

fn audio_thread(
    setting: &Atomic<Setting>,
    settings: &std::sync::mpsc::Receiver<Owned<Setting>>,
    stop: &AtomicBool,
) -> AudioReport {
    // Before the first period: register the thread with the collector.
    drop(epoch::pin());
    let mut block = [0.0f32; BLOCK];
    let mut report = AudioReport::default();

    assert_no_alloc(|| {
        while !stop.load(Ordering::Relaxed) {
            let violations_before = violation_count();
            let guard = epoch::pin();
            match settings.try_recv() {
                Ok(prepared) => {
                    let old = setting.swap(prepared, Ordering::AcqRel, &guard);
                    // SAFETY: `old` left `setting` in the swap, so no reader
                    // can load it again; readers that still hold it are
                    // pinned and hold its destruction off; only this swap
                    // retires it.
                    unsafe { guard.defer_destroy(old) };
                    report.published += 1;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            }
            let current = setting.load(Ordering::Acquire, &guard);
            // SAFETY: loaded under `guard`; a setting leaves `setting` only
            // by a swap followed by `defer_destroy`, and `setting` is never
            // null until the end, after this thread stopped.
            let current = unsafe { current.deref() };
            if !current.is_sound() {
                BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
            }
            for (i, sample) in block.iter_mut().enumerate() {
                *sample = ((report.periods as usize + i) % 64) as f32 / 64.0 - 0.5;
            }
            process(current, &mut block);
            drop(guard);
            report.periods += 1;
            if violation_count() != violations_before {
                report.allocating_periods += 1;
            }
            // Wait for the next period (a system call, no allocation).
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    std::hint::black_box(block);
    report
}

/// Pins and flushes until `expected` settings have been dropped (or ten
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
    let setting = Arc::new(Atomic::new(Setting::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let (to_audio, settings) = std::sync::mpsc::sync_channel::<Owned<Setting>>(4);

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (setting, stop, reads) = (setting.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let (mut n, mut last) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let guard = epoch::pin();
                    let s = setting.load(Ordering::Acquire, &guard);
                    // SAFETY: loaded under `guard`, as on the audio thread.
                    let s = unsafe { s.deref() };
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
        let (setting, stop) = (setting.clone(), stop.clone());
        std::thread::spawn(move || audio_thread(&setting, &settings, &stop))
    };

    // The control thread: prepares settings (allocating) and offers them
    // without ever blocking the audio thread.
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut generation = 0;
    let mut pending = None;
    while Instant::now() < end {
        let prepared = pending.take().unwrap_or_else(|| {
            generation += 1;
            Owned::new(Setting::new(generation))
        });
        match to_audio.try_send(prepared) {
            Ok(()) => {}
            Err(TrySendError::Full(back)) => pending = Some(back),
            // The audio thread stopped early: it panicked.
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

    // Every published setting but the current one is retired: collect them.
    let created = CREATED.load(Ordering::Relaxed);
    collect_garbage(created - 1);
    let dropped_while_live = DROPPED.load(Ordering::Relaxed);
    // An `Atomic` does not own its value: retire it by hand.
    let guard = epoch::pin();
    let last = setting.swap(Shared::null(), Ordering::AcqRel, &guard);
    // SAFETY: the readers and the audio thread are gone, and `last` left
    // `setting` in the swap.
    unsafe { guard.defer_destroy(last) };
    drop(guard);
    collect_garbage(created);
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped_while_live != created - 1 || dropped != created {
        eprintln!("drop count: {dropped_while_live}, then {dropped}, of {created} created");
        BAD_CHECKS.fetch_add(1, Ordering::Relaxed);
    }
    let bad = BAD_CHECKS.load(Ordering::Relaxed);
    println!(
        "crossbeam_realtime: {} reads, {} audio periods, {} updates published on the audio \
         thread, {} retired, {dropped} of {created} created dropped, {} allocating periods, \
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
