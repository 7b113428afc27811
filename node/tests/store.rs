//! The stores on their own: openraft's storage conformance suite, reopen, restart from a
//! snapshot plus log replay, and the rewrite of a format-1 data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::io;

use ledger::Ledger;
use ledger::pb::{self as lp, command::Body};
use node::pb;
use node::raft::{Entry, LeaderId, LogId, Payload, TypeConfig};
use node::store::{LogStore, StateMachine, open_db};
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, StorageError};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path(), 1).unwrap();
        let sm = StateMachine::open(db.clone(), dir.path()).unwrap();
        Ok((dir, LogStore::open(db, true).unwrap(), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.unwrap();
}

fn log_id(index: u64) -> LogId {
    LogId { leader_id: LeaderId { term: 1, node_id: 1 }, index }
}

fn proposal_entry(index: u64, at_ms: i64, commands: Vec<lp::Command>) -> Entry {
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(Payload::new(pb::Proposal { at_ms, commands })) }
}

fn user(id: &str) -> lp::Command {
    lp::Command {
        at_ms: 0,
        actor: String::new(),
        log_index: 0,
        body: Some(Body::CreateUser(lp::CreateUser {
            user_id: id.into(),
            username: id.into(),
            role: 1,
            password_hash: vec![],
        })),
    }
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok::<_, io::Error>((e, None))));
    sm.apply(stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_append_truncate_purge_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(open_db(dir.path(), 7).unwrap(), true).unwrap();
        let entries: Vec<Entry> = (1..=10).map(|i| proposal_entry(i, 0, vec![user(&format!("u{i}"))])).collect();
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        log.truncate_after(Some(log_id(8))).await.unwrap();
        log.purge(log_id(3)).await.unwrap();
    }
    let mut log = LogStore::open(open_db(dir.path(), 7).unwrap(), true).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3)));
    assert_eq!(state.last_log_id, Some(log_id(8)));
    let got: Vec<u64> = log.try_get_log_entries(0..100).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(got, vec![4, 5, 6, 7, 8]);
    drop(log);
    assert!(matches!(open_db(dir.path(), 8), Err(node::store::StoreError::WrongNode { found: 7, .. })));
}

/// openraft may read an entry as soon as `append` returns, before its fsync (replication, and
/// apply of what the cluster committed first). More entries than the log's cache holds, read
/// back before the flush callback: every one is there, none missing from the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_readable_when_append_returns_even_past_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(open_db(dir.path(), 7).unwrap(), true).unwrap();
    let last = node::limits::RECENT_ENTRIES_MAX as u64 + 500;
    let entries: Vec<Entry> = (1..=last).map(|i| proposal_entry(i, 0, vec![user(&format!("u{i}"))])).collect();
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await.unwrap();
    let got: Vec<u64> = log.try_get_log_entries(1..=last).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(got, (1..=last).collect::<Vec<_>>());
    rx.await.unwrap().unwrap();
}

/// Entry 0 is blank (openraft's log starts there, with a cluster's first membership), entry 1
/// makes a curator and a lot, and every later entry adds an attribute: not idempotent, so an
/// entry applied twice shows in the digest. Returns the entries and, per index, the ledger's
/// digest after it and the feed item it makes when applied once.
fn attribute_entries(last: u64) -> (Vec<Entry>, Vec<(String, pb::FeedItem)>) {
    let mut entries = vec![Entry { log_id: log_id(0), payload: EntryPayload::Blank }];
    entries.push(proposal_entry(1, 1_000, vec![curator(), user("ana"), create_lot("cur", 20_000)]));
    for i in 2..=last {
        let add = lp::AddAttributes {
            lot_id: "L".into(),
            attributes: vec![lp::AttributeInput { key: format!("k{i}"), value: "v".into() }],
        };
        entries.push(proposal_entry(i, 1_000 * i as i64, vec![command("cur", Body::AddAttributes(add))]));
    }
    let mut ledger = Ledger::new();
    let mut after = Vec::new();
    for e in &entries {
        let mut item = pb::FeedItem { index: e.log_id.index, at_ms: 0, events: vec![] };
        if let EntryPayload::Normal(payload) = &e.payload {
            let p = payload.proposal();
            item.at_ms = p.at_ms;
            for c in &p.commands {
                let mut c = c.clone();
                c.at_ms = p.at_ms;
                c.log_index = e.log_id.index;
                let applied = ledger.apply(&c);
                assert!(applied.rejection().is_none(), "{c:?}: {:?}", applied.rejection());
                item.events.extend(applied.events);
            }
        }
        after.push((ledger.digest().to_string(), item));
    }
    (entries, after)
}

