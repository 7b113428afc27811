//! `timeline.svg`: every operation as a bar on its client's row, faults shaded.

use crate::linear::{Operation, Output};

/// Operations per client over time (green ok, orange refused, grey unanswered), with the
/// nemesis's faults shaded red. At most `TIMELINE_OPS_MAX` operations are drawn (evenly
/// sampled) so the file stays small enough to open.
pub(crate) fn timeline(
    ops: &[(String, Operation)],
    processes: &[usize],
    faults: &[serde_json::Value],
    clients: usize,
    end_ns: u64,
) -> String {
    const TIMELINE_OPS_MAX: usize = 20_000;
    const WIDTH: f64 = 1600.0;
    const ROW: f64 = 14.0;
    const LEFT: f64 = 70.0;
    let span = end_ns.max(1) as f64;
    let x = |ns: u64| LEFT + (ns as f64 / span) * (WIDTH - LEFT - 10.0);
    let height = 30.0 + ROW * clients as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" font-family=\"monospace\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for f in faults {
        let start = f["start_ms"].as_u64().unwrap_or(0) * 1_000_000;
        let end = f["end_ms"].as_u64().unwrap_or(0) * 1_000_000;
        let label = format!("{} n{}", f["fault"].as_str().unwrap_or("?"), f["node"]);
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"0\" width=\"{:.1}\" height=\"{height}\" fill=\"#f4cccc\"><title>{label}</title></rect>\n",
            x(start),
            (x(end) - x(start)).max(1.0)
        ));
    }
    for c in 0..clients {
        svg.push_str(&format!("<text x=\"4\" y=\"{:.1}\">client {c}</text>\n", 24.0 + ROW * c as f64));
    }
    let step = ops.len().div_ceil(TIMELINE_OPS_MAX).max(1);
    for (i, ((lot, op), process)) in ops.iter().zip(processes).enumerate().step_by(step) {
        let ret = op.ret.unwrap_or(end_ns);
        let colour = match (&op.output, op.ret) {
            (_, None) | (Output::Unknown, _) => "#999999",
            (Output::Rejected { .. }, _) => "#e69138",
            _ => "#6aa84f",
        };
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>#{i} {lot} {:?} -> {:?}</title></rect>\n",
            x(op.call),
            14.0 + ROW * *process as f64,
            (x(ret) - x(op.call)).max(0.5),
            ROW - 3.0,
            op.input,
            op.output
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"10\">0 s</text><text x=\"{:.1}\" y=\"10\">{:.1} s</text>\n</svg>\n",
        WIDTH - 60.0,
        span / 1e9
    ));
    svg
}
