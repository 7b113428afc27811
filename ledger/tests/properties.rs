//! Property tests over random bid and command sequences.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::*;
use ledger::pb::{self, command::Body};
use ledger::{Ledger, lifecycle};
use proptest::prelude::*;
use prost::Message;

const BIDDERS: [&str; 4] = ["ana", "ben", "cai", "dan"];

#[derive(Clone, Debug)]
struct BidOp {
    bidder: usize,
    max: i64,
    dt_ms: i64,
}

fn bid_op() -> impl Strategy<Value = BidOp> {
    // Mostly on-grid maxima (multiples of $5..$100) so most bids are accepted, some arbitrary.
    let max = prop_oneof![
        4 => (1i64..4_000).prop_map(|k| k * 500),
        1 => (1i64..400).prop_map(|k| k * 10_000),
        1 => 1i64..2_000_000,
    ];
    (0..BIDDERS.len(), max, 0i64..90_000).prop_map(|(bidder, max, dt_ms)| BidOp { bidder, max, dt_ms })
}

fn lot_terms() -> impl Strategy<Value = (i64, Option<i64>, u32)> {
    (1i64..200, proptest::option::of(0i64..400), prop_oneof![Just(0u32), 1u32..300]).prop_map(
        |(start, reserve, soft)| {
            let start = start * 500;
            (start, reserve.map(|r| start + r * 500), soft)
        },
    )
}

/// Runs bids on lot "L" and checks the invariants after every one.
fn run_bids(terms: (i64, Option<i64>, u32), ops: &[BidOp]) -> World {
    let (start, reserve, soft) = terms;
    let mut w = World::new();
    w.open_lot("L", start, reserve, soft);
    // Accepted maxima in order: (bidder, max). The leader must hold the highest, earliest on ties.
    let mut accepted: Vec<(&str, i64)> = Vec::new();
    let mut price_before = start;
    for (i, op) in ops.iter().enumerate() {
        w.at += op.dt_ms;
        let bidder = BIDDERS[op.bidder];
        let before = w.view("L");
        let result = w.bid(bidder, &format!("b{i}"), "L", op.max);
        let after = w.view("L");
        match result {
            Ok(_) => accepted.push((bidder, op.max)),
            Err(code) => assert_eq!(before, after, "rejected bid ({code}) changed the lot"),
        }
        let lot = w.ledger.lot("L").unwrap();
        let price = lot.book.price;
        assert!(price >= price_before, "price decreased {price_before} -> {price}");
        price_before = price;
        if let Some(leader) = &lot.book.leader {
            assert!(price <= leader.max, "price {price} above the leader's max {}", leader.max);
            let best = accepted.iter().map(|&(_, m)| m).max().unwrap();
            let first_best = accepted.iter().find(|&&(_, m)| m == best).unwrap().0;
            assert_eq!(leader.max, best, "the leader holds the highest maximum");
            assert_eq!(&*leader.bidder, first_best, "ties go to the earliest maximum");
            if let Some(r) = reserve.filter(|&r| leader.max >= r) {
                assert!(price >= r, "reserve met but price {price} below it");
            }
        } else {
            assert!(accepted.is_empty());
        }
    }
    w
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn bidding_invariants_hold(terms in lot_terms(), ops in prop::collection::vec(bid_op(), 1..60)) {
        run_bids(terms, &ops);
    }

    #[test]
    fn replaying_the_same_commands_gives_the_same_digest(terms in lot_terms(), ops in prop::collection::vec(bid_op(), 1..40)) {
        let a = run_bids(terms, &ops);
        let b = run_bids(terms, &ops);
        prop_assert_eq!(a.ledger.digest(), b.ledger.digest());
    }

    #[test]
    fn snapshot_restore_continue_matches_never_snapshotting(
        cmds in prop::collection::vec(any_command(), 1..80),
        cut in 0usize..80,
    ) {
        let mut straight = Ledger::new();
        let mut resumed = Ledger::new();
        let cut = cut.min(cmds.len());
        for cmd in &cmds[..cut] {
            straight.apply(cmd);
            resumed.apply(cmd);
        }
        let mut resumed = Ledger::decode_snapshot(&resumed.encode_snapshot()).unwrap();
        for cmd in &cmds[cut..] {
            let a = straight.apply(cmd);
            let b = resumed.apply(cmd);
            prop_assert_eq!(a, b);
        }
        prop_assert_eq!(straight.digest(), resumed.digest());
        prop_assert_eq!(straight, resumed);
    }

    #[test]
    fn compact_answers_and_events_match_their_protobuf_form_byte_for_byte(
        terms in lot_terms(),
        ops in prop::collection::vec(bid_op(), 1..40),
        cmds in prop::collection::vec(any_command(), 0..60),
    ) {
        let (start, reserve, soft) = terms;
        let mut w = World::new();
        w.open_lot("L", start, reserve, soft);
        let bids = ops.iter().enumerate().map(|(i, op)| {
            let body = Body::PlaceBid(pb::PlaceBid {
                lot_id: "L".into(),
                bid_id: format!("b{}", i % 30),
                max_amount: op.max,
            });
            pb::Command { at_ms: T0 + i as i64 * 1_000, actor: BIDDERS[op.bidder].into(), body: Some(body), log_index: 1 }
        });
        for cmd in bids.chain(cmds) {
            let expected = w.ledger.clone().apply(&cmd);
            let mut events = Vec::new();
            let answer = w.ledger.apply_compact(&cmd, cmd.at_ms, cmd.log_index, &mut events);
            prop_assert_eq!(answer.is_rejection(), expected.rejection().is_some());
            prop_assert_eq!(answer.into_pb(), expected.outcome);
            prop_assert_eq!(events.len(), expected.events.len());
            for (event, pb_event) in events.iter().zip(&expected.events) {
                prop_assert_eq!(&event.to_pb(), pb_event);
                let mut bytes = Vec::new();
                event.encode(&mut bytes);
                prop_assert_eq!(&bytes, &pb_event.encode_to_vec());
                prop_assert_eq!(event.encoded_len(), bytes.len());
            }
        }
    }

    #[test]
    fn no_panic_on_any_command(cmds in prop::collection::vec(any_command(), 1..120)) {
        let mut ledger = Ledger::new();
        for cmd in &cmds {
            let applied = ledger.apply(cmd);
            prop_assert!(applied.outcome.result.is_some());
            if applied.rejection().is_some() {
                prop_assert!(applied.events.is_empty());
            }
        }
    }

    #[test]
    fn no_panic_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut ledger = World::new().ledger;
        if let Ok(cmd) = pb::Command::decode(bytes.as_slice()) {
            ledger.apply(&cmd);
        }
        let _ = Ledger::decode_snapshot(&bytes);
    }
}

