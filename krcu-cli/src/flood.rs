//! `krcu flood`: the sources of an RCU call flood that Thomas Gleixner listed (2020). Task threads
//! (syscall-driven callers), the softirq worker, a real signal handler
//! standing for a device interrupt, and NMI, which `kfree_rcu` refuses.
//! Each source floods a fresh instance alone, then all flood together;
//! per source: call latency percentiles, fallback rate, peak pending
//! memory and validator reports. The flooding itself is
//! [`flood_harness`](crate::flood_harness), shared with `krcu policies`.

use crate::args::{self, CliError, CmdResult};
use crate::flood_harness::{FloodConfig, FloodRun, RetirePath, run_flood};
use crate::output::{emit, round};
use crate::progress;
use crate::table::{Column, Table};
use crate::workload::{Histogram, Obj24, Reports, Setup};
use krcu::context::PreemptModel;
use krcu::kvfree::{KvfreeStats, Policy};
use serde::Serialize;
use std::time::{Duration, Instant};

/// Options of `krcu flood`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Total run time, split over the phases: a number with a unit (ns,
    /// us, ms, s, m or h), e.g. 4s or 800ms.
    #[arg(long, default_value = "4s", value_parser = args::duration)]
    duration: Duration,
    /// Task threads flooding, 1 to 256 [default: one per CPU].
    #[arg(long, allow_negative_numbers = true, value_parser = args::threads)]
    threads: Option<usize>,
    /// The kfree_rcu policy.
    #[arg(long, default_value_t = Policy::default())]
    policy: Policy,
    /// The preempt model.
    #[arg(long, default_value_t = PreemptModel::Full)]
    preempt: PreemptModel,
    /// Objects each signal handler run retires, 1 to 4096.
    #[arg(long, default_value_t = 8, allow_negative_numbers = true, value_parser = args::burst)]
    burst: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// One row of `krcu flood`.
