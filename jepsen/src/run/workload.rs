//! The clients: the users and lots a run starts with, and each client's loop of random bids
//! and reads, every operation recorded in the history as it is invoked and completed.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::ladder::Ladder;
use ledger::money::Currency;
use ledger::pb::{self as lp, command::Body, outcome::Result as Res};
use node::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::linear::{Input, Operation, Output};

/// Every lot's start price (the checker's model starts from it too).
pub(crate) const START_PRICE: i64 = 10_000;

/// A history line, written as JSON as each operation is invoked and completed.
pub(crate) struct History {
    pub(crate) file: std::fs::File,
    pub(crate) started: Instant,
    pub(crate) ops: Vec<(String, Operation)>,
    /// The client (process) of each operation in `ops`, for the timeline.
    pub(crate) processes: Vec<usize>,
    /// Answered bids sent a second time with the same id, as a client whose answer was lost
    /// would: exactly-once means the second answer is the first one again.
    pub(crate) resends: Vec<Resend>,
}

/// The history's operations and re-sent bids, once the clients have stopped.
pub(crate) struct Recorded {
    pub(crate) ops: Vec<(String, Operation)>,
    pub(crate) processes: Vec<usize>,
    pub(crate) resends: Vec<Resend>,
}

/// A bid sent again after its answer came back.
#[derive(Clone, Debug)]
pub(crate) struct Resend {
    pub(crate) bid_id: String,
    pub(crate) first: Output,
    pub(crate) again: Output,
}

/// The share of answered bids that are sent again with the same id.
const RESEND_PROBABILITY: f64 = 0.1;

impl History {
    /// What the clients recorded, taken out for the checks.
    pub(crate) fn take(&mut self) -> Recorded {
        Recorded {
            ops: std::mem::take(&mut self.ops),
            processes: std::mem::take(&mut self.processes),
            resends: std::mem::take(&mut self.resends),
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn line(&mut self, value: serde_json::Value) {
        let _ = writeln!(self.file, "{value}");
    }
}

pub(crate) fn cmd(actor: &str, body: Body) -> lp::Command {
    lp::Command { at_ms: 0, actor: actor.into(), body: Some(body), log_index: 0 }
}

/// Users and lots; `lot-0` closes `close_after_ms` from now (so closing happens under faults),
/// the others stay open for the whole run.
pub fn setup_commands(clients: usize, lots: usize, now_ms: i64, close_after_ms: i64) -> Vec<lp::Command> {
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) async fn client_loop(
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
        let resend = match &input {
            Input::Bid { bid_id, .. } if kind != "info" && rng.gen_bool(RESEND_PROBABILITY) => Some(bid_id.clone()),
            _ => None,
        };
        {
            let Ok(mut h) = history.lock() else { return };
            let ret = h.now();
            h.line(json!({"process": c, "type": kind, "lot": lot, "op": format!("{input:?}"), "result": format!("{output:?}"), "time_ns": ret}));
            let ret = (kind != "info").then_some(ret);
            h.ops.push((lot.clone(), Operation { input: input.clone(), output: output.clone(), call, ret }));
            h.processes.push(c);
        }
        // Not an operation of the history: a no-op on the ledger when exactly-once holds, so
        // the linearizability model never sees it; the checks compare its answer instead.
        if let Some(bid_id) = resend {
            let (again, kind) = perform(&client, &lot, &input).await;
            let Ok(mut h) = history.lock() else { return };
            let t = h.now();
            h.line(json!({"process": c, "type": "resend", "lot": lot, "op": format!("{input:?}"), "result": format!("{again:?}"), "first": format!("{output:?}"), "time_ns": t}));
            if kind != "info" {
                h.resends.push(Resend { bid_id, first: output, again });
            }
        }
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
