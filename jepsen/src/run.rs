//! One test run: start a cluster, run the workload while the nemesis injects faults, heal,
//! then check the history and the replicas, and write the report directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::bidding::Book;
use ledger::ladder::Ladder;
use ledger::money::Currency;
use ledger::pb::{self as lp, command::Body, outcome::Result as Res};
use node::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_stream::StreamExt;

use crate::cluster::{Cluster, ClusterError};
use crate::linear::{self, Input, Model, Operation, Output, Verdict};

/// Faults the nemesis may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillRandom,
    KillLeader,
    /// kill -9 a majority at once (writes stop until they are back).
    KillMajority,
    Pause,
    /// Under load, either demote a voter to learner or remove it from the cluster; then add it
    /// back as a learner (if removed) and promote it to voter.
    Membership,
    /// Cut the leader off from every other node.
    PartitionLeader,
    /// Split the nodes into a random minority and majority.
    PartitionHalves,
    /// Two sides that cannot talk, joined by one node that reaches both.
    PartitionBridge,
    /// Restart a node with its clock (the time it stamps entries with when leading) shifted by
    /// up to ±8 s, then restart it with a true clock.
    ClockSkew,
    /// Each node reaches only its two ring neighbours (every node still sees a majority when
    /// there are 5: the "majorities ring"). With 3 nodes nothing is cut.
    PartitionRing,
}

impl Fault {
    const PARTITIONS: [Fault; 4] =
        [Fault::PartitionLeader, Fault::PartitionHalves, Fault::PartitionBridge, Fault::PartitionRing];
    const ALL: [Fault; 10] = [
        Fault::KillRandom,
        Fault::KillLeader,
        Fault::KillMajority,
        Fault::Pause,
        Fault::Membership,
        Fault::PartitionLeader,
        Fault::PartitionHalves,
        Fault::PartitionBridge,
        Fault::PartitionRing,
        Fault::ClockSkew,
    ];

    fn is_partition(self) -> bool {
        Fault::PARTITIONS.contains(&self)
    }

    pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
        s.split(',')
            .flat_map(|name| match name.trim() {
                "all" => Fault::ALL.map(Ok).to_vec(),
                "partition" => Fault::PARTITIONS.map(Ok).to_vec(),
                "clock" => vec![Ok(Fault::ClockSkew)],
                "membership" => vec![Ok(Fault::Membership)],
                "partition-ring" => vec![Ok(Fault::PartitionRing)],
                "partition-leader" => vec![Ok(Fault::PartitionLeader)],
                "partition-halves" => vec![Ok(Fault::PartitionHalves)],
                "partition-bridge" => vec![Ok(Fault::PartitionBridge)],
                "kill" => vec![Ok(Fault::KillRandom)],
                "kill-leader" => vec![Ok(Fault::KillLeader)],
                "kill-majority" => vec![Ok(Fault::KillMajority)],
                "pause" => vec![Ok(Fault::Pause)],
                "none" | "" => vec![],
                other => vec![Err(format!(
                    "unknown nemesis {other:?} (all, kill, kill-leader, kill-majority, pause, membership, \
                     partition, partition-leader, partition-halves, partition-bridge, partition-ring, clock, none)"
                ))],
            })
            .collect()
    }
}

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

/// The verdicts of one run.
#[derive(Debug)]
pub struct Report {
    pub dir: PathBuf,
    pub operations: usize,
    pub faults: BTreeMap<String, usize>,
    pub linearizability: BTreeMap<String, Verdict>,
    pub lost_bids: Vec<String>,
    pub duplicated_bids: Vec<String>,
    pub digests_equal: bool,
    pub feeds_equal: bool,
    /// Lots past their end time that the leader's timer never closed.
    pub unclosed_lots: Vec<String>,
}