#[derive(Debug, Serialize)]
pub struct PhaseResult {
    pub source: &'static str,
    pub elapsed_s: f64,
    pub calls: u64,
    pub calls_per_s: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub fallback_pct: f64,
    /// Of those: objects that found no block (cache empty, inline
    /// allocation failed or not allowed by the policy).
    pub no_block_pct: f64,
    /// Of those: objects that found every `krc` lock taken (a holder
    /// preempted, or the monitor or a reclaimer there).
    pub lock_busy_pct: f64,
    pub peak_pending_bytes: u64,
    pub reports: u64,
    /// NMI only: what kfree_rcu answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// `krcu flood`'s result.
#[derive(Debug, Serialize)]
pub struct FloodResult {
    pub policy: String,
    pub preempt: String,
    pub task_threads: usize,
    pub signals_sent: u64,
    /// Signals that found no preallocated object left.
    pub signals_ring_empty: u64,
    pub phases: Vec<PhaseResult>,
}

fn pct(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

fn phase_row(
    source: &'static str,
    run: &FloodRun,
    h: &Histogram,
    s: &KvfreeStats,
    reports: &Reports,
) -> PhaseResult {
    PhaseResult {
        source,
        elapsed_s: round(run.elapsed.as_secs_f64(), 3),
        calls: run.calls(),
        calls_per_s: round(run.calls() as f64 / run.elapsed.as_secs_f64(), 0),
        p50_ns: h.quantile(0.5),
        p99_ns: h.quantile(0.99),
        p999_ns: h.quantile(0.999),
        max_ns: h.max(),
        fallback_pct: round(s.fallback_ratio() * 100.0, 4),
        no_block_pct: round(pct(s.list_fallbacks, s.calls()), 4),
        lock_busy_pct: round(pct(s.lock_busy_fallbacks, s.calls()), 4),
        peak_pending_bytes: s.peak_pending_bytes,
        reports: reports.total(),
        refused: None,
    }
}

/// NMI: every call is refused and the object handed back.
fn nmi_phase(setup: &Setup, calls: u64) -> Result<PhaseResult, CliError> {
    let reports = Reports::default();
    let k = setup.build(&reports)?;
    let h = Histogram::default();
    let mut refused = 0;
    let mut message = String::new();
    let t0 = Instant::now();
    for i in 0..calls {
        let back = {
            let _nmi = krcu::context::enter_nmi();
            let t = Instant::now();
            let r = k.kfree_rcu(Obj24::boxed(i));
            h.record(t.elapsed());
            r
        };
        if let Err(e) = back {
            refused += 1;
            if message.is_empty() {
                message = e.to_string();
            }
            drop(e.0); // handed back: ours to free, outside NMI
        }
    }
    let elapsed = t0.elapsed();
    k.kvfree_rcu_barrier();
    let s = k.stats();
    if refused != calls || s.refused_nmi != calls {
        return Err(CliError::Failed(format!(
            "NMI: {refused} of {calls} calls refused (stats say {})",
            s.refused_nmi
        )));
    }
    Ok(PhaseResult {
        source: "nmi",
        elapsed_s: round(elapsed.as_secs_f64(), 3),
        calls,
        calls_per_s: round(calls as f64 / elapsed.as_secs_f64(), 0),
        p50_ns: h.quantile(0.5),
        p99_ns: h.quantile(0.99),
        p999_ns: h.quantile(0.999),
        max_ns: h.max(),
        fallback_pct: 0.0,
        no_block_pct: 0.0,
        lock_busy_pct: 0.0,
        peak_pending_bytes: s.peak_pending_bytes,
        reports: reports.total(),
        refused: Some(format!("{refused} refused: {message}")),
    })
}

pub fn run(a: &Args) -> CmdResult {
    let threads = a.threads.unwrap_or_else(args::cpus);
    let mut setup = Setup::new(a.policy, a.preempt);
    setup.validator = true;
    let phase = a.duration / 4;
    let base = FloodConfig {
        path: RetirePath::Box,
        duration: phase,
        task_threads: 0,
        softirq: false,
        hardirq: false,
        burst: a.burst,
        sample_every: 8,
    };
    let phases: [(&'static str, FloodConfig); 4] = [
        (
            "task",
            FloodConfig {
                task_threads: threads,
                ..base
            },
        ),
        (
            "softirq",
            FloodConfig {
                softirq: true,
                ..base
            },
        ),
        (
            "hardirq",
            FloodConfig {
                hardirq: true,
                ..base
            },
        ),
        (
            "all",
            FloodConfig {
                task_threads: threads,
                softirq: true,
                hardirq: true,
                ..base
            },
        ),
    ];
    let mut rows = Vec::new();
    let mut signals = 0;
    let mut ring_empty = 0;
    let mut p = progress::Progress::new("flood", 5, a.json);
    for (name, cfg) in phases {
        p.set(rows.len() as u64, name);
        let reports = Reports::default();
        let k = setup.build(&reports)?;
        let run = run_flood(&k, &cfg, true);
        k.kvfree_rcu_barrier();
        let s = k.stats();
        signals += run.signals;
        ring_empty += run.ring_empty;
        rows.push(phase_row(name, &run, &run.merged, &s, &reports));
    }
    p.set(4, "nmi");
    rows.push(nmi_phase(&setup, 10_000)?);
    p.finish();
    let result = FloodResult {
        policy: a.policy.to_string(),
        preempt: a.preempt.to_string(),
        task_threads: threads,
        signals_sent: signals,
        signals_ring_empty: ring_empty,
        phases: rows,
    };
    emit(a.json, &result, render);
    Ok(())
}

fn render(r: &FloodResult) -> String {
    let columns = [
        Column::<PhaseResult>::new("source", |p| p.source.to_string()),
        Column::new("calls", |p| p.calls.to_string()),
        Column::new("M calls/s", |p| args::show_millions(p.calls_per_s)),
        Column::new("p50", |p| args::show_ns(p.p50_ns)),
        Column::new("p99", |p| args::show_ns(p.p99_ns)),
        Column::new("p99.9", |p| args::show_ns(p.p999_ns)),
        Column::new("max", |p| args::show_ns(p.max_ns)),
        Column::new("fallback %", |p| format!("{:.3}", p.fallback_pct)),
        Column::new("peak pending", |p| args::show_bytes(p.peak_pending_bytes)),
        Column::new("reports", |p| p.reports.to_string()),
    ];
    let t = Table::of(&columns, &r.phases);
    let mut out = format!(
        "krcu flood: policy {}, preempt {}, {} task threads; each source alone, then all at once\n\n",
        r.policy, r.preempt, r.task_threads
    );
    out.push_str(&t.render());
    out.push('\n');
    out.push_str(
        "task: threads retiring new objects; softirq: krcu's worker context; hardirq: a real\n",
    );
    out.push_str(
        "SIGUSR1 handler retiring preallocated objects; latencies of one call in 8 (every\n",
    );
    out.push_str("handler call), fallback % of all calls, validator on.\n");
    for p in &r.phases {
        if let Some(refused) = &p.refused {
            out.push_str(&format!("nmi: {refused}\n"));
        }
    }
    out
}