/// A replica that stops at any point comes back, from its newest snapshot file and the log
/// after it, to exactly the state and feed of one that never stopped: once with no snapshot yet
/// (the crash came after the log's fsync, before any snapshot), once with one in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_and_log_replay_gives_the_never_stopped_state() {
    use openraft::storage::{RaftSnapshotBuilder, StorageHelper};
    let (entries, after) = attribute_entries(12);
    let (never_stopped, _) = &after[12];
    for snapshot_at in [None, Some(5)] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path(), 1).unwrap();
            let mut log = LogStore::open(db.clone(), true).unwrap();
            let mut sm = StateMachine::open(db, dir.path()).unwrap();
            let (tx, rx) = TypeConfig::oneshot();
            log.append(entries.clone(), IOFlushed::signal(tx)).await.unwrap();
            rx.await.unwrap().unwrap();
            log.save_committed(Some(log_id(12))).await.unwrap();
            let cut = snapshot_at.map_or(0, |at| at as usize + 1);
            apply(&mut sm, entries[..cut].to_vec()).await;
            if snapshot_at.is_some() {
                sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            }
            apply(&mut sm, entries[cut..].to_vec()).await;
            assert_eq!(&sm.shared().state_digest().unwrap(), never_stopped);
            // Stopped here, with nothing flushed but what each write did itself.
        }
        let db = open_db(dir.path(), 1).unwrap();
        let mut log = LogStore::open(db.clone(), true).unwrap();
        let mut sm = StateMachine::open(db, dir.path()).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), snapshot_at, "reopened at the snapshot, before replay");
        StorageHelper::new(&mut log, &mut sm).with_id(1).get_initial_state().await.unwrap();
        let shared = sm.shared();
        assert_eq!(shared.applied_index(), 12, "the committed log is re-applied");
        assert_eq!(&shared.state_digest().unwrap(), never_stopped, "snapshot at {snapshot_at:?}");
        let feed = shared.feed_after(0, 100).unwrap();
        let expected: Vec<pb::FeedItem> = after[1..].iter().map(|(_, item)| item.clone()).collect();
        assert_eq!(feed, expected, "the feed after index 0, event for event");
    }
}

/// openraft builds snapshots in a task of their own while entries are applied. A snapshot cut
/// in the middle of an applied batch would hold a ledger ahead of the index it is filed under,
/// and a restart from it would apply those entries twice: the cut waits for the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_never_cut_in_the_middle_of_an_applied_batch() {
    use openraft::storage::RaftSnapshotBuilder;
    let (entries, after) = attribute_entries(8);
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_sm(dir.path());
    apply(&mut sm, entries[..3].to_vec()).await;
    // One batch, entries 3..=8, whose stream stalls after entry 5.
    let (tx, rx) = futures::channel::mpsc::unbounded();
    for e in &entries[3..6] {
        tx.unbounded_send(Ok::<_, io::Error>((e.clone(), None))).unwrap();
    }
    let mut applier = sm.clone();
    let batch = tokio::spawn(async move { applier.apply(rx).await });
    let shared = sm.shared();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shared.state_digest().unwrap() != after[5].0 {
        assert!(std::time::Instant::now() < deadline, "the batch never reached entry 5");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut builder = sm.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for e in &entries[6..] {
        tx.unbounded_send(Ok((e.clone(), None))).unwrap();
    }
    drop(tx);
    batch.await.unwrap().unwrap();
    let snapshot = build.await.unwrap().unwrap();
    let index = snapshot.meta.last_log_id.unwrap().index;
    let data: pb::SnapshotData = prost::Message::decode(snapshot.snapshot.as_slice()).unwrap();
    let ledger = Ledger::decode_snapshot(&data.ledger).unwrap();
    assert_eq!(ledger.digest().to_string(), after[index as usize].0, "the ledger is the state after {index}");
    assert!(data.feed.is_empty(), "a snapshot carries no feed: its items stay in the feed's store");
    assert_eq!(data.format_version, 2);
}

