//! `krcu policies --plot FILE.svg`: the policies table as grouped bars,
//! one group per policy (and path, with `--path sheaf`), one bar per
//! preempt model (nesting proof on):
//! throughput, fallback rate, p99 and worst call latency. Cells the
//! validator reported are hatched in red with a red outline: the figure's
//! point is that the fastest policy, `nowait`, is also the wrong one. The
//! legend sits above the panels, outside every plot area. SVG only, with
//! plotters' built-in text estimation: no font libraries needed.

use crate::policies_result::{Cell, PoliciesResult};
use krcu::context::PreemptModel;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 4] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xb0, 0x7a, 0xa1),
];

/// The mark of a reported cell.
const REPORTED: RGBColor = RGBColor(0xd6, 0x27, 0x28);

struct Panel {
    title: &'static str,
    log: bool,
    value: fn(&Cell) -> f64,
}

const PANELS: [Panel; 4] = [
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
        title: "p99 call latency, ns (lower is better)",
        log: false,
        value: |c| c.p99_ns as f64,
    },
    Panel {
        title: "worst call, µs, log scale (mostly preemption: more threads than CPUs)",
        log: true,
        value: |c| (c.worst_ns as f64 / 1e3).max(0.01),
    },
];

/// One bar: its group (policy), its place in the group (model), its value
/// and whether the validator reported the cell.
struct Bar {
    policy: usize,
    model: usize,
    value: f64,
    reported: bool,
}