// ---- arbitrary commands over a small universe of ids, so they collide and interact ------------

fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["", "admin", "cur", "ana", "ben", "L1", "L2", "A1", "x y", "b1"]).prop_map(str::to_owned),
        1 => "[a-z]{0,3}",
    ]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![6 => (0i64..2_000).prop_map(|k| k * 500), 1 => any::<i64>()]
}

fn time() -> impl Strategy<Value = i64> {
    // Days apart too, so that sequences cross the exactly-once horizon (7 days).
    prop_oneof![8 => (0i64..48).prop_map(|k| T0 + k * 15 * MIN), 2 => (0i64..40).prop_map(|d| T0 + d * 24 * HOUR), 1 => any::<i64>()]
}

fn ladder() -> impl Strategy<Value = Vec<pb::LadderTier>> {
    prop::collection::vec(
        (amount(), amount()).prop_map(|(from_amount, step)| pb::LadderTier { from_amount, step }),
        0..3,
    )
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        1 => Just(Body::ActivateRecordExpiry(pb::ActivateRecordExpiry {})),
        1 => (id(), 0i32..5).prop_map(|(u, role)| Body::CreateUser(pb::CreateUser { user_id: u.clone(), username: u, role, password_hash: vec![] })),
        1 => (id(), 0i32..5).prop_map(|(user_id, role)| Body::SetUserRole(pb::SetUserRole { user_id, role })),
        1 => (id(), amount(), proptest::option::of(amount()), time(), time(), 0u32..200, id(), prop::sample::select(vec!["USD", "EUR", "XXX", "usd"]), ladder())
            .prop_map(|(lot_id, start_price, reserve_price, starts_at_ms, ends_at_ms, soft_close_secs, seller_id, currency, increment_ladder)| {
                Body::CreateLot(pb::CreateLot {
                    lot_id,
                    title: "t".into(),
                    currency: currency.into(),
                    start_price,
                    reserve_price,
                    starts_at_ms,
                    ends_at_ms,
                    soft_close_secs,
                    seller_id,
                    increment_ladder,
                    ..pb::CreateLot::default()
                })
            }),
        4 => (id(), prop::sample::select(lifecycle::ALL.to_vec())).prop_map(|(lot_id, s)| Body::SetLotStatus(pb::SetLotStatus { lot_id, status: s as i32 })),
        8 => (id(), id(), amount()).prop_map(|(lot_id, bid_id, max_amount)| Body::PlaceBid(pb::PlaceBid { lot_id, bid_id, max_amount })),
        2 => id().prop_map(|lot_id| Body::CloseLot(pb::CloseLot { lot_id })),
        1 => (id(), time(), time(), 0u32..100, ladder()).prop_map(|(auction_id, starts_at_ms, ends_at_ms, lot_interval_secs, increment_ladder)| {
            Body::CreateAuction(pb::CreateAuction {
                auction_id,
                title: "sale".into(),
                currency: "EUR".into(),
                starts_at_ms,
                ends_at_ms,
                lot_interval_secs,
                increment_ladder,
            })
        }),
        1 => (id(), id()).prop_map(|(auction_id, lot_id)| Body::AddLotToAuction(pb::AddLotToAuction { auction_id, lot_id })),
        1 => (id(), 0i32..6).prop_map(|(auction_id, status)| Body::SetAuctionStatus(pb::SetAuctionStatus { auction_id, status })),
    ]
}