/// Writes `ledger` as a format-1 directory did: one record per user, lot (without history and
/// content), bid-history line, content, comment, category and exactly-once record.
fn write_format_1(dir: &std::path::Path, ledger: &Ledger, applied: u64) {
    use prost::Message;
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = ["log", "raft_meta", "sm_meta", "sm_state", "feed", "snapshot"];
    let db = rocksdb::DB::open_cf(&opts, dir, cfs).unwrap();
    db.put(b"format", b"gavel-node/1").unwrap();
    db.put(b"node_id", 1u64.to_be_bytes()).unwrap();
    let meta = db.cf_handle("sm_meta").unwrap();
    db.put_cf(meta, b"applied", pb::LogId { term: 1, node_id: 1, index: applied }.encode_to_vec()).unwrap();
    db.put_cf(meta, b"clock", ledger.last_at_ms().to_be_bytes()).unwrap();
    let state = db.cf_handle("sm_state").unwrap();
    let put = |key: Vec<u8>, value: Vec<u8>| db.put_cf(state, key, value).unwrap();
    let key = |prefix: &str, parts: &[&[u8]]| [prefix.as_bytes(), &parts.join(&b"\0"[..])].concat();
    let snap = ledger.to_snapshot();
    for u in &snap.users {
        put(key("u/", &[u.user_id.as_bytes()]), u.encode_to_vec());
    }
    for c in &snap.categories {
        put(key("c/", &[c.category_id.as_bytes()]), c.encode_to_vec());
    }
    for r in &snap.recorded_bids {
        put(key("r/", &[r.bidder.as_bytes(), r.bid_id.as_bytes()]), r.encode_to_vec());
    }
    for lot in &snap.lots {
        let id = lot.lot_id.as_bytes();
        for (seq, line) in lot.history.iter().enumerate() {
            put(key("h/", &[id, &(seq as u64).to_be_bytes()]), line.encode_to_vec());
        }
        if let Some(content) = &lot.content {
            for comment in &content.comments {
                put(key("m/", &[id, comment.comment_id.as_bytes()]), comment.encode_to_vec());
            }
            put(key("k/", &[id]), lp::LotContentState { comments: vec![], ..content.clone() }.encode_to_vec());
        }
        put(key("l/", &[id]), lp::LotState { history: vec![], content: None, ..lot.clone() }.encode_to_vec());
    }
    let feed = db.cf_handle("feed").unwrap();
    for index in 1..=applied + 1 {
        db.put_cf(feed, index.to_be_bytes(), pb::FeedItem { index, at_ms: 0, events: vec![] }.encode_to_vec()).unwrap();
    }
}

