//! The RocksDB stores on their own: openraft's storage conformance suite, reopen, and
//! state-machine atomicity across a crash image taken between two applied batches.
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
        let sm = StateMachine::open(db.clone()).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_batches_are_atomic_across_a_crash_image() {
    let dir = tempfile::tempdir().unwrap();
    let crash_image = tempfile::tempdir().unwrap();
    let image_path = crash_image.path().join("db");
    let first: Vec<lp::Command> = (0..50).map(|i| user(&format!("a{i}"))).collect();
    let second: Vec<lp::Command> = (0..50).map(|i| user(&format!("b{i}"))).collect();
    let mut expected = Ledger::new();
    for c in &first {
        let mut c = c.clone();
        c.at_ms = 1_000;
        expected.apply(&c);
    }
    {
        let db = open_db(dir.path(), 1).unwrap();
        let mut sm = StateMachine::open(db.clone()).unwrap();
        apply(&mut sm, vec![proposal_entry(1, 1_000, first)]).await;
        // The crash image: everything on disk between the two batches.
        rocksdb::checkpoint::Checkpoint::new(&db).unwrap().create_checkpoint(&image_path).unwrap();
        apply(&mut sm, vec![proposal_entry(2, 2_000, second)]).await;
        assert_eq!(sm.shared().applied_index(), 2);
    }
    let db = open_db(&image_path, 1).unwrap();
    let mut sm = StateMachine::open(db).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1)), "the image holds exactly the first batch");
    let shared = sm.shared();
    assert_eq!(shared.ledger().unwrap().digest(), expected.digest(), "ledger state is the first batch's, whole");
    assert_eq!(shared.feed_after(0, 10).unwrap().len(), 1, "one feed item, for entry 1");
    // And the full database reopens with both batches.
    drop(shared);
    drop(sm);
    let sm = StateMachine::open(open_db(dir.path(), 1).unwrap()).unwrap();
    assert_eq!(sm.shared().ledger().unwrap().users().count(), 100);
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
        let mut sm = StateMachine::open(open_db(dir.path(), 1).unwrap()).unwrap();
        apply(&mut sm, entries).await;
        assert_eq!(sm.shared().ledger().unwrap().digest(), expected.digest());
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap()
    };
    let reopened = StateMachine::open(open_db(dir.path(), 1).unwrap()).unwrap();
    assert_eq!(reopened.shared().ledger().unwrap().digest(), expected.digest(), "reopened from its records");
    let content = reopened.shared().ledger().unwrap().lot("L").unwrap().content.clone();
    assert_eq!(content.comments.iter().map(|c| c.comment_id.as_str()).collect::<Vec<_>>(), ["c2"]);
    assert_eq!(content.images.iter().map(|i| i.image_id.as_str()).collect::<Vec<_>>(), ["i2", "i1"]);
    let fresh = tempfile::tempdir().unwrap();
    let mut installed = StateMachine::open(open_db(fresh.path(), 1).unwrap()).unwrap();
    installed.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    assert_eq!(installed.shared().ledger().unwrap().digest(), expected.digest(), "installed from a snapshot");
    drop(installed);
    let reopened = StateMachine::open(open_db(fresh.path(), 1).unwrap()).unwrap();
    assert_eq!(reopened.shared().ledger().unwrap().digest(), expected.digest(), "the installed replica reopened");
}

/// The metrics digest is cached per ledger change: it must follow every applied batch and an
/// installed snapshot, and never answer with an older state's.
#[tokio::test]
async fn the_cached_digest_follows_every_change() {
    use openraft::storage::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(open_db(dir.path(), 1).unwrap()).unwrap();
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
        let mut older = StateMachine::open(open_db(other.path(), 1).unwrap()).unwrap();
        apply(&mut older, vec![proposal_entry(4, 4_000, vec![user("c")])]).await;
        let mut builder = older.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap()
    };
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
    let installed = shared.state_digest().unwrap();
    assert_ne!(installed, two);
    assert_eq!(installed, shared.ledger().unwrap().digest().to_string());
}
