//! The flood harness: floods one instance with `kfree_rcu` calls from the
//! sources a [`FloodConfig`] picks (task threads, the softirq worker, a
//! real signal handler) for a while, timing a sample of the calls, on one
//! of two paths ([`RetirePath`]): `Box`es by `kfree_rcu`, or `SlabBox`es
//! by `kfree_rcu_slab` into sheaves. Used by `krcu flood` (each source
//! alone, then all) and `krcu policies` (all at once, per cell).

use crate::progress;
use crate::signal::{self, OnSignal, Owned, Pace, Ring};
use crate::workload::{Histogram, Obj24};
use krcu::Krcu;
use krcu::page::Gfp;
use krcu::slab::{SlabBox, SlabCache, SlabStats};
use serde::Serialize;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

/// What a flood retires, and by which call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RetirePath {
    /// `Box`es by `kfree_rcu` (the kvfree blocks, under the policy).
    #[default]
    Box,
    /// `SlabBox`es of a cache of the instance by `kfree_rcu_slab`: into the
    /// thread's `rcu_free` sheaf (a CPU's from the signal handler, which
    /// takes only trylocks), the kvfree blocks when no sheaf can be had.
    Sheaf,
}

impl RetirePath {
    pub fn name(self) -> &'static str {
        match self {
            RetirePath::Box => "box",
            RetirePath::Sheaf => "sheaf",
        }
    }
}

/// Which sources flood, and how.
#[derive(Debug, Clone, Copy)]
pub struct FloodConfig {
    pub path: RetirePath,
    pub duration: Duration,
    pub task_threads: usize,
    pub softirq: bool,
    pub hardirq: bool,
    /// Objects per signal.
    pub burst: usize,
    /// Time one task/softirq call in this many.
    pub sample_every: u64,
}

/// Latency and count of one source in one run.
#[derive(Debug, Clone, Serialize)]
pub struct SourceResult {
    pub source: &'static str,
    pub calls: u64,
    pub timed_calls: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl SourceResult {
    fn new(source: &'static str, calls: u64, h: &Histogram) -> SourceResult {
        SourceResult {
            source,
            calls,
            timed_calls: h.count(),
            p50_ns: h.quantile(0.5),
            p99_ns: h.quantile(0.99),
            p999_ns: h.quantile(0.999),
            max_ns: h.max(),
        }
    }
}

/// What one flood run measured.
pub struct FloodRun {
    pub elapsed: Duration,
    pub sources: Vec<SourceResult>,
    pub merged: Histogram,
    pub signals: u64,
    pub ring_empty: u64,
    /// The sheaf path: the cache's statistics when the flood stopped.
    pub sheaf: Option<SlabStats>,
    /// The sheaf path: objects the softirq worker could not allocate
    /// without sleeping (`Gfp::ATOMIC`), so did not retire.
    pub alloc_failures: u64,
}

impl FloodRun {
    pub fn calls(&self) -> u64 {
        self.sources.iter().map(|s| s.calls).sum()
    }
}

/// The objects of one path: how one is made and how it is retired.
trait Objects: Sync {
    type Owned: Owned<Target = Obj24>;
    /// A new object holding `value`, allocated under `gfp`; `None` when
    /// none could be had under it.
    fn make(&self, value: u64, gfp: Gfp) -> Option<Self::Owned>;
    /// Retires `obj` on `k`; gives it back when refused (only in NMI
    /// context, which no flooder enters).
    fn retire(&self, k: &Krcu, obj: Self::Owned) -> Result<(), Self::Owned>;
}

/// The `Box` path.
struct Boxes;

impl Objects for Boxes {
    type Owned = Box<Obj24>;
    fn make(&self, value: u64, _: Gfp) -> Option<Box<Obj24>> {
        Some(Obj24::boxed(value))
    }
    #[inline]
    fn retire(&self, k: &Krcu, obj: Box<Obj24>) -> Result<(), Box<Obj24>> {
        k.kfree_rcu(obj).map_err(|e| e.0)
    }
}

/// The sheaf path: objects of one cache of the instance, shared by every
/// source.
struct Sheaves(SlabCache<Obj24>);

impl Objects for Sheaves {
    type Owned = SlabBox<Obj24>;
    fn make(&self, value: u64, gfp: Gfp) -> Option<SlabBox<Obj24>> {
        SlabBox::new_in_gfp(&self.0, gfp, Obj24::new(value)).ok()
    }
    #[inline]
    fn retire(&self, k: &Krcu, obj: SlabBox<Obj24>) -> Result<(), SlabBox<Obj24>> {
        k.kfree_rcu_slab(obj).map_err(|e| e.into_inner())
    }
}

const NEVER_REFUSED: &str = "refused only in NMI context, which this thread never enters";

/// The hardirq source: each signal retires up to `burst` preallocated
/// objects.
struct IrqFlood<'k, O: Objects> {
    k: &'k Krcu,
    objects: &'k O,
    ring: Ring<O::Owned>,
    hist: Histogram,
    calls: AtomicU64,
    empty: AtomicU64,
    burst: usize,
}

impl<O: Objects> OnSignal for IrqFlood<'_, O> {
    fn on_signal(&self) {
        for _ in 0..self.burst {
            let Some(obj) = self.ring.pop() else {
                self.empty.fetch_add(1, Relaxed);
                return;
            };
            let t = Instant::now();
            let r = self.objects.retire(self.k, obj);
            self.hist.record(t.elapsed());
            self.calls.fetch_add(1, Relaxed);
            // Never refused outside NMI; were it, free nothing in a handler.
            std::mem::forget(r);
        }
    }
}