/// A data directory of format 1 (one RocksDB record per entity) is rewritten on open as one
/// snapshot file holding the same ledger, and opens as format 2 from then on. A crash after
/// the file but before the format marker flips just does the rewrite again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_directory_is_rewritten_as_a_snapshot() {
    let status = |s: lp::LotStatus| {
        command("cur", Body::SetLotStatus(lp::SetLotStatus { lot_id: "L".into(), status: s as i32 }))
    };
    let place = |who: &str, id: &str, max: i64| {
        command(who, Body::PlaceBid(lp::PlaceBid { lot_id: "L".into(), bid_id: id.into(), max_amount: max }))
    };
    let comment = lp::AddComment { lot_id: "L".into(), comment_id: "c1".into(), content: "lovely".into() };
    let attribute = lp::AttributeInput { key: "medium".into(), value: "oil".into() };
    let category = lp::PutCategory { category_id: "art".into(), name: "Art".into(), parent_id: String::new() };
    let commands = vec![
        curator(),
        user("sam"),
        user("ana"),
        user("ben"),
        command("cur", Body::PutCategory(category)),
        create_lot("sam", 90_000),
        command("cur", Body::AddAttributes(lp::AddAttributes { lot_id: "L".into(), attributes: vec![attribute] })),
        status(lp::LotStatus::UnderReview),
        status(lp::LotStatus::Authenticated),
        status(lp::LotStatus::ReadyForAuction),
        status(lp::LotStatus::InAuction),
        command("ana", Body::AddComment(comment)),
        place("ana", "x1", 500),
        place("ben", "x2", 1_000),
        place("ana", "x3", 2_000),
    ];
    let mut expected = Ledger::new();
    for (i, c) in commands.into_iter().enumerate() {
        let mut c = c;
        c.at_ms = 10_000 + 1_000 * i as i64;
        c.log_index = i as u64 + 1;
        let applied = expected.apply(&c);
        assert!(applied.rejection().is_none(), "{c:?}: {:?}", applied.rejection());
    }
    assert!(expected.lot("L").unwrap().history.len() >= 3, "the lot has a bid history");
    let dir = tempfile::tempdir().unwrap();
    write_format_1(dir.path(), &expected, 15);
    let mut sm = open_sm(dir.path());
    assert_eq!(sm.shared().ledger().unwrap().digest(), expected.digest());
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(15)));
    let snapshot = sm.get_current_snapshot().await.unwrap().expect("the rewrite is a snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(15)));
    let data: pb::SnapshotData = prost::Message::decode(snapshot.snapshot.as_slice()).unwrap();
    assert!(data.feed.is_empty(), "the feed is not copied into the snapshot");
    let feed = sm.shared().feed_after(0, 100).unwrap();
    assert_eq!(feed.iter().map(|i| i.index).collect::<Vec<_>>(), (1..=15).collect::<Vec<_>>(), "the feed stays");
    assert_eq!(sm.shared().feed_start(), 0);
    drop(sm);
    {
        let db = open_db(dir.path(), 1).unwrap();
        assert_eq!(db.get(b"format").unwrap().as_deref(), Some(&b"gavel-node/2"[..]));
        let state = db.cf_handle("sm_state").unwrap();
        assert_eq!(db.iterator_cf(state, rocksdb::IteratorMode::Start).count(), 0, "the old records are gone");
        let sm = StateMachine::open(db, dir.path()).unwrap();
        assert_eq!(sm.shared().ledger().unwrap().digest(), expected.digest(), "and it reopens as format 2");
    }
    // The crash: the file is written, the records and the format-1 marker still in place.
    write_format_1(dir.path(), &expected, 15);
    let sm = open_sm(dir.path());
    assert_eq!(sm.shared().ledger().unwrap().digest(), expected.digest(), "the redone rewrite");
}

/// A data directory from before the feed had files (its items in RocksDB's `feed` column
/// family) has them moved into files on open, once. A crash midway (some files written, the
/// column family still whole) moves them again, and the feed is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_items_kept_in_rocksdb_move_into_files() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let items: Vec<pb::FeedItem> =
        (1..=50).map(|index| pb::FeedItem { index, at_ms: index as i64 * 7, events: vec![] }).collect();
    let column_len =
        |db: &rocksdb::DB| db.iterator_cf(db.cf_handle("feed").unwrap(), rocksdb::IteratorMode::Start).count();
    let write_column = || {
        let db = open_db(dir.path(), 1).unwrap();
        let feed = db.cf_handle("feed").unwrap();
        for item in &items {
            db.put_cf(feed, item.index.to_be_bytes(), item.encode_to_vec()).unwrap();
        }
        assert_eq!(column_len(&db), 50);
    };
    write_column();
    let sm = open_sm(dir.path());
    assert_eq!(sm.shared().feed_after(0, 100).unwrap(), items, "moved whole");
    assert_eq!(column_len(sm.shared().db()), 0, "and out of RocksDB");
    drop(sm);
    write_column();
    let sm = open_sm(dir.path());
    assert_eq!(sm.shared().feed_after(0, 100).unwrap(), items, "moved again, nothing twice");
    assert_eq!(column_len(sm.shared().db()), 0);
}

