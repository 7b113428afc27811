//! The ledger state machine: the ledger lives in memory, applies committed entries, and is
//! persisted only as snapshot files. After a restart the newest snapshot is loaded and openraft
//! re-applies the committed log after it, so the only per-entry write is the entry's feed item
//! (to the feed's segment files, `feed`).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use prost::Message;
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};
use tokio::sync::watch;

use crate::pb;
use crate::raft::{self, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use ledger::Ledger;

use super::db::{
    CF_FEED, CF_SM_META, SNAPSHOT_FORMAT, SNAPSHOT_FORMAT_V1, blocking, cf, corrupt, decode, index_key, index_of, rocks,
};
use super::feed::{self, FeedFiles};
use super::legacy;
use super::snapshots::SnapshotDir;

/// State shared between the state machine (owned by openraft) and the node's read paths.
pub struct Shared {
    db: Arc<DB>,
    snapshots: SnapshotDir,
    /// The feed's items: segment files and a ring of the newest. Its start, kept run and
    /// trimmed floor below are persisted in RocksDB (`sm_meta`), synced, each after the items
    /// it names are.
    feed: FeedFiles,
    /// Held by `apply` for a whole batch and by `install_snapshot` for a whole install. The
    /// ledger changes entry by entry but `applied` and the feed items only at the batch's end,
    /// so a snapshot is cut only between batches: never a ledger that is ahead of (or behind)
    /// the index it is filed under.
    apply_gate: tokio::sync::Mutex<()>,
    ledger: RwLock<Ledger>,
    applied: Mutex<(Option<LogId>, StoredMembership)>,
    /// The last applied log index, for feed subscribers and read-index waits.
    applied_index: watch::Sender<u64>,
    /// The feed holds every item after this index (0: all). It moves up when a snapshot from
    /// the leader is installed (snapshots carry no feed, so the items it covers are not here)
    /// and when retention drops the oldest items (`trim_feed`). Persisted under
    /// `FEED_START_KEY`.
    feed_start: AtomicU64,
    /// Items `(from, to]` held below `feed_start` after an install: the run the node had
    /// applied itself before it fell behind (`from == to`: none). A backfill then copies only
    /// the items between it and the start. Changed under the gate; persisted under
    /// `FEED_KEPT_KEY`.
    feed_kept: (AtomicU64, AtomicU64),
    /// The highest start retention has raised the feed to (`trim_feed`): the items at or
    /// below it were dropped on purpose, so a backfill copies nothing below it. Persisted
    /// under `FEED_TRIMMED_KEY`.
    feed_trimmed: AtomicU64,
    /// Bumped by every snapshot install and every trim, under the gate: a backfill started
    /// before one must not write or lower anything after it, even if the start came back to
    /// the same value.
    installs: AtomicU64,
    /// The index of the newest snapshot file, built here or installed from the leader: where
    /// the node's snapshot schedule counts from.
    snapshot_index: AtomicU64,
    /// Bumped under the ledger's write lock whenever the ledger changes: the key of `digest`.
    generation: AtomicU64,
    /// The state digest of one generation: hashing the whole state is not redone for every
    /// metrics call, only after the ledger changed.
    digest: Mutex<Option<(u64, String)>>,
    /// UNSAFE (jepsen only): forget each bid's recorded outcome before applying it, so a
    /// retry is applied again. Every replica must run with the same setting.
    forget_bid_ids: AtomicBool,
    /// Snapshot builds copy the ledger at low priority: on a follower, whose applies (held up
    /// by the copy) no answer waits for. Kept by the node's snapshot schedule, which looks at
    /// the node's role after every applied batch (an election's blank entry included), and
    /// read when a build starts: a follower elected during its own niced copy (tens of ms)
    /// finishes that copy at low priority.
    copy_niced: AtomicBool,
}

/// What a node's feed holds (`Shared::feed_holdings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedHoldings {
    /// Every item after this index.
    pub start: u64,
    /// And the items `(from, to]` below the start, if any.
    pub kept: Option<(u64, u64)>,
    /// The install count these belong to: a copy planned from them writes nothing after a
    /// later install.
    pub epoch: u64,
    /// Retention dropped every item at or below this index: a backfill goes no lower.
    pub trimmed: u64,
}

/// How much of the feed a node keeps (`--feed-retain-bytes`, `--feed-retain-secs`); 0 turns a
/// bound off. The oldest items go first, and only items already applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedRetention {
    /// Keep the newest items up to this many bytes of segment files. The space is freed a
    /// whole file at a time, once every item in it is dropped, so a node keeps at least the
    /// file being written.
    pub max_bytes: u64,
    /// Keep the items stamped within this many seconds of now (the leader's time of the
    /// entry against this node's wall clock).
    pub max_age_secs: u64,
}

