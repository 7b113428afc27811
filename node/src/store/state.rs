//! The ledger state machine: applies committed entries, persists what they touched, builds
//! and installs snapshots.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use prost::Message;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use tokio::sync::watch;

use crate::pb;
use crate::raft::{self, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use ledger::Ledger;

use super::db::{
    CF_FEED, CF_SM_META, CF_SM_STATE, CF_SNAPSHOT, SNAPSHOT_FORMAT, blocking, cf, corrupt, decode, get_msg, rocks,
};
use super::keys::{
    auction_key, category_key, comment_key, content_key, history_key, history_prefix, index_key, index_of, lot_key,
    recorded_key, user_key,
};

/// State shared between the state machine (owned by openraft) and the node's read paths.
pub struct Shared {
    db: Arc<DB>,
    ledger: RwLock<Ledger>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// The last applied log index, for feed subscribers and read-index waits.
    applied_index: watch::Sender<u64>,
    /// Bumped under the ledger's write lock whenever the ledger changes: the key of `digest`.
    generation: AtomicU64,
    /// The state digest of one generation: hashing the whole state is not redone for every
    /// metrics call, only after the ledger changed.
    digest: Mutex<Option<(u64, String)>>,
}

/// A lock poisoned by a panic while it was held: the state behind it may be half-changed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "the {0} lock was poisoned by a panic mid-update; this replica stops rather than read or apply half-changed state"
)]
pub struct Poisoned(&'static str);

impl From<Poisoned> for io::Error {
    fn from(p: Poisoned) -> io::Error {
        io::Error::other(p)
    }
}

/// The ledger state machine on RocksDB. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

/// A panic while the lock was held may have left its data half-changed: an error, so the
/// replica stops (openraft halts on a state-machine error) rather than diverge.
fn lock<'a, T>(m: &'a Mutex<T>, what: &'static str) -> Result<MutexGuard<'a, T>, Poisoned> {
    m.lock().map_err(|_| Poisoned(what))
}

impl StateMachine {
    /// Loads the state machine from the database (empty on a new node).
    pub fn open(db: Arc<DB>) -> io::Result<StateMachine> {
        let applied = get_msg::<pb::LogId>(&db, CF_SM_META, b"applied")?.map(|id| raft::log_id_from_pb(&id));
        let membership = get_msg::<pb::StoredMembership>(&db, CF_SM_META, b"membership")?;
        let membership = raft::stored_membership_from_pb(&membership).map_err(|e| corrupt(e.to_string()))?;
        let ledger = load_ledger(&db)?;
        let (applied_index, _) = watch::channel(applied.map_or(0, |id| id.index));
        let shared = Shared {
            db,
            ledger: RwLock::new(ledger),
            applied: Mutex::new((applied, membership)),
            applied_index,
            generation: AtomicU64::new(0),
            digest: Mutex::new(None),
        };
        Ok(StateMachine { shared: Arc::new(shared) })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// Rebuilds the ledger from its per-entity records (validated by `Ledger::from_snapshot`).
fn load_ledger(db: &DB) -> io::Result<Ledger> {
    let mut snap = ledger::pb::Snapshot { format_version: ledger::snapshot::FORMAT_VERSION, ..Default::default() };
    if let Some(bytes) = db.get_cf(cf(db, CF_SM_META)?, b"clock").map_err(rocks)? {
        snap.last_at_ms =
            <[u8; 8]>::try_from(bytes.as_slice()).map(i64::from_be_bytes).map_err(|_| corrupt("clock"))?;
    }
    let mut histories: std::collections::BTreeMap<String, Vec<ledger::pb::HistoryLine>> = Default::default();
    let mut contents: std::collections::BTreeMap<String, ledger::pb::LotContentState> = Default::default();
    let mut comments: std::collections::BTreeMap<String, Vec<ledger::pb::CommentState>> = Default::default();
    for item in db.iterator_cf(cf(db, CF_SM_STATE)?, IteratorMode::Start) {
        let (key, value) = item.map_err(rocks)?;
        match key.get(..2) {
            Some(b"u/") => snap.users.push(decode(&value, "user")?),
            Some(b"l/") => snap.lots.push(decode(&value, "lot")?),
            Some(b"a/") => snap.auctions.push(decode(&value, "auction")?),
            Some(b"r/") => snap.recorded_bids.push(decode(&value, "recorded bid")?),
            Some(b"c/") => snap.categories.push(decode(&value, "category")?),
            Some(b"k/") => {
                let lot_id = String::from_utf8_lossy(&key[2..]).into_owned();
                contents.insert(lot_id, decode(&value, "lot content")?);
            }
            Some(b"m/") => {
                let rest = &key[2..];
                let sep = rest.iter().position(|&b| b == 0).ok_or_else(|| corrupt("comment key"))?;
                let lot_id = String::from_utf8_lossy(&rest[..sep]).into_owned();
                comments.entry(lot_id).or_default().push(decode(&value, "comment")?);
            }
            Some(b"h/") => {
                let rest = &key[2..];
                let sep = rest.iter().position(|&b| b == 0).ok_or_else(|| corrupt("history key"))?;
                let lot_id = String::from_utf8_lossy(&rest[..sep]).into_owned();
                histories.entry(lot_id).or_default().push(decode(&value, "history line")?);
            }
            _ => return Err(corrupt(format!("unknown state key {:?}", String::from_utf8_lossy(&key)))),
        }
    }
    for lot in &mut snap.lots {
        lot.history = histories.remove(&lot.lot_id).unwrap_or_default();
        if let Some(mut content) = contents.remove(&lot.lot_id) {
            content.comments = comments.remove(&lot.lot_id).unwrap_or_default();
            lot.content = Some(content);
        }
    }
    // Every comment is written with its lot's content record: one without is damage.
    if let Some(lot_id) = comments.keys().chain(contents.keys()).next() {
        return Err(corrupt(format!("content records for lot {lot_id}, which has no record")));
    }
    Ledger::from_snapshot(snap).map_err(|e| corrupt(e.to_string()))
}

impl Shared {
    pub fn ledger(&self) -> Result<RwLockReadGuard<'_, Ledger>, Poisoned> {
        self.ledger.read().map_err(|_| Poisoned("ledger"))
    }

    /// The ledger for a change; the caller bumps `generation` before releasing it.
    fn ledger_mut(&self) -> Result<RwLockWriteGuard<'_, Ledger>, Poisoned> {
        self.ledger.write().map_err(|_| Poisoned("ledger"))
    }

    /// The state digest (BLAKE3 of the canonical encoding), recomputed only when the ledger
    /// changed since the last call.
    pub fn state_digest(&self) -> Result<String, Poisoned> {
        let ledger = self.ledger()?;
        // Read under the ledger's read lock: no change can land between this and the hash.
        let generation = self.generation.load(Ordering::Acquire);
        let mut cached = lock(&self.digest, "digest")?;
        if let Some((g, digest)) = cached.as_ref()
            && *g == generation
        {
            return Ok(digest.clone());
        }
        let digest = ledger.digest().to_string();
        *cached = Some((generation, digest.clone()));
        Ok(digest)
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied_index.borrow()
    }

    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    /// Feed items with index in `(after, after + limit]`, from RocksDB.
    pub fn feed_after(&self, after: u64, limit: usize) -> io::Result<Vec<pb::FeedItem>> {
        let db = &self.db;
        let start = index_key(after.saturating_add(1));
        let mut out = Vec::new();
        for item in db.iterator_cf(cf(db, CF_FEED)?, IteratorMode::From(&start, Direction::Forward)).take(limit) {
            let (_, value) = item.map_err(rocks)?;
            out.push(decode(&value, "feed item")?);
        }
        Ok(out)
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }
}

/// Writes every record the footprint names (or deletes it when gone) into `batch`.
fn persist_footprint(
    batch: &mut WriteBatch,
    state: &rocksdb::ColumnFamily,
    ledger: &Ledger,
    f: &ledger::Footprint,
    history_len_before: &dyn Fn(&str) -> usize,
) {
    for id in &f.users {
        match ledger.user_record(id) {
            Some(r) => batch.put_cf(state, user_key(id), r.encode_to_vec()),
            None => batch.delete_cf(state, user_key(id)),
        }
    }
    for id in &f.lots {
        let Some(record) = ledger.lot_record(id) else {
            batch.delete_cf(state, lot_key(id));
            continue;
        };
        batch.put_cf(state, lot_key(id), record.encode_to_vec());
        let history = ledger.lot(id).map_or(&[][..], |l| l.history.as_slice());
        let before = history_len_before(id);
        let from = if history.len() < before {
            // The history was cleared (the lot was offered again): rewrite it from scratch.
            batch.delete_range_cf(state, history_prefix(id), history_key(id, usize::MAX));
            0
        } else {
            before
        };
        for (seq, line) in history.iter().enumerate().skip(from) {
            batch.put_cf(state, history_key(id, seq), Ledger::history_record(line).encode_to_vec());
        }
    }
    for id in &f.auctions {
        match ledger.auction_record(id) {
            Some(r) => batch.put_cf(state, auction_key(id), r.encode_to_vec()),
            None => batch.delete_cf(state, auction_key(id)),
        }
    }
    if let Some((bidder, bid_id)) = &f.recorded
        && let Some(r) = ledger.recorded_record(bidder, bid_id)
    {
        batch.put_cf(state, recorded_key(bidder, bid_id), r.encode_to_vec());
    }
    for id in &f.categories {
        match ledger.category_record(id) {
            Some(r) => batch.put_cf(state, category_key(id), r.encode_to_vec()),
            None => batch.delete_cf(state, category_key(id)),
        }
    }
    for id in &f.contents {
        match ledger.content_record(id) {
            Some(r) => batch.put_cf(state, content_key(id), r.encode_to_vec()),
            None => batch.delete_cf(state, content_key(id)),
        }
    }
    for (lot_id, comment_id) in &f.comments {
        match ledger.comment_record(lot_id, comment_id) {
            Some(r) => batch.put_cf(state, comment_key(lot_id, comment_id), r.encode_to_vec()),
            None => batch.delete_cf(state, comment_key(lot_id, comment_id)),
        }
    }
}

/// Applies one proposal to the ledger, persisting what changed into `batch`. Returns the
/// outcomes (one per command) and the events.
fn apply_proposal(
    ledger: &mut Ledger,
    batch: &mut WriteBatch,
    state: &rocksdb::ColumnFamily,
    proposal: &pb::Proposal,
    index: u64,
) -> (Vec<ledger::pb::Outcome>, Vec<ledger::pb::Event>) {
    let mut outcomes = Vec::with_capacity(proposal.commands.len());
    let mut events = Vec::new();
    for command in &proposal.commands {
        // The leader's stamp is the only clock; whatever the client sent is ignored.
        let mut command = command.clone();
        command.at_ms = proposal.at_ms;
        command.log_index = index;
        let lots_before: Vec<(String, usize)> = ledger
            .footprint(&command)
            .lots
            .into_iter()
            .map(|id| {
                let len = ledger.lot(&id).map_or(0, |l| l.history.len());
                (id, len)
            })
            .collect();
        let applied = ledger.apply(&command);
        let footprint = ledger.footprint(&command);
        let before = |id: &str| lots_before.iter().find(|(l, _)| l == id).map_or(0, |(_, n)| *n);
        persist_footprint(batch, state, ledger, &footprint, &before);
        outcomes.push(applied.outcome);
        events.extend(applied.events);
    }
    (outcomes, events)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(lock(&self.shared.applied, "applied")?.clone())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let db = self.shared.db.clone();
        let mut batch = WriteBatch::default();
        let mut responses = Vec::new();
        let mut last: Option<(LogId, Option<StoredMembership>)> = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let index = entry.log_id.index;
            let mut outcome = raft::Applied::default();
            let mut membership = None;
            // Every entry gets a feed item (empty for blank and membership entries), so the
            // feed's indices are contiguous and a subscriber can check it missed nothing.
            let mut item = pb::FeedItem { index, at_ms: 0, events: Vec::new() };
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(proposal) => {
                    let mut ledger = self.shared.ledger_mut()?;
                    let state = cf(&db, CF_SM_STATE)?;
                    let (outcomes, events) = apply_proposal(&mut ledger, &mut batch, state, proposal, index);
                    let clock = ledger.last_at_ms();
                    self.shared.generation.fetch_add(1, Ordering::Release);
                    drop(ledger);
                    batch.put_cf(cf(&db, CF_SM_META)?, b"clock", clock.to_be_bytes());
                    item.at_ms = proposal.at_ms;
                    item.events = events;
                    outcome.outcomes = outcomes;
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                    batch.put_cf(
                        cf(&db, CF_SM_META)?,
                        b"membership",
                        raft::stored_membership_to_pb(&stored).encode_to_vec(),
                    );
                    membership = Some(stored);
                }
            }
            batch.put_cf(cf(&db, CF_FEED)?, index_key(index), item.encode_to_vec());
            let prev = last.take().and_then(|(_, m)| m);
            last = Some((entry.log_id, membership.or(prev)));
            if let Some(responder) = responder {
                responses.push((responder, outcome));
            }
        }
        let Some((last_id, membership)) = last else { return Ok(()) };
        batch.put_cf(cf(&db, CF_SM_META)?, b"applied", raft::log_id_to_pb(&last_id).encode_to_vec());
        blocking(move || db.write(batch).map_err(rocks)).await?;
        {
            let mut applied = lock(&self.shared.applied, "applied")?;
            debug_assert!(applied.0.is_none_or(|a| a.index < last_id.index), "applied index must increase");
            applied.0 = Some(last_id);
            if let Some(m) = membership {
                applied.1 = m;
            }
        }
        self.shared.applied_index.send_replace(last_id.index);
        for (responder, outcome) in responses {
            responder.send(outcome);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let data: pb::SnapshotData = decode(&snapshot, "snapshot")?;
        if data.format_version != SNAPSHOT_FORMAT {
            return Err(corrupt(format!(
                "snapshot format {} (this build reads {SNAPSHOT_FORMAT})",
                data.format_version
            )));
        }
        let ledger = Ledger::decode_snapshot(&data.ledger).map_err(|e| corrupt(e.to_string()))?;
        let shared = self.shared.clone();
        let meta = meta.clone();
        let meta_for_disk = meta.clone();
        let ledger = blocking(move || {
            write_snapshot_state(&shared.db, &meta_for_disk, &data, &ledger, &snapshot)?;
            Ok(ledger)
        })
        .await?;
        {
            let mut guard = self.shared.ledger_mut()?;
            *guard = ledger;
            self.shared.generation.fetch_add(1, Ordering::Release);
        }
        *lock(&self.shared.applied, "applied")? = (meta.last_log_id, meta.last_membership.clone());
        self.shared.applied_index.send_replace(meta.last_log_id.map_or(0, |id| id.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<raft::Snapshot>, io::Error> {
        let db = self.shared.db.clone();
        blocking(move || {
            let Some(header) = get_msg::<pb::SnapshotHeader>(&db, CF_SNAPSHOT, b"meta")? else { return Ok(None) };
            let data = db
                .get_cf(cf(&db, CF_SNAPSHOT)?, b"data")
                .map_err(rocks)?
                .ok_or_else(|| corrupt("snapshot data missing"))?;
            let meta = SnapshotMeta {
                last_log_id: raft::opt_log_id_from_pb(&header.last_log_id),
                last_membership: raft::stored_membership_from_pb(&header.last_membership)
                    .map_err(|e| corrupt(e.to_string()))?,
            };
            Ok(Some(raft::Snapshot { meta, snapshot: data }))
        })
        .await
    }
}

/// Replaces the whole state-machine state with a snapshot's, in one synced batch.
fn write_snapshot_state(
    db: &DB,
    meta: &SnapshotMeta,
    data: &pb::SnapshotData,
    ledger: &Ledger,
    raw: &[u8],
) -> io::Result<()> {
    let mut batch = WriteBatch::default();
    let state = cf(db, CF_SM_STATE)?;
    let feed = cf(db, CF_FEED)?;
    let sm_meta = cf(db, CF_SM_META)?;
    batch.delete_range_cf(state, b"".as_slice(), [0xffu8; 1].as_slice());
    batch.delete_range_cf(feed, index_key(0), index_key(u64::MAX));
    let footprint = ledger::Footprint {
        users: ledger.users().map(|u| u.user_id.clone()).collect(),
        lots: ledger.lots().map(|l| l.lot_id.clone()).collect(),
        auctions: Vec::new(),
        recorded: None,
        categories: ledger.categories().map(|c| c.category_id.clone()).collect(),
        contents: ledger
            .lots()
            .filter(|l| l.content != ledger::content::LotContent::default())
            .map(|l| l.lot_id.clone())
            .collect(),
        comments: ledger
            .lots()
            .flat_map(|l| l.content.comments.iter().map(|c| (l.lot_id.clone(), c.comment_id.clone())))
            .collect(),
    };
    persist_footprint(&mut batch, state, ledger, &footprint, &|_| 0);
    let snap = ledger.to_snapshot();
    for a in &snap.auctions {
        batch.put_cf(state, auction_key(&a.auction_id), a.encode_to_vec());
    }
    for r in &snap.recorded_bids {
        batch.put_cf(state, recorded_key(&r.bidder, &r.bid_id), r.encode_to_vec());
    }
    for item in &data.feed {
        batch.put_cf(feed, index_key(item.index), item.encode_to_vec());
    }
    batch.put_cf(sm_meta, b"clock", ledger.last_at_ms().to_be_bytes());
    match &meta.last_log_id {
        Some(id) => batch.put_cf(sm_meta, b"applied", raft::log_id_to_pb(id).encode_to_vec()),
        None => batch.delete_cf(sm_meta, b"applied"),
    }
    batch.put_cf(sm_meta, b"membership", raft::stored_membership_to_pb(&meta.last_membership).encode_to_vec());
    put_snapshot(&mut batch, db, meta, raw)?;
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(rocks)
}

fn put_snapshot(batch: &mut WriteBatch, db: &DB, meta: &SnapshotMeta, raw: &[u8]) -> io::Result<()> {
    let header = pb::SnapshotHeader {
        vote: None,
        last_log_id: raft::opt_log_id_to_pb(&meta.last_log_id),
        last_membership: Some(raft::stored_membership_to_pb(&meta.last_membership)),
    };
    let snap_cf = cf(db, CF_SNAPSHOT)?;
    batch.put_cf(snap_cf, b"meta", header.encode_to_vec());
    batch.put_cf(snap_cf, b"data", raw);
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    /// Captures a copy of the ledger and the applied id under one lock together with a RocksDB
    /// point-in-time view, then encodes the copy and reads the feed up to that id from the view.
    async fn build_snapshot(&mut self) -> Result<raft::Snapshot, io::Error> {
        let shared = self.shared.clone();
        blocking(move || {
            let db = &shared.db;
            let guard = shared.ledger()?;
            let (applied, membership) = lock(&shared.applied, "applied")?.clone();
            // Copy under the lock, encode after it: applying waits for the copy only, not for
            // the canonical encoding too.
            let ledger = guard.clone();
            let view = db.snapshot();
            drop(guard);
            let ledger_bytes = ledger.encode_snapshot();
            drop(ledger);
            let last_index = applied.map_or(0, |id| id.index);
            let mut feed = Vec::new();
            for item in view.iterator_cf(cf(db, CF_FEED)?, IteratorMode::Start) {
                let (key, value) = item.map_err(rocks)?;
                if index_of(&key)? > last_index {
                    break;
                }
                feed.push(decode::<pb::FeedItem>(&value, "feed item")?);
            }
            let data = pb::SnapshotData {
                format_version: SNAPSHOT_FORMAT,
                last_applied: raft::opt_log_id_to_pb(&applied),
                last_membership: Some(raft::stored_membership_to_pb(&membership)),
                ledger: ledger_bytes,
                feed,
            };
            let raw = data.encode_to_vec();
            let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
            let mut batch = WriteBatch::default();
            put_snapshot(&mut batch, db, &meta, &raw)?;
            // Not synced here: openraft purges the log only after this returns, and the purge is
            // a synced write to the same WAL, which makes this earlier record durable first.
            db.write(batch).map_err(rocks)?;
            Ok(raft::Snapshot { meta, snapshot: raw })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

    use super::*;
    use crate::raft::{Entry, LeaderId};

    #[tokio::test]
    async fn a_panic_under_the_ledger_lock_stops_the_replica() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(super::super::open_db(dir.path(), 1).unwrap()).unwrap();
        let shared = sm.shared();
        // A panic while applying: the ledger may be half-changed.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = shared.ledger.write();
            panic!("a bug mid-apply (deliberate, for this test)");
        }));
        assert!(shared.ledger().is_err(), "reads refuse the half-changed state");
        assert!(shared.state_digest().is_err());
        let proposal = pb::Proposal { at_ms: 1_000, commands: Vec::new() };
        let log_id = LogId { leader_id: LeaderId { term: 1, node_id: 1 }, index: 1 };
        let entry = Entry { log_id, payload: EntryPayload::Normal(proposal) };
        let entries = futures::stream::iter([Ok::<_, io::Error>((entry, None))]);
        let applied = sm.apply(entries).await;
        assert!(applied.is_err_and(|e| e.to_string().contains("poisoned")), "applying stops instead of carrying on");
        assert_eq!(shared.applied_index(), 0, "nothing was applied on top");
    }
}
