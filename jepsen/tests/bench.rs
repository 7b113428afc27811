//! `gavel-bench` end to end, as a process, against real clusters: short runs of each mode
//! produce figures, JSON and plots. (Speed itself is measured by `gavel-bench all`, not here.)
//!
//! Needs `target/<profile>/gavel-node` and `gavel` (built by `cargo test --workspace`) and Debian's
//! `etcd-server` (`scripts/setup` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn node_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_gavel-bench")).with_file_name("gavel-node");
    assert!(bin.exists(), "{} missing: run `cargo test --workspace`", bin.display());
    bin
}

/// Runs are heavy (3 nodes + driver on 2 cores): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bench(args: &[&str], out: &Path) -> String {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_gavel-bench"))
        .args(args)
        .arg("--node-bin")
        .arg(node_bin())
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "gavel-bench {args:?} failed:\n{text}");
    text
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_closed_loop_run_measures_gavel_over_grpc_and_http_and_etcd_side_by_side() {
    let out = tempfile::tempdir().unwrap();
    let text = bench(
        &["run", "--system", "all", "--workload", "zipf", "--lots", "200", "--clients", "16", "--seconds", "3"],
        out.path(),
    );
    assert!(text.contains("ratio gavel/etcd"), "{text}");
    assert!(text.contains("ratio http/gavel"), "{text}");
    assert!(text.contains("ops/s  p50"), "a progress line every second:\n{text}");
    let results = json(&out.path().join("run-zipf-closed16.json"));
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 3);
    for r in results {
        assert!(r["accepted"].as_u64().unwrap() > 0, "{r}");
        assert!(r["p99_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap());
        assert!(!r["series"].as_array().unwrap().is_empty());
    }
    assert_eq!(results[0]["target"], "gavel");
    assert_eq!(results[1]["target"], "http");
    assert_eq!(results[2]["target"], "etcd");
    let svg = std::fs::read_to_string(out.path().join("run-zipf-closed16.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "a plot with lines");
}

#[test]
fn an_open_loop_sweep_offers_each_rate() {
    let out = tempfile::tempdir().unwrap();
    bench(
        &[
            "sweep",
            "--system",
            "gavel",
            "--workload",
            "read-heavy",
            "--lots",
            "100",
            "--rates",
            "100,400",
            "--seconds",
            "2",
        ],
        out.path(),
    );
    let sweep = json(&out.path().join("sweep.json"));
    let runs = sweep[0][1].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (run, rate) in runs.iter().zip([100.0, 400.0]) {
        let answered = run["ops_per_s"].as_f64().unwrap();
        // Open loop: the driver offers the rate whatever the latency (within 25%).
        assert!((answered - rate).abs() < rate * 0.25, "offered {rate}/s, answered {answered}/s: {run}");
        assert!(run["reads"].as_u64().unwrap() > run["accepted"].as_u64().unwrap(), "read-heavy: {run}");
        // Latency from the intended send time includes the driver's lag; from the real send it does not.
        let (from_intended, from_send) = (run["p99_ms"].as_f64().unwrap(), run["service_p99_ms"].as_f64().unwrap());
        assert!(from_send > 0.0 && from_send <= from_intended * 1.01 + 0.01, "{run}");
    }
    assert!(out.path().join("latency-vs-load.svg").exists());
}

#[test]
fn failover_is_timed_for_each_leader_kill() {
    let out = tempfile::tempdir().unwrap();
    let text = bench(&["failover", "--system", "gavel", "--lots", "100", "--kills", "2", "--clients", "8"], out.path());
    assert!(text.contains("failover over 2 leader kills"), "{text}");
    let failover = json(&out.path().join("failover.json"));
    let times = failover[0][1]["recovery_ms"].as_array().unwrap();
    assert_eq!(times.len(), 2);
    for t in times {
        // Not a speed goal here: recovery happened (the harness caps a wait at 30 s).
        assert!(t.as_f64().unwrap() > 0.0 && t.as_f64().unwrap() < 30_000.0, "{failover}");
    }
}
