//! The indexer on feed items, with the real model: lots and artists as events create and move
//! them, sales' currencies, replays that change nothing, refused items and parking.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use ledger::pb::event::Kind as E;
use ledger::pb::{AuctionView, Event, LotAddedToAuction, LotStatus, LotStatusChanged, LotView};
use node::pb::FeedItem;
use search::index::IndexError;
use search::{Embedded, Filter, Index, Kind, VectorStore};
use std::sync::Arc;

fn item(index: u64, events: Vec<E>) -> FeedItem {
    FeedItem {
        index,
        at_ms: 1_000 + index as i64,
        events: events.into_iter().map(|k| Event { kind: Some(k) }).collect(),
    }
}

fn lot(id: &str, title: &str, artist: &str, description: &str) -> E {
    E::LotCreated(LotView {
        lot_id: id.into(),
        title: title.into(),
        artist: artist.into(),
        description: description.into(),
        category: "painting".into(),
        currency: "EUR".into(),
        status: LotStatus::Draft as i32,
        ..LotView::default()
    })
}

fn status(id: &str, to: LotStatus) -> E {
    E::LotStatusChanged(LotStatusChanged { lot_id: id.into(), from: 0, to: to as i32 })
}

fn points(store: &Embedded, kind: Kind) -> Vec<search::store::Point> {
    store.scroll(kind, &Filter::default()).unwrap()
}

#[test]
fn indexes_lots_and_artists_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = common::encoder();
    let store = Arc::new(Embedded::open(dir.path(), encoder.dim()).unwrap());
    let index = Index::new(store.clone(), encoder.clone()).unwrap();

    let first = vec![
        item(
            1,
            vec![E::AuctionCreated(AuctionView {
                auction_id: "sale".into(),
                currency: "CHF".into(),
                ..AuctionView::default()
            })],
        ),
        item(2, vec![lot("a", "Harbour at dusk", "Mirela Voss", "Oil on canvas, a quiet harbour.")]),
        item(
            3,
            vec![lot("b", "Violet evening", "Mirela Voss", "Acrylic on paper."), status("b", LotStatus::UnderReview)],
        ),
        item(4, vec![lot("c", "Bronze torso", "Hans Arp", "")]),
    ];
    index.apply(&first).unwrap();
    assert_eq!(store.checkpoint().unwrap(), 4);
    assert_eq!(*index.applied().borrow(), 4);
    let lots = points(&store, Kind::Lot);
    assert_eq!(lots.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(lots[1].payload.status, LotStatus::UnderReview as i32);
    assert_eq!(lots[1].payload.index, 3);
    let artists = points(&store, Kind::Artist);
    let counts: Vec<(&str, u64)> = artists.iter().map(|p| (p.id.as_str(), p.payload.lot_count)).collect();
    assert_eq!(counts, [("Hans Arp", 1), ("Mirela Voss", 2)]);
    let voss_before = artists[1].vector.clone();

    // Replayed, in whole or in part: nothing changes.
    index.apply(&first).unwrap();
    index.apply(&first[2..]).unwrap();
    assert_eq!(points(&store, Kind::Lot), lots);
    assert_eq!(points(&store, Kind::Artist), artists);

    // A later batch: a new lot by a known artist joins the sale created earlier (its currency),
    // the artist's point moves and counts it.
    let second = vec![
        item(5, vec![lot("d", "Night harbour", "Mirela Voss", "Oil on board.")]),
        item(
            6,
            vec![E::LotAddedToAuction(LotAddedToAuction {
                auction_id: "sale".into(),
                lot_id: "d".into(),
                ..LotAddedToAuction::default()
            })],
        ),
    ];
    index.apply(&second).unwrap();
    let d = store.get(Kind::Lot, "d").unwrap().unwrap();
    assert_eq!((d.payload.currency.as_str(), d.payload.index), ("CHF", 6));
    let voss = store.get(Kind::Artist, "Mirela Voss").unwrap().unwrap();
    assert_eq!(voss.payload.lot_count, 3);
    assert_ne!(voss.vector, voss_before);
    let norm: f32 = voss.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);

    // The query path finds by meaning.
    let answer = search::query::lots(&encoder, &*store, "scultura in bronzo", &Filter::default(), 3).unwrap();
    assert_eq!(answer.hits[0].id, "c");
    assert_eq!(answer.as_of_index, 6);

    // An event for a lot the index never saw is refused whole: nothing of its batch applies.
    let bad = vec![
        item(7, vec![lot("e", "Fresh", "New Artist", "")]),
        item(8, vec![status("ghost", LotStatus::UnderReview)]),
    ];
    assert!(matches!(index.apply(&bad), Err(IndexError::Refused(_))));
    assert_eq!(store.checkpoint().unwrap(), 6);
    assert!(store.get(Kind::Lot, "e").unwrap().is_none());
    // The subscriber then applies item by item and parks the refused one.
    index.apply(&bad[..1]).unwrap();
    index.park(&bad[1], "no such lot").unwrap();
    assert_eq!(store.checkpoint().unwrap(), 8);
    let letters = store.dead_letters().unwrap();
    assert_eq!((letters.len(), letters[0].index, letters[0].error.as_str()), (1, 8, "no such lot"));
    index.park(&bad[1], "again").unwrap();
    assert_eq!(store.dead_letters().unwrap().len(), 1, "parking below the checkpoint is a no-op");

    // Retried while still refused: kept, with the new attempt counted. A parked item that now
    // applies (its lot exists since) is applied and removed; a later change to the same lot
    // is not undone by the older item.
    assert_eq!(
        index.retry(8).unwrap(),
        search::Retried::StillFailing("event at index 8 for lot ghost, which the index has no point for".into())
    );
    assert_eq!(store.dead_letter(8).unwrap().unwrap().attempts, 2);
    assert_eq!(index.retry(99).unwrap(), search::Retried::NotFound);
    let late =
        [item(9, vec![status("e", LotStatus::Authenticated)]), item(10, vec![lot("ghost", "Found", "New Artist", "")])];
    index.park(&late[0], "parked by hand").unwrap();
    index.apply(&late[1..]).unwrap();
    assert_eq!(index.retry(8).unwrap(), search::Retried::Applied);
    assert_eq!(
        store.get(Kind::Lot, "ghost").unwrap().unwrap().payload.status,
        LotStatus::Draft as i32,
        "item 8 predates the lot's creation at 10"
    );
    assert_eq!(index.retry(9).unwrap(), search::Retried::Applied);
    assert_eq!(store.get(Kind::Lot, "e").unwrap().unwrap().payload.status, LotStatus::Authenticated as i32);
    assert!(store.dead_letters().unwrap().is_empty());
    assert_eq!(store.get(Kind::Artist, "New Artist").unwrap().unwrap().payload.lot_count, 2);

    // Everything is on disk: a reopened store has the same points.
    let before = (points(&store, Kind::Lot), points(&store, Kind::Artist));
    drop(index);
    drop(store);
    let store = Embedded::open(dir.path(), encoder.dim()).unwrap();
    assert_eq!((points(&store, Kind::Lot), points(&store, Kind::Artist)), before);
    assert_eq!(store.checkpoint().unwrap(), 10);
}

