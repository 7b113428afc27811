//! SVG plots for BENCHMARKS.md: throughput and p99 over time, latency against offered load,
//! and recovery time per leader kill.

use std::path::Path;

use plotters::prelude::*;

use super::{Failover, RunResult};

#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

fn err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |e| PlotError { path: path.display().to_string(), message: e.to_string() }
}

/// Blues and green first (Gavel's lines come first), then red, orange and purple (etcd's).
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(23, 190, 207),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

type Metric = fn(&super::Second) -> f64;

fn upper(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, f64::max).max(1e-3) * 1.1
}

/// One line per run: answered operations per second (top) and p99 latency (bottom) over time.
pub fn timeseries(path: &Path, title: &str, runs: &[&RunResult]) -> Result<(), PlotError> {
    let e = err(path);
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(320);
    let t_max = upper(runs.iter().flat_map(|r| r.series.iter().map(|s| s.t)));
    let panels: [(_, _, Metric); 2] =
        [(&top, "answered operations/s", |s| s.ops_per_s), (&bottom, "p99 latency (ms)", |s| s.p99_ms)];
    for (i, (area, y_desc, value)) in panels.into_iter().enumerate() {
        let y_max = upper(runs.iter().flat_map(|r| r.series.iter().map(value)));
        let mut chart = ChartBuilder::on(area)
            .caption(if i == 0 { title } else { "" }, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|x| e(&x))?;
        chart.configure_mesh().x_desc("seconds").y_desc(y_desc).draw().map_err(|x| e(&x))?;
        for (k, run) in runs.iter().enumerate() {
            let colour = COLOURS[(k * 3) % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(run.series.iter().map(|s| (s.t, value(s))), colour.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(format!("{} {:?}", run.target, run.load))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

/// Open-loop latency (p50, p99, p999) against offered load, one set of lines per target.
pub fn latency_vs_load(path: &Path, sweeps: &[(String, Vec<RunResult>)]) -> Result<(), PlotError> {
    let e = err(path);
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let rate = |r: &RunResult| match r.load {
        super::Load::Open { rate } => rate as f64,
        super::Load::Closed { .. } => r.ops_per_s,
    };
    let x_max = upper(sweeps.iter().flat_map(|(_, rs)| rs.iter().map(rate)));
    let y_max = upper(sweeps.iter().flat_map(|(_, rs)| rs.iter().map(|r| r.p999_ms)));
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency against offered load (open loop, from intended send time)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (0.05f64..y_max.max(0.1)).log_scale())
        .map_err(|x| e(&x))?;
    chart.configure_mesh().x_desc("offered operations/s").y_desc("latency (ms, log)").draw().map_err(|x| e(&x))?;
    let mut k = 0;
    for (name, runs) in sweeps {
        for (q, value) in [
            ("p50", (|r: &RunResult| r.p50_ms) as fn(&RunResult) -> f64),
            ("p99", |r| r.p99_ms),
            ("p999", |r| r.p999_ms),
        ] {
            let colour = COLOURS[k % COLOURS.len()];
            k += 1;
            let points: Vec<(f64, f64)> = runs.iter().map(|r| (rate(r), value(r).max(0.05))).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(format!("{name} {q}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour.filled()))).map_err(|x| e(&x))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

/// Recovery time of each leader kill.
pub fn failover(path: &Path, failovers: &[(String, &Failover)]) -> Result<(), PlotError> {
    let e = err(path);
    let root = SVGBackend::new(path, (960, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let kills = failovers.iter().map(|(_, f)| f.recovery_ms.len()).max().unwrap_or(1).max(1);
    let y_max = upper(failovers.iter().flat_map(|(_, f)| f.recovery_ms.iter().copied()));
    let mut chart = ChartBuilder::on(&root)
        .caption("Leader kill -9: time until writes succeed again", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..(kills as f64 + 1.0), 0f64..y_max)
        .map_err(|x| e(&x))?;
    chart.configure_mesh().x_desc("kill").y_desc("recovery (ms)").draw().map_err(|x| e(&x))?;
    for (k, (name, f)) in failovers.iter().enumerate() {
        let colour = COLOURS[(k * 3) % COLOURS.len()];
        chart
            .draw_series(
                f.recovery_ms.iter().enumerate().map(|(i, ms)| Circle::new((i as f64 + 1.0, *ms), 4, colour.filled())),
            )
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}
