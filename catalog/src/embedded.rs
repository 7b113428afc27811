//! The embedded catalog store: RocksDB, with secondary index keys for every filter and order,
//! so a filtered page is a short range scan, never a full one.
//!
//! Keys (one keyspace, first byte says which table):
//! - `c`                      -> checkpoint, u64 big-endian
//! - `l` lot_id               -> [`LotSummary`]
//! - `a` auction_id           -> [`AuctionRow`]
//! - `d` index (u64 BE)       -> [`DeadLetter`]
//! - `i` sort dim value sortkey lot_id -> empty: one entry per (order, filter dimension) for
//!   each lot, where `dim` is `*` (all lots), `s` status, `c` category, `r` artist or
//!   `u` auction, `value` is length-prefixed and `sortkey` a big-endian u64 (see
//!   [`Sort::key`]). A page scans the prefix of the most selective equality filter given,
//!   bounded by a price or end-time range when the order allows.

use std::collections::BTreeSet;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use rocksdb::{DB, Options, ReadOptions, WriteBatch};

use crate::query::{Page, Query, Sort, order_i64};
use crate::store::{Changes, DeadLetter, Digest, Store, StoreError};
use crate::summary::{AuctionRow, LotSummary};

const CHECKPOINT: &[u8] = b"c";
const LOT: u8 = b'l';
const AUCTION: u8 = b'a';
const DEAD: u8 = b'd';
const INDEX: u8 = b'i';

/// Index entries one page may read before it returns what it has (with a cursor): bounds the
/// cost of a page whose filters the chosen index covers poorly.
pub const SCAN_MAX: usize = 10_000;

/// The cursor format's version byte.
const CURSOR_V1: u8 = 1;

const SORTS: [Sort; 3] = [Sort::EndsAt, Sort::Price, Sort::Newest];

fn engine(e: rocksdb::Error) -> StoreError {
    StoreError::Engine(e.into_string())
}

fn decode<T: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt { what, error: e.to_string() })
}

fn key(table: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(table);
    k.extend_from_slice(id.as_bytes());
    k
}

fn sort_byte(sort: Sort) -> u8 {
    match sort {
        Sort::EndsAt => b'e',
        Sort::Price => b'p',
        Sort::Newest => b'n',
    }
}

/// `i sort dim len(value) value`: the prefix every entry of one (order, filter value) shares.
fn index_prefix(sort: Sort, dim: u8, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + value.len() + 8 + 16);
    k.extend_from_slice(&[INDEX, sort_byte(sort), dim]);
    // Ids are bounded well below 64 KiB by the ledger's limits; saturate rather than wrap.
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(value.as_bytes());
    k
}

/// The (dimension, value) pairs a lot is indexed under.
fn dims(lot: &LotSummary) -> Vec<(u8, String)> {
    let mut d = vec![(b'*', String::new()), (b's', lot.status.to_string()), (b'c', lot.category.clone())];
    d.push((b'r', lot.artist.clone()));
    if !lot.auction_id.is_empty() {
        d.push((b'u', lot.auction_id.clone()));
    }
    d
}

/// Every index key of a lot.
fn index_keys(lot: &LotSummary) -> BTreeSet<Vec<u8>> {
    let mut keys = BTreeSet::new();
    for (dim, value) in dims(lot) {
        for sort in SORTS {
            let mut k = index_prefix(sort, dim, &value);
            k.extend_from_slice(&sort.key(lot).to_be_bytes());
            k.extend_from_slice(lot.lot_id.as_bytes());
            keys.insert(k);
        }
    }
    keys
}

/// The embedded store. Cheap to share: RocksDB is internally synchronized.
pub struct Embedded {
    db: DB,
}

impl Embedded {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Embedded, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Index keys share long prefixes; whole-key bloom filters would not serve range scans.
        opts.increase_parallelism(2);
        let db = DB::open(&opts, dir).map_err(engine)?;
        Ok(Embedded { db })
    }

    /// Plans `query`: the index prefix to scan and the sort-key range within it.
    fn plan(query: &Query) -> (Vec<u8>, u64, u64) {
        let (dim, value) = if let Some(a) = &query.auction {
            (b'u', a.clone())
        } else if let Some(a) = &query.artist {
            (b'r', a.clone())
        } else if let Some(c) = &query.category {
            (b'c', c.clone())
        } else if let Some(s) = query.status {
            (b's', (s as i32).to_string())
        } else {
            (b'*', String::new())
        };
        let (lo, hi) = match query.sort {
            Sort::Price => (query.min_price.map_or(0, order_i64), query.max_price.map_or(u64::MAX, order_i64)),
            Sort::EndsAt => query.ending.map_or((0, u64::MAX), |(from, to)| (order_i64(from), order_i64(to))),
            Sort::Newest => (0, u64::MAX),
        };
        (index_prefix(query.sort, dim, &value), lo, hi)
    }
}

/// The exclusive upper bound of all keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

fn encode_cursor(index_key: &[u8]) -> String {
    let mut raw = Vec::with_capacity(1 + index_key.len());
    raw.push(CURSOR_V1);
    raw.extend_from_slice(index_key);
    URL_SAFE_NO_PAD.encode(raw)
}

