//! The auction rules by the book (DESIGN.md), scenario by scenario, through `Ledger::apply`.
//! Amounts are USD cents on the default ladder: steps of $5 below $500, $10 below $2,000,
//! $25 below $5,000, $50 below $10,000, $100 above.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::*;
use ledger::lifecycle;
use ledger::pb::{self, LotStatus, command::Body, event::Kind, outcome::Result as Res};

/// One bid of a scenario and what must follow from it.
struct Step {
    bidder: &'static str,
    max: i64,
    /// `Ok((leading?, price, leader))` or `Err(code)`.
    expect: Result<(bool, i64, &'static str), &'static str>,
}

const fn lead(bidder: &'static str, max: i64, price: i64) -> Step {
    Step { bidder, max, expect: Ok((true, price, bidder)) }
}
const fn outbid(bidder: &'static str, max: i64, price: i64, leader: &'static str) -> Step {
    Step { bidder, max, expect: Ok((false, price, leader)) }
}
const fn refused(bidder: &'static str, max: i64, code: &'static str) -> Step {
    Step { bidder, max, expect: Err(code) }
}

struct Scenario {
    name: &'static str,
    start: i64,
    reserve: Option<i64>,
    steps: &'static [Step],
    reserve_met_at_end: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "first bid at the start price leads at S",
        start: 10_000,
        reserve: None,
        steps: &[lead("ana", 10_000, 10_000)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "a high first bid still shows S",
        start: 10_000,
        reserve: None,
        steps: &[lead("ana", 500_000, 10_000)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "current bid 100, a new maximum of 5,000 displays 105",
        start: 10_000,
        reserve: None,
        steps: &[lead("ana", 10_000, 10_000), lead("ben", 500_000, 10_500)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "a challenger above the maximum leads at M + inc(M)",
        start: 10_000,
        reserve: None,
        steps: &[lead("ana", 100_000, 10_000), lead("ben", 300_000, 101_000)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "a challenger one step above the maximum leads at their own maximum",
        start: 10_000,
        reserve: None,
        steps: &[lead("ana", 49_500, 10_000), lead("ben", 50_000, 50_000)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "a challenger below the maximum is outbid by the proxy at m + inc(m)",
        start: 10_000,
        reserve: None,
        steps: &[lead("ana", 100_000, 10_000), outbid("ben", 20_000, 20_500, "ana")],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "a tie goes to the earlier maximum",
        start: 10_000,
        reserve: None,
        steps: &[lead("ana", 100_000, 10_000), outbid("ben", 100_000, 100_000, "ana")],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "the proxy price crosses a ladder tier",
        start: 10_000,
        reserve: None,
        steps: &[lead("ana", 49_500, 10_000), lead("ben", 60_000, 50_000), outbid("cai", 51_000, 52_000, "ben")],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "the leader raising their maximum does not move the price",
        start: 10_000,
        reserve: None,
        steps: &[
            lead("ana", 10_000, 10_000),
            lead("ben", 50_000, 10_500),
            lead("ben", 100_000, 10_500),
            outbid("ana", 60_000, 61_000, "ben"),
        ],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "the leader cannot bid at or below their own maximum",
        start: 10_000,
        reserve: None,
        steps: &[
            lead("ana", 50_000, 10_000),
            refused("ana", 50_000, "not_above_own_max"),
            refused("ana", 20_000, "not_above_own_max"),
        ],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "an opening bid below S is refused",
        start: 10_000,
        reserve: None,
        steps: &[refused("ana", 9_500, "below_minimum")],
        reserve_met_at_end: false,
    },
    Scenario {
        name: "a challenger must reach P + inc(P)",
        start: 10_000,
        reserve: None,
        steps: &[lead("ana", 10_000, 10_000), refused("ben", 10_000, "below_minimum"), lead("ben", 10_500, 10_500)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "a bid off the ladder's grid is refused",
        start: 10_000,
        reserve: None,
        steps: &[
            lead("ana", 10_000, 10_000),
            refused("ben", 10_700, "not_an_increment"),
            refused("ben", 60_500, "not_an_increment"),
        ],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "the exact minimum is allowed even off the grid",
        start: 10_001,
        reserve: None,
        steps: &[lead("ana", 10_001, 10_001), lead("ben", 10_501, 10_501)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "amounts must be positive",
        start: 10_000,
        reserve: None,
        steps: &[
            refused("ana", 0, "invalid_amount"),
            refused("ana", -500, "invalid_amount"),
            refused("ana", i64::MAX, "invalid_amount"),
        ],
        reserve_met_at_end: false,
    },
    Scenario {
        name: "an opening bid meeting the reserve shows R",
        start: 10_000,
        reserve: Some(100_000),
        steps: &[lead("ana", 100_000, 100_000)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "an opening bid below the reserve shows S",
        start: 10_000,
        reserve: Some(100_000),
        steps: &[lead("ana", 50_000, 10_000)],
        reserve_met_at_end: false,
    },
    Scenario {
        name: "a challenger meeting the reserve jumps the price to R",
        start: 10_000,
        reserve: Some(100_000),
        steps: &[lead("ana", 50_000, 10_000), lead("ben", 150_000, 100_000)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "a challenger below the reserve overtakes at M + inc(M)",
        start: 10_000,
        reserve: Some(100_000),
        steps: &[lead("ana", 50_000, 10_000), lead("ben", 60_000, 51_000)],
        reserve_met_at_end: false,
    },
    Scenario {
        name: "the leader raising past the reserve jumps the price to R",
        start: 10_000,
        reserve: Some(100_000),
        steps: &[lead("ana", 50_000, 10_000), lead("ana", 120_000, 100_000), lead("ana", 150_000, 100_000)],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "a defended leader above the reserve shows at least R",
        start: 10_000,
        reserve: Some(100_000),
        steps: &[
            lead("ana", 150_000, 100_000),
            refused("ben", 100_500, "below_minimum"),
            outbid("ben", 120_000, 121_000, "ana"),
        ],
        reserve_met_at_end: true,
    },
    Scenario {
        name: "a defended leader below the reserve shows m + inc(m)",
        start: 10_000,
        reserve: Some(100_000),
        steps: &[lead("ana", 50_000, 10_000), outbid("ben", 20_000, 20_500, "ana")],
        reserve_met_at_end: false,
    },
];

#[test]
fn proxy_bidding_scenarios() {
    for sc in SCENARIOS {
        let mut w = World::new();
        w.open_lot("L", sc.start, sc.reserve, 0);
        let mut price_before = sc.start;
        for (i, step) in sc.steps.iter().enumerate() {
            w.at += 1_000;
            let got = w.bid(step.bidder, &format!("{}-{i}", step.bidder), "L", step.max);
            let got = got.map(|b| (b.outcome == pb::BidOutcomeKind::Leading as i32, b.current_price, b.leading_bidder));
            let expect = step.expect.map(|(l, p, who)| (l, p, who.to_owned())).map_err(str::to_owned);
            assert_eq!(got, expect, "{}: step {i} ({} bids {})", sc.name, step.bidder, step.max);
            let price = w.view("L").current_price;
            assert!(price >= price_before, "{}: price decreased", sc.name);
            price_before = price;
        }
        assert_eq!(w.view("L").reserve_met, sc.reserve_met_at_end, "{}: reserve_met", sc.name);
    }
}

#[test]
fn bid_history_records_placed_and_proxy_bids_with_visible_amounts() {
    let mut w = World::new();
    w.open_lot("L", 10_000, None, 0);
    w.bid("ana", "a1", "L", 100_000).unwrap();
    w.bid("ben", "b1", "L", 20_000).unwrap();
    let lot = w.ledger.lot("L").unwrap();
    let lines: Vec<_> = lot.history.iter().map(|h| (&*h.bidder, &*h.bid_id, h.amount, h.kind)).collect();
    assert_eq!(
        lines,
        [
            ("ana", "a1", 10_000, pb::BidKind::Placed),
            ("ben", "b1", 20_000, pb::BidKind::Placed),
            ("ana", "a1", 20_500, pb::BidKind::Proxy),
        ]
    );
    assert_eq!(w.view("L").bid_count, 3);
}

#[test]
fn the_outbid_bidder_is_notified() {
    let mut w = World::new();
    w.open_lot("L", 10_000, None, 0);
    w.bid("ana", "a1", "L", 20_000).unwrap();
    let applied =
        w.run("ben", Body::PlaceBid(pb::PlaceBid { lot_id: "L".into(), bid_id: "b1".into(), max_amount: 30_000 }));
    let outbid: Vec<_> = applied
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Outbid(o)) => Some(o.user_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(outbid, ["ana"]);
    // A defended challenger is told at once.
    let applied =
        w.run("cai", Body::PlaceBid(pb::PlaceBid { lot_id: "L".into(), bid_id: "c1".into(), max_amount: 21_000 }));
    assert!(applied.events.iter().any(|e| matches!(&e.kind, Some(Kind::Outbid(o)) if o.user_id == "cai")));
}

#[test]
fn who_may_bid() {
    let mut w = World::new();
    w.ok("cur", Body::CreateLot(lot("D", 10_000, None, 0)));
    assert_eq!(w.bid("ana", "a0", "D", 10_000), Err("lot_not_open".into()), "a Draft lot");
    w.open_lot("L", 10_000, None, 0);
    w.at = T0 - 1;
    assert_eq!(w.bid("ana", "a1", "L", 10_000), Err("lot_not_open".into()), "before starts_at");
    w.at = T0;
    assert_eq!(w.bid("sam", "s1", "L", 10_000), Err("seller_cannot_bid".into()));
    assert_eq!(w.bid("ana", "a2", "nope", 10_000), Err("lot_not_found".into()));
    assert_eq!(w.bid("ghost", "g1", "L", 10_000), Err("user_not_found".into()));
    assert_eq!(w.bid("ana", "bad id!", "L", 10_000), Err("invalid_input".into()));
    assert!(w.bid("ana", "a3", "L", 10_000).is_ok(), "at starts_at exactly");
    w.at = T0 + HOUR;
    assert_eq!(w.bid("ben", "b1", "L", 20_000), Err("lot_closed".into()), "at ends_at");
    w.close("L");
    assert_eq!(w.bid("ben", "b2", "L", 20_000), Err("lot_closed".into()), "a sold lot");
}

#[test]
fn a_bid_in_the_soft_close_window_extends_the_end() {
    let mut w = World::new();
    w.open_lot("L", 10_000, None, 120);
    w.at = T0 + 10 * MIN;
    let b = w.bid("ana", "a1", "L", 10_000).unwrap();
    assert_eq!(b.ends_at_ms, T0 + HOUR, "far from the end: no extension");
    w.at = T0 + HOUR - 30_000;
    let b = w.bid("ben", "b1", "L", 20_000).unwrap();
    assert_eq!(b.ends_at_ms, T0 + HOUR + 90_000, "30 s before the end: extended to at + 120 s");
    w.at = T0 + HOUR + 60_000;
    let b = w.bid("ana", "a2", "L", 11_000).unwrap();
    assert_eq!(b.outcome, pb::BidOutcomeKind::Outbid as i32);
    assert_eq!(b.ends_at_ms, T0 + HOUR + 180_000, "an outbid challenger's accepted bid extends too");
    w.at = T0 + HOUR + 170_000;
    w.rejected("", Body::CloseLot(pb::CloseLot { lot_id: "L".into() }), "lot_not_ended");
    w.at = T0 + HOUR + 180_000;
    assert_eq!(w.bid("cai", "c1", "L", 90_000), Err("lot_closed".into()));
}

#[test]
fn closing_sells_above_the_reserve_and_ends_below_it() {
    // (reserve, bids, closing status, winner, price)
    type Case<'a> = (Option<i64>, &'a [(&'a str, i64)], LotStatus, &'a str, i64);
    let cases: &[Case] = &[
        (None, &[], LotStatus::AuctionEnded, "", 0),
        (None, &[("ana", 20_000)], LotStatus::SoldPendingPayment, "ana", 10_000),
        (Some(100_000), &[("ana", 50_000), ("ben", 60_000)], LotStatus::AuctionEnded, "", 0),
        (Some(100_000), &[("ana", 50_000), ("ben", 100_000)], LotStatus::SoldPendingPayment, "ben", 100_000),
        (Some(100_000), &[("ana", 150_000), ("ben", 120_000)], LotStatus::SoldPendingPayment, "ana", 121_000),
    ];
    for (reserve, bids, status, winner, price) in cases {
        let mut w = World::new();
        w.open_lot("L", 10_000, *reserve, 0);
        for (i, (who, max)) in bids.iter().enumerate() {
            w.bid(who, &format!("x{i}"), "L", *max).unwrap();
        }
        w.at = T0 + HOUR;
        let applied = w.close("L");
        let Some(Res::Closed(closed)) = applied.outcome.result else { panic!("close failed: {applied:?}") };
        assert_eq!(
            (closed.status, closed.winner.as_str(), closed.price),
            (*status as i32, *winner, *price),
            "{reserve:?} {bids:?}"
        );
        assert_eq!(w.view("L").status, *status as i32);
        // A duplicate close from an old leader's timer: same answer, no change, no events.
        let digest = w.ledger.digest();
        let again = w.close("L");
        assert_eq!(again.outcome.result, Some(Res::Closed(closed)));
        assert!(again.events.is_empty());
        assert_eq!(w.ledger.digest(), digest);
    }
}

#[test]
fn a_retried_bid_id_returns_the_first_answer_and_changes_nothing() {
    let mut w = World::new();
    w.open_lot("L", 10_000, None, 0);
    let first = w.bid("ana", "same", "L", 20_000);
    let digest = w.ledger.digest();
    assert_eq!(w.bid("ana", "same", "L", 90_000), first, "a different amount does not matter");
    assert_eq!(w.ledger.digest(), digest);
    // Scoped to the bidder: ben's "same" is a different bid.
    assert_eq!(w.bid("ben", "same", "L", 30_000).map(|b| b.leading_bidder), Ok("ben".into()));
    // Rejections are remembered too.
    let refused = w.bid("cai", "low", "L", 100);
    assert_eq!(refused, Err("below_minimum".into()));
    assert_eq!(w.bid("cai", "low", "L", 900_000), refused);
    // And the records survive a snapshot: a replica restored from one answers retries alike.
    w.ledger = ledger::Ledger::decode_snapshot(&w.ledger.encode_snapshot()).unwrap();
    let digest = w.ledger.digest();
    assert_eq!(w.bid("ana", "same", "L", 500_000), first);
    assert_eq!(w.bid("cai", "low", "L", 900_000), refused);
    assert_eq!(w.ledger.digest(), digest);
}

/// Drives lot "L" to `target` through real commands.
fn reach(w: &mut World, target: LotStatus) {
    use LotStatus::*;
    let path: &[LotStatus] = match target {
        Draft => &[],
        UnderReview => &[UnderReview],
        Authenticated => &[UnderReview, Authenticated],
        NotApproved => &[UnderReview, NotApproved],
        ReadyForAuction => &[UnderReview, Authenticated, ReadyForAuction],
        _ => &[UnderReview, Authenticated, ReadyForAuction, InAuction],
    };
    w.ok("cur", Body::CreateLot(lot("L", 10_000, None, 0)));
    for &s in path {
        w.ok("cur", set_status("L", s));
    }
    w.at = T0;
    match target {
        AuctionCancelled => {
            w.ok("cur", set_status("L", AuctionCancelled));
        }
        AuctionEnded => {
            w.at = T0 + HOUR;
            w.close("L");
        }
        SoldPendingPayment | PaymentReceived | ReturnedToConsignor | Delivered => {
            w.bid("ana", "a", "L", 10_000).unwrap();
            w.at = T0 + HOUR;
            w.close("L");
            let rest: &[LotStatus] = match target {
                PaymentReceived => &[PaymentReceived],
                ReturnedToConsignor => &[ReturnedToConsignor],
                Delivered => &[PaymentReceived, Delivered],
                _ => &[],
            };
            for &s in rest {
                w.ok("cur", set_status("L", s));
            }
        }
        _ => {}
    }
    assert_eq!(w.view("L").status, target as i32, "reached {}", lifecycle::name(target));
}

#[test]
fn every_lifecycle_move_through_the_ledger() {
    for from in lifecycle::ALL {
        for to in lifecycle::ALL {
            let mut w = World::new();
            reach(&mut w, from);
            let body = set_status("L", to);
            if from == to {
                let applied = w.ok("cur", body);
                assert!(applied.events.is_empty(), "same status is a no-op");
            } else if !lifecycle::can_transition(from, to) {
                w.rejected("cur", body, "invalid_transition");
            } else if from == LotStatus::InAuction && to != LotStatus::AuctionCancelled {
                w.rejected("cur", body, "closes_by_rule");
            } else {
                let applied = w.ok("cur", body);
                assert_eq!(w.view("L").status, to as i32);
                assert!(applied.events.iter().any(
                    |e| matches!(&e.kind, Some(Kind::LotStatusChanged(c)) if c.from == from as i32 && c.to == to as i32)
                ));
            }
        }
    }
}

#[test]
fn reoffering_a_lot_clears_its_bids() {
    let mut w = World::new();
    reach(&mut w, LotStatus::SoldPendingPayment);
    w.ok("cur", set_status("L", LotStatus::ReadyForAuction));
    let v = w.view("L");
    assert_eq!((v.bid_count, v.current_price, v.leading_bidder.as_str()), (0, 10_000, ""));
}

#[test]
fn roles_and_ownership() {
    let mut w = World::new();
    w.rejected("ana", Body::CreateLot(lot("L", 10_000, None, 0)), "forbidden");
    w.rejected("ghost", Body::CreateLot(lot("L", 10_000, None, 0)), "forbidden");
    w.ok("cur", Body::CreateLot(lot("L", 10_000, None, 0)));
    w.rejected("ana", set_status("L", LotStatus::UnderReview), "forbidden");
    w.rejected(
        "cur",
        Body::SetUserRole(pb::SetUserRole { user_id: "ana".into(), role: pb::Role::Admin as i32 }),
        "forbidden",
    );
    w.rejected("ana", Body::CreateUser(user("eve", pb::Role::Admin)), "forbidden");
    w.rejected("cur", Body::CloseLot(pb::CloseLot { lot_id: "L".into() }), "forbidden");
    w.ok("admin", Body::SetUserRole(pb::SetUserRole { user_id: "ana".into(), role: pb::Role::Curator as i32 }));
    assert_eq!(w.ledger.user("ana").unwrap().role, pb::Role::Curator);
    w.ok("ana", set_status("L", LotStatus::UnderReview));
}

#[test]
fn users_are_unique_and_creation_is_idempotent() {
    let mut w = World::new();
    let first = w.ok("", Body::CreateUser(user("eve", pb::Role::User)));
    let again = w.ok("", Body::CreateUser(user("eve", pb::Role::User)));
    assert_eq!(first.outcome, again.outcome);
    assert!(again.events.is_empty());
    let mut other = user("eve", pb::Role::User);
    other.password_hash = b"different".to_vec();
    w.rejected("", Body::CreateUser(other), "user_exists");
    let mut clash = user("eve2", pb::Role::User);
    clash.username = "eve".into();
    w.rejected("", Body::CreateUser(clash), "username_taken");
    assert_eq!(w.ledger.user_by_name("eve").map(|u| &*u.user_id), Some("eve"));
}

#[test]
fn lot_input_is_validated() {
    let mut w = World::new();
    let cases: Vec<(pb::CreateLot, &str)> = vec![
        (pb::CreateLot { title: String::new(), ..lot("L", 1, None, 0) }, "invalid_input"),
        (pb::CreateLot { lot_id: "a b".into(), ..lot("L", 1, None, 0) }, "invalid_input"),
        (pb::CreateLot { description: "x".repeat(20_000), ..lot("L", 1, None, 0) }, "invalid_input"),
        (pb::CreateLot { currency: "usd".into(), ..lot("L", 1, None, 0) }, "invalid_currency"),
        (pb::CreateLot { currency: "JPY".into(), ..lot("L", 1, None, 0) }, "invalid_currency"),
        (pb::CreateLot { start_price: -1, ..lot("L", 1, None, 0) }, "invalid_amount"),
        (lot("L", 10_000, Some(5_000), 0), "invalid_amount"),
        (pb::CreateLot { ends_at_ms: T0, ..lot("L", 1, None, 0) }, "invalid_time"),
        (pb::CreateLot { seller_id: "ghost".into(), ..lot("L", 1, None, 0) }, "user_not_found"),
        (lot("L", 1, None, 100_000), "invalid_input"),
        (
            pb::CreateLot {
                increment_ladder: vec![pb::LadderTier { from_amount: 5, step: 1 }],
                ..lot("L", 1, None, 0)
            },
            "invalid_ladder",
        ),
    ];
    for (cmd, code) in cases {
        w.rejected("cur", Body::CreateLot(cmd), code);
    }
    assert_eq!(w.ledger.lots().count(), 0);
    // A currency without a house ladder works with its own.
    let jpy = pb::CreateLot {
        currency: "JPY".into(),
        increment_ladder: vec![pb::LadderTier { from_amount: 0, step: 100 }],
        ..lot("J", 1_000, None, 0)
    };
    w.ok("cur", Body::CreateLot(jpy.clone()));
    assert!(w.ok("cur", Body::CreateLot(jpy.clone())).events.is_empty(), "identical re-create is a no-op");
    w.rejected("cur", Body::CreateLot(pb::CreateLot { title: "other".into(), ..jpy }), "lot_exists");
}

#[test]
fn time_never_runs_backwards() {
    let mut w = World::new();
    w.open_lot("L", 10_000, None, 0);
    w.at = T0 + HOUR + 1;
    assert_eq!(w.bid("ana", "a1", "L", 10_000), Err("lot_closed".into()));
    // A command stamped earlier is treated as stamped at the ledger's latest time.
    w.at = T0 + 5 * MIN;
    assert_eq!(w.bid("ana", "a2", "L", 10_000), Err("lot_closed".into()));
    assert_eq!(w.ledger.last_at_ms(), T0 + HOUR + 1);
    w.at = -5;
    w.rejected("ana", Body::CloseLot(pb::CloseLot { lot_id: "L".into() }), "invalid_time");
}

fn auction(id: &str, interval: u32, ladder: Vec<pb::LadderTier>) -> Body {
    Body::CreateAuction(pb::CreateAuction {
        auction_id: id.into(),
        title: "Evening sale".into(),
        currency: "EUR".into(),
        starts_at_ms: T0,
        ends_at_ms: T0 + HOUR,
        lot_interval_secs: interval,
        increment_ladder: ladder,
    })
}

fn add(auction_id: &str, lot_id: &str) -> Body {
    Body::AddLotToAuction(pb::AddLotToAuction { auction_id: auction_id.into(), lot_id: lot_id.into() })
}

fn set_auction(auction_id: &str, status: pb::AuctionStatus) -> Body {
    Body::SetAuctionStatus(pb::SetAuctionStatus { auction_id: auction_id.into(), status: status as i32 })
}

fn ready_lot(w: &mut World, id: &str) {
    w.ok("cur", Body::CreateLot(lot(id, 10_000, None, 0)));
    for s in [LotStatus::UnderReview, LotStatus::Authenticated, LotStatus::ReadyForAuction] {
        w.ok("cur", set_status(id, s));
    }
}

#[test]
fn an_auction_opens_its_lots_together_and_staggers_their_closes() {
    let mut w = World::new();
    let ladder = vec![pb::LadderTier { from_amount: 0, step: 1_000 }];
    w.rejected("cur", auction("A", 60, ladder.clone()), "forbidden");
    w.ok("admin", auction("A", 60, ladder));
    for id in ["L0", "L1", "L2"] {
        ready_lot(&mut w, id);
        w.ok("admin", add("A", id));
    }
    w.ok("cur", Body::CreateLot(lot("D", 10_000, None, 0)));
    w.rejected("admin", add("A", "D"), "lot_not_ready");
    for (k, id) in ["L0", "L1", "L2"].iter().enumerate() {
        let v = w.view(id);
        assert_eq!(
            (v.currency.as_str(), v.ends_at_ms),
            ("EUR", T0 + HOUR + 60_000 * k as i64),
            "lot {k} takes the sale's terms"
        );
    }
    w.rejected("cur", set_status("L0", LotStatus::InAuction), "lot_in_auction");
    w.ok("admin", set_auction("A", pb::AuctionStatus::Live));
    assert!(["L0", "L1", "L2"].iter().all(|id| w.view(id).status == LotStatus::InAuction as i32));
    ready_lot(&mut w, "L3");
    w.rejected("admin", add("A", "L3"), "auction_not_scheduled");
    w.at = T0;
    // The sale's ladder applies: steps of 10.00 EUR.
    w.bid("ana", "a1", "L1", 10_000).unwrap();
    assert_eq!(w.bid("ben", "b1", "L1", 10_500), Err("below_minimum".into()));
    assert_eq!(w.bid("ben", "b2", "L1", 11_000).map(|b| b.current_price), Ok(11_000));
    w.at = T0 + HOUR + 60_000;
    w.close("L0");
    w.close("L1");
    assert_eq!(w.ledger.auction("A").unwrap().status, pb::AuctionStatus::Live);
    w.rejected("", Body::CloseLot(pb::CloseLot { lot_id: "L2".into() }), "lot_not_ended");
    w.at += 60_000;
    let applied = w.close("L2");
    assert_eq!(w.ledger.auction("A").unwrap().status, pb::AuctionStatus::Ended, "the last close ends the sale");
    assert!(applied.events.iter().any(|e| matches!(e.kind, Some(Kind::AuctionStatusChanged(_)))));
    assert_eq!(w.view("L1").status, LotStatus::SoldPendingPayment as i32);
    w.rejected("admin", set_auction("A", pb::AuctionStatus::Live), "invalid_transition");
}

#[test]
fn cancelling_an_auction_cancels_its_open_lots() {
    let mut w = World::new();
    w.ok("admin", auction("A", 0, Vec::new()));
    w.rejected("admin", set_auction("A", pb::AuctionStatus::Live), "auction_empty");
    ready_lot(&mut w, "L0");
    w.ok("admin", add("A", "L0"));
    w.ok("admin", set_auction("A", pb::AuctionStatus::Live));
    w.rejected("admin", set_auction("A", pb::AuctionStatus::Ended), "invalid_status");
    w.ok("admin", set_auction("A", pb::AuctionStatus::Cancelled));
    assert_eq!(w.view("L0").status, LotStatus::AuctionCancelled as i32);
    w.rejected("admin", add("nope", "L0"), "auction_not_found");
}

#[test]
fn snapshots_round_trip_and_corruption_is_detected() {
    let mut w = World::new();
    w.open_lot("L", 10_000, Some(50_000), 60);
    w.bid("ana", "a1", "L", 100_000).unwrap();
    w.bid("ben", "b1", "L", 60_000).unwrap();
    let bytes = w.ledger.encode_snapshot();
    let restored = ledger::Ledger::decode_snapshot(&bytes).unwrap();
    assert_eq!(restored, w.ledger);
    assert_eq!(restored.digest(), w.ledger.digest());
    assert!(ledger::Ledger::decode_snapshot(&bytes[..bytes.len() / 2]).is_err(), "truncated");
    let mut snap = w.ledger.to_snapshot();
    snap.format_version = 99;
    assert!(matches!(ledger::Ledger::from_snapshot(snap), Err(ledger::SnapshotError::Version(99))));
    let mut snap = w.ledger.to_snapshot();
    snap.lots[0].current_price = snap.lots[0].leading_max + 1;
    assert!(matches!(ledger::Ledger::from_snapshot(snap), Err(ledger::SnapshotError::Invalid(_))), "price above max");
    let mut snap = w.ledger.to_snapshot();
    snap.users.push(snap.users[0].clone());
    assert!(ledger::Ledger::from_snapshot(snap).is_err(), "duplicate user");
    // Exactly-once records hold only what applying a bid records, for a user.
    let invalid = |edit: &dyn Fn(&mut pb::RecordedBid)| {
        let mut snap = w.ledger.to_snapshot();
        edit(&mut snap.recorded_bids[0]);
        matches!(ledger::Ledger::from_snapshot(snap), Err(ledger::SnapshotError::Invalid(_)))
    };
    assert!(invalid(&|r| r.bidder = "nobody".into()), "a record of no user");
    assert!(invalid(&|r| r.bid_id = "other".into()), "a record answering another bid id");
    assert!(invalid(&|r| r.outcome = Some(pb::Outcome { result: None })), "a record without an answer");
    let lot_answer = Some(pb::Outcome { result: Some(Res::Lot(pb::LotView::default())) });
    assert!(invalid(&|r| r.outcome = lot_answer.clone()), "a record of no bid's answer");
}

/// Every field of a bid's events, written out: a first bid, a bid defended by the leader's proxy
/// inside the soft-close window (four events), and an overtake that meets the reserve.
#[test]
fn bid_events_carry_exactly_what_the_feed_promises() {
    let mut w = World::new();
    w.open_lot("L", 10_000, Some(30_000), 120);
    let recorded = |bid_id: &str, bidder: &str, amount, at_ms, kind: pb::BidKind, price, leader: &str, met, min| {
        Kind::BidRecorded(pb::BidRecorded {
            lot_id: "L".into(),
            bid_id: bid_id.into(),
            bidder: bidder.into(),
            amount,
            at_ms,
            kind: kind as i32,
            current_price: price,
            leading_bidder: leader.into(),
            reserve_met: met,
            minimum_bid: min,
        })
    };
    let outbid =
        |user: &str, price| Kind::Outbid(pb::Outbid { lot_id: "L".into(), user_id: user.into(), current_price: price });
    let kinds = |applied: ledger::Applied| applied.events.into_iter().map(|e| e.kind.unwrap()).collect::<Vec<_>>();
    let bid = |w: &mut World, bidder: &str, bid_id: &str, max_amount| {
        w.run(bidder, Body::PlaceBid(pb::PlaceBid { lot_id: "L".into(), bid_id: bid_id.into(), max_amount }))
    };

    w.at = T0 + 10 * MIN;
    let at = w.at;
    assert_eq!(
        kinds(bid(&mut w, "ana", "a1", 20_000)),
        [recorded("a1", "ana", 10_000, at, pb::BidKind::Placed, 10_000, "ana", false, 10_500)]
    );

    w.at = T0 + HOUR - MIN;
    let at = w.at;
    assert_eq!(
        kinds(bid(&mut w, "ben", "b1", 15_000)),
        [
            recorded("b1", "ben", 15_000, at, pb::BidKind::Placed, 15_500, "ana", false, 16_000),
            recorded("a1", "ana", 15_500, at, pb::BidKind::Proxy, 15_500, "ana", false, 16_000),
            outbid("ben", 15_500),
            Kind::LotExtended(pb::LotExtended { lot_id: "L".into(), ends_at_ms: at + 120_000 }),
        ]
    );

    assert_eq!(
        kinds(bid(&mut w, "cai", "c1", 40_000)),
        [recorded("c1", "cai", 30_000, at, pb::BidKind::Placed, 30_000, "cai", true, 30_500), outbid("ana", 30_000),]
    );
}
