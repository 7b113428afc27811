//! Exactly-once records and their horizon: a retry gets its first answer while it can matter,
//! is refused (never applied twice) after, and every replica drops the same records at the
//! same command, restored from a snapshot or not.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::*;
use ledger::limits::EXACTLY_ONCE_HORIZON_MS as HORIZON;
use ledger::pb::{self, command::Body, outcome::Result as Res};
use ledger::{Ledger, lifecycle};

/// Lot `L` (start $100, reserve $1,000: closing below it ends the lot, a final status) with an
/// accepted leading bid `ana/a1`, an accepted but outbid `ben/b1` and a refused `cai/c1`.
fn sale() -> (World, pb::BidResult, pb::BidResult) {
    let mut w = World::new();
    w.open_lot("L", 10_000, Some(100_000), 0);
    w.at = T0 + MIN;
    let a1 = w.bid("ana", "a1", "L", 20_000).unwrap();
    let b1 = w.bid("ben", "b1", "L", 15_000).unwrap();
    assert_eq!(b1.outcome, pb::BidOutcomeKind::Outbid as i32);
    assert_eq!(w.bid("cai", "c1", "L", 100), Err("below_minimum".into()));
    (w, a1, b1)
}

#[test]
fn an_accepted_bid_is_answered_the_same_until_the_horizon_after_its_lot_is_final() {
    let (mut w, a1, b1) = sale();
    w.at = T0 + HOUR;
    w.close("L");
    assert_eq!(w.view("L").status, pb::LotStatus::AuctionEnded as i32);
    let ended = w.ledger.lot("L").unwrap().final_at_ms;
    assert_eq!(ended, Some(T0 + HOUR));

    // Just inside the horizon: the first answers, nothing applied.
    w.at = T0 + HOUR + HORIZON - 1;
    let before = w.view("L");
    let lines = w.ledger.lot("L").unwrap().history.clone();
    assert_eq!(lines.len(), 3, "ana's bid, ben's, and ana's proxy answer");
    assert_eq!(w.bid("ana", "a1", "L", 20_000), Ok(a1.clone()));
    assert_eq!(w.bid("ben", "b1", "L", 15_000), Ok(b1));
    assert_eq!(w.view("L"), before);

    // At the horizon the records go, at the next command whatever it is; a retry is refused
    // like any bid on the ended lot, and the lot is untouched.
    w.at = T0 + HOUR + HORIZON;
    w.ok("", Body::CreateUser(user("eve", pb::Role::User)));
    assert!(w.ledger.recorded_bid("ana", "a1").is_none());
    assert!(w.ledger.recorded_bid("ben", "b1").is_none());
    w.rejected("ana", place("a1", "L", 20_000), "lot_closed");
    w.rejected("ben", place("b1", "L", 15_000), "lot_closed");
    assert_eq!(w.view("L"), before);
    assert_eq!(w.ledger.lot("L").unwrap().history, lines, "never applied twice");
}

#[test]
fn a_refusal_is_answered_the_same_for_the_horizon_then_decided_afresh() {
    let mut w = World::new();
    w.at = T0;
    assert_eq!(w.bid("ana", "a1", "N", 10_000), Err("lot_not_found".into()));
    // The lot appears, open for a month.
    let mut n = lot("N", 10_000, None, 0);
    n.ends_at_ms = T0 + 30 * 24 * HOUR;
    w.open(n);
    w.at = T0 + HORIZON - 1;
    assert_eq!(w.bid("ana", "a1", "N", 10_000), Err("lot_not_found".into()), "the first answer, unchanged");
    assert!(w.ledger.lot("N").unwrap().history.is_empty());
    // After the horizon the retry is decided as a new bid: applied once, then answered the same.
    w.at = T0 + HORIZON;
    let accepted = w.bid("ana", "a1", "N", 10_000).unwrap();
    assert_eq!(accepted.outcome, pb::BidOutcomeKind::Leading as i32);
    assert_eq!(w.bid("ana", "a1", "N", 10_000), Ok(accepted));
    assert_eq!(w.ledger.lot("N").unwrap().history.len(), 1);
}