impl FeedRetention {
    pub fn is_off(&self) -> bool {
        self.max_bytes == 0 && self.max_age_secs == 0
    }
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

/// The ledger state machine. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

/// A panic while the lock was held may have left its data half-changed: an error, so the
/// replica stops (openraft halts on a state-machine error) rather than diverge.
fn lock<'a, T>(m: &'a Mutex<T>, what: &'static str) -> Result<MutexGuard<'a, T>, Poisoned> {
    m.lock().map_err(|_| Poisoned(what))
}

const FEED_START_KEY: &[u8] = b"feed_start";
/// The feed start it belongs to, then `from` and `to` of `Shared::feed_kept` (8 bytes each,
/// big-endian); absent: none. A value whose start is not the persisted start (an older
/// binary moved the start and left the key) is ignored.
const FEED_KEPT_KEY: &[u8] = b"feed_kept";
/// `Shared::feed_trimmed` (8 bytes, big-endian); absent: 0.
const FEED_TRIMMED_KEY: &[u8] = b"feed_trimmed";
/// Items an age scan reads at most per call: a first trim of a long feed goes in steps.
const RETAIN_SCAN_ITEMS_MAX: usize = 100_000;

/// A fixed-size value of `sm_meta` as big-endian u64 words; `None` when absent.
fn read_words<const N: usize>(db: &DB, key: &[u8], what: &str) -> io::Result<Option<[u64; N]>> {
    let Some(raw) = db.get_cf(cf(db, CF_SM_META)?, key).map_err(rocks)? else { return Ok(None) };
    if raw.len() != N * 8 {
        return Err(corrupt(format!("{what} is {} bytes, not {}", raw.len(), N * 8)));
    }
    Ok(Some(std::array::from_fn(|i| u64::from_be_bytes(std::array::from_fn(|j| raw[i * 8 + j])))))
}

/// Moves the feed items of a data directory written before the feed had files (they were in
/// RocksDB's `feed` column family) into files, once: synced there, then deleted from RocksDB.
/// A crash midway leaves the column family whole, and the next open moves it again.
fn import_feed_column(db: &DB, feed: &FeedFiles) -> io::Result<()> {
    let column = cf(db, CF_FEED)?;
    match db.iterator_cf(column, IteratorMode::Start).next() {
        None => return Ok(()),
        Some(first) => drop(first.map_err(rocks)?),
    }
    feed.clear()?;
    let (mut chunk, mut moved) = (Vec::new(), 0usize);
    for entry in db.iterator_cf(column, IteratorMode::Start) {
        let (key, value) = entry.map_err(rocks)?;
        let item: pb::FeedItem = decode(&value, "feed item")?;
        if item.index != index_of(&key)? {
            return Err(corrupt(format!("feed item {} is filed under {}", item.index, index_of(&key)?)));
        }
        chunk.push(item);
        if chunk.len() == 4_096 {
            moved += chunk.len();
            feed.put_copied(&std::mem::take(&mut chunk), u64::MAX)?;
        }
    }
    moved += chunk.len();
    feed.put_copied(&chunk, u64::MAX)?;
    feed.sync()?;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(column, index_key(0), index_key(u64::MAX));
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync).map_err(rocks)?;
    tracing::info!(items = moved, "feed items moved from RocksDB into the feed's files");
    Ok(())
}

/// A snapshot file's contents, checked: its metadata, its data and the ledger it holds.
fn read_snapshot(raw: &[u8]) -> io::Result<(SnapshotMeta, pb::SnapshotData, Ledger)> {
    let data: pb::SnapshotData = decode(raw, "snapshot")?;
    if data.format_version != SNAPSHOT_FORMAT && data.format_version != SNAPSHOT_FORMAT_V1 {
        return Err(corrupt(format!(
            "snapshot format {} (this build reads {SNAPSHOT_FORMAT_V1} and {SNAPSHOT_FORMAT})",
            data.format_version
        )));
    }
    let meta = SnapshotMeta {
        last_log_id: raft::opt_log_id_from_pb(&data.last_applied),
        last_membership: raft::stored_membership_from_pb(&data.last_membership).map_err(|e| corrupt(e.to_string()))?,
    };
    let ledger = Ledger::decode_snapshot(&data.ledger).map_err(|e| corrupt(e.to_string()))?;
    Ok((meta, data, ledger))
}

impl StateMachine {
    /// Loads the state machine from the newest snapshot in `dir/snapshots` (empty without one)
    /// and opens the feed's files in `dir/feed`. openraft then re-applies the committed log
    /// after the snapshot.
    pub fn open(db: Arc<DB>, dir: &Path) -> io::Result<StateMachine> {
        StateMachine::open_sized(db, dir, feed::SEGMENT_BYTES)
    }