#[test]
fn a_store_keeps_to_one_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path(), 384).unwrap();
    store.bind_model("e5:aaaa").unwrap();
    store.bind_model("e5:aaaa").unwrap();
    assert!(matches!(store.bind_model("e5:bbbb"), Err(search::store::StoreError::Model { .. })));
}

/// An index that starts from a ledger's state (the feed after its checkpoint gone) holds what
/// one that followed every item holds: the same lots and vectors, payloads as the ledger has
/// them, the same artists, the same answers; and it then follows the feed on.
#[test]
fn starting_from_a_state_equals_following_the_feed() {
    use ledger::pb::{self as lp, command::Body};
    const T0: i64 = 1_800_000_000_000;
    let encoder = common::encoder();
    let mut ledger = ledger::Ledger::new();
    let mut feed: Vec<FeedItem> = Vec::new();
    let run = |ledger: &mut ledger::Ledger, feed: &mut Vec<FeedItem>, actor: &str, body: Body| {
        let index = feed.len() as u64 + 1;
        let cmd = lp::Command { at_ms: T0 + index as i64, actor: actor.into(), log_index: index, body: Some(body) };
        let applied = ledger.apply(&cmd);
        assert!(applied.rejection().is_none(), "{:?}", applied.rejection());
        feed.push(FeedItem { index, at_ms: cmd.at_ms, events: applied.events });
    };
    let user = |id: &str, role: lp::Role| {
        Body::CreateUser(lp::CreateUser {
            user_id: id.into(),
            username: id.into(),
            role: role as i32,
            password_hash: vec![],
        })
    };
    run(&mut ledger, &mut feed, "", user("admin", lp::Role::Admin));
    run(&mut ledger, &mut feed, "", user("cur", lp::Role::Curator));
    run(&mut ledger, &mut feed, "", user("sam", lp::Role::User));
    let sale = lp::CreateAuction {
        auction_id: "sale".into(),
        title: "Evening sale".into(),
        currency: "GBP".into(),
        starts_at_ms: T0,
        ends_at_ms: T0 + 86_400_000,
        lot_interval_secs: 30,
        increment_ladder: vec![],
    };
    run(&mut ledger, &mut feed, "admin", Body::CreateAuction(sale));
    let lots = [
        ("a", "Harbour at dusk", "Mirela Voss", "Oil on canvas, a quiet harbour."),
        ("b", "Violet evening", "Mirela Voss", "Acrylic on paper."),
        ("c", "Bronze torso", "Hans Arp", ""),
        ("d", "Night harbour", "Mirela Voss", "Oil on board."),
        ("e", "Paper cut", "Hans Arp", "Collage."),
    ];
    let create = |(id, title, artist, description): (&str, &str, &str, &str)| {
        Body::CreateLot(lp::CreateLot {
            lot_id: id.into(),
            title: title.into(),
            artist: artist.into(),
            description: description.into(),
            category: "painting".into(),
            currency: "EUR".into(),
            start_price: 10_000,
            starts_at_ms: T0,
            ends_at_ms: T0 + 3_600_000,
            seller_id: "sam".into(),
            ..Default::default()
        })
    };
    for l in &lots[..3] {
        run(&mut ledger, &mut feed, "cur", create(*l));
    }
    let half = feed.len();
    for l in &lots[3..] {
        run(&mut ledger, &mut feed, "cur", create(*l));
    }
    let status = |id: &str, s: LotStatus| Body::SetLotStatus(lp::SetLotStatus { lot_id: id.into(), status: s as i32 });
    run(&mut ledger, &mut feed, "cur", status("a", LotStatus::UnderReview));
    run(&mut ledger, &mut feed, "cur", status("d", LotStatus::UnderReview));
    run(&mut ledger, &mut feed, "cur", status("d", LotStatus::Authenticated));
    run(&mut ledger, &mut feed, "cur", status("d", LotStatus::ReadyForAuction));
    run(
        &mut ledger,
        &mut feed,
        "admin",
        Body::AddLotToAuction(lp::AddLotToAuction { auction_id: "sale".into(), lot_id: "d".into() }),
    );

    let open = |dir: &tempfile::TempDir| {
        let store = Arc::new(Embedded::open(dir.path(), encoder.dim()).unwrap());
        let index = Index::new(store.clone(), encoder.clone()).unwrap();
        (store, index)
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (followed_store, followed) = open(&a_dir);
    followed.apply(&feed).unwrap();
    let (started_store, started) = open(&b_dir);
    started.apply(&feed[..half]).unwrap();
    let last = feed.len() as u64;
    started.bootstrap(&node::StateExport { index: last, at_ms: T0, ledger: ledger.clone() }).unwrap();
    assert_eq!(started_store.checkpoint().unwrap(), last);

    // The rest of the feed on both: a lot more by a known artist.
    run(&mut ledger, &mut feed, "cur", create(("f", "Harbour in fog", "Mirela Voss", "Oil.")));
    followed.apply(&feed[last as usize..]).unwrap();
    started.apply(&feed[last as usize..]).unwrap();

    let without_index = |points: Vec<search::store::Point>| {
        points
            .into_iter()
            .map(|mut p| {
                p.payload.index = 0;
                p
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(without_index(points(&started_store, Kind::Lot)), without_index(points(&followed_store, Kind::Lot)));
    assert_eq!(started_store.get(Kind::Lot, "d").unwrap().unwrap().payload.currency, "GBP");
    let (x, y) = (points(&started_store, Kind::Artist), points(&followed_store, Kind::Artist));
    assert_eq!(
        x.iter().map(|p| (&p.id, p.payload.lot_count)).collect::<Vec<_>>(),
        y.iter().map(|p| (&p.id, p.payload.lot_count)).collect::<Vec<_>>()
    );
    for (p, q) in x.iter().zip(&y) {
        let gap = p.vector.iter().zip(&q.vector).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
        assert!(gap < 1e-5, "artist {}'s vector differs by {gap}", p.id);
    }
    for text in ["bronze sculpture", "harbour at night", "acrilico su carta"] {
        let hits = |store: &Embedded| {
            let answer = search::query::lots(&encoder, store, text, &Filter::default(), 5).unwrap();
            answer.hits.into_iter().map(|h| h.id).collect::<Vec<_>>()
        };
        assert_eq!(hits(&started_store), hits(&followed_store), "{text}");
    }
}
