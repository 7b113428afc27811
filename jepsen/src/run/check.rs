//! The checks after a run: linearizability per lot, every acknowledged bid in the final
//! ledger exactly once, identical feeds on every replica, overdue lots closed; the verdicts go
//! to `results.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use ledger::bidding::Book;
use ledger::ladder::Ladder;
use ledger::money::Currency;
use ledger::pb as lp;
use node::Client;
use serde_json::json;
use tokio_stream::StreamExt;

use super::error::RunError;
use super::workload::{Recorded, START_PRICE};
use crate::cluster::Cluster;
use crate::linear::{self, Input, Model, Operation, Output, Verdict};

/// The verdicts of one run.
#[derive(Debug)]
pub struct Report {
    pub dir: PathBuf,
    pub operations: usize,
    pub faults: BTreeMap<String, usize>,
    pub linearizability: BTreeMap<String, Verdict>,
    pub lost_bids: Vec<String>,
    /// Bids applied more than once: acknowledged as accepted with more than one placed line;
    /// acknowledged as refused although a placed line carries their id (only a retry applied
    /// a second time answers "refused" for a bid its first application placed); or sent again
    /// by the workload and answered differently the second time.
    pub duplicated_bids: Vec<String>,
    pub digests_equal: bool,
    /// What kept the final checks from running after the heal: replicas that never reached
    /// one index with equal digests, a final state no node would serve. Each is a violation.
    pub broken: Vec<String>,
    pub feeds_equal: bool,
    /// Answers showing a lower price than one already returned before they were asked
    /// (`linear::price_regressions`): violations found without the search's budget.
    pub price_regressions: Vec<String>,
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
            && self.broken.is_empty()
            && self.price_regressions.is_empty()
    }
}

/// What the run's checks answer; `seed` and `search_budget` are the run's; `converged` is the
/// index every replica reached with equal digests, or why they never did.
pub(crate) async fn check(
    cluster: &Cluster,
    recorded: &Recorded,
    seed: u64,
    search_budget: u64,
    converged: Result<u64, String>,
    nemesis_log: Vec<serde_json::Value>,
    dir: PathBuf,
) -> Result<Report, RunError> {
    let Some(ladder) = Ladder::default_for(Currency::USD) else { return Err(RunError::Setup("no USD ladder".into())) };
    let model = Model { ladder, initial: Book::new(START_PRICE, None) };
    let mut by_lot: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    let (ops, resends) = (&recorded.ops, &recorded.resends);
    for (lot, op) in ops {
        by_lot.entry(lot.as_str()).or_default().push(op.clone());
    }
    let linearizability: BTreeMap<String, Verdict> =
        by_lot.iter().map(|(lot, ops)| ((*lot).to_owned(), linear::check(&model, ops, search_budget))).collect();
    let price_regressions: Vec<String> = by_lot
        .iter()
        .flat_map(|(lot, ops)| linear::price_regressions(ops).into_iter().map(move |r| format!("{lot}: {r}")))
        .collect();

    // Every acknowledged accepted bid is in the final ledger exactly once (as a placed line);
    // every acknowledged refused bid is in it not at all.
    let client = Client::new(cluster.addrs.values().cloned().collect()).with_deadline(Duration::from_secs(30));
    let (mut lost_bids, mut duplicated_bids, mut unclosed_lots) = (Vec::new(), Vec::new(), Vec::new());
    let mut broken: Vec<String> = converged.as_ref().err().cloned().into_iter().collect();
    for (lot, lot_ops) in &by_lot {
        let r = match client.read_lot(lot, false, true).await {
            Ok(r) => r,
            Err(e) => {
                broken.push(format!("the final state of {lot} could not be read: {e}"));
                break;
            }
        };
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
            let Input::Bid { bid_id, .. } = &op.input else { continue };
            let lines = placed.get(bid_id.as_str()).copied().unwrap_or(0);
            match &op.output {
                Output::Bid { .. } if lines == 0 => lost_bids.push(bid_id.clone()),
                Output::Bid { .. } if lines > 1 => duplicated_bids.push(bid_id.clone()),
                Output::Rejected { .. } if lines > 0 => duplicated_bids.push(bid_id.clone()),
                _ => {}
            }
        }
    }

    // A bid sent again is answered from its record: the first answer, whatever happened since.
    for r in resends {
        if r.again != r.first && !duplicated_bids.contains(&r.bid_id) {
            duplicated_bids.push(r.bid_id.clone());
        }
    }

    // Every replica's feed is contiguous from where it starts (0, unless the node caught up
    // from a snapshot, which carries no feed) to the common index, and replicas agree on every
    // index they both hold.
    let mut feeds = Vec::new();
    if let Ok(applied) = &converged {
        for addr in cluster.addrs.values() {
            feeds.push(read_feed(addr, *applied).await);
        }
    }
    let feed_starts: Vec<u64> = feeds.iter().filter_map(|f| f.as_ref().ok()).map(|(start, _)| *start).collect();
    let feeds_equal = !feeds.is_empty()
        && feeds.iter().all(|f| {
            f.as_ref().is_ok_and(|(start, items)| {
                items.first().is_none_or(|i| i.index == start + 1)
                    && items.windows(2).all(|w| w[1].index == w[0].index + 1)
            })
        })
        && feeds.iter().flatten().all(|(start, items)| {
            feeds.iter().flatten().all(|(other_start, other)| {
                let from = (*start).max(*other_start);
                let skip = |s: u64| usize::try_from(from - s).unwrap_or(usize::MAX);
                items.iter().skip(skip(*start)).eq(other.iter().skip(skip(*other_start)))
            })
        });

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
        digests_equal: converged.is_ok(),
        broken,
        feeds_equal,
        price_regressions,
        unclosed_lots,
    };
    let results = json!({
        "valid": report.valid(),
        "seed": seed,
        "operations": report.operations,
        "resends": resends.len(),
        "faults": report.faults,
        "linearizability": report.linearizability.iter().map(|(k, v)| (k.clone(), format!("{v:?}"))).collect::<BTreeMap<_, _>>(),
        "lost_bids": report.lost_bids,
        "duplicated_bids": report.duplicated_bids,
        "digests_equal": report.digests_equal,
        "feeds_equal": report.feeds_equal,
        "feed_starts": feed_starts,
        "unclosed_lots": report.unclosed_lots,
        "price_regressions": report.price_regressions,
        "applied_index": converged.as_ref().ok(),
        "broken": report.broken,
        "lots_checked": by_lot.keys().collect::<BTreeSet<_>>(),
    });
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&results).unwrap_or_default())?;
    Ok(report)
}

/// One node's feed from where it starts up to `upto`: the start and the items.
async fn read_feed(addr: &str, upto: u64) -> Result<(u64, Vec<node::pb::FeedItem>), String> {
    let start = Client::metrics(addr).await.map_err(|e| e.to_string())?.feed_start;
    if start >= upto {
        return Ok((start, Vec::new()));
    }
    let mut stream = Client::subscribe(addr, start).await.map_err(|e| e.to_string())?;
    let mut items = Vec::new();
    while items.last().is_none_or(|i: &node::pb::FeedItem| i.index < upto) {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(item))) => items.push(item),
            other => return Err(format!("feed from {addr} ended early: {other:?}")),
        }
    }
    Ok((start, items))
}