fn open_sm(dir: &std::path::Path) -> StateMachine {
    StateMachine::open(open_db(dir, 1).unwrap(), dir).unwrap()
}

fn command(actor: &str, body: Body) -> lp::Command {
    lp::Command { at_ms: 0, actor: actor.into(), log_index: 0, body: Some(body) }
}

/// A curator (role 2) named `cur`.
fn curator() -> lp::Command {
    let user = lp::CreateUser { user_id: "cur".into(), username: "cur".into(), role: 2, password_hash: vec![] };
    command("", Body::CreateUser(user))
}

/// Lot `L` in draft, in dollars from $1, open from 10 s to `ends_at_ms` on the ledger's clock.
fn create_lot(seller: &str, ends_at_ms: i64) -> lp::Command {
    let lot = lp::CreateLot {
        lot_id: "L".into(),
        title: "Harbour".into(),
        currency: "USD".into(),
        start_price: 100,
        starts_at_ms: 10_000,
        ends_at_ms,
        seller_id: seller.into(),
        ..Default::default()
    };
    command("cur", Body::CreateLot(lot))
}

/// Lot content through the state machine: a reopen (from its snapshot file) and a snapshot
/// installed on a fresh replica both give the ledger that applied it in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lot_content_survives_a_reopen_and_a_snapshot_install() {
    use openraft::storage::RaftSnapshotBuilder;
    let image = |id: &str, byte: char| {
        Body::AddImage(lp::AddImage {
            lot_id: "L".into(),
            image_id: id.into(),
            content_hash: byte.to_string().repeat(64),
            content_type: "image/png".into(),
            bytes: 10,
            width: 4,
            height: 3,
        })
    };
    let batches: Vec<Vec<lp::Command>> = vec![
        vec![curator(), user("ana"), create_lot("cur", 20_000)],
        vec![
            command(
                "cur",
                Body::PutCategory(lp::PutCategory {
                    category_id: "art".into(),
                    name: "Art".into(),
                    parent_id: String::new(),
                }),
            ),
            command(
                "cur",
                Body::PutCategory(lp::PutCategory {
                    category_id: "oil".into(),
                    name: "Oils".into(),
                    parent_id: "art".into(),
                }),
            ),
            command(
                "cur",
                Body::SetLotCategories(lp::SetLotCategories { lot_id: "L".into(), category_ids: vec!["oil".into()] }),
            ),
            command(
                "cur",
                Body::AddAttributes(lp::AddAttributes {
                    lot_id: "L".into(),
                    attributes: vec![lp::AttributeInput { key: "medium".into(), value: "oil".into() }],
                }),
            ),
        ],
        vec![
            command(
                "ana",
                Body::AddComment(lp::AddComment {
                    lot_id: "L".into(),
                    comment_id: "c1".into(),
                    content: "first".into(),
                }),
            ),
            command(
                "ana",
                Body::AddComment(lp::AddComment {
                    lot_id: "L".into(),
                    comment_id: "c2".into(),
                    content: "second".into(),
                }),
            ),
            command("ana", Body::DeleteComment(lp::DeleteComment { lot_id: "L".into(), comment_id: "c1".into() })),
            command("cur", image("i1", 'a')),
            command("cur", image("i2", 'b')),
            command(
                "cur",
                Body::ReorderImages(lp::ReorderImages {
                    lot_id: "L".into(),
                    image_ids: vec!["i2".into(), "i1".into()],
                }),
            ),
            command(
                "cur",
                Body::DeleteAttribute(lp::DeleteAttribute { lot_id: "L".into(), attribute_id: "a0".into() }),
            ),
        ],
    ];
    let mut expected = Ledger::new();
    let mut entries = Vec::new();
    for (i, batch) in batches.into_iter().enumerate() {
        let index = i as u64 + 1;
        let at_ms = 1_000 * index as i64;
        for c in &batch {
            let mut c = c.clone();
            c.at_ms = at_ms;
            c.log_index = index;
            let applied = expected.apply(&c);
            assert!(applied.rejection().is_none(), "{c:?}: {:?}", applied.rejection());
        }
        entries.push(proposal_entry(index, at_ms, batch));
    }
    let dir = tempfile::tempdir().unwrap();
    let snapshot = {
        let mut sm = open_sm(dir.path());
        apply(&mut sm, entries).await;
        assert_eq!(sm.shared().ledger().unwrap().digest(), expected.digest());
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap()
    };
    let reopened = open_sm(dir.path());
    assert_eq!(reopened.shared().ledger().unwrap().digest(), expected.digest(), "reopened from its snapshot file");
    let content = reopened.shared().ledger().unwrap().lot("L").unwrap().content.clone();
    assert_eq!(content.comments.iter().map(|c| c.comment_id.as_str()).collect::<Vec<_>>(), ["c2"]);
    assert_eq!(content.images.iter().map(|i| i.image_id.as_str()).collect::<Vec<_>>(), ["i2", "i1"]);
    let fresh = tempfile::tempdir().unwrap();
    let mut installed = open_sm(fresh.path());
    installed.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    assert_eq!(installed.shared().ledger().unwrap().digest(), expected.digest(), "installed from a snapshot");
    drop(installed);
    let reopened = open_sm(fresh.path());
    assert_eq!(reopened.shared().ledger().unwrap().digest(), expected.digest(), "the installed replica reopened");
}