    /// As [`StateMachine::open`], beginning a new feed file every `feed_segment_bytes`.
    pub fn open_sized(db: Arc<DB>, dir: &Path, feed_segment_bytes: u64) -> io::Result<StateMachine> {
        let snapshots = SnapshotDir::open(&dir.join("snapshots"))?;
        legacy::migrate(&db, &snapshots)?;
        let (applied, membership, ledger) = match snapshots.latest()? {
            Some(raw) => {
                let (meta, _, ledger) = read_snapshot(&raw)?;
                (meta.last_log_id, meta.last_membership, ledger)
            }
            None => (None, StoredMembership::default(), Ledger::new()),
        };
        let [feed_start] = read_words(&db, FEED_START_KEY, "feed start")?.unwrap_or([0]);
        let feed_kept = match read_words(&db, FEED_KEPT_KEY, "feed kept")? {
            Some([start, from, to]) if start == feed_start && from < to && to < start => (from, to),
            _ => (0, 0),
        };
        let [feed_trimmed] = read_words(&db, FEED_TRIMMED_KEY, "feed trimmed")?.unwrap_or([0]);
        let feed_trimmed = feed_trimmed.min(feed_start);
        let feed = FeedFiles::open(&dir.join("feed"), feed_segment_bytes)?;
        import_feed_column(&db, &feed)?;
        let kept = (feed_kept.0 < feed_kept.1).then_some(feed_kept);
        // A kept run the files do not hold whole is forgotten: the backfill copies it again.
        let held = feed.reconcile(feed_start, kept, feed_trimmed, applied.map_or(0, |id| id.index))?;
        if kept.is_some() && held.is_none() {
            tracing::warn!(?kept, "the feed's files do not hold its kept run whole; it is copied from a peer again");
            db.delete_cf(cf(&db, CF_SM_META)?, FEED_KEPT_KEY).map_err(rocks)?;
        }
        let feed_kept = held.unwrap_or((0, 0));
        // A kill may have left the files' last writes unsynced: synced here, where nothing
        // waits, rather than by the first sync under the apply gate.
        feed.sync()?;
        let (applied_index, _) = watch::channel(applied.map_or(0, |id| id.index));
        let shared = Shared {
            db,
            snapshots,
            feed,
            apply_gate: tokio::sync::Mutex::new(()),
            ledger: RwLock::new(ledger),
            applied: Mutex::new((applied, membership)),
            applied_index,
            feed_start: AtomicU64::new(feed_start),
            feed_kept: (AtomicU64::new(feed_kept.0), AtomicU64::new(feed_kept.1)),
            feed_trimmed: AtomicU64::new(feed_trimmed),
            installs: AtomicU64::new(0),
            snapshot_index: AtomicU64::new(applied.map_or(0, |id| id.index)),
            generation: AtomicU64::new(0),
            digest: Mutex::new(None),
            forget_bid_ids: AtomicBool::new(false),
            copy_niced: AtomicBool::new(false),
        };
        Ok(StateMachine { shared: Arc::new(shared) })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
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

    /// Whether snapshot builds copy the ledger at low priority (see `copy_niced`).
    pub fn set_snapshot_copy_niced(&self, on: bool) {
        self.copy_niced.store(on, Ordering::Relaxed);
    }

    /// UNSAFE (jepsen only): switches exactly-once bids off (see `forget_bid_ids`).
    pub fn set_forget_bid_ids(&self, on: bool) {
        self.forget_bid_ids.store(on, Ordering::Relaxed);
    }

    /// The index of the newest snapshot this node holds (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index.load(Ordering::Acquire)
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied_index.borrow()
    }

    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_index.subscribe()
    }

    /// This node's feed holds every item after this index.
    pub fn feed_start(&self) -> u64 {
        self.feed_start.load(Ordering::Acquire)
    }

    /// What the feed holds, read at one instant: for a backfill to plan from and hand back.
    pub async fn feed_holdings(&self) -> FeedHoldings {
        let _gate = self.apply_gate.lock().await;
        let (from, to) = (self.feed_kept.0.load(Ordering::Acquire), self.feed_kept.1.load(Ordering::Acquire));
        FeedHoldings {
            start: self.feed_start(),
            kept: (from < to).then_some((from, to)),
            epoch: self.installs.load(Ordering::Acquire),
            trimmed: self.feed_trimmed.load(Ordering::Acquire),
        }
    }

    /// Where `rule` would start the feed now (`now_ms`, wall clock): the highest index whose
    /// item and every item before it fall outside the rule, or `holdings.start` if none does.
    /// Reads only; `trim_feed` then drops the items.
    pub fn retention_floor(&self, rule: &FeedRetention, holdings: &FeedHoldings, now_ms: i64) -> io::Result<u64> {
        let (start, applied) = (holdings.start, self.applied_index());
        if applied <= start {
            return Ok(start);
        }
        let mut floor = start;
        if rule.max_bytes > 0 {
            // The bytes held after `f` fall as `f` grows: the smallest `f` within budget.
            let (mut lo, mut hi) = (start, applied);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.feed.bytes_after(mid)? <= rule.max_bytes { hi = mid } else { lo = mid + 1 }
            }
            floor = floor.max(lo);
        }
        if rule.max_age_secs > 0 {
            let cutoff =
                now_ms.saturating_sub(i64::try_from(rule.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX));
            let (mut scanned, mut cursor) = (0, floor);
            'scan: while scanned < RETAIN_SCAN_ITEMS_MAX {
                let items = self.feed.read_after(cursor, (RETAIN_SCAN_ITEMS_MAX - scanned).min(4_096))?;
                let Some(last) = items.last() else { break };
                cursor = last.index;
                scanned += items.len();
                for item in items {
                    if item.index > applied || item.at_ms >= cutoff {
                        break 'scan;
                    }
                    // Raft's own entries carry no time (0): they go only with an old stamped
                    // item after them, never on their own (a new leader's first entry after a
                    // quiet spell is not old).
                    if item.at_ms != 0 {
                        floor = item.index;
                    }
                }
            }
        }
        Ok(floor.min(applied))
    }

    /// Raises the feed's start to `floor`, dropping every item at or below it (retention), and
    /// removes the files wholly below it. False, and nothing changed, when the start moved or a snapshot
    /// was installed since `holdings` was read, or `floor` is not above the start.
    pub async fn trim_feed(self: &Arc<Self>, holdings: FeedHoldings, floor: u64) -> io::Result<bool> {
        {
            let _gate = self.apply_gate.lock().await;
            if self.installs.load(Ordering::Acquire) != holdings.epoch
                || self.feed_start() != holdings.start
                || floor <= holdings.start
                || floor > self.applied_index()
            {
                return Ok(false);
            }
            let shared = self.clone();
            blocking(move || {
                let db = &shared.db;
                let meta = cf(db, CF_SM_META)?;
                let mut batch = WriteBatch::default();
                batch.put_cf(meta, FEED_START_KEY, floor.to_be_bytes());
                batch.put_cf(meta, FEED_TRIMMED_KEY, floor.to_be_bytes());
                batch.delete_cf(meta, FEED_KEPT_KEY);
                // Synced before any file goes: a start on disk never claims a removed item.
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                db.write_opt(batch, &sync).map_err(rocks)
            })
            .await?;
            // Published as soon as it is persisted, before any file goes: a backfill planned
            // before this writes nothing more, and a reader below the floor is refused with it.
            self.installs.fetch_add(1, Ordering::AcqRel);
            self.feed_kept.0.store(0, Ordering::Release);
            self.feed_kept.1.store(0, Ordering::Release);
            self.feed_trimmed.store(floor, Ordering::Release);
            self.feed_start.store(floor, Ordering::Release);
            // From 0: a kept run and any copy left below the start go too. A file that cannot
            // be removed now is removed by the next open (it is below the persisted start).
            let shared = self.clone();
            match blocking(move || shared.feed.trim(floor)).await {
                Ok(freed) => tracing::debug!(floor, freed, "feed files below the retention floor removed"),
                Err(e) => {
                    tracing::warn!(error = %e, floor, "some feed files below the retention floor were not removed")
                }
            }
        }
        Ok(true)
    }

    /// Writes feed items copied from a peer, all at or below the feed's start: the items of
    /// committed entries, the same on every replica. Unsynced; `lower_feed_start` syncs them.
    /// False, and nothing written, once a snapshot install has happened since `epoch`.
    pub fn put_feed_items(&self, epoch: u64, items: &[pb::FeedItem]) -> io::Result<bool> {
        let _gate = self.apply_gate.blocking_lock();
        if self.installs.load(Ordering::Acquire) != epoch {
            return Ok(false);
        }
        self.feed.put_copied(items, self.feed_start())?;
        Ok(true)
    }

    /// Lowers the feed's start from `from` to `to` once the items between are written (by
    /// `put_feed_items` with the same `epoch`): they are synced first, then the new start.
    /// False, and nothing changed, when a snapshot install happened since `epoch` (checked
    /// under the gate an install holds).
    pub async fn lower_feed_start(self: &Arc<Self>, epoch: u64, from: u64, to: u64) -> io::Result<bool> {
        let _gate = self.apply_gate.lock().await;
        if self.installs.load(Ordering::Acquire) != epoch
            || self.feed_start() != from
            || to >= from
            || to < self.feed_trimmed.load(Ordering::Acquire)
        {
            return Ok(false);
        }
        let shared = self.clone();
        blocking(move || {
            shared.feed.sync()?;
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            let meta = cf(&shared.db, CF_SM_META)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, FEED_START_KEY, to.to_be_bytes());
            // Whatever run was kept is now inside the whole feed from `to`.
            batch.delete_cf(meta, FEED_KEPT_KEY);
            shared.db.write_opt(batch, &sync).map_err(rocks)?;
            shared.feed.copy_joined()
        })
        .await?;
        self.feed_kept.0.store(0, Ordering::Release);
        self.feed_kept.1.store(0, Ordering::Release);
        self.feed_start.store(to, Ordering::Release);
        Ok(true)
    }

    /// The ledger's canonical encoding at the applied index, that index and the ledger's time:
    /// copied between applied batches (like a snapshot), encoded off the gate.
    pub async fn export_state(&self) -> io::Result<(u64, i64, Vec<u8>)> {
        let (index, ledger) = {
            let _gate = self.apply_gate.lock().await;
            (self.applied_index(), self.ledger()?.clone())
        };
        let at_ms = ledger.last_at_ms();
        // Niced like a snapshot's encoding: a client asking for exports must not take the
        // cores from Raft.
        blocking(move || niced("export encoding", || ledger.encode_snapshot())).await.map(|bytes| (index, at_ms, bytes))
    }

    /// Up to `limit` feed items after `after`, in index order: from the ring of recent items
    /// or the feed's files. Blocks on file reads.
    pub fn feed_after(&self, after: u64, limit: usize) -> io::Result<Vec<pb::FeedItem>> {
        self.feed.read_after(after, limit)
    }

    /// The bytes of the feed's files holding the items after `index` (at or above the start).
    /// Blocks on file reads.
    pub fn feed_bytes_after(&self, index: u64) -> io::Result<u64> {
        self.feed.bytes_after(index)
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }
}

