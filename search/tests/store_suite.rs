//! The vector store contract, as one suite any engine runs: the embedded engine always, the
//! Qdrant engine where `GAVEL_QDRANT_URL` names a server (its gRPC port, e.g.
//! `http://localhost:6334`); without one its tests say they were skipped and pass.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::path::Path;

use proptest::prelude::*;
use search::embedded::dot;
use search::store::{Changes, DeadLetter, Payload, Point, StoreError};
use search::{Embedded, Filter, Kind, Qdrant, VectorStore};

const DIM: usize = 8;

fn unit(raw: &[f32]) -> Vec<f32> {
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
    raw.iter().map(|v| v / norm).collect()
}

fn point(id: &str, vector: Vec<f32>, status: i32, category: &str, artist: &str) -> Point {
    let payload = Payload {
        title: format!("title {id}"),
        artist: artist.to_owned(),
        status,
        category: category.to_owned(),
        currency: "EUR".into(),
        ..Payload::default()
    };
    Point { id: id.to_owned(), vector, payload }
}

fn upsert(points: Vec<Point>, checkpoint: u64) -> Changes {
    Changes {
        upserts: points.into_iter().map(|p| (Kind::Lot, p)).collect(),
        checkpoint: Some(checkpoint),
        ..Changes::default()
    }
}

