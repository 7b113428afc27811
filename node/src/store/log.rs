//! The Raft log store: entries, vote, committed and purged ids, and a cache of the newest
//! entries, from which replication and apply read instead of decoding them back from RocksDB.

use std::collections::VecDeque;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use prost::Message;
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use crate::limits;
use crate::pb;
use crate::raft::{self, Entry, LogId, TypeConfig, Vote};

use super::db::{CF_LOG, CF_RAFT_META, blocking, cf, corrupt, decode, get_msg, index_key, index_of, rocks};
use super::writer::{Done, Writer};

/// The Raft log on RocksDB. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Every write (vote, append, truncate, purge, committed) goes through it, so they reach
    /// disk in submission order.
    writer: Writer,
    recent: Arc<Mutex<Recent>>,
}

/// The newest entries, each added when its append is submitted (openraft may read an entry as
/// soon as `append` returns: replication sends what was submitted, and apply may run on entries
/// the cluster committed before this replica's own fsync): a contiguous run that, when not
/// empty, ends at the log's last entry. Its bounds can evict entries the writer has not yet
/// written; a read that misses it therefore waits for the writer first. Entries share their
/// proposals, so a read is a copy of pointers, not of commands.
#[derive(Default)]
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, entry: Entry, size: usize) {
        if self.entries.back().is_some_and(|(last, _)| last.index() + 1 != entry.index()) {
            // Not contiguous with what is held (cannot happen after a truncation, which cuts
            // here first): start over rather than hold a gap.
            self.entries.clear();
            self.bytes = 0;
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        while self.entries.len() > limits::RECENT_ENTRIES_MAX || self.bytes > limits::RECENT_BYTES_MAX {
            let Some((_, size)) = self.entries.pop_front() else { break };
            self.bytes -= size;
        }
    }

    /// Drops the entries from index `from` on.
    fn cut_after(&mut self, from: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.index() >= from) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drops the entries up to index `upto`.
    fn cut_before(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.index() <= upto) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// The entries `start..end`, if all of them are held here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.0.index();
        let last = self.entries.back()?.0.index();
        if start < first || end == 0 || end - 1 > last {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let take = usize::try_from(end.saturating_sub(start)).ok()?;
        Some(self.entries.iter().skip(skip).take(take).map(|(e, _)| e.clone()).collect())
    }
}

impl LogStore {
    /// `fsync: false` is UNSAFE (jepsen only): writes reach the page cache, not the disk,
    /// before they are reported flushed, so a power loss (not a kill) can lose acknowledged
    /// entries.
    pub fn open(db: Arc<DB>, fsync: bool) -> io::Result<LogStore> {
        let writer = Writer::start(db.clone(), fsync)?;
        Ok(LogStore { db, writer, recent: Arc::default() })
    }