/// The metrics digest is cached per ledger change: it must follow every applied batch and an
/// installed snapshot, and never answer with an older state's.
#[tokio::test]
async fn the_cached_digest_follows_every_change() {
    use openraft::storage::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_sm(dir.path());
    let shared = sm.shared();
    let empty = shared.state_digest().unwrap();
    assert_eq!(empty, Ledger::new().digest().to_string());
    apply(&mut sm, vec![proposal_entry(1, 1_000, vec![user("a")])]).await;
    let one = shared.state_digest().unwrap();
    assert_ne!(one, empty, "a new user changes the digest");
    assert_eq!(one, shared.ledger().unwrap().digest().to_string());
    assert_eq!(shared.state_digest().unwrap(), one, "asked again, the same");
    // A blank entry changes nothing in the ledger, so nothing in its digest.
    let blank = Entry { log_id: log_id(2), payload: EntryPayload::Blank };
    apply(&mut sm, vec![blank]).await;
    assert_eq!(shared.state_digest().unwrap(), one);
    apply(&mut sm, vec![proposal_entry(3, 3_000, vec![user("b")])]).await;
    let two = shared.state_digest().unwrap();
    assert_ne!(two, one, "not the cached digest of the older state");
    assert_eq!(two, shared.ledger().unwrap().digest().to_string());
    // A snapshot of the one-user state, installed over the two-user one.
    let snapshot = {
        let other = tempfile::tempdir().unwrap();
        let mut older = open_sm(other.path());
        let blanks = (1..=3).map(|i| Entry { log_id: log_id(i), payload: EntryPayload::Blank });
        apply(&mut older, blanks.chain([proposal_entry(4, 4_000, vec![user("c")])]).collect()).await;
        let mut builder = older.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap()
    };
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let installed = shared.state_digest().unwrap();
    assert_ne!(installed, two);
    assert_eq!(installed, shared.ledger().unwrap().digest().to_string());
}

