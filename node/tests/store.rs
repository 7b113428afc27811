//! The stores on their own: openraft's storage conformance suite, reopen, restart from a
//! snapshot plus log replay, and the rewrite of a format-1 data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::io;

use ledger::Ledger;
use ledger::pb::{self as lp, command::Body};
use node::pb;
use node::raft::{Entry, LeaderId, LogId, TypeConfig};
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
        let sm = StateMachine::open(db.clone(), &dir.path().join("snapshots")).unwrap();
        Ok((dir, LogStore::new(db), sm))
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
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(pb::Proposal { at_ms, commands }) }
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
        let mut log = LogStore::new(open_db(dir.path(), 7).unwrap());
        let entries: Vec<Entry> = (1..=10).map(|i| proposal_entry(i, 0, vec![user(&format!("u{i}"))])).collect();
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        log.truncate_after(Some(log_id(8))).await.unwrap();
        log.purge(log_id(3)).await.unwrap();
    }
    let mut log = LogStore::new(open_db(dir.path(), 7).unwrap());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3)));
    assert_eq!(state.last_log_id, Some(log_id(8)));
    let got: Vec<u64> = log.try_get_log_entries(0..100).await.unwrap().iter().map(|e| e.log_id.index).collect();
    assert_eq!(got, vec![4, 5, 6, 7, 8]);
    drop(log);
    assert!(matches!(open_db(dir.path(), 8), Err(node::store::StoreError::WrongNode { found: 7, .. })));
}

/// A replica that stops at any point comes back, from its newest snapshot file and the log
/// after it, to exactly the state of one that never stopped: once with no snapshot yet (the
/// crash came after the log's fsync, before any snapshot), once with one in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_and_log_replay_gives_the_never_stopped_state() {
    use openraft::storage::{RaftSnapshotBuilder, StorageHelper};
    // openraft's log starts at index 0 (a cluster's first membership; a blank entry here).
    let entries: Vec<Entry> = std::iter::once(Entry { log_id: log_id(0), payload: EntryPayload::Blank })
        .chain((1..=12).map(|i| proposal_entry(i, 1_000 * i as i64, vec![user(&format!("u{i}")), user("u1")])))
        .collect();
    let mut never_stopped = Ledger::new();
    for e in &entries {
        let EntryPayload::Normal(p) = &e.payload else { continue };
        for c in &p.commands {
            let mut c = c.clone();
            c.at_ms = p.at_ms;
            c.log_index = e.log_id.index;
            never_stopped.apply(&c);
        }
    }
    for snapshot_at in [None, Some(5)] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path(), 1).unwrap();
            let mut log = LogStore::new(db.clone());
            let mut sm = StateMachine::open(db, &dir.path().join("snapshots")).unwrap();
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
            assert_eq!(sm.shared().ledger().unwrap().digest(), never_stopped.digest());
            // Stopped here, with nothing flushed but what each write did itself.
        }
        let db = open_db(dir.path(), 1).unwrap();
        let mut log = LogStore::new(db.clone());
        let mut sm = StateMachine::open(db, &dir.path().join("snapshots")).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), snapshot_at, "reopened at the snapshot, before replay");
        StorageHelper::new(&mut log, &mut sm).with_id(1).get_initial_state().await.unwrap();
        let shared = sm.shared();
        assert_eq!(shared.applied_index(), 12, "the committed log is re-applied");
        assert_eq!(shared.ledger().unwrap().digest(), never_stopped.digest(), "snapshot at {snapshot_at:?}");
        let feed = shared.feed_after(0, 100).unwrap();
        assert_eq!(feed.iter().map(|i| i.index).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>(), "the feed after index 0");
    }
}

