//! `krcu policies --plot FILE.svg`: the policies table as grouped bars,
//! one group per policy, one bar per preempt model (nesting proof on):
//! throughput, fallback rate and worst call latency. SVG only, with
//! plotters' built-in text estimation: no font libraries needed.

use crate::policies_result::{Cell, PoliciesResult};
use krcu::context::PreemptModel;
use krcu::kvfree::Policy;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 4] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xe1, 0x57, 0x59),
];

struct Panel {
    title: &'static str,
    log: bool,
    value: fn(&Cell) -> f64,
}

pub fn policies(r: &PoliciesResult, path: &Path) -> Result<(), String> {
    let policies: Vec<&str> = Policy::ALL
        .iter()
        .map(|p| p.name())
        .filter(|p| r.cells.iter().any(|c| c.policy == *p))
        .collect();
    let models: Vec<&str> = PreemptModel::ALL
        .iter()
        .map(|m| m.name())
        .filter(|m| r.cells.iter().any(|c| c.preempt == *m))
        .collect();
    let panels = [
        Panel {
            title: "throughput, M calls/s (higher is better)",
            log: false,
            value: |c| c.calls_per_s / 1e6,
        },
        Panel {
            title: "fallbacks, % of calls (lower is better)",
            log: false,
            value: |c| c.fallback_pct,
        },
        Panel {
            title: "worst call, µs, log scale (lower is better)",
            log: true,
            value: |c| (c.worst_ns as f64 / 1e3).max(0.01),
        },
    ];
    let root = SVGBackend::new(path, (1100, 1000)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (title, body) = root.split_vertically(40);
    title
        .draw_text(
            &format!(
                "krcu policies: {} ms flood per cell, {} task threads + softirq + signal handler; raw-lock nesting proof on",
                r.duration_per_cell_ms, r.task_threads
            ),
            &("sans-serif", 18).into_text_style(&title),
            (20, 12),
        )
        .map_err(|e| err(&e))?;
    let areas = body.split_evenly((panels.len(), 1));
    let n = policies.len() as f64;
    let width = 0.8 / models.len().max(1) as f64;
    for (area, panel) in areas.iter().zip(&panels) {
        let vals: Vec<(usize, usize, f64)> = r
            .cells
            .iter()
            .filter(|c| c.nesting_proof)
            .filter_map(|c| {
                let p = policies.iter().position(|p| *p == c.policy)?;
                let m = models.iter().position(|m| *m == c.preempt)?;
                Some((p, m, (panel.value)(c)))
            })
            .collect();
        let top = vals.iter().map(|v| v.2).fold(0.0, f64::max).max(1e-3) * 1.15;
        let mut builder = ChartBuilder::on(area);
        builder
            .caption(panel.title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(60);
        let bar = |p: usize, m: usize| {
            let x0 = p as f64 - 0.4 + m as f64 * width;
            (x0, x0 + width * 0.9)
        };
        if panel.log {
            let low = vals
                .iter()
                .map(|v| v.2)
                .fold(f64::MAX, f64::min)
                .clamp(0.01, 1.0)
                / 2.0;
            let mut chart = builder
                .build_cartesian_2d(-0.5..n - 0.5, (low..top * 2.0).log_scale())
                .map_err(|e| err(&e))?;
            draw_axes(&mut chart, &policies).map_err(|e| err(&e))?;
            for &(p, m, v) in &vals {
                let (x0, x1) = bar(p, m);
                chart
                    .draw_series([Rectangle::new([(x0, low), (x1, v)], COLORS[m % 4].filled())])
                    .map_err(|e| err(&e))?;
            }
        } else {
            let mut chart = builder
                .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)
                .map_err(|e| err(&e))?;
            draw_axes(&mut chart, &policies).map_err(|e| err(&e))?;
            for (i, model) in models.iter().enumerate() {
                let series = vals.iter().filter(|v| v.1 == i).map(|&(p, m, v)| {
                    let (x0, x1) = bar(p, m);
                    Rectangle::new([(x0, 0.0), (x1, v)], COLORS[m % 4].filled())
                });
                chart
                    .draw_series(series)
                    .map_err(|e| err(&e))?
                    .label(format!("preempt {model}"))
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], COLORS[i % 4].filled())
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Draws a panel's axes, linear or log on y: no vertical grid lines, the
/// policy's name under each group of bars.
fn draw_axes<DB: DrawingBackend, Y>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    policies: &[&str],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    Y: Ranged + ValueFormatter<Y::ValueType>,
{
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < policies.len() {
            policies[i as usize].to_string()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(policies.len())
        .x_label_formatter(&label)
        .draw()
}