/// A replica that fell behind and installs the leader's snapshot keeps the feed items it
/// applied itself (a snapshot carries no feed), across a reopen; once the gap between them and
/// the snapshot is copied in, its start goes down to where its own run began, and the feed is
/// whole and identical to a never-stopped replica's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_keeps_the_feed_a_replica_applied_itself() {
    use node::store::FeedHoldings;
    use openraft::storage::RaftSnapshotBuilder;
    let (entries, after) = attribute_entries(12);
    let feed = |upto: usize| after[1..=upto].iter().map(|(_, item)| item.clone()).collect::<Vec<_>>();
    // The leader applied all 12 entries and snapshotted; this replica applied only 5.
    let snapshot = {
        let dir = tempfile::tempdir().unwrap();
        let mut leader = open_sm(dir.path());
        apply(&mut leader, entries.clone()).await;
        leader.get_snapshot_builder().await.build_snapshot().await.unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut behind = open_sm(dir.path());
    apply(&mut behind, entries[..=5].to_vec()).await;
    behind.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let shared = behind.shared();
    let holdings = shared.feed_holdings().await;
    assert_eq!((holdings.start, holdings.kept), (12, Some((0, 5))), "its own items 1..=5 stay below the start");
    assert_eq!(shared.feed_after(0, 100).unwrap(), feed(5), "kept on disk, nothing past them");
    drop((shared, behind));

    // Reopened, it still knows what it kept.
    let behind = open_sm(dir.path());
    let shared = behind.shared();
    let reopened = shared.feed_holdings().await;
    assert_eq!((reopened.start, reopened.kept), (12, Some((0, 5))), "the kept run is persisted");
    // The gap (5, 12] copied in, the start goes down to 0 at once, and nothing is kept apart.
    let FeedHoldings { epoch, .. } = reopened;
    let gap: Vec<pb::FeedItem> = after[6..=12].iter().map(|(_, i)| i.clone()).collect();
    let writer = shared.clone();
    assert!(tokio::task::spawn_blocking(move || writer.put_feed_items(epoch, &gap)).await.unwrap().unwrap());
    assert!(shared.lower_feed_start(epoch, 12, 0).await.unwrap());
    assert_eq!(shared.feed_holdings().await, FeedHoldings { start: 0, kept: None, epoch, trimmed: 0 });
    assert_eq!(shared.feed_after(0, 100).unwrap(), feed(12), "whole, as the never-stopped replica's");
    drop((shared, behind));
    let behind = open_sm(dir.path());
    assert_eq!(behind.shared().feed_holdings().await.kept, None, "and so after a reopen");
    assert_eq!(behind.shared().feed_start(), 0);
    drop(behind);

    // A kept run recorded for another start (an older binary moved the start and left the
    // record) is not believed: the items it names may be gone.
    {
        let db = open_db(dir.path(), 1).unwrap();
        let stale: Vec<u8> = [12u64, 0, 5].map(u64::to_be_bytes).concat();
        db.put_cf(db.cf_handle("sm_meta").unwrap(), b"feed_kept", stale).unwrap();
    }
    let behind = open_sm(dir.path());
    assert_eq!(behind.shared().feed_holdings().await.kept, None, "a record for start 12 at start 0");
}

fn stamped_users(from: u64, to: u64, at_ms: impl Fn(u64) -> i64) -> Vec<Entry> {
    (from..=to).map(|i| proposal_entry(i, at_ms(i), vec![user(&format!("user-{i:06}"))])).collect()
}