impl Report {
    /// No checker found a violation (an "unknown" from the search budget is not a pass).
    pub fn valid(&self) -> bool {
        self.linearizability.values().all(|v| *v == Verdict::Linearizable)
            && self.lost_bids.is_empty()
            && self.duplicated_bids.is_empty()
            && self.digests_equal
            && self.feeds_equal
            && self.unclosed_lots.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

const START_PRICE: i64 = 10_000;

/// A history line, written as JSON as each operation is invoked and completed.
struct History {
    file: std::fs::File,
    started: Instant,
    ops: Vec<(String, Operation)>,
    /// The client (process) of each operation in `ops`, for the timeline.
    processes: Vec<usize>,
}

impl History {
    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn line(&mut self, value: serde_json::Value) {
        let _ = writeln!(self.file, "{value}");
    }
}

fn cmd(actor: &str, body: Body) -> lp::Command {
    lp::Command { at_ms: 0, actor: actor.into(), body: Some(body), log_index: 0 }
}

/// Users and lots; `lot-0` closes `close_after_ms` from now (so closing happens under faults),
/// the others stay open for the whole run.
pub(crate) fn setup_commands(clients: usize, lots: usize, now_ms: i64, close_after_ms: i64) -> Vec<lp::Command> {
    let user = |id: String, role: lp::Role| {
        cmd(
            "",
            Body::CreateUser(lp::CreateUser {
                user_id: id.clone(),
                username: id,
                role: role as i32,
                password_hash: vec![],
            }),
        )
    };
    let mut cmds = vec![user("curator".into(), lp::Role::Curator), user("seller".into(), lp::Role::User)];
    cmds.extend((0..clients).map(|c| user(format!("bidder{c}"), lp::Role::User)));
    for l in 0..lots {
        let lot_id = format!("lot-{l}");
        cmds.push(cmd(
            "curator",
            Body::CreateLot(lp::CreateLot {
                lot_id: lot_id.clone(),
                title: "Jepsen lot".into(),
                currency: "USD".into(),
                start_price: START_PRICE,
                starts_at_ms: now_ms - 60_000,
                ends_at_ms: if l == 0 { now_ms + close_after_ms } else { now_ms + 24 * 3_600_000 },
                seller_id: "seller".into(),
                ..Default::default()
            }),
        ));
        for s in [
            lp::LotStatus::UnderReview,
            lp::LotStatus::Authenticated,
            lp::LotStatus::ReadyForAuction,
            lp::LotStatus::InAuction,
        ] {
            cmds.push(cmd(
                "curator",
                Body::SetLotStatus(lp::SetLotStatus { lot_id: lot_id.clone(), status: s as i32 }),
            ));
        }
    }
    cmds
}

/// Client `c`'s own random stream, derived from the run's seed.
pub(crate) fn client_rng(seed: u64, c: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs one test and writes `history.jsonl`, `nemesis.jsonl` and `results.json` to a new
/// directory under `opts.out_dir`.
pub async fn run(opts: Options) -> Result<Report, RunError> {
    let dir = opts.out_dir.join(format!("run-{}-seed{}", now_ms(), opts.seed));
    std::fs::create_dir_all(&dir)?;
    let data = tempfile::tempdir()?;
    let mut cluster = Cluster::start(&opts.node_bin, data.path(), opts.nodes, opts.node_args.clone(), opts.net).await?;
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
    }));
    let deadline = Instant::now() + opts.time_limit;
    let mut workers = Vec::new();
    for c in 0..opts.clients {
        let (history, addrs) = (history.clone(), addrs.clone());
        let (lots, seed) = (opts.lots, opts.seed);
        workers.push(tokio::spawn(async move { client_loop(c, lots, seed, addrs, history, deadline).await }));
    }
    let nemesis_log = nemesis(&mut cluster, &opts, deadline, &dir).await?;
    for w in workers {
        let _ = w.await;
    }
    cluster.heal()?;
    cluster.leader(Duration::from_secs(30)).await?;
    let (applied, _) = cluster.converge(Duration::from_secs(60)).await?;

    let (ops, processes) = {
        let mut h = history.lock().map_err(|_| RunError::Setup("poisoned".into()))?;
        (std::mem::take(&mut h.ops), std::mem::take(&mut h.processes))
    };
    let end_ns = ops.iter().filter_map(|(_, op)| op.ret).max().unwrap_or(0);
    std::fs::write(dir.join("timeline.svg"), timeline(&ops, &processes, &nemesis_log, opts.clients, end_ns))?;
    let report = check(&cluster, &ops, &opts, applied, nemesis_log, dir).await?;
    Ok(report)
}

