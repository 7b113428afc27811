//! `gavel-ctl`: operate a Gavel cluster from the shell.
//!
//! ```sh
//! gavel-ctl --nodes 127.0.0.1:7001,127.0.0.1:7002 metrics
//! gavel-ctl --nodes 127.0.0.1:7001 propose < ledger/tests/data/worked-example.jsonl
//! gavel-ctl --nodes 127.0.0.1:7001 lot lot-1
//! gavel-ctl --nodes 127.0.0.1:7001 add-learner 4 127.0.0.1:7004
//! gavel-ctl --nodes 127.0.0.1:7001 change-membership 2,3,4
//! ```
//! `propose` reads the replay JSON-lines format (ledger/README.md), sends each command through
//! Raft and prints the outcome with its `log_index`; the leader stamps the time, so `"at"` is
//! only checked for form.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ledger::{json, view};
use node::{Client, pb};
use serde_json::json;

#[derive(Parser)]
#[command(name = "gavel-ctl", version, about = "Operate a Gavel ledger cluster")]
struct Cli {
    /// Nodes to talk to (`host:port`, comma separated); the leader is found from any of them.
    #[arg(long, env = "GAVEL_NODES", value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print each node's Raft and ledger metrics as JSON lines.
    Metrics,
    /// Send JSON-line commands from stdin through Raft; print one outcome per line.
    Propose,
    /// Print a lot (linearizable unless --stale) with its bid history.
    Lot {
        lot_id: String,
        #[arg(long)]
        stale: bool,
    },
    /// Add a node as a learner.
    AddLearner { id: u64, addr: String },
    /// Replace the voters (comma separated ids).
    ChangeMembership {
        #[arg(value_delimiter = ',')]
        voters: Vec<u64>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gavel-ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::new(cli.nodes.clone());
    let mut out = io::stdout().lock();
    match cli.command {
        Cmd::Metrics => {
            for addr in &cli.nodes {
                let line = match Client::metrics_with_digest(addr).await {
                    Ok(m) => metrics_json(addr, &m),
                    Err(e) => json!({"node": addr, "error": e.to_string()}),
                };
                writeln!(out, "{line}")?;
            }
        }
        Cmd::Propose => {
            for line in io::stdin().lock().lines() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let answer = match json::parse_command(&line) {
                    Err(e) => view::error("invalid_input", &e.to_string()),
                    Ok(cmd) => match client.propose(vec![cmd]).await {
                        Ok(results) => result_json(results.first()),
                        Err(e) => view::error("unavailable", &e.to_string()),
                    },
                };
                writeln!(out, "{answer}")?;
            }
        }
        Cmd::Lot { lot_id, stale } => {
            let r = client.read_lot(&lot_id, stale, true).await?;
            let Some(lot_view) = r.lot else {
                return Err(format!("no lot {lot_id}").into());
            };
            let mut lot = view::lot(&lot_view);
            lot["bids"] = view::bids(&r.bids)["bids"].take();
            lot["applied_index"] = json!(r.applied_index);
            lot["stale"] = json!(r.stale);
            writeln!(out, "{lot}")?;
        }
        Cmd::AddLearner { id, addr } => {
            let m = client.add_learner(pb::Node { id, addr }).await?;
            writeln!(out, "{}", json!({"log_index": m.log_index, "voters": m.voters, "learners": m.learners}))?;
        }
        Cmd::ChangeMembership { voters } => {
            let m = client.change_membership(voters, false).await?;
            writeln!(out, "{}", json!({"log_index": m.log_index, "voters": m.voters, "learners": m.learners}))?;
        }
    }
    Ok(())
}

fn result_json(result: Option<&pb::CommandResult>) -> serde_json::Value {
    let Some(result) = result else { return view::error("internal", "no result") };
    let mut value = result.outcome.as_ref().map_or_else(|| view::error("internal", "no outcome"), view::outcome);
    if value.get("error").is_none() {
        value["log_index"] = json!(result.log_index);
    }
    value
}

fn metrics_json(addr: &str, m: &pb::MetricsResponse) -> serde_json::Value {
    json!({
        "node": addr,
        "id": m.node_id,
        "state": m.state,
        "leader_id": m.leader_id,
        "term": m.term,
        "last_log_index": m.last_log_index,
        "last_applied_index": m.last_applied_index,
        "snapshot_index": m.snapshot_index,
        "purged_index": m.purged_index,
        "voters": m.voters,
        "learners": m.learners,
        "state_digest": m.state_digest,
    })
}