/// A data directory of format 1 (one RocksDB record per entity) is rewritten on open as one
/// snapshot file holding the same ledger, and opens as format 2 from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_directory_is_rewritten_as_a_snapshot() {
    let mut expected = Ledger::new();
    for (i, id) in ["ana", "ben", "cy"].into_iter().enumerate() {
        let mut c = user(id);
        c.at_ms = 1_000 * (i as i64 + 1);
        c.log_index = i as u64 + 1;
        expected.apply(&c);
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = ["log", "raft_meta", "sm_meta", "sm_state", "feed", "snapshot"];
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        db.put(b"format", b"gavel-node/1").unwrap();
        db.put(b"node_id", 1u64.to_be_bytes()).unwrap();
        let meta = db.cf_handle("sm_meta").unwrap();
        let applied = pb::LogId { term: 1, node_id: 1, index: 3 };
        db.put_cf(meta, b"applied", prost::Message::encode_to_vec(&applied)).unwrap();
        db.put_cf(meta, b"clock", expected.last_at_ms().to_be_bytes()).unwrap();
        let state = db.cf_handle("sm_state").unwrap();
        for u in expected.to_snapshot().users {
            db.put_cf(state, format!("u/{}", u.user_id), prost::Message::encode_to_vec(&u)).unwrap();
        }
        let feed = db.cf_handle("feed").unwrap();
        for index in 1..=4u64 {
            let item = pb::FeedItem { index, at_ms: 0, events: vec![] };
            db.put_cf(feed, index.to_be_bytes(), prost::Message::encode_to_vec(&item)).unwrap();
        }
    }
    let mut sm = open_sm(dir.path());
    assert_eq!(sm.shared().ledger().unwrap().digest(), expected.digest());
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(3)));
    let snapshot = sm.get_current_snapshot().await.unwrap().expect("the rewrite is a snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(3)));
    let data: pb::SnapshotData = prost::Message::decode(snapshot.snapshot.as_slice()).unwrap();
    assert_eq!(data.feed.iter().map(|i| i.index).collect::<Vec<_>>(), [1, 2, 3], "the feed up to applied");
    drop(sm);
    let db = open_db(dir.path(), 1).unwrap();
    assert_eq!(db.get(b"format").unwrap().as_deref(), Some(&b"gavel-node/2"[..]));
    let state = db.cf_handle("sm_state").unwrap();
    assert_eq!(db.iterator_cf(state, rocksdb::IteratorMode::Start).count(), 0, "the old records are gone");
    let sm = StateMachine::open(db, &dir.path().join("snapshots")).unwrap();
    assert_eq!(sm.shared().ledger().unwrap().digest(), expected.digest(), "and it reopens as format 2");
}

fn open_sm(dir: &std::path::Path) -> StateMachine {
    StateMachine::open(open_db(dir, 1).unwrap(), &dir.join("snapshots")).unwrap()
}

fn command(actor: &str, body: Body) -> lp::Command {
    lp::Command { at_ms: 0, actor: actor.into(), log_index: 0, body: Some(body) }
}

/// Lot content through the RocksDB state machine: a reopen (per-record persistence) and a
/// snapshot installed on a fresh replica both give the ledger that applied it in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lot_content_survives_a_reopen_and_a_snapshot_install() {
    use openraft::storage::RaftSnapshotBuilder;
    let curator = lp::CreateUser { user_id: "cur".into(), username: "cur".into(), role: 2, password_hash: vec![] };
    let lot = lp::CreateLot {
        lot_id: "L".into(),
        title: "Harbour".into(),
        currency: "USD".into(),
        start_price: 100,
        starts_at_ms: 10_000,
        ends_at_ms: 20_000,
        seller_id: "cur".into(),
        ..Default::default()
    };
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
        vec![command("", Body::CreateUser(curator)), user("ana"), command("cur", Body::CreateLot(lot))],
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
        apply(&mut older, vec![proposal_entry(4, 4_000, vec![user("c")])]).await;
        let mut builder = older.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap()
    };
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let installed = shared.state_digest().unwrap();
    assert_ne!(installed, two);
    assert_eq!(installed, shared.ledger().unwrap().digest().to_string());
}