async fn client_loop(
    c: usize,
    lots: usize,
    seed: u64,
    addrs: Vec<String>,
    history: Arc<Mutex<History>>,
    deadline: Instant,
) {
    // Reads go to one node per client (as clients spread over gateways would), so every node
    // serves reads, not only the leader that writes soon prefer.
    let reader = Client::new(addrs.get(c % addrs.len().max(1)).cloned().into_iter().collect())
        .with_deadline(Duration::from_secs(3));
    let client = Client::new(addrs).with_deadline(Duration::from_secs(3));
    let mut rng = client_rng(seed, c);
    let bidder = format!("bidder{c}");
    let mut seq = 0u64;
    let Some(ladder) = Ladder::default_for(Currency::USD) else { return };
    let mut last_seen: BTreeMap<String, i64> = BTreeMap::new();
    while Instant::now() < deadline {
        seq += 1;
        let lot = format!("lot-{}", rng.gen_range(0..lots));
        let read = rng.gen_bool(0.3);
        let input = if read {
            Input::Read
        } else {
            // Like a real bidder: a few ladder steps above the last price this client saw, so
            // bids compete (overtakes, defences, ties) instead of falling below the minimum.
            let seen = *last_seen.get(&lot).unwrap_or(&START_PRICE);
            let max = seen + ladder.step_at(seen) * rng.gen_range(0..6);
            Input::Bid { bidder: bidder.clone(), bid_id: format!("c{c}-{seq}"), max }
        };
        let call = {
            let Ok(mut h) = history.lock() else { return };
            let t = h.now();
            h.line(json!({"process": c, "type": "invoke", "lot": lot, "op": format!("{input:?}"), "time_ns": t}));
            t
        };
        let (output, kind) = perform(if read { &reader } else { &client }, &lot, &input).await;
        if let Output::Bid { price, .. } | Output::Read { price, .. } = &output {
            last_seen.insert(lot.clone(), *price);
        }
        let Ok(mut h) = history.lock() else { return };
        let ret = h.now();
        h.line(json!({"process": c, "type": kind, "lot": lot, "op": format!("{input:?}"), "result": format!("{output:?}"), "time_ns": ret}));
        let ret = (kind != "info").then_some(ret);
        h.ops.push((lot, Operation { input, output, call, ret }));
        h.processes.push(c);
    }
}

/// Sends one operation; `(output, "ok" | "fail" | "info")`.
async fn perform(client: &Client, lot: &str, input: &Input) -> (Output, &'static str) {
    match input {
        Input::Read => match client.read_lot(lot, false, false).await {
            Ok(r) => match r.lot {
                Some(v) => {
                    let closed = v.status != lp::LotStatus::InAuction as i32;
                    (Output::Read { price: v.current_price, leader: v.leading_bidder, closed }, "ok")
                }
                None => (Output::Unknown, "info"),
            },
            Err(_) => (Output::Unknown, "info"),
        },
        Input::Bid { bidder, bid_id, max } => {
            let c = cmd(
                bidder,
                Body::PlaceBid(lp::PlaceBid { lot_id: lot.into(), bid_id: bid_id.clone(), max_amount: *max }),
            );
            match client.propose(vec![c]).await {
                Ok(results) => match results.first().and_then(|r| r.outcome.as_ref()).and_then(|o| o.result.as_ref()) {
                    Some(Res::Bid(b)) => (
                        Output::Bid {
                            leading: b.outcome == lp::BidOutcomeKind::Leading as i32,
                            price: b.current_price,
                        },
                        "ok",
                    ),
                    Some(Res::Rejected(r)) => (Output::Rejected { code: r.code.clone() }, "fail"),
                    _ => (Output::Unknown, "info"),
                },
                // A timeout or a lost connection: the bid may or may not have been ordered.
                Err(_) => (Output::Unknown, "info"),
            }
        }
    }
}