    fn recent(&self) -> io::Result<MutexGuard<'_, Recent>> {
        // A panic while holding it leaves the cache possibly half-cut: stop, like the ledger.
        self.recent.lock().map_err(|_| io::Error::other("the log's entry cache is poisoned"))
    }

    fn meta_log_id(&self, key: &[u8]) -> io::Result<Option<LogId>> {
        Ok(get_msg::<pb::LogId>(&self.db, CF_RAFT_META, key)?.map(|id| raft::log_id_from_pb(&id)))
    }

    fn last_entry_id(&self) -> io::Result<Option<LogId>> {
        let mut iter = self.db.iterator_cf(cf(&self.db, CF_LOG)?, IteratorMode::End);
        match iter.next() {
            Some(item) => {
                let (_, value) = item.map_err(rocks)?;
                let entry: pb::Entry = decode(&value, "log entry")?;
                let id = entry.log_id.ok_or_else(|| corrupt("log entry without id"))?;
                Ok(Some(raft::log_id_from_pb(&id)))
            }
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i.saturating_add(1)),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        if let Some(end) = end
            && let Some(entries) = self.recent()?.get(start, end)
        {
            return Ok(entries);
        }
        // Every append submitted before this read must be in RocksDB before it is read there:
        // the writer's queue is in order, so a no-op through it is that barrier.
        self.writer.write(WriteBatch::default(), false).await?;
        // Owned bounds, so the blocking closure does not borrow the caller's range type.
        let range: (Bound<u64>, Bound<u64>) = (range.start_bound().cloned(), range.end_bound().cloned());
        let db = self.db.clone();
        blocking(move || {
            let mut out = Vec::new();
            let iter = db.iterator_cf(cf(&db, CF_LOG)?, IteratorMode::From(&index_key(start), Direction::Forward));
            for item in iter {
                let (key, value) = item.map_err(rocks)?;
                if !range.contains(&index_of(&key)?) {
                    break;
                }
                // From the owned value: the proposal's bytes are this buffer, not a copy of it.
                let entry =
                    pb::Entry::decode(bytes::Bytes::from(value)).map_err(|e| corrupt(format!("log entry: {e}")))?;
                out.push(raft::entry_from_pb(entry).map_err(|e| corrupt(e.to_string()))?);
            }
            Ok(out)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        let db = self.db.clone();
        blocking(move || {
            get_msg::<pb::Vote>(&db, CF_RAFT_META, b"vote")?
                .map(|v| raft::vote_from_pb(&Some(v)).map_err(|e| corrupt(e.to_string())))
                .transpose()
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id = self.meta_log_id(b"purged")?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT_META)?, b"vote", raft::vote_to_pb(vote).encode_to_vec());
        self.writer.write(batch, true).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        let meta = cf(&self.db, CF_RAFT_META)?;
        match committed {
            Some(id) => batch.put_cf(meta, b"committed", raft::log_id_to_pb(&id).encode_to_vec()),
            None => batch.delete_cf(meta, b"committed"),
        }
        // Not fsync'd nor waited for: a lost committed marker is only a hint; it is
        // rediscovered from peers. A failed write still fails the writes after it.
        self.writer.submit(batch, false, Done::Ignored)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.meta_log_id(b"committed")
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let log = cf(&self.db, CF_LOG)?;
        let mut appended = Vec::new();
        for entry in entries {
            let bytes = raft::encode_entry(&entry);
            batch.put_cf(log, index_key(entry.index()), &bytes);
            appended.push((entry, bytes.len()));
        }
        let mut recent = self.recent()?;
        for (entry, size) in appended {
            recent.push(entry, size);
        }
        drop(recent);
        // Submitted, not awaited: the callback fires once a WAL sync covers the entries.
        self.writer.submit(batch, true, Done::Flushed(callback))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.recent()?.cut_after(from);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG)?, index_key(from), index_key(u64::MAX));
        batch.delete_cf(cf(&self.db, CF_LOG)?, index_key(u64::MAX));
        self.writer.write(batch, true).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.recent()?.cut_before(log_id.index);
        let mut batch = WriteBatch::default();
        // The purge marker and the deletion in one batch: the log never has a hole below it.
        batch.put_cf(cf(&self.db, CF_RAFT_META)?, b"purged", raft::log_id_to_pb(&log_id).encode_to_vec());
        batch.delete_range_cf(cf(&self.db, CF_LOG)?, index_key(0), index_key(log_id.index + 1));
        self.writer.write(batch, true).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use openraft::EntryPayload;

    use super::*;
    use crate::raft::LeaderId;

    fn entry(index: u64) -> Entry {
        let proposal = pb::Proposal { at_ms: index as i64, commands: Vec::new() };
        Entry {
            log_id: LogId { leader_id: LeaderId { term: 1, node_id: 1 }, index },
            payload: EntryPayload::Normal(raft::Payload::new(proposal)),
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|es| es.iter().map(|e| e.index()).collect())
    }

    #[test]
    fn the_cache_answers_only_ranges_it_holds_whole() {
        let mut recent = Recent::default();
        for i in 5..=9 {
            recent.push(entry(i), 10);
        }
        assert_eq!(indexes(recent.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(recent.get(7, 9)), Some(vec![7, 8]));
        assert_eq!(indexes(recent.get(4, 8)), None, "starts below the cache");
        assert_eq!(indexes(recent.get(8, 11)), None, "ends past the last entry");
        // A truncation and a purge cut it; a gap starts it over.
        recent.cut_after(9);
        assert_eq!(indexes(recent.get(5, 9)), Some(vec![5, 6, 7, 8]));
        assert_eq!(indexes(recent.get(5, 10)), None);
        recent.cut_before(6);
        assert_eq!(indexes(recent.get(6, 8)), None);
        assert_eq!(indexes(recent.get(7, 9)), Some(vec![7, 8]));
        assert_eq!(recent.bytes, 20);
        recent.push(entry(12), 10);
        assert_eq!(indexes(recent.get(7, 9)), None, "entries before a gap are dropped");
        assert_eq!(indexes(recent.get(12, 13)), Some(vec![12]));
        assert_eq!(recent.bytes, 10);
    }

    #[test]
    fn the_cache_keeps_within_its_bounds() {
        let mut recent = Recent::default();
        for i in 1..=(limits::RECENT_ENTRIES_MAX as u64 + 10) {
            recent.push(entry(i), 1);
        }
        assert_eq!(recent.entries.len(), limits::RECENT_ENTRIES_MAX);
        assert_eq!(recent.entries.front().map(|(e, _)| e.index()), Some(11));
        recent.push(entry(limits::RECENT_ENTRIES_MAX as u64 + 11), limits::RECENT_BYTES_MAX);
        assert_eq!(recent.entries.len(), 1, "one entry as large as the whole budget stays alone");
    }
}
