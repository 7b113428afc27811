//! One test run: start a cluster, run the workload while the nemesis injects faults, heal,
//! then check the history and the replicas, and write the report directory.
//!
//! - `workload`: the users and lots, and the clients' bids and reads, recorded as they go.
//! - `nemesis`: the faults, injected and healed at random times.
//! - `check`: the verdicts ([`Report`]) from the history and the replicas.
//! - `timeline`: the run drawn as an SVG.
//! - `error`: why a run could not finish ([`RunError`]).

mod check;
mod error;
mod nemesis;
mod timeline;
mod workload;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::pb::outcome::Result as Res;
use node::Client;

pub use check::Report;
pub use error::RunError;
pub use nemesis::Fault;
pub(crate) use workload::client_rng;
pub use workload::{now_ms, setup_commands};

use crate::cluster::{Cluster, ClusterError};
use check::check;
use nemesis::nemesis;
use timeline::timeline;
use workload::{History, client_loop};

pub struct Options {
    pub node_bin: PathBuf,
    pub out_dir: PathBuf,
    pub nodes: u64,
    pub time_limit: Duration,
    pub faults: Vec<Fault>,
    pub seed: u64,
    pub clients: usize,
    pub lots: usize,
    pub node_args: Vec<String>,
    /// How nodes get hosts of their own (namespaces or the proxy).
    pub net: crate::net::Mode,
    /// Search steps per lot before the linearizability checker answers "unknown".
    pub search_budget: u64,
}

/// Runs one test and writes `history.jsonl`, `nemesis.jsonl` and `results.json` to a new
/// directory under `opts.out_dir`.
pub async fn run(opts: Options) -> Result<Report, RunError> {
    let dir = opts.out_dir.join(format!("run-{}-seed{}", now_ms(), opts.seed));
    std::fs::create_dir_all(&dir)?;
    let data = tempfile::tempdir()?;
    let (bin, args) = (&opts.node_bin, opts.node_args.clone());
    let mut cluster = if opts.faults.contains(&Fault::PowerLoss) {
        Cluster::start_on_power_loss_disks(bin, data.path(), opts.nodes, args, opts.net).await?
    } else {
        Cluster::start(bin, data.path(), opts.nodes, args, opts.net).await?
    };
    cluster.leader(Duration::from_secs(30)).await?;
    let addrs: Vec<String> = cluster.addrs.values().cloned().collect();
    let setup_client = Client::new(addrs.clone()).with_deadline(Duration::from_secs(30));
    let close_after_ms = i64::try_from(opts.time_limit.as_millis() * 6 / 10).unwrap_or(i64::MAX);
    for chunk in setup_commands(opts.clients, opts.lots, now_ms(), close_after_ms).chunks(500) {
        let results = setup_client.propose(chunk.to_vec()).await.map_err(|e| RunError::Setup(e.to_string()))?;
        if let Some(r) = results
            .iter()
            .find(|r| matches!(r.outcome.as_ref().and_then(|o| o.result.as_ref()), Some(Res::Rejected(_))))
        {
            return Err(RunError::Setup(format!("{r:?}")));
        }
    }

    let history = Arc::new(Mutex::new(History {
        file: std::fs::File::create(dir.join("history.jsonl"))?,
        started: Instant::now(),
        ops: Vec::new(),
        processes: Vec::new(),
        resends: Vec::new(),
    }));
    let deadline = Instant::now() + opts.time_limit;
    let mut workers = Vec::new();
    for c in 0..opts.clients {
        let (history, addrs) = (history.clone(), addrs.clone());
        let (lots, seed) = (opts.lots, opts.seed);
        workers.push(tokio::spawn(async move { client_loop(c, lots, seed, addrs, history, deadline).await }));
    }
    let nemesis_log = nemesis(&mut cluster, &opts.faults, opts.seed, deadline, &dir).await?;
    for w in workers {
        let _ = w.await;
    }
    cluster.heal()?;
    // No leader, or replicas that never agree again, is a verdict (a broken node mode can do
    // that), not a reason to stop before the checks.
    let converged = match cluster.leader(Duration::from_secs(30)).await {
        Ok(leader) => {
            restore_membership(&cluster, leader, Duration::from_secs(30)).await;
            cluster.converge(Duration::from_secs(60)).await.map(|(applied, _)| applied)
        }
        Err(e) => Err(e),
    };
    let converged = match converged {
        Ok(applied) => Ok(applied),
        Err(e @ (ClusterError::NoLeader(_) | ClusterError::NoConvergence(..))) => Err(e.to_string()),
        Err(e) => return Err(e.into()),
    };

    let recorded = history.lock().map_err(|_| RunError::Setup("poisoned".into()))?.take();
    let end_ns = recorded.ops.iter().filter_map(|(_, op)| op.ret).max().unwrap_or(0);
    std::fs::write(
        dir.join("timeline.svg"),
        timeline(&recorded.ops, &recorded.processes, &nemesis_log, opts.clients, end_ns),
    )?;
    let report = check(&cluster, &recorded, opts.seed, opts.search_budget, converged, nemesis_log, dir).await?;
    Ok(report)
}

/// Every node a voter again, retried for up to `within`: a membership fault whose heal failed
/// under later faults must not leave a node out of the final comparison.
async fn restore_membership(cluster: &Cluster, leader: u64, within: Duration) {
    let ids = cluster.ids();
    let admin = Client::new(cluster.addrs.values().cloned().collect()).with_deadline(Duration::from_secs(10));
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let leader = cluster.leader(Duration::from_secs(5)).await.unwrap_or(leader);
        match Client::metrics(&cluster.addrs[&leader]).await {
            Ok(m) if m.learners.is_empty() && ids.iter().all(|id| m.voters.contains(id)) => return,
            Ok(m) => {
                for id in ids.iter().filter(|id| !m.voters.contains(id) && !m.learners.contains(id)) {
                    let _ = admin.add_learner(node::pb::Node { id: *id, addr: cluster.addrs[id].clone() }).await;
                }
                let _ = admin.change_membership(ids.clone(), false).await;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