/// Injects faults at random times until the deadline, healing each before the next.
async fn nemesis(
    cluster: &mut Cluster,
    opts: &Options,
    deadline: Instant,
    dir: &Path,
) -> Result<Vec<serde_json::Value>, RunError> {
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut log = Vec::new();
    let mut file = std::fs::File::create(dir.join("nemesis.jsonl"))?;
    let started = Instant::now();
    while !opts.faults.is_empty() && Instant::now() + Duration::from_secs(3) < deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2_000))).await;
        let fault = opts.faults[rng.gen_range(0..opts.faults.len())];
        let ids = cluster.ids();
        let target = match fault {
            Fault::KillLeader | Fault::PartitionLeader => cluster.leader(Duration::from_secs(5)).await.ok(),
            _ => Some(ids[rng.gen_range(0..ids.len())]),
        };
        let Some(target) = target else { continue };
        let hold = Duration::from_millis(rng.gen_range(500..2_500));
        let start = started.elapsed().as_millis() as u64;
        let admin = Client::new(cluster.addrs.values().cloned().collect()).with_deadline(Duration::from_secs(10));
        let voters_without: Vec<u64> = ids.iter().copied().filter(|&id| id != target).collect();
        let mut sides = serde_json::Value::Null;
        let mut removed = false;
        match fault {
            Fault::KillRandom | Fault::KillLeader => cluster.kill(target)?,
            Fault::KillMajority => {
                let mut victims = ids.clone();
                victims.shuffle(&mut rng);
                victims.truncate(ids.len() / 2 + 1);
                for id in &victims {
                    cluster.kill(*id)?;
                }
                sides = json!(victims);
            }
            Fault::Pause => cluster.pause(target)?,
            // A failed change is logged, not fatal (it happens under faults).
            Fault::Membership if ids.len() > 1 => {
                removed = rng.gen_bool(0.5);
                sides = json!({"change": if removed { "remove" } else { "demote" }});
                if let Err(e) = admin.change_membership(voters_without, !removed).await {
                    writeln!(file, "{}", json!({"fault": "Membership", "node": target, "error": e.to_string()}))?;
                }
            }
            Fault::Membership => {}
            Fault::ClockSkew => {
                let offset_ms = rng.gen_range(1_000..8_000) * if rng.gen_bool(0.5) { 1 } else { -1 };
                cluster.restart_with(target, &["--clock-offset-ms".into(), offset_ms.to_string()])?;
                sides = json!({"clock_offset_ms": offset_ms});
            }
            Fault::PartitionRing => {
                let cuts = ring_cuts(&ids);
                for (x, y) in &cuts {
                    cluster.net.cut(&[*x], &[*y])?;
                }
                sides = json!(cuts);
            }
            Fault::PartitionLeader | Fault::PartitionHalves | Fault::PartitionBridge => {
                let (a, b) = partition_sides(fault, target, &ids, &mut rng);
                cluster.net.cut(&a, &b)?;
                sides = json!([a, b]);
            }
        }
        tokio::time::sleep(hold).await;
        if fault.is_partition() {
            cluster.net.heal()?;
        }
        if fault == Fault::ClockSkew {
            cluster.restart_with(target, &[])?;
        }
        cluster.heal()?;
        if fault == Fault::Membership {
            // A removed node comes back as a learner first, then every node is a voter again.
            let learner = node::pb::Node { id: target, addr: cluster.addrs[&target].clone() };
            let back = if removed { admin.add_learner(learner).await.map(|_| ()) } else { Ok(()) };
            if let Err(e) = back.and(admin.change_membership(ids.clone(), false).await.map(|_| ())) {
                writeln!(file, "{}", json!({"fault": "Membership", "node": target, "heal_error": e.to_string()}))?;
            }
        }
        let entry = json!({"fault": format!("{fault:?}"), "node": target, "sides": sides, "start_ms": start, "end_ms": started.elapsed().as_millis() as u64});
        writeln!(file, "{entry}")?;
        log.push(entry);
    }
    Ok(log)
}

/// The node pairs a ring partition cuts: all but ring neighbours.
fn ring_cuts(ids: &[u64]) -> Vec<(u64, u64)> {
    let n = ids.len();
    let mut cuts = Vec::new();
    for i in 0..n {
        for j in (i + 1)..n {
            let distance = j - i;
            if distance != 1 && distance != n - 1 {
                cuts.push((ids[i], ids[j]));
            }
        }
    }
    cuts
}

/// The two sides of a partition; `target` is the isolated leader, the minority's first node,
/// or the bridge (which belongs to neither side and reaches both).
fn partition_sides(fault: Fault, target: u64, ids: &[u64], rng: &mut StdRng) -> (Vec<u64>, Vec<u64>) {
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != target).collect();
    match fault {
        Fault::PartitionHalves => {
            let mut shuffled = others;
            shuffled.shuffle(rng);
            let minority_extra = (ids.len().saturating_sub(1) / 2).saturating_sub(1);
            let mut minority = vec![target];
            minority.extend(shuffled.drain(..minority_extra.min(shuffled.len())));
            (minority, shuffled)
        }
        Fault::PartitionBridge => {
            let half = others.len() / 2;
            (others[..half].to_vec(), others[half..].to_vec())
        }
        _ => (vec![target], others),
    }
}