pub fn policies(r: &PoliciesResult, path: &Path) -> Result<(), String> {
    // One group per path and policy, in the cells' order.
    let mut groups: Vec<String> = Vec::new();
    for c in &r.cells {
        if !groups.contains(&c.group()) {
            groups.push(c.group());
        }
    }
    let policies: Vec<&str> = groups.iter().map(String::as_str).collect();
    let models: Vec<&str> = PreemptModel::ALL
        .iter()
        .map(|m| m.name())
        .filter(|m| r.cells.iter().any(|c| c.preempt == *m))
        .collect();
    let root = SVGBackend::new(path, (1100, 1300)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (head, body) = root.split_vertically(90);
    draw_head(&head, r, &models).map_err(|e| err(&e))?;
    let areas = body.split_evenly((PANELS.len(), 1));
    for (area, panel) in areas.iter().zip(&PANELS) {
        let bars: Vec<Bar> = r
            .cells
            .iter()
            .filter(|c| c.nesting_proof)
            .filter_map(|c| {
                Some(Bar {
                    policy: policies.iter().position(|p| *p == c.group())?,
                    model: models.iter().position(|m| *m == c.preempt)?,
                    value: (panel.value)(c),
                    reported: c.reports > 0,
                })
            })
            .collect();
        draw_panel(area, panel, &bars, &policies, models.len()).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The title, and the legend on a line of its own under it.
fn draw_head<DB: DrawingBackend>(
    head: &DrawingArea<DB, plotters::coord::Shift>,
    r: &PoliciesResult,
    models: &[&str],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    head.draw_text(
        &format!(
            "krcu policies: {} ms flood per cell, {} task threads + softirq + signal handler; raw-lock nesting proof on",
            r.duration_per_cell_ms, r.task_threads
        ),
        &("sans-serif", 18).into_text_style(head),
        (20, 10),
    )?;
    let text = ("sans-serif", 15).into_text_style(head);
    let mut x = 20;
    for (i, model) in models.iter().enumerate() {
        head.draw(&Rectangle::new(
            [(x, 42), (x + 14, 56)],
            COLORS[i % 4].filled(),
        ))?;
        let label = format!("preempt {model}");
        head.draw_text(&label, &text, (x + 20, 42))?;
        x += 30 + 8 * label.len() as i32;
    }
    // The mark of a reported cell, on a line of its own.
    let x = 20;
    hatch(head, (x, 66), (x + 14, 80))?;
    head.draw_text(
        "the validator reported the cell: zone->lock (a sleeping lock under RT) taken under the raw krcp->lock",
        &text,
        (x + 20, 66),
    )?;
    Ok(())
}

/// Red diagonal lines and a red outline over the pixel rectangle from
/// `top_left` to `bottom_right`.
fn hatch<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    top_left: (i32, i32),
    bottom_right: (i32, i32),
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (x0, y0) = top_left;
    let (x1, y1) = bottom_right;
    let h = y1 - y0;
    let style = REPORTED.stroke_width(2);
    // Lines rising to the right at 45°, every 7 pixels, clipped to the box.
    let mut k = -h;
    while k < x1 - x0 {
        let (mut sx, mut sy) = (x0 + k, y1);
        let (mut ex, mut ey) = (x0 + k + h, y0);
        if sx < x0 {
            sy -= x0 - sx;
            sx = x0;
        }
        if ex > x1 {
            ey += ex - x1;
            ex = x1;
        }
        if sx < ex {
            area.draw(&PathElement::new([(sx, sy), (ex, ey)], style))?;
        }
        k += 7;
    }
    area.draw(&Rectangle::new([top_left, bottom_right], style))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    bars: &[Bar],
    policies: &[&str],
    models: usize,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = policies.len() as f64;
    let width = 0.8 / models.max(1) as f64;
    let span = |b: &Bar| {
        let x0 = b.policy as f64 - 0.4 + b.model as f64 * width;
        (x0, x0 + width * 0.9)
    };
    let top = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-3) * 1.15;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(panel.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60);
    // Pixel rectangles of the reported bars, hatched once the chart is drawn.
    let mut marks = Vec::new();
    if panel.log {
        let low = bars
            .iter()
            .map(|b| b.value)
            .fold(f64::MAX, f64::min)
            .clamp(0.01, 1.0)
            / 2.0;
        let mut chart = builder.build_cartesian_2d(-0.5..n - 0.5, (low..top * 1.3).log_scale())?;
        draw_axes(&mut chart, policies)?;
        for b in bars {
            let (x0, x1) = span(b);
            chart.draw_series([Rectangle::new(
                [(x0, low), (x1, b.value)],
                COLORS[b.model % 4].filled(),
            )])?;
            if b.reported {
                marks.push((
                    chart.backend_coord(&(x0, b.value)),
                    chart.backend_coord(&(x1, low)),
                ));
            }
        }
    } else {
        let mut chart = builder.build_cartesian_2d(-0.5..n - 0.5, 0.0..top)?;
        draw_axes(&mut chart, policies)?;
        for b in bars {
            let (x0, x1) = span(b);
            chart.draw_series([Rectangle::new(
                [(x0, 0.0), (x1, b.value)],
                COLORS[b.model % 4].filled(),
            )])?;
            if b.reported {
                marks.push((
                    chart.backend_coord(&(x0, b.value)),
                    chart.backend_coord(&(x1, 0.0)),
                ));
            }
        }
    }
    // backend_coord gives the backend's pixels; `area` is offset within
    // them, so shift back to the area's own coordinates.
    let (dx, dy) = (area.get_base_pixel().0, area.get_base_pixel().1);
    for ((x0, y0), (x1, y1)) in marks {
        // A reported cell with a zero value still shows a mark.
        let y0 = y0.min(y1 - 4);
        hatch(area, (x0 - dx, y0 - dy), (x1 - dx, y1 - dy))?;
    }
    Ok(())
}

/// Draws a panel's axes, linear or log on y: no vertical grid lines, the
/// policy's name under each group of bars.
fn draw_axes<DB: DrawingBackend, Y>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    policies: &[&str],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
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
        .y_labels(6)
        .x_label_formatter(&label)
        .y_label_formatter(&|v| tick(*v))
        .draw()
}

/// A y-axis tick: at most three significant digits, no float noise
/// (`0.30000000000000004` is `0.3`).
fn tick(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ticks_have_no_float_noise() {
        assert_eq!(super::tick(0.30000000000000004), "0.3");
        assert_eq!(super::tick(100000.0), "100000");
        assert_eq!(super::tick(2.5), "2.5");
        assert_eq!(super::tick(0.05), "0.05");
        assert_eq!(super::tick(0.0), "0");
    }
}
