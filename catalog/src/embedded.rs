//! The embedded catalog store: rows durable in RocksDB and held in memory, with the
//! secondary indexes.
//!
//! RocksDB holds what must survive a restart, in one keyspace (first byte = table):
//! - `c`                -> checkpoint, u64 big-endian
//! - `l` lot_id         -> [`LotSummary`]
//! - `a` auction_id     -> [`AuctionRow`]
//! - `d` index (u64 BE) -> [`DeadLetter`]
//! - `k` category_id    -> [`CategoryRow`]
//!
//! The secondary indexes are ordered sets kept in memory and rebuilt from the rows at open:
//! for every order (ends_at, price, newest) and every filter dimension (all lots, status,
//! category, artist, auction, status+category, status+artist) a set of `(sort key, lot id)`.
//! A page scans the set of the most selective equality filter given, bounded by the price
//! range under `sort=price` or the ending window under `sort=ends_at`; other filters are
//! checked on the rows read. Why not index keys in RocksDB too: a lot has 21 index entries and
//! a bid moves 7 of them; as RocksDB keys that is ~15 memtable inserts per bid, which capped
//! the projection near 50,000 events/s on the 2-vCPU machine it was measured on
//! (BENCHMARKS.md); in memory the same updates cost a few microseconds. Rows are kept in
//! memory too (RocksDB is their durable copy): the projection reads a lot's row for each
//! batch that touches it, and a page reads a row per entry. The price: memory (~2.5 KiB per
//! lot) and a load at open (a scan of the rows).

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use prost::Message;
use rocksdb::{BlockBasedOptions, Cache, DB, Options, ReadOptions, WriteBatch};
use tracing::info;

use crate::index::{
    DIMS, SORTS, cursor_scope, decode_cursor, dim_changed, dim_value, dim_value_into, encode_cursor, plan, sort_slot,
};
use crate::query::{Page, Query};
use crate::store::{Changes, DeadLetter, Digest, Replacement, Store, StoreError};
use crate::summary::{AuctionRow, CategoryRow, LotSummary};

const CHECKPOINT: &[u8] = b"c";
const LOT: u8 = b'l';
const AUCTION: u8 = b'a';
const DEAD: u8 = b'd';
const CATEGORY: u8 = b'k';

/// Index entries one page may read before it returns what it has (with a cursor): bounds the
/// cost of a page whose filters the chosen index covers poorly.
pub const SCAN_MAX: usize = 10_000;

fn engine(e: rocksdb::Error) -> StoreError {
    StoreError::Engine(e.into_string())
}

fn decode<T: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt { what, error: e.to_string() })
}

/// Decodes every row of one table, in key order.
fn for_each_row<T: Message + Default>(
    db: &DB,
    table: u8,
    what: &'static str,
    mut f: impl FnMut(T),
) -> Result<(), StoreError> {
    let mut read = ReadOptions::default();
    read.set_iterate_upper_bound(vec![table + 1]);
    let mut it = db.raw_iterator_opt(read);
    it.seek([table]);
    while it.valid() {
        if let Some(v) = it.value() {
            f(decode(what, v)?);
        }
        it.next();
    }
    it.status().map_err(engine)
}

fn key(table: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(table);
    k.extend_from_slice(id.as_bytes());
    k
}

/// One set: the lots of one (dimension, value), in one order.
type Entries = BTreeSet<(u64, Arc<str>)>;

/// What is kept in memory: every lot's row (RocksDB holds their durable copy) and the
/// secondary indexes, per dimension value -> one set per order. A lot id is allocated once
/// and shared by its row and its 21 entries.
#[derive(Default)]
struct Indexes {
    rows: HashMap<Arc<str>, LotSummary>,
    sets: [HashMap<String, [Entries; 3]>; DIMS.len()],
}

impl Indexes {
    /// Stores `after` in place of `before` (the row as it was, if any).
    fn put(&mut self, before: Option<&LotSummary>, after: LotSummary) {
        let id = match self.rows.get_key_value(after.lot_id.as_str()) {
            Some((id, _)) => id.clone(),
            None => Arc::from(after.lot_id.as_str()),
        };
        self.update(&id, before, &after);
        self.rows.insert(id, after);
    }