async fn check(
    cluster: &Cluster,
    ops: &[(String, Operation)],
    opts: &Options,
    applied: u64,
    nemesis_log: Vec<serde_json::Value>,
    dir: PathBuf,
) -> Result<Report, RunError> {
    let Some(ladder) = Ladder::default_for(Currency::USD) else { return Err(RunError::Setup("no USD ladder".into())) };
    let model = Model { ladder, initial: Book::new(START_PRICE, None) };
    let mut by_lot: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for (lot, op) in ops {
        by_lot.entry(lot.as_str()).or_default().push(op.clone());
    }
    let linearizability: BTreeMap<String, Verdict> =
        by_lot.iter().map(|(lot, ops)| ((*lot).to_owned(), linear::check(&model, ops, opts.search_budget))).collect();

    // Every acknowledged accepted bid is in the final ledger exactly once (as a placed line).
    let client = Client::new(cluster.addrs.values().cloned().collect()).with_deadline(Duration::from_secs(30));
    let (mut lost_bids, mut duplicated_bids, mut unclosed_lots) = (Vec::new(), Vec::new(), Vec::new());
    for (lot, lot_ops) in &by_lot {
        let r = client.read_lot(lot, false, true).await.map_err(|e| RunError::Setup(e.to_string()))?;
        // lot-0 ended mid-run (in ledger time, which is never behind real time at the end).
        if *lot == "lot-0" && r.lot.as_ref().is_some_and(|v| v.status == lp::LotStatus::InAuction as i32) {
            unclosed_lots.push((*lot).to_owned());
        }
        let mut placed: BTreeMap<&str, usize> = BTreeMap::new();
        for line in &r.bids {
            if line.kind == lp::BidKind::Placed as i32 {
                *placed.entry(line.bid_id.as_str()).or_default() += 1;
            }
        }
        for op in lot_ops {
            if let (Input::Bid { bid_id, .. }, Output::Bid { .. }) = (&op.input, &op.output) {
                match placed.get(bid_id.as_str()) {
                    None => lost_bids.push(bid_id.clone()),
                    Some(n) if *n > 1 => duplicated_bids.push(bid_id.clone()),
                    _ => {}
                }
            }
        }
    }

    // Every replica's feed from index 0 is identical and contiguous.
    let mut feeds = Vec::new();
    for addr in cluster.addrs.values() {
        feeds.push(read_feed(addr, applied).await);
    }
    let feeds_equal = feeds.iter().all(|f| f.as_ref().is_ok_and(|items| Some(items) == feeds[0].as_ref().ok()))
        && feeds[0].as_ref().is_ok_and(|items| items.windows(2).all(|w| w[1].index == w[0].index + 1));

    let mut faults = BTreeMap::new();
    for entry in &nemesis_log {
        *faults.entry(entry["fault"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    let report = Report {
        dir: dir.clone(),
        operations: ops.len(),
        faults,
        linearizability,
        lost_bids,
        duplicated_bids,
        // `converge` returned only once every node reported the same digest at one index.
        digests_equal: true,
        feeds_equal,
        unclosed_lots,
    };
    let results = json!({
        "valid": report.valid(),
        "seed": opts.seed,
        "operations": report.operations,
        "faults": report.faults,
        "linearizability": report.linearizability.iter().map(|(k, v)| (k.clone(), format!("{v:?}"))).collect::<BTreeMap<_, _>>(),
        "lost_bids": report.lost_bids,
        "duplicated_bids": report.duplicated_bids,
        "digests_equal": report.digests_equal,
        "feeds_equal": report.feeds_equal,
        "unclosed_lots": report.unclosed_lots,
        "applied_index": applied,
        "lots_checked": by_lot.keys().collect::<BTreeSet<_>>(),
    });
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&results).unwrap_or_default())?;
    Ok(report)
}

async fn read_feed(addr: &str, upto: u64) -> Result<Vec<node::pb::FeedItem>, String> {
    let mut stream = Client::subscribe(addr, 0).await.map_err(|e| e.to_string())?;
    let mut items = Vec::new();
    while items.last().is_none_or(|i: &node::pb::FeedItem| i.index < upto) {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(item))) => items.push(item),
            other => return Err(format!("feed from {addr} ended early: {other:?}")),
        }
    }
    Ok(items)
}

/// Operations per client over time (green ok, orange refused, grey unanswered), with the
/// nemesis's faults shaded red. At most `TIMELINE_OPS_MAX` operations are drawn (evenly
/// sampled) so the file stays small enough to open.
fn timeline(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_cuts_all_but_neighbours() {
        assert!(ring_cuts(&[1, 2, 3]).is_empty());
        assert_eq!(ring_cuts(&[1, 2, 3, 4, 5]), vec![(1, 3), (1, 4), (2, 4), (2, 5), (3, 5)]);
    }

    #[test]
    fn partitions_leave_a_majority_and_a_minority() {
        let mut rng = StdRng::seed_from_u64(1);
        let (a, b) = partition_sides(Fault::PartitionHalves, 3, &[1, 2, 3, 4, 5], &mut rng);
        assert_eq!((a.len(), b.len()), (2, 3));
        assert!(a.contains(&3));
        let (a, b) = partition_sides(Fault::PartitionLeader, 2, &[1, 2, 3], &mut rng);
        assert_eq!((a, b), (vec![2], vec![1, 3]));
        let (a, b) = partition_sides(Fault::PartitionBridge, 2, &[1, 2, 3], &mut rng);
        assert_eq!((a, b), (vec![1], vec![3]), "node 2 bridges the two sides");
    }
}