/// The index key a cursor resumes after; it must belong to this query's index prefix.
fn decode_cursor(cursor: &str, prefix: &[u8]) -> Result<Vec<u8>, StoreError> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| StoreError::BadCursor("not a cursor"))?;
    match raw.split_first() {
        Some((&CURSOR_V1, key)) if key.starts_with(prefix) && key.len() >= prefix.len() + 8 => Ok(key.to_vec()),
        Some((&CURSOR_V1, _)) => Err(StoreError::BadCursor("the cursor belongs to a different filter or order")),
        _ => Err(StoreError::BadCursor("unknown cursor version")),
    }
}

impl Store for Embedded {
    fn checkpoint(&self) -> Result<u64, StoreError> {
        let raw = self.db.get(CHECKPOINT).map_err(engine)?;
        read_checkpoint(raw.as_deref())
    }

    fn lot(&self, lot_id: &str) -> Result<Option<LotSummary>, StoreError> {
        let raw = self.db.get(key(LOT, lot_id)).map_err(engine)?;
        raw.map(|b| decode("lot", &b)).transpose()
    }

    fn auction(&self, auction_id: &str) -> Result<Option<AuctionRow>, StoreError> {
        let raw = self.db.get(key(AUCTION, auction_id)).map_err(engine)?;
        raw.map(|b| decode("auction", &b)).transpose()
    }

    fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (before, after) in &changes.lots {
            let old = before.as_ref().map(index_keys).unwrap_or_default();
            let new = index_keys(after);
            for k in old.difference(&new) {
                batch.delete(k);
            }
            for k in new.difference(&old) {
                batch.put(k, []);
            }
            batch.put(key(LOT, &after.lot_id), after.encode_to_vec());
        }
        for auction in &changes.auctions {
            batch.put(key(AUCTION, &auction.auction_id), auction.encode_to_vec());
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
        // Not fsync'd: the WAL keeps the batch whole across a process crash, and after a
        // machine crash the checkpoint still matches the rows (the feed fills in the rest).
        self.db.write(batch).map_err(engine)
    }

    fn query(&self, query: &Query) -> Result<Page, StoreError> {
        let snap = self.db.snapshot();
        let as_of_index = read_checkpoint(snap.get(CHECKPOINT).map_err(engine)?.as_deref())?;
        let (prefix, lo, hi) = Embedded::plan(query);
        let mut start = prefix.clone();
        start.extend_from_slice(&lo.to_be_bytes());
        let mut end = prefix.clone();
        end.extend_from_slice(&hi.to_be_bytes());
        let end = prefix_end(&end);
        let after = query.cursor.as_deref().map(|c| decode_cursor(c, &prefix)).transpose()?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        let mut it = snap.raw_iterator_opt(opts);
        match &after {
            Some(after) if after.as_slice() >= start.as_slice() => it.seek(after),
            _ => it.seek(&start),
        }
        let limit = query.limit.max(1);
        let mut items = Vec::with_capacity(limit);
        let mut scanned = 0;
        let mut last: Option<Vec<u8>> = None;
        while it.valid() {
            let Some(k) = it.key() else { break };
            if after.as_deref() == Some(k) {
                it.next();
                continue;
            }
            if items.len() == limit || scanned == SCAN_MAX {
                // More entries exist past this page.
                return Ok(Page { items, next_cursor: last.as_deref().map(encode_cursor), as_of_index });
            }
            scanned += 1;
            let lot_id = k
                .get(prefix.len() + 8..)
                .ok_or(StoreError::Corrupt { what: "index key", error: "shorter than its prefix".into() })?;
            let lot_id = std::str::from_utf8(lot_id)
                .map_err(|e| StoreError::Corrupt { what: "index key", error: e.to_string() })?;
            let raw = snap.get(key(LOT, lot_id)).map_err(engine)?.ok_or_else(|| StoreError::Corrupt {
                what: "index entry",
                error: format!("lot {lot_id} is indexed but has no row"),
            })?;
            let lot: LotSummary = decode("lot", &raw)?;
            if query.matches(&lot) {
                items.push(lot);
            }
            last = Some(k.to_vec());
            it.next();
        }
        it.status().map_err(engine)?;
        Ok(Page { items, next_cursor: None, as_of_index })
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(vec![DEAD + 1]);
        let mut it = self.db.raw_iterator_opt(opts);
        it.seek([DEAD]);
        let mut out = Vec::new();
        while it.valid() {
            if let Some(v) = it.value() {
                out.push(decode("dead letter", v)?);
            }
            it.next();
        }
        it.status().map_err(engine)?;
        Ok(out)
    }

    fn dead_letter(&self, index: u64) -> Result<Option<DeadLetter>, StoreError> {
        let mut k = vec![DEAD];
        k.extend_from_slice(&index.to_be_bytes());
        let raw = self.db.get(k).map_err(engine)?;
        raw.map(|b| decode("dead letter", &b)).transpose()
    }

    fn digest(&self) -> Result<Digest, StoreError> {
        let snap = self.db.snapshot();
        let checkpoint = read_checkpoint(snap.get(CHECKPOINT).map_err(engine)?.as_deref())?;
        let mut it = snap.raw_iterator();
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

fn read_checkpoint(raw: Option<&[u8]>) -> Result<u64, StoreError> {
    match raw {
        None => Ok(0),
        Some(b) => b
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt { what: "checkpoint", error: format!("{} bytes, not 8", b.len()) }),
    }
}
