//! What `krcu policies` measures: one [`Cell`] per policy × preempt model
//! × nesting proof, and a [`Summary`] per policy. Its own module because
//! three others read it: `policies` (which measures and prints it), `plot`
//! (which draws it) and `tour` (which prints the summary).

use crate::output::round;
use crate::workload::median;
use serde::Serialize;

/// One cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub policy: &'static str,
    pub preempt: &'static str,
    pub nesting_proof: bool,
    pub calls: u64,
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
}

/// Per policy, over its 8 cells.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub policy: &'static str,
    pub median_calls_per_s: f64,
    pub max_fallback_pct: f64,
    pub max_peak_pending_bytes: u64,
    pub worst_ns: u64,
    pub reports: u64,
    /// The cells with reports, as `model/nesting`.
    pub reported_in: Vec<String>,
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

/// The per-policy summary of `cells`.
pub fn summarize(policy: &'static str, cells: &[Cell]) -> Summary {
    let mine: Vec<&Cell> = cells.iter().filter(|c| c.policy == policy).collect();
    let mut tput: Vec<f64> = mine.iter().map(|c| c.calls_per_s).collect();
    Summary {
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
    }
}