#[test]
fn the_records_of_a_lot_that_may_be_offered_again_do_not_expire() {
    let mut w = World::new();
    w.open_lot("L", 10_000, None, 0);
    w.at = T0 + MIN;
    let a1 = w.bid("ana", "a1", "L", 20_000).unwrap();
    w.at = T0 + HOUR;
    w.close("L");
    assert_eq!(w.view("L").status, pb::LotStatus::SoldPendingPayment as i32);
    assert!(!lifecycle::is_final(pb::LotStatus::SoldPendingPayment), "it can be relisted");
    w.at = T0 + HOUR + 3 * HORIZON;
    assert_eq!(w.bid("ana", "a1", "L", 20_000), Ok(a1.clone()));
    // Relisted (the history is cleared), and still the first answer, not a new bid.
    w.ok("cur", set_status("L", pb::LotStatus::ReadyForAuction));
    w.at += 4 * HORIZON;
    assert_eq!(w.bid("ana", "a1", "L", 20_000), Ok(a1.clone()));
    assert!(w.ledger.lot("L").unwrap().history.is_empty());
    // Offered again and ended unsold: final now. The earlier sale's records go with the lot's,
    // after the horizon, and survive a snapshot until then.
    w.ok("cur", set_status("L", pb::LotStatus::InAuction));
    w.close("L");
    assert_eq!(w.view("L").status, pb::LotStatus::AuctionEnded as i32);
    w.at += HORIZON - 1;
    w.ledger = Ledger::decode_snapshot(&w.ledger.encode_snapshot()).unwrap();
    assert_eq!(w.bid("ana", "a1", "L", 20_000), Ok(a1));
    w.at += 1;
    assert_eq!(w.bid("ana", "a1", "L", 20_000), Err("lot_closed".into()));
}

fn place(bid_id: &str, lot_id: &str, max_amount: i64) -> Body {
    Body::PlaceBid(pb::PlaceBid { lot_id: lot_id.into(), bid_id: bid_id.into(), max_amount })
}

fn command(at_ms: i64, actor: &str, body: Body) -> pb::Command {
    pb::Command { at_ms, actor: actor.into(), body: Some(body), log_index: 0 }
}

/// A replica restored from a snapshot taken at any point drops the same records at the same
/// command as one that never stopped: same answers, same state, same digest.
#[test]
fn a_restored_replica_expires_the_same_records_at_the_same_command() {
    let (mut w, _, _) = sale();
    w.at = T0 + HOUR;
    w.close("L");
    let start = w.ledger.clone();
    let t = |d: i64| T0 + HOUR + d;
    let rest = [
        command(t(HORIZON / 2), "ana", place("a1", "L", 20_000)),
        command(t(HORIZON - MIN - 1), "cai", place("c1", "L", 100)),
        command(t(HORIZON - 1), "ben", place("b1", "L", 15_000)),
        command(t(HORIZON), "ana", place("a1", "L", 20_000)),
        command(t(HORIZON + 1), "cai", place("c1", "L", 100)),
        command(t(2 * HORIZON), "ben", place("b1", "L", 15_000)),
        command(t(3 * HORIZON), "dan", place("d1", "L", 15_000)),
    ];
    let mut straight = start.clone();
    let answers: Vec<_> = rest.iter().map(|c| straight.apply(c)).collect();
    assert!(matches!(&answers[0].outcome.result, Some(Res::Bid(_))), "inside the horizon: the first answer");
    assert!(matches!(&answers[3].outcome.result, Some(Res::Rejected(r)) if r.code == "lot_closed"));
    for cut in 0..=rest.len() {
        let mut resumed = start.clone();
        for c in &rest[..cut] {
            resumed.apply(c);
        }
        let mut resumed = Ledger::decode_snapshot(&resumed.encode_snapshot()).unwrap();
        for (c, expected) in rest[cut..].iter().zip(&answers[cut..]) {
            assert_eq!(&resumed.apply(c), expected, "after a restore at command {cut}");
        }
        assert_eq!(resumed, straight, "restored at command {cut}");
        assert_eq!(resumed.digest(), straight.digest());
    }
}

/// A snapshot from before the horizon existed has no final times and no refusal times: its
/// records never expire (a replica cannot know when they would), on every replica alike.
#[test]
fn records_restored_without_times_never_expire() {
    let (mut w, a1, _) = sale();
    w.at = T0 + HOUR;
    w.close("L");
    let mut old = w.ledger.to_snapshot();
    old.format_version = 1;
    for lot in &mut old.lots {
        lot.final_at_ms = None;
    }
    for record in &mut old.recorded_bids {
        record.refused_at_ms = None;
    }
    w.ledger = Ledger::from_snapshot(old).unwrap();
    w.at = T0 + HOUR + 5 * HORIZON;
    assert_eq!(w.bid("ana", "a1", "L", 20_000), Ok(a1));
    assert_eq!(w.bid("cai", "c1", "L", 100), Err("below_minimum".into()), "the first answer");
}

#[test]
fn a_snapshot_with_a_final_time_on_a_lot_that_is_not_final_is_refused() {
    let (w, _, _) = sale();
    let mut bad = w.ledger.to_snapshot();
    bad.lots[0].final_at_ms = Some(T0);
    assert!(Ledger::from_snapshot(bad).is_err());
}