fn category_id() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "C1", "C2", "C3", "C4", "x y"]).prop_map(str::to_owned)
}

fn lot_id() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["L1", "L2", "nope"]).prop_map(str::to_owned)
}

/// Content commands, over as small a universe so that they collide and interact.
fn content_body() -> impl Strategy<Value = Body> {
    let hash = prop::sample::select(vec!["a".repeat(64), "b".repeat(64), "not-a-hash".into()]);
    let image_id = || prop::sample::select(vec!["i1", "i2", "i3"]).prop_map(str::to_owned);
    prop_oneof![
        3 => (category_id(), prop::sample::select(vec!["Paintings", "Oils", ""]), category_id())
            .prop_map(|(category_id, name, parent_id)| Body::PutCategory(pb::PutCategory { category_id, name: name.into(), parent_id })),
        2 => (lot_id(), prop::collection::vec(category_id(), 0..3))
            .prop_map(|(lot_id, category_ids)| Body::SetLotCategories(pb::SetLotCategories { lot_id, category_ids })),
        2 => (lot_id(), prop::collection::vec((prop::sample::select(vec!["medium", "year", "Bad Key", ""]), prop::sample::select(vec!["oil", "1990", ""])), 0..3))
            .prop_map(|(lot_id, kv)| Body::AddAttributes(pb::AddAttributes {
                lot_id,
                attributes: kv.into_iter().map(|(k, v)| pb::AttributeInput { key: k.into(), value: v.into() }).collect(),
            })),
        1 => (lot_id(), prop::sample::select(vec!["a0", "a1", "a2"]))
            .prop_map(|(lot_id, a)| Body::DeleteAttribute(pb::DeleteAttribute { lot_id, attribute_id: a.into() })),
        3 => (lot_id(), prop::sample::select(vec!["c1", "c2", "c3"]), prop::sample::select(vec!["nice", "", "  "]))
            .prop_map(|(lot_id, c, content)| Body::AddComment(pb::AddComment { lot_id, comment_id: c.into(), content: content.into() })),
        1 => (lot_id(), prop::sample::select(vec!["c1", "c2", "c3"]))
            .prop_map(|(lot_id, c)| Body::DeleteComment(pb::DeleteComment { lot_id, comment_id: c.into() })),
        3 => (lot_id(), image_id(), hash, prop::sample::select(vec!["image/png", "image/jpeg", "text/plain"]), 0u64..10, 0u32..3)
            .prop_map(|(lot_id, image_id, content_hash, content_type, bytes, side)| Body::AddImage(pb::AddImage {
                lot_id,
                image_id,
                content_hash,
                content_type: content_type.into(),
                bytes,
                width: side,
                height: side,
            })),
        1 => (lot_id(), image_id()).prop_map(|(lot_id, image_id)| Body::DeleteImage(pb::DeleteImage { lot_id, image_id })),
        1 => (lot_id(), prop::collection::vec(image_id(), 0..4))
            .prop_map(|(lot_id, image_ids)| Body::ReorderImages(pb::ReorderImages { lot_id, image_ids })),
    ]
}

fn any_command() -> impl Strategy<Value = pb::Command> {
    let body = prop_oneof![3 => body(), 1 => content_body()];
    (time(), id(), proptest::option::of(body)).prop_map(|(at_ms, actor, body)| pb::Command {
        at_ms,
        actor,
        body,
        log_index: 0,
    })
}
