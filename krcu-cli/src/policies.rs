//! `krcu policies`: every policy × every preempt model × raw-lock nesting
//! proof on and off, each over the same short flood (task threads, the
//! softirq worker and a signal handler at once), with the validator on;
//! on the `Box` path (`kfree_rcu`), the sheaf path (`kfree_rcu_slab` of
//! `SlabBox`es) or both (`--path`).
//! This module measures and prints them (the types are in
//! [`policies_result`](crate::policies_result)); `--plot` draws them
//! ([`plot`](crate::plot)).

use crate::args::{self, CliError, CmdResult};
use crate::flood_harness::{FloodConfig, RetirePath, run_flood};
use crate::output::{emit, round};
use crate::policies_result::{Cell, PoliciesResult, Summary, group, summarize};
use crate::progress::Progress;
use crate::table::{Column, Table};
use crate::workload::{Reports, Setup};
use krcu::context::PreemptModel;
use krcu::kvfree::Policy;
use std::path::PathBuf;
use std::time::Duration;

/// Options of `krcu policies`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Flood time per cell (56 cells per path unless filtered): a number
    /// with a unit (ns, us, ms, s, m or h), e.g. 250ms.
    #[arg(long, default_value = "250ms", value_parser = args::duration)]
    pub duration: Duration,
    /// Task threads flooding, 1 to 256 [default: one per CPU].
    #[arg(long, allow_negative_numbers = true, value_parser = args::threads)]
    pub threads: Option<usize>,
    /// Only this policy.
    #[arg(long)]
    pub policy: Option<Policy>,
    /// Only this preempt model.
    #[arg(long)]
    pub preempt: Option<PreemptModel>,
    /// What every source retires: `box` (`Box`es by `kfree_rcu`), `sheaf`
    /// (`SlabBox`es of a cache of the instance by `kfree_rcu_slab`, into
    /// the sheaves; the signal handler's take only trylocks, and what finds
    /// no sheaf goes to the kvfree blocks under the policy), or both,
    /// comma-separated (`box,sheaf`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "box")]
    pub path: Vec<RetirePath>,
    /// Draw the table as an SVG chart into this file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Checks `--plot` before the run: an `.svg` in a directory that exists,
/// writable.
pub fn check_plot_path(path: &std::path::Path) -> Result<(), CliError> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(CliError::Usage(format!(
            "--plot {}: the plot is SVG, give a file name ending in .svg",
            path.display()
        )));
    }
    std::fs::File::create(path).map_err(|e| {
        CliError::Usage(format!(
            "--plot {}: cannot write there: {e}",
            path.display()
        ))
    })?;
    Ok(())
}

/// Runs the cells; used by `krcu policies` and the tour.
pub fn measure(a: &Args, quiet: bool) -> Result<PoliciesResult, CliError> {
    let threads = a.threads.unwrap_or_else(args::cpus);
    let policies: Vec<Policy> = Policy::ALL
        .into_iter()
        .filter(|p| a.policy.is_none_or(|q| q == *p))
        .collect();
    let models: Vec<PreemptModel> = PreemptModel::ALL
        .into_iter()
        .filter(|m| a.preempt.is_none_or(|q| q == *m))
        .collect();
    let paths: Vec<RetirePath> = [RetirePath::Box, RetirePath::Sheaf]
        .into_iter()
        .filter(|p| a.path.contains(p))
        .collect();
    let total = (paths.len() * policies.len() * models.len() * 2) as u64;
    let mut progress = Progress::new("policies", total, quiet);
    let base = FloodConfig {
        path: RetirePath::Box,
        duration: a.duration,
        task_threads: threads,
        softirq: true,
        hardirq: true,
        burst: 8,
        sample_every: 8,
    };
    let mut cells = Vec::new();
    for (&path, &policy) in paths
        .iter()
        .flat_map(|p| policies.iter().map(move |q| (p, q)))
    {
        let cfg = FloodConfig { path, ..base };
        for &model in &models {
            for nesting_proof in [true, false] {
                progress.step(&format!(
                    "{} / {model} / nesting {}",
                    group(path.name(), policy.name()),
                    if nesting_proof { "on" } else { "off" }
                ));
                let reports = Reports::default();
                let setup = Setup {
                    nesting_proof,
                    validator: true,
                    arena: 128 << 20,
                    ..Setup::new(policy, model)
                };
                let k = setup.build(&reports)?;
                let run = run_flood(&k, &cfg, true);
                k.kvfree_rcu_barrier();
                let s = k.stats();
                drop(k);
                let calls = run.calls();
                let pct = |n: u64| round(n as f64 * 100.0 / calls.max(1) as f64, 4);
                cells.push(Cell {
                    path: path.name(),
                    policy: policy.name(),
                    preempt: model.name(),
                    nesting_proof,
                    calls,
                    hardirq_calls: run
                        .sources
                        .iter()
                        .find(|src| src.source == "hardirq")
                        .map_or(0, |src| src.calls),
                    calls_per_s: round(run.calls() as f64 / run.elapsed.as_secs_f64(), 0),
                    // Of all calls: on the sheaf path only what found no
                    // sheaf reaches kvfree, whose own ratio is of those.
                    fallback_pct: match path {
                        RetirePath::Box => round(s.fallback_ratio() * 100.0, 4),
                        RetirePath::Sheaf => {
                            pct(s.list_fallbacks + s.lock_busy_fallbacks + s.inline_synchronize)
                        }
                    },
                    inline_allocs: s.inline_allocs,
                    inline_alloc_failures: s.inline_alloc_failures,
                    peak_pending_bytes: s.peak_pending_bytes,
                    p99_ns: run.merged.quantile(0.99),
                    worst_ns: run.merged.max(),
                    reports: reports.total(),
                    invalid_wait_reports: reports.invalid_wait(),
                    might_sleep_reports: reports.might_sleep(),
                    to_blocks_pct: run.sheaf.map(|st| pct(st.rcu_fallbacks)),
                    rcu_sheaves: run.sheaf.map(|st| st.rcu_sheaves),
                    alloc_failures: run.sheaf.map(|_| run.alloc_failures),
                });
            }
        }
    }
    progress.finish();
    let summary = paths
        .iter()
        .flat_map(|path| policies.iter().map(move |p| (path, p)))
        .map(|(path, p)| summarize(path.name(), p.name(), &cells))
        .collect();
    Ok(PoliciesResult {
        duration_per_cell_ms: a.duration.as_millis() as u64,
        task_threads: threads,
        cells,
        summary,
        plot: None,
    })
}