/// Applies one proposal to the ledger. Returns the answers (one per command) and the events,
/// both compact: only the leader turns answers into messages, and events go straight to bytes.
/// The proposal is the log's own (shared) copy: commands are stamped as they are applied.
fn apply_proposal(
    ledger: &mut Ledger,
    proposal: &pb::Proposal,
    index: u64,
    forget_bid_ids: bool,
) -> (Vec<ledger::Answer>, Vec<ledger::Event>) {
    let mut answers = Vec::with_capacity(proposal.commands.len());
    let mut events = Vec::with_capacity(proposal.commands.len() * 2);
    for command in &proposal.commands {
        if forget_bid_ids && let Some(ledger::pb::command::Body::PlaceBid(bid)) = &command.body {
            ledger.forget_recorded_bid(&command.actor, &bid.bid_id);
        }
        // The leader's stamp is the only clock; whatever the client sent is ignored.
        answers.push(ledger.apply_compact(command, proposal.at_ms, index, &mut events));
    }
    (answers, events)
}

/// A `pb::FeedItem`'s encoding, written from the compact events: byte for byte what
/// `pb::FeedItem { index, at_ms, events }.encode_to_vec()` gives for the same events.
fn encode_feed_item(index: u64, at_ms: i64, events: &[ledger::Event]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, int64, key_len, uint64};
    // Field numbers of `FeedItem` (node.proto).
    const INDEX: u32 = 1;
    const AT_MS: u32 = 2;
    const EVENTS: u32 = 3;
    let fields = |len: usize| key_len(EVENTS) + encoded_len_varint(len as u64) + len;
    let len = if index == 0 { 0 } else { uint64::encoded_len(INDEX, &index) }
        + if at_ms == 0 { 0 } else { int64::encoded_len(AT_MS, &at_ms) }
        + events.iter().map(|e| fields(e.encoded_len())).sum::<usize>();
    let mut buf = Vec::with_capacity(len);
    if index != 0 {
        uint64::encode(INDEX, &index, &mut buf);
    }
    if at_ms != 0 {
        int64::encode(AT_MS, &at_ms, &mut buf);
    }
    for event in events {
        encode_key(EVENTS, WireType::LengthDelimited, &mut buf);
        encode_varint(event.encoded_len() as u64, &mut buf);
        event.encode(&mut buf);
    }
    buf
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
        let _gate = self.shared.apply_gate.lock().await;
        let forget = self.shared.forget_bid_ids.load(Ordering::Relaxed);
        let mut items = Vec::new();
        let mut responses = Vec::new();
        let mut last: Option<(LogId, Option<StoredMembership>)> = None;
        // Indexes only go up, and a stream has no gaps: a repeated or skipped entry would make
        // this replica's ledger differ from the others' for good, so stop instead. (Across
        // calls openraft may leave gaps only in its own storage suite.)
        let applied = lock(&self.shared.applied, "applied")?.0.map(|id| id.index);
        let mut previous: Option<u64> = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let index = entry.log_id.index;
            let in_order = match previous {
                Some(p) => index == p + 1,
                None => applied.is_none_or(|a| index > a),
            };
            if !in_order {
                return Err(corrupt(format!(
                    "apply was given entry {index} after {:?} (applied: {applied:?})",
                    previous
                )));
            }
            previous = Some(index);
            let mut outcome = raft::Applied::default();
            let mut membership = None;
            // Every entry gets a feed item (empty for blank and membership entries), so the
            // feed's indices are contiguous and a subscriber can check it missed nothing.
            let (mut at_ms, mut events) = (0, Vec::new());
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(payload) => {
                    let proposal = payload.proposal();
                    at_ms = proposal.at_ms;
                    let mut ledger = self.shared.ledger_mut()?;
                    let answers;
                    (answers, events) = apply_proposal(&mut ledger, proposal, index, forget);
                    self.shared.generation.fetch_add(1, Ordering::Release);
                    drop(ledger);
                    if responder.is_some() {
                        outcome.outcomes = answers.into_iter().map(ledger::Answer::into_pb).collect();
                    }
                }
                EntryPayload::Membership(m) => membership = Some(StoredMembership::new(Some(entry.log_id), m)),
            }
            items.push((index, encode_feed_item(index, at_ms, &events)));
            let prev = last.take().and_then(|(_, m)| m);
            last = Some((entry.log_id, membership.or(prev)));
            if let Some(responder) = responder {
                responses.push((responder, outcome));
            }
        }
        let Some((last_id, membership)) = last else { return Ok(()) };
        // Not synced: the fsync'd log re-applies anything a crash loses after the newest
        // snapshot, whose build syncs the feed first.
        let shared = self.shared.clone();
        blocking(move || shared.feed.append(items)).await?;
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
        let (_, data, ledger) = read_snapshot(&snapshot)?;
        // Like a batch of entries: a snapshot build must see the feed, the ledger and the
        // applied id all from before this install or all from after it.
        let _gate = self.shared.apply_gate.lock().await;
        let shared = self.shared.clone();
        let index = meta.last_log_id.map_or(0, |id| id.index);
        // Under the gate: what this node applied itself, all of it in its feed from its start.
        let (old_start, old_applied) = (self.shared.feed_start(), self.shared.applied_index());
        blocking(move || {
            // The feed first: a crash before the file is in place restarts from the older
            // snapshot and re-applies its log; the start persisted here only errs high (items
            // below it are never served) until the backfill lowers it. A format-1 snapshot
            // still carries the whole feed; a newer one none, so the items up to its index are
            // not held here until they are copied from a peer. The items this node applied
            // itself, (old start, old applied], stay: committed entries, the same on every
            // replica, so a backfill copies only the gap between them and the snapshot. Items
            // at or below the old start (an unfinished copy's) go.
            let db = &shared.db;
            let meta_cf = cf(db, CF_SM_META)?;
            let v1 = data.format_version == SNAPSHOT_FORMAT_V1;
            let kept = (!v1 && old_start < old_applied && old_applied < index).then_some((old_start, old_applied));
            // Durable before the record below names them.
            shared.feed.sync()?;
            let mut batch = WriteBatch::default();
            match kept {
                Some((from, to)) => {
                    batch.put_cf(meta_cf, FEED_KEPT_KEY, [index, from, to].map(u64::to_be_bytes).concat())
                }
                None => batch.delete_cf(meta_cf, FEED_KEPT_KEY),
            }
            let start = match v1 {
                true => data.feed.first().map_or(index, |item| item.index.saturating_sub(1)),
                false => index,
            };
            if v1 {
                // The whole feed again, from the snapshot: nothing is below the start to keep a
                // backfill from. Written (items held already are the same, and skipped) and
                // synced before the start goes down to it; nothing is removed before that.
                shared.feed.put_copied(&data.feed, index)?;
                shared.feed.sync()?;
                batch.delete_cf(meta_cf, FEED_TRIMMED_KEY);
            }
            batch.put_cf(meta_cf, FEED_START_KEY, start.to_be_bytes());
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.write_opt(batch, &sync).map_err(rocks)?;
            let (keep, trimmed) = match v1 {
                true => (Some((start, index)), 0),
                false => (kept, shared.feed_trimmed.load(Ordering::Acquire)),
            };
            shared.feed.restart_main(index, keep, trimmed)?;
            // The removals and cuts durable too: a power loss that brought a removed file back
            // beside the new run's files would cost a cut on the next open.
            shared.feed.sync()?;
            // Subscribers reading from below the new start stop at their next read.
            shared.installs.fetch_add(1, Ordering::AcqRel);
            let (from, to) = kept.unwrap_or((0, 0));
            shared.feed_kept.0.store(from, Ordering::Release);
            shared.feed_kept.1.store(to, Ordering::Release);
            if v1 {
                shared.feed_trimmed.store(0, Ordering::Release);
            }
            shared.feed_start.store(start, Ordering::Release);
            shared.snapshots.write(index, &snapshot)?;
            shared.snapshot_index.fetch_max(index, Ordering::AcqRel);
            Ok(())
        })
        .await?;
        {
            let mut guard = self.shared.ledger_mut()?;
            *guard = ledger;
            self.shared.generation.fetch_add(1, Ordering::Release);
        }
        *lock(&self.shared.applied, "applied")? = (meta.last_log_id, meta.last_membership.clone());
        self.shared.applied_index.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<raft::Snapshot>, io::Error> {
        let shared = self.shared.clone();
        blocking(move || {
            let Some(raw) = shared.snapshots.latest()? else { return Ok(None) };
            let (meta, _, _) = read_snapshot(&raw)?;
            Ok(Some(raft::Snapshot { meta, snapshot: raw }))
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    /// Captures a copy of the ledger and the applied id under one lock (at low CPU priority on a
    /// follower: `copy_niced`), then encodes the copy on a thread of low CPU priority and
    /// writes the file while applying goes on: encoding takes hundreds of ms of CPU, and on
    /// shared cores it must not delay the log's appends and applies. The feed is not in it: its
    /// items stay in the feed's files (made durable first), so a snapshot's size follows the
    /// state, not the history.
    async fn build_snapshot(&mut self) -> Result<raft::Snapshot, io::Error> {
        let shared = self.shared.clone();
        blocking(move || {
            let started = std::time::Instant::now();
            // Copy under the lock, encode after it: applying waits for the copy only, not for
            // the canonical encoding too.
            let copy = || -> io::Result<_> {
                let _gate = shared.apply_gate.blocking_lock();
                let ledger = shared.ledger()?.clone();
                let (applied, membership) = lock(&shared.applied, "applied")?.clone();
                Ok((ledger, applied, membership))
            };
            let copy_niced = shared.copy_niced.load(Ordering::Relaxed);
            let (ledger, applied, membership) = if copy_niced { niced("snapshot copy", copy)?? } else { copy()? };
            let copied = started.elapsed();
            let last_index = applied.map_or(0, |id| id.index);
            let meta = SnapshotMeta { last_log_id: applied, last_membership: membership.clone() };
            // The encoding runs at low priority, not the syncs: the WAL sync and the file's fsync below
            // hold up the log's own synced appends (RocksDB queues a synced write behind a WAL
            // sync), so they must not wait for a thread the scheduler puts last.
            let encode = || {
                let data = pb::SnapshotData {
                    format_version: SNAPSHOT_FORMAT,
                    last_applied: raft::opt_log_id_to_pb(&applied),
                    last_membership: Some(raft::stored_membership_to_pb(&membership)),
                    ledger: ledger.encode_snapshot(),
                    feed: Vec::new(),
                };
                data.encode_to_vec()
            };
            let raw = niced("snapshot encoding", encode)?;
            drop(ledger);
            let encoded = started.elapsed();
            // The feed items up to here were written unsynced. Sync them before the file: after
            // a power loss, only entries past the snapshot are re-applied.
            shared.feed.sync()?;
            // Durable before openraft may purge the log it covers.
            shared.snapshots.write(last_index, &raw)?;
            shared.snapshot_index.fetch_max(last_index, Ordering::AcqRel);
            tracing::info!(
                index = last_index,
                bytes = raw.len(),
                copy_ms = copied.as_secs_f64() * 1e3,
                copy_niced,
                encode_ms = (encoded - copied).as_secs_f64() * 1e3,
                write_ms = (started.elapsed() - encoded).as_secs_f64() * 1e3,
                "snapshot built"
            );
            Ok(raft::Snapshot { meta, snapshot: raw })
        })
        .await
    }
}

/// Runs `work` on a thread of its own at nice 10 and waits for it: a long encoding then
/// yields the cores to the replica's other threads. Without a thread to be had (a thread
/// limit), it runs here at normal priority rather than fail.
fn niced<T: Send>(name: &str, work: impl Fn() -> T + Sync) -> io::Result<T> {
    std::thread::scope(|scope| {
        let on_thread = || {
            lower_this_threads_priority();
            work()
        };
        match std::thread::Builder::new().name(name.into()).spawn_scoped(scope, on_thread) {
            Ok(thread) => thread.join().map_err(|_| io::Error::other(format!("the {name} thread panicked"))),
            Err(e) => {
                tracing::warn!(error = %e, "no thread for the {name}; running it at normal priority");
                Ok(work())
            }
        }
    })
}

/// Nice 10 for the calling thread (Linux keeps a nice value per thread): it then yields the
/// cores to the replica's other threads whenever they want them. Best effort: raising one's
/// own nice value needs no privilege, and if it fails the encoding runs at the process's.
fn lower_this_threads_priority() {
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10) {
        tracing::debug!(error = %e, "could not lower the snapshot thread's priority");
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
        let mut sm = StateMachine::open(super::super::open_db(dir.path(), 1).unwrap(), dir.path()).unwrap();
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
        let entry = Entry { log_id, payload: EntryPayload::Normal(raft::Payload::new(proposal)) };
        let entries = futures::stream::iter([Ok::<_, io::Error>((entry, None))]);
        let applied = sm.apply(entries).await;
        assert!(applied.is_err_and(|e| e.to_string().contains("poisoned")), "applying stops instead of carrying on");
        assert_eq!(shared.applied_index(), 0, "nothing was applied on top");
    }

    /// Users, a lot, competing bids (recorded, outbid, defended by proxy, extended) and a
    /// rejection: the feed item written from compact events is the protobuf encoding itself.
    #[test]
    fn feed_items_from_compact_events_are_byte_identical_to_protobuf() {
        use ledger::pb::{self as lp, command::Body};
        let t0 = 1_800_000_000_000;
        let command =
            |actor: &str, body| lp::Command { at_ms: t0, actor: actor.into(), body: Some(body), log_index: 0 };
        let user = |id: &str, role: lp::Role| {
            let user =
                lp::CreateUser { user_id: id.into(), username: id.into(), role: role as i32, password_hash: vec![] };
            command("", Body::CreateUser(user))
        };
        let bid = |bidder: &str, bid_id: &str, max_amount| {
            command(bidder, Body::PlaceBid(lp::PlaceBid { lot_id: "L".into(), bid_id: bid_id.into(), max_amount }))
        };
        let lot = lp::CreateLot {
            lot_id: "L".into(),
            title: "A lot".into(),
            currency: "USD".into(),
            start_price: 10_000,
            reserve_price: Some(30_000),
            starts_at_ms: t0,
            ends_at_ms: t0 + 30_000,
            soft_close_secs: 60,
            seller_id: "sam".into(),
            ..lp::CreateLot::default()
        };
        let mut commands = vec![user("admin", lp::Role::Admin), user("sam", lp::Role::User)];
        commands.extend(["ana", "ben"].map(|b| user(b, lp::Role::User)));
        commands.push(command("admin", Body::CreateLot(lot)));
        for status in [
            lp::LotStatus::UnderReview,
            lp::LotStatus::Authenticated,
            lp::LotStatus::ReadyForAuction,
            lp::LotStatus::InAuction,
        ] {
            commands.push(command(
                "admin",
                Body::SetLotStatus(lp::SetLotStatus { lot_id: "L".into(), status: status as i32 }),
            ));
        }
        commands.extend([
            bid("ana", "a1", 20_000),
            bid("ben", "b1", 50_000),
            bid("ana", "a2", 40_000),
            bid("ana", "a3", 5),
        ]);
        let mut ledger = Ledger::new();
        let mut kinds = std::collections::HashSet::new();
        for (i, mut cmd) in commands.into_iter().enumerate() {
            let index = i as u64;
            // As the proposal stamps it.
            (cmd.at_ms, cmd.log_index) = (t0 + index as i64, index);
            let expected = ledger.clone().apply(&cmd);
            let proposal = pb::Proposal { at_ms: t0 + index as i64, commands: vec![cmd] };
            let (_, events) = apply_proposal(&mut ledger, &proposal, index, false);
            let at_ms = if index.is_multiple_of(3) { 0 } else { t0 };
            let item = pb::FeedItem { index, at_ms, events: events.iter().map(ledger::Event::to_pb).collect() };
            assert_eq!(item.events, expected.events);
            assert_eq!(encode_feed_item(index, at_ms, &events), item.encode_to_vec(), "entry {index}");
            kinds.extend(item.events.iter().filter_map(|e| e.kind.as_ref()).map(std::mem::discriminant));
        }
        assert!(kinds.len() >= 6, "the sequence covers the compact kinds and others: {kinds:?}");
    }
}
