//! Data directories of format 1, which kept every ledger entity as its own record, rewritten
//! once to format 2: the same state as one snapshot file.

use std::collections::BTreeMap;
use std::io;

use prost::Message;
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};
use tracing::info;

use crate::pb;
use ledger::Ledger;

use super::db::{
    CF_FEED, CF_SM_META, CF_SM_STATE, CF_SNAPSHOT, FORMAT, FORMAT_V1, SNAPSHOT_FORMAT, cf, corrupt, decode, get_msg,
    index_key, rocks,
};
use super::snapshots::SnapshotDir;

/// Rewrites a format-1 directory as a snapshot file, then marks it format 2. A crash midway
/// leaves the marker at 1 and the records in place, so the next open simply does it again.
pub(super) fn migrate(db: &DB, snapshots: &SnapshotDir) -> io::Result<()> {
    if db.get(b"format").map_err(rocks)?.as_deref() != Some(FORMAT_V1) {
        return Ok(());
    }
    let applied = get_msg::<pb::LogId>(db, CF_SM_META, b"applied")?;
    if let Some(applied) = applied {
        let membership = get_msg::<pb::StoredMembership>(db, CF_SM_META, b"membership")?;
        let ledger = load_ledger(db)?;
        let data = pb::SnapshotData {
            format_version: SNAPSHOT_FORMAT,
            last_applied: Some(applied),
            last_membership: membership,
            ledger: ledger.encode_snapshot(),
            // The feed items stay where they are, in the feed's column family.
            feed: Vec::new(),
        };
        // The feed items are unsynced writes: durable before the snapshot after which they are
        // not written again.
        db.flush_wal(true).map_err(rocks)?;
        snapshots.write(applied.index, &data.encode_to_vec())?;
        info!(applied = applied.index, "data directory format 1 rewritten as a snapshot file");
    }
    let mut batch = WriteBatch::default();
    // The feed stays in its column family (snapshots no longer copy it), up to the state's
    // index: anything after it is re-applied from the log, so the feed never runs ahead.
    let feed_after = applied.map_or(0, |id| id.index.saturating_add(1));
    batch.delete_range_cf(cf(db, CF_FEED)?, index_key(feed_after), index_key(u64::MAX));
    batch.delete_range_cf(cf(db, CF_SM_STATE)?, b"".as_slice(), [0xffu8; 1].as_slice());
    for key in [&b"applied"[..], b"membership", b"clock"] {
        batch.delete_cf(cf(db, CF_SM_META)?, key);
    }
    for key in [&b"meta"[..], b"data"] {
        batch.delete_cf(cf(db, CF_SNAPSHOT)?, key);
    }
    batch.put(b"format", FORMAT);
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync).map_err(rocks)
}

/// Rebuilds the ledger from its per-entity records (validated by `Ledger::from_snapshot`).
fn load_ledger(db: &DB) -> io::Result<Ledger> {
    let mut snap = ledger::pb::Snapshot { format_version: ledger::snapshot::FORMAT_VERSION, ..Default::default() };
    if let Some(bytes) = db.get_cf(cf(db, CF_SM_META)?, b"clock").map_err(rocks)? {
        snap.last_at_ms =
            <[u8; 8]>::try_from(bytes.as_slice()).map(i64::from_be_bytes).map_err(|_| corrupt("clock"))?;
    }
    let mut histories: BTreeMap<String, Vec<ledger::pb::HistoryLine>> = Default::default();
    let mut contents: BTreeMap<String, ledger::pb::LotContentState> = Default::default();
    let mut comments: BTreeMap<String, Vec<ledger::pb::CommentState>> = Default::default();
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