pub fn run(a: &Args) -> CmdResult {
    if let Some(path) = &a.plot {
        check_plot_path(path)?;
    }
    let mut result = measure(a, a.json)?;
    if let Some(path) = &a.plot {
        crate::plot::policies(&result, path).map_err(CliError::Failed)?;
        result.plot = Some(path.display().to_string());
    }
    emit(a.json, &result, |r| {
        let mut out = render_cells(r);
        out.push('\n');
        out.push_str(&render_summary(r));
        if let Some(p) = &r.plot {
            out.push_str(&format!("\nplot: {p}\n"));
        }
        out
    });
    Ok(())
}

/// Whether any cell ran the sheaf path (its tables then show the path).
fn has_sheaves(r: &PoliciesResult) -> bool {
    r.cells.iter().any(|c| c.path != RetirePath::Box.name())
}

pub fn render_cells(r: &PoliciesResult) -> String {
    let mut columns = vec![
        Column::<Cell>::new("policy", |c| c.policy.to_string()),
        Column::new("preempt", |c| c.preempt.to_string()),
        Column::new("nesting", |c| args::show_on_off(c.nesting_proof)),
        Column::new("M calls/s", |c| args::show_millions(c.calls_per_s)),
        Column::new("fallback %", |c| format!("{:.3}", c.fallback_pct)),
        Column::new("inline ok/failed", |c| {
            format!("{}/{}", c.inline_allocs, c.inline_alloc_failures)
        }),
        Column::new("peak pending", |c| args::show_bytes(c.peak_pending_bytes)),
        Column::new("p99", |c| args::show_ns(c.p99_ns)),
        Column::new("worst", |c| args::show_ns(c.worst_ns)),
        Column::new("reports", |c| c.reports.to_string()),
    ];
    let mut note = "";
    if has_sheaves(r) {
        columns.insert(0, Column::new("path", |c| c.path.to_string()));
        columns.insert(
            6,
            Column::new("to blocks %", |c| {
                c.to_blocks_pct.map_or("-".into(), |p| format!("{p:.3}"))
            }),
        );
        note = "path box: kfree_rcu of Boxes; path sheaf: kfree_rcu_slab of SlabBoxes into sheaves, \
                from every source (the signal handler's take only trylocks); \
                \"to blocks %\": retired objects that found no sheaf and went to the kvfree blocks, \
                the only ones the policy governs; \"fallback %\": calls that took one of kvfree's fallbacks, \
                % of all calls\n";
    }
    let t = Table::of(&columns, &r.cells);
    format!(
        "krcu policies: {} ms flood per cell ({} task threads + softirq worker + signal handler), validator on\n{note}\n{}",
        r.duration_per_cell_ms,
        r.task_threads,
        t.render()
    )
}

pub fn render_summary(r: &PoliciesResult) -> String {
    let mut columns = vec![
        Column::<Summary>::new("policy", |s| s.policy.to_string()),
        Column::new("M calls/s (median)", |s| {
            args::show_millions(s.median_calls_per_s)
        }),
        Column::new("fallback % (max)", |s| format!("{:.3}", s.max_fallback_pct)),
        Column::new("peak pending (max)", |s| {
            args::show_bytes(s.max_peak_pending_bytes)
        }),
        Column::new("worst call", |s| args::show_ns(s.worst_ns)),
        Column::new("reports", |s| {
            if s.reports == 0 {
                "0".to_string()
            } else {
                format!("{} ({})", s.reports, s.reported_in.join(", "))
            }
        }),
    ];
    let mut per = "per policy";
    if has_sheaves(r) {
        per = "per path and policy";
        columns.insert(0, Column::new("path", |s| s.path.to_string()));
        columns.insert(
            4,
            Column::new("to blocks % (max)", |s| {
                s.max_to_blocks_pct
                    .map_or("-".into(), |p| format!("{p:.3}"))
            }),
        );
    }
    let t = Table::of(&columns, &r.summary);
    format!(
        "{per}, over every preempt model and nesting setting:\n\n{}",
        t.render()
    )
}
