//! What `krcu policies` measures: one [`Cell`] per retire path × policy ×
//! preempt model × nesting proof, and a [`Summary`] per path and policy. Its own module because
//! three others read it: `policies` (which measures and prints it), `plot`
//! (which draws it) and `tour` (which prints the summary).

use crate::output::round;
use crate::workload::median;
use serde::Serialize;

/// One cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// `box` (`kfree_rcu` of `Box`es) or `sheaf` (`kfree_rcu_slab` of
    /// `SlabBox`es, into sheaves).
    pub path: &'static str,
    pub policy: &'static str,
    pub preempt: &'static str,
    pub nesting_proof: bool,
    pub calls: u64,
    /// Of the calls, those the signal handler made (hardirq context).
    pub hardirq_calls: u64,
    pub calls_per_s: f64,
    pub fallback_pct: f64,
    pub inline_allocs: u64,
    pub inline_alloc_failures: u64,
    pub peak_pending_bytes: u64,
    pub p99_ns: u64,
    pub worst_ns: u64,
    pub reports: u64,
    pub invalid_wait_reports: u64,
    pub might_sleep_reports: u64,
    /// The sheaf path: objects `kfree_rcu_slab` sent to the kvfree blocks
    /// (no sheaf to be had without waiting, a trylock that failed in the
    /// signal handler), % of calls; the policy governs only these.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_blocks_pct: Option<f64>,
    /// The sheaf path: `rcu_free` sheaves submitted to RCU (by the time the
    /// flood stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcu_sheaves: Option<u64>,
    /// The sheaf path: objects a flooder could not allocate under its flags
    /// (the softirq worker does not sleep for memory), so did not retire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_failures: Option<u64>,
}

impl Cell {
    /// The cell's group in a chart: the policy, and the path unless `box`.
    pub fn group(&self) -> String {
        group(self.path, self.policy)
    }
}

/// A chart's group of a path and policy: `nolock`, `nolock + sheaves`.
pub fn group(path: &str, policy: &str) -> String {
    if path == "box" {
        policy.to_string()
    } else {
        format!("{policy} + sheaves")
    }
}

/// Per path and policy, over its 8 cells.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub path: &'static str,
    pub policy: &'static str,
    pub median_calls_per_s: f64,
    pub max_fallback_pct: f64,
    pub max_peak_pending_bytes: u64,
    pub worst_ns: u64,
    pub reports: u64,
    /// The cells with reports, as `model/nesting`.
    pub reported_in: Vec<String>,
    /// The sheaf path: the most objects sent to the kvfree blocks, % of
    /// calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_to_blocks_pct: Option<f64>,
}

/// `krcu policies`' result.
#[derive(Debug, Serialize)]
pub struct PoliciesResult {
    pub duration_per_cell_ms: u64,
    pub task_threads: usize,
    pub cells: Vec<Cell>,
    pub summary: Vec<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot: Option<String>,
}

/// The summary of `cells` on `path` under `policy`.
pub fn summarize(path: &'static str, policy: &'static str, cells: &[Cell]) -> Summary {
    let mine: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.policy == policy && c.path == path)
        .collect();
    let mut tput: Vec<f64> = mine.iter().map(|c| c.calls_per_s).collect();
    Summary {
        path,
        policy,
        median_calls_per_s: round(median(&mut tput), 0),
        max_fallback_pct: mine.iter().map(|c| c.fallback_pct).fold(0.0, f64::max),
        max_peak_pending_bytes: mine.iter().map(|c| c.peak_pending_bytes).max().unwrap_or(0),
        worst_ns: mine.iter().map(|c| c.worst_ns).max().unwrap_or(0),
        reports: mine.iter().map(|c| c.reports).sum(),
        reported_in: mine
            .iter()
            .filter(|c| c.reports > 0)
            .map(|c| {
                format!(
                    "{}/{}",
                    c.preempt,
                    if c.nesting_proof { "on" } else { "off" }
                )
            })
            .collect(),
        max_to_blocks_pct: mine.iter().filter_map(|c| c.to_blocks_pct).reduce(f64::max),
    }
}
