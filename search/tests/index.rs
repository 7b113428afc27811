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