#[test]
fn a_snapshot_of_a_newer_format_or_with_impossible_times_is_refused() {
    let (w, _, _) = sale();
    let mut newer = w.ledger.to_snapshot();
    newer.format_version = ledger::snapshot::FORMAT_VERSION + 1;
    assert!(Ledger::from_snapshot(newer).is_err());
    // A refusal from the snapshot's future, or one already past its horizon (a replica would
    // have dropped it), is damage.
    for at in [w.at + 1, w.at - HORIZON] {
        let mut bad = w.ledger.to_snapshot();
        let refusal = bad.recorded_bids.iter_mut().find(|r| r.refused_at_ms.is_some()).unwrap();
        refusal.refused_at_ms = Some(at);
        assert!(Ledger::from_snapshot(bad).is_err(), "refused at {at}");
    }
}

/// The unsafe jepsen mode forgets a record on every replica alike; a replica restored after it
/// holds exactly what the others hold.
#[test]
fn a_forgotten_refusal_leaves_nothing_behind() {
    let (mut w, _, _) = sale();
    w.ledger.forget_recorded_bid("cai", "c1");
    let restored = Ledger::decode_snapshot(&w.ledger.encode_snapshot()).unwrap();
    assert_eq!(restored, w.ledger);
}

/// Before `ActivateRecordExpiry` nothing is timed and nothing expires (a ledger replayed from
/// older entries by a new build holds exactly what an older build's snapshot holds); from the
/// entry on, both kinds of record expire. Restored from a snapshot cut before or after the
/// activation, a replica ends the same as one that never stopped.
#[test]
fn record_expiry_starts_at_one_entry_on_every_replica() {
    let mut w = World::new();
    // A ledger that has not activated it: World activates first, so start over without.
    w.ledger = Ledger::new();
    for (name, role) in [("cur", pb::Role::Curator), ("sam", pb::Role::User), ("ana", pb::Role::User)] {
        w.ok("", Body::CreateUser(user(name, role)));
    }
    w.open_lot("L", 10_000, Some(100_000), 0);
    w.at = T0 + MIN;
    let a1 = w.bid("ana", "a1", "L", 20_000).unwrap();
    // A second lot, sold then relisted before the activation: nothing is kept for it either.
    w.open_lot("M", 10_000, None, 0);
    w.bid("ana", "m1", "M", 20_000).unwrap();
    assert_eq!(w.bid("ana", "r1", "L", 100), Err("not_above_own_max".into()));
    w.at = T0 + HOUR;
    w.close("L");
    assert_eq!(w.ledger.lot("L").unwrap().final_at_ms, None, "not timed before the activation");
    assert_eq!(w.ledger.lot("L").unwrap().created_index, 0);
    w.close("M");
    w.ok("cur", set_status("M", pb::LotStatus::ReadyForAuction));
    assert!(w.ledger.lot("M").unwrap().earlier_bids.is_empty(), "not kept before the activation");
    let before = w.ledger.clone();
    w.at += 3 * HORIZON;
    assert_eq!(w.bid("ana", "a1", "L", 20_000), Ok(a1.clone()), "nothing expires");
    assert_eq!(w.bid("ana", "r1", "L", 100), Err("not_above_own_max".into()));

    // Activated at one entry: records made after it expire, older ones do not.
    let activate = pb::Command {
        at_ms: w.at,
        actor: String::new(),
        log_index: 0,
        body: Some(Body::ActivateRecordExpiry(pb::ActivateRecordExpiry {})),
    };
    let rest = [
        activate.clone(),
        command(w.at + 1, "ana", place("r2", "L", 100)),
        activate,
        command(w.at + HORIZON + 2, "ana", place("r2", "L", 100)),
        command(w.at + HORIZON + 3, "ana", place("r1", "L", 100)),
        command(w.at + HORIZON + 4, "ana", place("a1", "L", 20_000)),
    ];
    let mut straight = before.clone();
    let answers: Vec<_> = rest.iter().map(|c| straight.apply(c)).collect();
    assert!(straight.record_expiry());
    let code = |i: usize| answers[i].rejection().map(|r| r.code.clone());
    assert_eq!(code(3).as_deref(), Some("lot_closed"), "a refusal made after the activation expired");
    assert_eq!(code(4).as_deref(), Some("not_above_own_max"), "one made before it did not");
    assert!(matches!(&answers[5].outcome.result, Some(Res::Bid(b)) if *b == a1), "nor did the older accepted bid");
    for cut in 0..=rest.len() {
        let mut resumed = before.clone();
        for c in &rest[..cut] {
            resumed.apply(c);
        }
        let mut resumed = Ledger::decode_snapshot(&resumed.encode_snapshot()).unwrap();
        for c in &rest[cut..] {
            resumed.apply(c);
        }
        assert_eq!(resumed, straight, "restored at command {cut}");
    }
    // A snapshot claiming times without expiry on is damage.
    let mut bad = straight.to_snapshot();
    bad.record_expiry = false;
    assert!(Ledger::from_snapshot(bad).is_err());
}