/// Retention by age and by bytes: the oldest items go, the start rises to the floor and stays
/// there across a reopen, nothing the rule keeps is touched, and a backfill may not lower the
/// start below where retention cut it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_the_oldest_items_and_raises_the_start() {
    use node::store::FeedRetention;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_sm(dir.path());
    // Items 1..=10 stamped one second apart, at 1 s .. 10 s.
    apply(&mut sm, stamped_users(1, 10, |i| i as i64 * 1_000)).await;
    let shared = sm.shared();
    let all = shared.feed_after(0, 100).unwrap();
    let by_age = FeedRetention { max_bytes: 0, max_age_secs: 5 };
    let holdings = shared.feed_holdings().await;
    // At 12 s, the items stamped before 7 s are older than 5 s.
    assert_eq!(shared.retention_floor(&by_age, &holdings, 12_000).unwrap(), 6);
    assert_eq!(shared.retention_floor(&by_age, &holdings, 5_000).unwrap(), 0, "nothing is old yet");
    assert_eq!(shared.retention_floor(&by_age, &holdings, 99_000).unwrap(), 10, "all old: up to what is applied");
    assert!(shared.trim_feed(holdings, 6).await.unwrap());
    assert_eq!(shared.feed_start(), 6);
    assert_eq!(shared.feed_after(0, 100).unwrap(), all[6..], "items 1..=6 are gone, 7..=10 untouched");
    assert!(!shared.trim_feed(holdings, 8).await.unwrap(), "planned from a start that has moved since");
    let holdings = shared.feed_holdings().await;
    assert_eq!(holdings.trimmed, 6);
    assert!(!shared.lower_feed_start(holdings.epoch, 6, 3).await.unwrap(), "a backfill may not undo retention");
    drop((shared, sm));

    // Small feed files, so that retention by bytes has whole files to remove.
    let mut sm = StateMachine::open_sized(open_db(dir.path(), 1).unwrap(), dir.path(), 4_096).unwrap();
    let shared = sm.shared();
    let reopened = shared.feed_holdings().await;
    assert_eq!((reopened.start, reopened.trimmed), (6, 6), "persisted");
    assert_eq!(shared.feed_after(0, 100).unwrap(), all[6..]);

    // By bytes: 3,000 more items.
    apply(&mut sm, stamped_users(11, 3_010, |i| i as i64 * 1_000)).await;
    let held = |from: u64| shared.feed_bytes_after(from).unwrap();
    let on_disk = || -> u64 {
        std::fs::read_dir(dir.path().join("feed")).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum()
    };
    let total = held(6);
    assert!(total > 20_000, "the feed holds {total} bytes after its start");
    assert!(on_disk() >= total);
    let holdings = shared.feed_holdings().await;
    let roomy = FeedRetention { max_bytes: total * 2, max_age_secs: 0 };
    assert_eq!(shared.retention_floor(&roomy, &holdings, 0).unwrap(), 6, "within budget: nothing goes");
    let half = FeedRetention { max_bytes: total / 2, max_age_secs: 0 };
    let floor = shared.retention_floor(&half, &holdings, 0).unwrap();
    assert!((1_000..2_000).contains(&floor), "about half of 3,010 items go, not {floor}");
    assert!(held(floor) <= total / 2 && held(floor - 1) > total / 2, "the floor is the lowest within budget");
    let before = on_disk();
    assert!(shared.trim_feed(holdings, floor).await.unwrap());
    // The files wholly below the floor are removed at once; the one holding it stays.
    let after = on_disk();
    assert!(after >= held(floor) && after <= held(floor) + 4_096 + 1_024, "{after} bytes left of {before}");
    let kept = shared.feed_after(0, 10_000).unwrap();
    assert_eq!(kept.first().map(|i| i.index), Some(floor + 1));
    assert_eq!(kept.len() as u64, 3_010 - floor, "every item after the floor stays");
    // Both bounds together: the higher floor wins.
    let holdings = shared.feed_holdings().await;
    let both = FeedRetention { max_bytes: total * 2, max_age_secs: 10 };
    assert_eq!(shared.retention_floor(&both, &holdings, 3_000_000 + 1).unwrap(), 2_990);
    drop((shared, sm));
    let sm = open_sm(dir.path());
    assert_eq!(sm.shared().feed_after(0, 10_000).unwrap(), kept, "and after a reopen");
}

/// Raft's own entries carry no time: an unstamped item goes with an old stamped item after
/// it, never on its own (a new leader's first entry after a quiet spell is not old).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_keeps_unstamped_items_at_the_head() {
    use node::store::FeedRetention;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_sm(dir.path());
    apply(&mut sm, stamped_users(1, 4, |i| if i == 4 { 0 } else { i as i64 * 1_000 })).await;
    let shared = sm.shared();
    let by_age = FeedRetention { max_bytes: 0, max_age_secs: 5 };
    let far_later = 99_000;
    let holdings = shared.feed_holdings().await;
    assert_eq!(shared.retention_floor(&by_age, &holdings, far_later).unwrap(), 3, "item 4 has no time: kept");
    apply(&mut sm, stamped_users(5, 5, |_| 4_000)).await;
    assert_eq!(shared.retention_floor(&by_age, &holdings, far_later).unwrap(), 5, "with an old item after it: gone");
}