/// One task or softirq flooder: retire new objects, allocated under `gfp`,
/// until `stop`; an object that could not be had under `gfp` counts in
/// `failures`.
#[allow(clippy::too_many_arguments)]
fn flood_loop<O: Objects>(
    k: &Krcu,
    objects: &O,
    gfp: Gfp,
    stop: &AtomicBool,
    hist: &Histogram,
    failures: &AtomicU64,
    sample: u64,
    seed: u64,
) -> u64 {
    let mut n: u64 = 0;
    while !stop.load(Relaxed) {
        for _ in 0..256 {
            let Some(obj) = objects.make(n ^ seed, gfp) else {
                failures.fetch_add(1, Relaxed);
                continue;
            };
            n += 1;
            if n.is_multiple_of(sample) {
                let t = Instant::now();
                let r = objects.retire(k, obj);
                hist.record(t.elapsed());
                assert!(r.is_ok(), "{NEVER_REFUSED}");
            } else {
                assert!(objects.retire(k, obj).is_ok(), "{NEVER_REFUSED}");
            }
        }
    }
    n
}

/// Floods `k` from the configured sources for `cfg.duration`, on the
/// configured path; the caller runs the barrier and reads the stats.
pub fn run_flood(k: &Krcu, cfg: &FloodConfig, quiet: bool) -> FloodRun {
    match cfg.path {
        RetirePath::Box => flood_with(k, &Boxes, cfg, quiet),
        RetirePath::Sheaf => {
            let sheaves = Sheaves(
                k.slab_cache::<Obj24>("flood")
                    .expect("a 24-byte object fits a slab"),
            );
            let mut run = flood_with(k, &sheaves, cfg, quiet);
            run.sheaf = Some(sheaves.0.stats());
            run
        }
    }
}

fn flood_with<O: Objects>(k: &Krcu, objects: &O, cfg: &FloodConfig, quiet: bool) -> FloodRun {
    let stop = AtomicBool::new(false);
    let failures = AtomicU64::new(0);
    let task_hists: Vec<Histogram> = (0..cfg.task_threads)
        .map(|_| Histogram::default())
        .collect();
    let soft_hist = Histogram::default();
    let irq = IrqFlood {
        k,
        objects,
        ring: Ring::new(4096),
        hist: Histogram::default(),
        calls: AtomicU64::new(0),
        empty: AtomicU64::new(0),
        burst: cfg.burst,
    };
    let route = cfg.hardirq.then(|| signal::route(&irq));
    let parties = 1 + cfg.task_threads + usize::from(cfg.softirq) + 2 * usize::from(cfg.hardirq);
    let start = Barrier::new(parties);
    let mut signals = 0;
    let mut elapsed = Duration::ZERO;
    let (mut task_calls, mut soft_calls) = (0, 0);
    std::thread::scope(|s| {
        let tasks: Vec<_> = task_hists
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let (stop, start, failures) = (&stop, &start, &failures);
                s.spawn(move || {
                    start.wait();
                    let sample = cfg.sample_every;
                    flood_loop(k, objects, Gfp::KERNEL, stop, h, failures, sample, i as u64)
                })
            })
            .collect();
        let soft = cfg.softirq.then(|| {
            let (stop, start, h, failures) = (&stop, &start, &soft_hist, &failures);
            s.spawn(move || {
                let _softirq = krcu::context::enter_softirq();
                start.wait();
                // No sleeping for memory in softirq context.
                let sample = cfg.sample_every;
                flood_loop(k, objects, Gfp::ATOMIC, stop, h, failures, sample, 1 << 40)
            })
        });
        let irq_threads = cfg.hardirq.then(|| {
            // The interrupted thread sleeps: a handler never lands in a
            // thread holding a lock its kfree_rcu may take (under `nowait`,
            // `zone->lock`, taken under the raw krc lock), where it would
            // spin forever.
            let (victim, thread) = signal::spawn_sleeper(s, &start, &stop);
            let mut v = 0u64;
            let sender = signal::spawn_sender(
                s,
                &start,
                &stop,
                &irq.ring,
                Some(thread),
                Pace::Yield,
                move || {
                    v += 1;
                    // The sender is a task thread: it may wait for memory.
                    objects
                        .make(v, Gfp::KERNEL)
                        .unwrap_or_else(|| panic!("krcu: the arena is full"))
                },
            );
            (victim, sender)
        });
        start.wait();
        let t0 = Instant::now();
        progress::wait("flood", cfg.duration, quiet);
        stop.store(true, Relaxed);
        task_calls = tasks.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        soft_calls = soft.map_or(0, |t| t.join().unwrap_or(0));
        if let Some((victim, sender)) = irq_threads {
            signals = sender.join().unwrap_or(0);
            victim.join().ok();
        }
        elapsed = t0.elapsed();
    });
    drop(route);
    let task_hist = Histogram::default();
    for h in &task_hists {
        task_hist.merge(h);
    }
    let merged = Histogram::default();
    let mut sources = Vec::new();
    if cfg.task_threads > 0 {
        sources.push(SourceResult::new("task", task_calls, &task_hist));
        merged.merge(&task_hist);
    }
    if cfg.softirq {
        sources.push(SourceResult::new("softirq", soft_calls, &soft_hist));
        merged.merge(&soft_hist);
    }
    if cfg.hardirq {
        sources.push(SourceResult::new(
            "hardirq",
            irq.calls.load(SeqCst),
            &irq.hist,
        ));
        merged.merge(&irq.hist);
    }
    FloodRun {
        elapsed,
        sources,
        merged,
        signals,
        ring_empty: irq.empty.load(SeqCst),
        sheaf: None,
        alloc_failures: failures.load(SeqCst),
    }
}
