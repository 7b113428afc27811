//! `gavel-jepsen test`: one chaos run against real `gavel-node` processes, each on its own host.
//!
//! ```sh
//! cargo build --release -p gavel-node -p gavel-jepsen
//! target/release/gavel-jepsen test --time-limit 60 --nemesis all --seed 7
//! ```
//! Exits 0 when every checker passed, 1 on any violation (or an inconclusive search).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jepsen::net::Mode;
use jepsen::run::{Fault, Options, run};

#[derive(Parser)]
#[command(name = "gavel-jepsen", version, about = "Chaos and linearizability tests for Gavel")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one test and check it.
    Test {
        /// Seconds of workload under faults.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// Faults: all, kill, kill-leader, kill-majority, power-loss, pause, membership,
        /// partition[-leader|-halves|-bridge|-ring], clock, none (comma separated).
        /// power-loss puts the nodes' data on FUSE: it needs root and /dev/fuse (all leaves it
        /// out, with a note, where they are missing).
        #[arg(long, default_value = "all")]
        nemesis: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Nodes in the cluster (3 to 5).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5))]
        nodes: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Lots the clients bid on (few: contention is the point).
        #[arg(long, default_value_t = 3)]
        lots: usize,
        /// The gavel-node binary (default: next to this one).
        #[arg(long)]
        node_bin: Option<PathBuf>,
        /// Where run directories go.
        #[arg(long, default_value = "jepsen-runs")]
        out: PathBuf,
        /// Linearizability search steps per lot before answering "unknown".
        #[arg(long, default_value_t = 5_000_000)]
        search_budget: u64,
        /// Node hosts: netns (a network namespace per node; root), proxy (loopback addresses
        /// behind a fault-injecting TCP proxy; no root), auto (netns as root, else proxy).
        #[arg(long, default_value = "auto", value_parser = Mode::parse)]
        net: Mode,
        /// Run the nodes in their deliberately unsafe stale-read mode (to see the checker fail).
        #[arg(long)]
        unsafe_stale_reads: bool,
        /// Run the nodes acknowledging writes before commit (to see the checker fail).
        #[arg(long)]
        unsafe_ack_before_commit: bool,
        /// Run the nodes applying retried bids again, exactly-once off (to see the checker fail).
        #[arg(long)]
        unsafe_no_exactly_once: bool,
        /// Run the nodes writing their log without fsync (only the power-loss fault catches it).
        #[arg(long)]
        unsafe_no_fsync: bool,
    },
}

fn main() -> ExitCode {
    let Cmd::Test {
        time_limit,
        nemesis,
        seed,
        nodes,
        clients,
        lots,
        node_bin,
        out,
        search_budget,
        net,
        unsafe_stale_reads,
        unsafe_ack_before_commit,
        unsafe_no_exactly_once,
        unsafe_no_fsync,
    } = Cli::parse().command;
    let mut faults = match Fault::parse_list(&nemesis) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("gavel-jepsen: {e}");
            return ExitCode::from(2);
        }
    };
    // `all` runs where it can: power loss only when the disks can be mounted. Asked for by
    // name, it must run.
    if faults.contains(&Fault::PowerLoss)
        && let Some(why) = jepsen::powerfs::unavailable()
    {
        if nemesis.split(',').any(|n| n.trim() == "power-loss") {
            eprintln!("gavel-jepsen: --nemesis power-loss: {why}");
            return ExitCode::from(2);
        }
        eprintln!("gavel-jepsen: leaving power-loss out of the faults: {why}");
        faults.retain(|f| *f != Fault::PowerLoss);
    }
    let node_bin =
        node_bin.or_else(|| std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("gavel-node"))));
    let Some(node_bin) = node_bin.filter(|p| p.exists()) else {
        eprintln!("gavel-jepsen: gavel-node not found; build it or pass --node-bin");
        return ExitCode::from(2);
    };
    let opts = Options {
        node_bin,
        out_dir: out,
        nodes,
        time_limit: Duration::from_secs(time_limit),
        faults,
        seed,
        clients,
        lots: lots.max(1),
        node_args: [
            (unsafe_stale_reads, "--unsafe-stale-reads"),
            (unsafe_ack_before_commit, "--unsafe-ack-before-commit"),
            (unsafe_no_exactly_once, "--unsafe-no-exactly-once"),
            (unsafe_no_fsync, "--unsafe-no-fsync"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, flag)| flag.to_owned())
        .collect(),
        search_budget,
        net,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gavel-jepsen: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(report) => {
            println!("run directory: {}  (nodes on {net:?} hosts)", report.dir.display());
            println!("operations: {}  faults: {:?}", report.operations, report.faults);
            println!("linearizability: {:?}", report.linearizability);
            println!("lost bids: {}  duplicated bids: {}", report.lost_bids.len(), report.duplicated_bids.len());
            println!("price regressions: {}", report.price_regressions.len());
            for r in report.price_regressions.iter().take(5) {
                println!("  {r}");
            }
            println!(
                "replica digests equal: {}  feeds equal and gap-free: {}",
                report.digests_equal, report.feeds_equal
            );
            for why in &report.broken {
                println!("broken: {why}");
            }
            if report.valid() {
                println!("VALID");
                ExitCode::SUCCESS
            } else {
                println!("INVALID");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("gavel-jepsen: {e}");
            ExitCode::FAILURE
        }
    }
}