/// The suite, over a store opened (and reopened) at a directory.
fn suite<S: VectorStore>(open: impl Fn(&Path) -> S) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.checkpoint().unwrap(), 0);
    assert!(store.search(Kind::Lot, &unit(&[1.0; DIM]), &Filter::default(), 10).unwrap().is_empty());
    assert!(store.get(Kind::Lot, "a").unwrap().is_none());

    // Nearest first; filters narrow; kinds are apart.
    let axis = |i: usize| {
        let mut v = vec![0.0; DIM];
        v[i] = 1.0;
        v
    };
    store
        .commit(upsert(
            vec![
                point("a", axis(0), 1, "painting", "Ann"),
                point("b", unit(&[1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), 2, "painting", "Bo"),
                point("c", axis(1), 2, "sculpture", "Ann"),
            ],
            5,
        ))
        .unwrap();
    let artist = Point {
        id: "Ann".into(),
        vector: axis(2),
        payload: Payload { artist: "Ann".into(), lot_count: 2, ..Payload::default() },
    };
    store
        .commit(Changes {
            upserts: vec![(Kind::Artist, artist.clone())],
            auctions: vec![("sale-1".into(), "CHF".into())],
            checkpoint: Some(6),
            ..Changes::default()
        })
        .unwrap();
    assert_eq!(store.checkpoint().unwrap(), 6);
    let ids = |hits: Vec<search::Hit>| hits.into_iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(ids(store.search(Kind::Lot, &axis(0), &Filter::default(), 10).unwrap()), ["a", "b", "c"]);
    assert_eq!(ids(store.search(Kind::Lot, &axis(0), &Filter::default(), 2).unwrap()), ["a", "b"]);
    let sculpture = Filter { category: Some("sculpture".into()), ..Filter::default() };
    assert_eq!(ids(store.search(Kind::Lot, &axis(0), &sculpture, 10).unwrap()), ["c"]);
    let status_2 = Filter { status: Some(2), ..Filter::default() };
    assert_eq!(ids(store.search(Kind::Lot, &axis(1), &status_2, 10).unwrap()), ["c", "b"]);
    let ann = Filter { artist: Some("Ann".into()), ..Filter::default() };
    let scrolled: Vec<String> = store.scroll(Kind::Lot, &ann).unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(scrolled, ["a", "c"]);
    let chf = Filter { currency: Some("CHF".into()), ..Filter::default() };
    assert!(store.search(Kind::Lot, &axis(0), &chf, 10).unwrap().is_empty());
    assert_eq!(ids(store.search(Kind::Artist, &axis(0), &Filter::default(), 10).unwrap()), ["Ann"]);
    assert_eq!(store.auction_currency("sale-1").unwrap().as_deref(), Some("CHF"));
    assert_eq!(store.auction_currency("sale-2").unwrap(), None);
    let hit = &store.search(Kind::Lot, &axis(0), &Filter::default(), 1).unwrap()[0];
    assert!((hit.score - 1.0).abs() < 1e-6);
    assert_eq!(hit.payload.category, "painting");

    // An upsert replaces the point in place.
    store.commit(upsert(vec![point("a", axis(3), 3, "painting", "Ann")], 7)).unwrap();
    // b is nearest now; a and c are orthogonal to the query, so tied: by id.
    assert_eq!(ids(store.search(Kind::Lot, &axis(0), &Filter::default(), 10).unwrap()), ["b", "a", "c"]);
    assert_eq!(store.scroll(Kind::Lot, &Filter::default()).unwrap().len(), 3);
    assert_eq!((store.count(Kind::Lot).unwrap(), store.count(Kind::Artist).unwrap()), (3, 1));
    assert_eq!(store.get(Kind::Lot, "a").unwrap().unwrap().payload.status, 3);

    // A wrong-sized vector is refused and nothing of its commit is applied.
    let bad = Changes {
        upserts: vec![
            (Kind::Lot, point("d", axis(4), 1, "x", "y")),
            (Kind::Lot, point("e", vec![1.0; DIM + 1], 1, "x", "y")),
        ],
        checkpoint: Some(8),
        ..Changes::default()
    };
    assert!(matches!(store.commit(bad), Err(StoreError::Dimension { .. })));
    assert!(matches!(store.search(Kind::Lot, &[1.0; 3], &Filter::default(), 1), Err(StoreError::Dimension { .. })));
    assert_eq!(store.checkpoint().unwrap(), 7);
    assert!(store.get(Kind::Lot, "d").unwrap().is_none());

    // Dead letters move the checkpoint and are kept in order.
    for index in [9, 11] {
        let letter = DeadLetter { index, at_ms: 1, error: format!("bad {index}"), item: vec![1, 2], attempts: 1 };
        store.commit(Changes { park: Some(letter), checkpoint: Some(index), ..Changes::default() }).unwrap();
    }
    assert_eq!(store.dead_letters().unwrap().iter().map(|l| l.index).collect::<Vec<_>>(), [9, 11]);
    assert_eq!(store.dead_letter(9).unwrap().unwrap().error, "bad 9");
    assert!(store.dead_letter(10).unwrap().is_none());
    store.commit(Changes { unpark: Some(9), ..Changes::default() }).unwrap();
    assert_eq!(store.dead_letters().unwrap().iter().map(|l| l.index).collect::<Vec<_>>(), [11]);

    // Everything survives a reopen.
    let before: Vec<Point> = store.scroll(Kind::Lot, &Filter::default()).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.checkpoint().unwrap(), 11);
    assert_eq!(store.scroll(Kind::Lot, &Filter::default()).unwrap(), before);
    assert_eq!(store.get(Kind::Artist, "Ann").unwrap(), Some(artist));
    assert_eq!(store.dead_letters().unwrap().len(), 1);
    assert_eq!(store.auction_currency("sale-1").unwrap().as_deref(), Some("CHF"));

    // Filters are equality, also for names with spaces; a zero limit answers nothing.
    store
        .commit(upsert(
            vec![point("f", axis(5), 1, "old master", "Ann Lee"), point("g", axis(5), 1, "old master", "Ann Lee Jr")],
            12,
        ))
        .unwrap();
    let ann_lee = Filter { artist: Some("Ann Lee".into()), ..Filter::default() };
    assert_eq!(ids(store.search(Kind::Lot, &axis(5), &ann_lee, 10).unwrap()), ["f"]);
    let old_master = Filter { category: Some("old master".into()), ..Filter::default() };
    assert_eq!(ids(store.search(Kind::Lot, &axis(5), &old_master, 10).unwrap()), ["f", "g"]);
    assert!(store.search(Kind::Lot, &axis(5), &Filter::default(), 0).unwrap().is_empty());
}

