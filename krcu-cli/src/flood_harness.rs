//! The flood harness: floods one instance with `kfree_rcu` calls from the
//! sources a [`FloodConfig`] picks (task threads, the softirq worker, a
//! real signal handler) for a while, timing a sample of the calls. Used by
//! `krcu flood` (each source alone, then all) and `krcu policies` (all at
//! once, per cell).

use crate::progress;
use crate::signal::{self, OnSignal, Pace, Ring};
use crate::workload::{Histogram, Obj24};
use krcu::Krcu;
use serde::Serialize;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::time::{Duration, Instant};

/// Which sources flood, and how.
#[derive(Debug, Clone, Copy)]
pub struct FloodConfig {
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
}

impl FloodRun {
    pub fn calls(&self) -> u64 {
        self.sources.iter().map(|s| s.calls).sum()
    }
}

/// The hardirq source: each signal retires up to `burst` preallocated
/// objects.
struct IrqFlood<'k> {
    k: &'k Krcu,
    ring: Ring<Obj24>,
    hist: Histogram,
    calls: AtomicU64,
    empty: AtomicU64,
    burst: usize,
}

impl OnSignal for IrqFlood<'_> {
    fn on_signal(&self) {
        for _ in 0..self.burst {
            let Some(obj) = self.ring.pop() else {
                self.empty.fetch_add(1, Relaxed);
                return;
            };
            let t = Instant::now();
            let r = self.k.kfree_rcu(obj);
            self.hist.record(t.elapsed());
            self.calls.fetch_add(1, Relaxed);
            // Never refused outside NMI; were it, free nothing in a handler.
            std::mem::forget(r);
        }
    }
}

/// One task or softirq flooder: retire new objects until `stop`.
fn flood_loop(k: &Krcu, stop: &AtomicBool, hist: &Histogram, sample: u64, seed: u64) -> u64 {
    let mut n: u64 = 0;
    while !stop.load(Relaxed) {
        for _ in 0..256 {
            n += 1;
            let obj = Obj24::boxed(n ^ seed);
            if n.is_multiple_of(sample) {
                let t = Instant::now();
                let r = k.kfree_rcu(obj);
                hist.record(t.elapsed());
                r.expect("refused only in NMI context, which this thread never enters");
            } else {
                k.kfree_rcu(obj)
                    .expect("refused only in NMI context, which this thread never enters");
            }
        }
    }
    n
}

/// Floods `k` from the configured sources for `cfg.duration`; the caller
/// runs the barrier and reads the stats.
pub fn run_flood(k: &Krcu, cfg: &FloodConfig, quiet: bool) -> FloodRun {
    let stop = AtomicBool::new(false);
    let task_hists: Vec<Histogram> = (0..cfg.task_threads)
        .map(|_| Histogram::default())
        .collect();
    let soft_hist = Histogram::default();
    let irq = IrqFlood {
        k,
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
                let (stop, start) = (&stop, &start);
                s.spawn(move || {
                    start.wait();
                    flood_loop(k, stop, h, cfg.sample_every, i as u64)
                })
            })
            .collect();
        let soft = cfg.softirq.then(|| {
            let (stop, start, h) = (&stop, &start, &soft_hist);
            s.spawn(move || {
                let _softirq = krcu::context::enter_softirq();
                start.wait();
                flood_loop(k, stop, h, cfg.sample_every, 1 << 40)
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
                    Obj24::boxed(v)
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
    }
}
