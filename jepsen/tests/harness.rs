//! The harness end to end, as a process: a short run under faults passes on correct nodes,
//! and the checker catches a node deliberately serving stale reads.
//!
//! Needs `target/<profile>/gavel-node`, which `cargo test --workspace` builds.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::path::PathBuf;
use std::process::Command;

fn node_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_gavel-jepsen")).with_file_name("gavel-node");
    assert!(bin.exists(), "{} missing: run `cargo test --workspace` (or build gavel-node first)", bin.display());
    bin
}

/// Runs are heavy (3 nodes + 8 clients each on 2 cores): one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn jepsen(args: &[&str]) -> (bool, String) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gavel-jepsen"))
        .arg("test")
        .args(args)
        .arg("--node-bin")
        .arg(node_bin())
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let results = std::fs::read_dir(out_dir.path()).unwrap().next().unwrap().unwrap().path().join("results.json");
    assert!(results.exists(), "a report directory with results.json: {stdout}");
    (out.status.success(), stdout)
}

#[test]
fn a_short_run_under_kills_and_pauses_is_valid() {
    let (ok, stdout) = jepsen(&["--time-limit", "12", "--nemesis", "all", "--seed", "11"]);
    assert!(ok, "correct nodes must pass:\n{stdout}");
    assert!(stdout.contains("VALID"));
    assert!(stdout.contains("lost bids: 0  duplicated bids: 0"));
}

#[test]
fn stale_reads_are_caught() {
    // Bounded: a few short runs; stale reads after a restart show up within one in practice.
    for seed in [3, 5, 8] {
        let (ok, stdout) =
            jepsen(&["--time-limit", "15", "--nemesis", "kill", "--seed", &seed.to_string(), "--unsafe-stale-reads"]);
        if !ok {
            assert!(stdout.contains("NotLinearizable"), "caught by the linearizability checker:\n{stdout}");
            return;
        }
    }
    panic!("three runs with --unsafe-stale-reads were judged valid: the checker missed it");
}

#[test]
fn acknowledging_before_commit_is_caught() {
    for seed in [4, 6, 9] {
        let (ok, stdout) = jepsen(&[
            "--time-limit",
            "15",
            "--nemesis",
            "kill-leader",
            "--seed",
            &seed.to_string(),
            "--unsafe-ack-before-commit",
        ]);
        if !ok {
            assert!(stdout.contains("INVALID"), "{stdout}");
            return;
        }
    }
    panic!("three runs with --unsafe-ack-before-commit were judged valid: the checkers missed it");
}

/// The number after `label` in the harness's summary.
fn count_after(stdout: &str, label: &str) -> usize {
    let at = stdout.find(label).unwrap_or_else(|| panic!("no {label:?} in:\n{stdout}")) + label.len();
    stdout[at..].split_whitespace().next().and_then(|n| n.parse().ok()).unwrap()
}

#[test]
fn a_bid_applied_twice_is_caught_by_the_duplicate_check_in_every_run() {
    // Not "one of three": with exactly-once off, every run must be caught, and by the
    // duplicate check itself (the workload re-sends some answered bids with the same id).
    for seed in [21, 22] {
        let (ok, stdout) = jepsen(&[
            "--time-limit",
            "10",
            "--nemesis",
            "kill-leader",
            "--seed",
            &seed.to_string(),
            "--unsafe-no-exactly-once",
        ]);
        assert!(!ok && stdout.contains("INVALID"), "seed {seed}: exactly-once off was judged valid:\n{stdout}");
        assert!(count_after(&stdout, "duplicated bids:") > 0, "seed {seed}: not seen as duplicates:\n{stdout}");
    }
}

#[test]
fn a_log_written_without_fsync_is_caught_by_power_loss_in_every_run() {
    // Needs root and /dev/fuse (the nodes' data directories are FUSE mounts). kill -9 alone
    // cannot catch this mode: the kernel writes the page cache out after the process dies.
    for seed in [31, 32] {
        let (ok, stdout) = jepsen(&[
            "--time-limit",
            "12",
            "--nemesis",
            "power-loss",
            "--seed",
            &seed.to_string(),
            "--unsafe-no-fsync",
        ]);
        assert!(!ok && stdout.contains("INVALID"), "seed {seed}: a log without fsync was judged valid:\n{stdout}");
        assert!(stdout.contains("PowerLoss"), "{stdout}");
    }
}

#[test]
fn a_short_run_under_power_loss_is_valid() {
    let (ok, stdout) = jepsen(&["--time-limit", "12", "--nemesis", "power-loss,kill-leader", "--seed", "33"]);
    assert!(ok, "correct nodes must pass power losses:\n{stdout}");
    assert!(stdout.contains("PowerLoss"), "power losses were injected:\n{stdout}");
}

#[test]
fn a_short_run_under_partitions_is_valid() {
    // Needs root and nftables (scripts/setup installs nftables; CI runs as root).
    let (ok, stdout) = jepsen(&["--time-limit", "12", "--nemesis", "partition", "--seed", "5"]);
    assert!(ok, "correct nodes must pass under partitions:\n{stdout}");
    assert!(stdout.contains("Partition"), "partitions were injected:\n{stdout}");
}

/// A cut must really cut: isolating the leader makes the others elect a new one, in both
/// host modes; healing lets the old leader rejoin.
async fn isolating_the_leader_elects_another(mode: jepsen::net::Mode) {
    use std::time::Duration;
    let data = tempfile::tempdir().unwrap();
    let mut cluster = jepsen::cluster::Cluster::start(&node_bin(), data.path(), 3, vec![], mode).await.unwrap();
    let old = cluster.leader(Duration::from_secs(30)).await.unwrap();
    let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != old).collect();
    cluster.net.cut(&[old], &others).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let new = loop {
        let mut leaders = Vec::new();
        for id in &others {
            if let Ok(m) = node::Client::metrics(&cluster.addrs[id]).await
                && m.state == "Leader"
            {
                leaders.push(*id);
            }
        }
        if let Some(id) = leaders.first() {
            break *id;
        }
        assert!(std::time::Instant::now() < deadline, "{mode:?}: the majority never elected a new leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new, old);
    cluster.net.heal().unwrap();
    let (index, _) = cluster.converge(Duration::from_secs(30)).await.unwrap();
    assert!(index > 0);
    cluster.heal().unwrap();
}

fn serially(mode: jepsen::net::Mode) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(isolating_the_leader_elects_another(mode));
}

#[test]
fn a_proxy_cut_isolates_the_leader() {
    serially(jepsen::net::Mode::Proxy);
}

#[test]
fn a_namespace_cut_isolates_the_leader() {
    // Needs root, `ip` and nftables (CI runs as root; scripts/setup installs nftables).
    serially(jepsen::net::Mode::Netns);
}

#[test]
fn a_short_run_with_the_proxy_under_partitions_is_valid() {
    let (ok, stdout) = jepsen(&["--time-limit", "12", "--nemesis", "partition,kill", "--seed", "6", "--net", "proxy"]);
    assert!(ok, "correct nodes must pass under proxy partitions:\n{stdout}");
    assert!(stdout.contains("Proxy hosts"), "{stdout}");
}