#[test]
fn embedded_store_keeps_the_contract() {
    suite(|dir| Embedded::open(dir, DIM).unwrap());
}

#[test]
fn embedded_store_refuses_another_dimension_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path(), DIM).unwrap();
    store.commit(upsert(vec![point("a", unit(&[1.0; DIM]), 1, "c", "a")], 1)).unwrap();
    drop(store);
    assert!(matches!(Embedded::open(dir.path(), DIM * 2), Err(StoreError::Dimension { .. })));
}

/// The Qdrant server to test against, or `None` (and a line saying the test was skipped).
fn qdrant_url(test: &str) -> Option<String> {
    let url = std::env::var("GAVEL_QDRANT_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("skipped {test}: GAVEL_QDRANT_URL is not set (no Qdrant server here)");
    }
    url
}

/// Collections no earlier run wrote.
fn fresh_prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("gavel_test_{}_{nanos}", std::process::id())
}

#[test]
fn qdrant_store_keeps_the_contract() {
    let Some(url) = qdrant_url("qdrant_store_keeps_the_contract") else { return };
    let prefix = fresh_prefix();
    // Reopening connects again to the same collections.
    suite(|_| Qdrant::connect(&url, &prefix, DIM).unwrap());
}

#[test]
fn qdrant_store_refuses_another_dimension_and_model() {
    let Some(url) = qdrant_url("qdrant_store_refuses_another_dimension_and_model") else { return };
    let prefix = fresh_prefix();
    let store = Qdrant::connect(&url, &prefix, DIM).unwrap();
    store.bind_model("e5:one").unwrap();
    store.bind_model("e5:one").unwrap();
    assert!(matches!(store.bind_model("e5:two"), Err(StoreError::Model { .. })));
    drop(store);
    assert!(matches!(Qdrant::connect(&url, &prefix, DIM * 2), Err(StoreError::Dimension { .. })));
    assert!(Qdrant::connect(&url, "bad prefix!", DIM).is_err());
}

#[test]
fn qdrant_store_that_cannot_be_reached_is_an_error_not_a_hang() {
    // Nothing listens on port 1: connecting fails with the store's error.
    let started = std::time::Instant::now();
    assert!(matches!(Qdrant::connect("http://127.0.0.1:1", "gavel_unreachable", DIM), Err(StoreError::Io(_))));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Exact search is exact: the same hits, in the same order, as sorting every matching
    /// point by its dot product (ties by id).
    #[test]
    fn search_matches_brute_force(
        raw in prop::collection::vec((prop::collection::vec(-1.0f32..1.0, DIM), 0i32..3, 0usize..3), 1..120),
        query in prop::collection::vec(-1.0f32..1.0, DIM),
        status in prop::option::of(0i32..3),
        limit in 1usize..30,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(dir.path(), DIM).unwrap();
        let categories = ["painting", "print", "sculpture"];
        let points: Vec<Point> = raw
            .iter()
            .enumerate()
            .map(|(i, (v, s, c))| point(&format!("lot-{i:03}"), unit(v), *s, categories[*c], "x"))
            .collect();
        store.commit(upsert(points.clone(), 1)).unwrap();
        let query = unit(&query);
        let filter = Filter { status, ..Filter::default() };
        let mut expected: Vec<(f32, String)> = points
            .iter()
            .filter(|p| filter.matches(&p.payload))
            .map(|p| (dot(&query, &p.vector), p.id.clone()))
            .collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        expected.truncate(limit);
        let got: Vec<(f32, String)> =
            store.search(Kind::Lot, &query, &filter, limit).unwrap().into_iter().map(|h| (h.score, h.id)).collect();
        prop_assert_eq!(got, expected);
    }
}