    /// Moves lot `id` from where `before` put it to where `after` puts it, touching only
    /// the entries that move (a bid moves the 7 price entries, nothing else).
    fn update(&mut self, id: &Arc<str>, before: Option<&LotSummary>, after: &LotSummary) {
        let keys_after = SORTS.map(|sort| sort.key(after));
        let keys_before = before.map(|before| SORTS.map(|sort| sort.key(before)));
        // A bid: every dimension stays, only prices move. The common case, kept free of
        // allocation: the set is found by its value written into one reused buffer.
        let mut value = String::new();
        for (d, &dim) in DIMS.iter().enumerate() {
            let sets = &mut self.sets[d];
            match (before, keys_before) {
                (Some(before), Some(keys_before)) if !dim_changed(before, after, dim) => {
                    if keys_before == keys_after || !dim_value_into(after, dim, &mut value) {
                        continue;
                    }
                    let Some(entries) = sets.get_mut(value.as_str()) else {
                        // Not indexed where `before` says it is: index it afresh.
                        let entries = sets.entry(value.clone()).or_default();
                        for slot in 0..SORTS.len() {
                            entries[slot].insert((keys_after[slot], id.clone()));
                        }
                        continue;
                    };
                    for slot in 0..SORTS.len() {
                        if keys_before[slot] != keys_after[slot] {
                            entries[slot].remove(&(keys_before[slot], id.clone()));
                            entries[slot].insert((keys_after[slot], id.clone()));
                        }
                    }
                }
                _ => {
                    if let Some(before) = before
                        && let Some(old) = dim_value(before, dim)
                    {
                        let keys_before = SORTS.map(|sort| sort.key(before));
                        if let Some(entries) = sets.get_mut(&old) {
                            for slot in 0..SORTS.len() {
                                entries[slot].remove(&(keys_before[slot], id.clone()));
                            }
                            if entries.iter().all(BTreeSet::is_empty) {
                                sets.remove(&old);
                            }
                        }
                    }
                    if let Some(new) = dim_value(after, dim) {
                        let entries = sets.entry(new).or_default();
                        for slot in 0..SORTS.len() {
                            entries[slot].insert((keys_after[slot], id.clone()));
                        }
                    }
                }
            }
        }
    }

    fn entries(&self, dim: u8, value: &str) -> Option<&[Entries; 3]> {
        let d = DIMS.iter().position(|&x| x == dim)?;
        self.sets[d].get(value)
    }
}

/// The embedded store. Share it behind an `Arc`: reads take the index's read lock, writes its
/// write lock, so a page always sees rows and indexes of one checkpoint.
pub struct Embedded {
    db: DB,
    indexes: RwLock<Indexes>,
}

impl Embedded {
    /// Opens (or creates) the store in `dir` and rebuilds the indexes from its rows.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        // Row lookups of new lots are misses: bloom filters make them cheap.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&Cache::new_lru_cache(64 << 20));
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, dir).map_err(engine)?;
        let started = Instant::now();
        let mut indexes = Indexes::default();
        let mut lots = 0u64;
        for_each_row(&db, LOT, "lot", |lot: LotSummary| {
            indexes.put(None, lot);
            lots += 1;
        })?;
        info!(lots, took_ms = started.elapsed().as_millis() as u64, "catalog indexes rebuilt from the rows");
        Ok(Embedded { db, indexes: RwLock::new(indexes) })
    }

    /// Compacts the whole store: after a bulk load (a rebuild), row reads then find every key
    /// in few sorted files.
    pub fn compact(&self) {
        self.db.compact_range::<&[u8], &[u8]>(None, None);
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Indexes>, StoreError> {
        self.indexes.read().map_err(|_| StoreError::Engine("a writer panicked; reopen the catalog".into()))
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Indexes>, StoreError> {
        self.indexes.write().map_err(|_| StoreError::Engine("a writer panicked; reopen the catalog".into()))
    }

    fn row(&self, lot_id: &str) -> Result<Option<LotSummary>, StoreError> {
        Ok(self.read()?.rows.get(lot_id).cloned())
    }

    fn read_checkpoint(&self) -> Result<u64, StoreError> {
        let raw = self.db.get(CHECKPOINT).map_err(engine)?;
        match raw.as_deref() {
            None => Ok(0),
            Some(b) => b
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt { what: "checkpoint", error: format!("{} bytes, not 8", b.len()) }),
        }
    }
}

impl Store for Embedded {
    fn checkpoint(&self) -> Result<u64, StoreError> {
        self.read_checkpoint()
    }

    fn lot(&self, lot_id: &str) -> Result<Option<LotSummary>, StoreError> {
        self.row(lot_id)
    }

    fn auction(&self, auction_id: &str) -> Result<Option<AuctionRow>, StoreError> {
        let raw = self.db.get(key(AUCTION, auction_id)).map_err(engine)?;
        raw.map(|b| decode("auction", &b)).transpose()
    }

    fn category(&self, category_id: &str) -> Result<Option<CategoryRow>, StoreError> {
        let raw = self.db.get(key(CATEGORY, category_id)).map_err(engine)?;
        raw.map(|b| decode("category", &b)).transpose()
    }

    fn categories(&self) -> Result<Vec<CategoryRow>, StoreError> {
        let mut out = Vec::new();
        for_each_row(&self.db, CATEGORY, "category", |row| out.push(row))?;
        Ok(out)
    }

    fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (_, after) in &changes.lots {
            batch.put(key(LOT, &after.lot_id), after.encode_to_vec());
        }
        for auction in &changes.auctions {
            batch.put(key(AUCTION, &auction.auction_id), auction.encode_to_vec());
        }
        for category in &changes.categories {
            batch.put(key(CATEGORY, &category.category_id), category.encode_to_vec());
        }
        if let Some(letter) = &changes.park {
            let mut k = vec![DEAD];
            k.extend_from_slice(&letter.index.to_be_bytes());
            batch.put(k, letter.encode_to_vec());
        }
        if let Some(index) = changes.unpark {
            let mut k = vec![DEAD];
            k.extend_from_slice(&index.to_be_bytes());
            batch.delete(k);
        }
        if let Some(index) = changes.checkpoint {
            batch.put(CHECKPOINT, index.to_be_bytes());
        }
        // Rows and indexes change together under the write lock: a page never sees one
        // without the other. Not fsync'd: the WAL keeps the batch whole across a process
        // crash, and after a machine crash the checkpoint still matches the rows (the feed
        // fills in the rest).
        let mut indexes = self.write()?;
        self.db.write(batch).map_err(engine)?;
        for (before, after) in changes.lots {
            indexes.put(before.as_ref(), after);
        }
        Ok(())
    }

    fn query(&self, query: &Query) -> Result<Page, StoreError> {
        let indexes = self.read()?;
        let as_of_index = self.read_checkpoint()?;
        let (set, lo, hi) = plan(query);
        let scope = cursor_scope(query.sort, &set);
        let after = query.cursor.as_deref().map(|c| decode_cursor(c, &scope)).transpose()?;
        let Some(sets) = indexes.entries(set.0, &set.1) else {
            return Ok(Page { items: Vec::new(), next_cursor: None, as_of_index });
        };
        let start: (u64, Arc<str>) = (lo, Arc::from(""));
        let from = match &after {
            Some(after) if (after.0, after.1.as_str()) >= (start.0, &*start.1) => {
                Bound::Excluded((after.0, Arc::from(after.1.as_str())))
            }
            _ => Bound::Included(start),
        };
        let limit = query.limit.max(1);
        let mut items = Vec::with_capacity(limit);
        let mut last: Option<&(u64, Arc<str>)> = None;
        for (scanned, entry) in sets[sort_slot(query.sort)].range((from, Bound::Unbounded)).enumerate() {
            if entry.0 > hi {
                break;
            }
            if items.len() == limit || scanned == SCAN_MAX {
                // More entries exist past this page.
                let next_cursor = last.map(|l| encode_cursor(&scope, l.0, &l.1));
                return Ok(Page { items, next_cursor, as_of_index });
            }
            let lot = indexes.rows.get(&entry.1).ok_or_else(|| StoreError::Corrupt {
                what: "index entry",
                error: format!("lot {} is indexed but has no row", entry.1),
            })?;
            if query.matches(lot) {
                items.push(lot.clone());
            }
            last = Some(entry);
        }
        Ok(Page { items, next_cursor: None, as_of_index })
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut out = Vec::new();
        for_each_row(&self.db, DEAD, "dead letter", |letter| out.push(letter))?;
        Ok(out)
    }

    fn dead_letter(&self, index: u64) -> Result<Option<DeadLetter>, StoreError> {
        let mut k = vec![DEAD];
        k.extend_from_slice(&index.to_be_bytes());
        let raw = self.db.get(k).map_err(engine)?;
        raw.map(|b| decode("dead letter", &b)).transpose()
    }

    fn replace(&self, rows: Replacement) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for table in [LOT, AUCTION, CATEGORY] {
            batch.delete_range(vec![table], vec![table + 1]);
        }
        for lot in &rows.lots {
            batch.put(key(LOT, &lot.lot_id), lot.encode_to_vec());
        }
        for auction in &rows.auctions {
            batch.put(key(AUCTION, &auction.auction_id), auction.encode_to_vec());
        }
        for category in &rows.categories {
            batch.put(key(CATEGORY, &category.category_id), category.encode_to_vec());
        }
        batch.put(CHECKPOINT, rows.checkpoint.to_be_bytes());
        // One batch, and the indexes rebuilt under the write lock: a page sees the old rows or
        // the new ones, never a mix.
        let mut indexes = self.write()?;
        self.db.write(batch).map_err(engine)?;
        *indexes = Indexes::default();
        for lot in rows.lots {
            indexes.put(None, lot);
        }
        Ok(())
    }

    fn can_replace(&self) -> bool {
        true
    }

    fn digest(&self) -> Result<Digest, StoreError> {
        // Under the read lock: no commit in between, so checkpoint and contents agree.
        let _indexes = self.read()?;
        let checkpoint = self.read_checkpoint()?;
        let mut it = self.db.raw_iterator();
        it.seek_to_first();
        let mut hasher = blake3::Hasher::new();
        let mut lots = 0;
        while it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                lots += u64::from(k.first() == Some(&LOT));
                // Length-prefixed, so no two different contents hash the same stream.
                hasher.update(&(k.len() as u64).to_be_bytes());
                hasher.update(k);
                hasher.update(&(v.len() as u64).to_be_bytes());
                hasher.update(v);
            }
            it.next();
        }
        it.status().map_err(engine)?;
        Ok(Digest { checkpoint, lots, hash: *hasher.finalize().as_bytes() })
    }
}
