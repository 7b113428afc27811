//! The ScyllaDB catalog store, for scale-out: the embedded store's rows and secondary
//! indexes as CQL tables, shared by every gateway.
//!
//! Tables, in the URI's keyspace (created if missing):
//! - `meta (name text PRIMARY KEY, value bigint)`: the checkpoint.
//! - `lots (lot_id text PRIMARY KEY, row blob)`, `auctions (auction_id ...)`: rows as the
//!   versioned protobuf the embedded store keeps.
//! - `categories` and `dead_letters`: one small partition each (`part = 0`), read whole.
//! - One table per query shape, filter dimension x order (`lots_by_status_price`, ...):
//!   `PRIMARY KEY ((value, bucket), k, lot_id)`. `bucket` is a hash of the lot id, so one
//!   value is spread over [`BUCKETS`] partitions: during a live sale the bids of a hot lot,
//!   a hot sale and the all-lots set do not all land on one partition (one replica set). A
//!   page reads every bucket from the cursor on and merges them.
//!
//! Writes are idempotent: every cell is written `USING TIMESTAMP` the log index of the item
//! it comes from, so a replayed item changes nothing and an older write loses to a newer one.
//! A commit is one `LOGGED` batch per lot (its row and its index entries, all or nothing),
//! then auctions, categories and dead letters, then the checkpoint, last. A crash in between
//! leaves rows ahead of the checkpoint; the replay from the checkpoint finds them newer than
//! its items (the projection skips those), so nothing is skipped or applied twice.
//!
//! A lot's batch writes every current entry again (not only the moved ones): at the row's
//! timestamp it outlives a delete from any older batch that lands late.
//!
//! One projector per keyspace: two projecting gateways would each compute index moves from
//! rows the other is rewriting. The other gateways open the store read-only
//! (`--catalog-read-only`) and follow its checkpoint.
//!
//! Reads have no snapshot: a page reads the checkpoint (`as_of_index`), then entries and
//! rows, which may be newer. An entry whose row has moved on is passed over (the row's new
//! entry stands for it) and deleted at the row's timestamp; a lot met twice in one page is
//! listed once.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use node::Bridge;
use prost::Message;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::embedded::SCAN_MAX;
use crate::index::{DIMS, SORTS, cursor_scope, decode_cursor, dim_value, encode_cursor, plan, sort_slot};
use crate::query::{Page, Query, Sort};
use crate::store::{Changes, DeadLetter, Digest, Store, StoreError};
use crate::summary::{AuctionRow, CategoryRow, LotSummary};

/// Partitions each index value is spread over.
pub const BUCKETS: i32 = 8;

/// Rows concurrently in flight for one commit.
const CONCURRENCY: usize = 64;

/// Dead letters' timestamps: `index * ATTEMPTS + attempt`, so a re-park (one more attempt)
/// overwrites and the retry's delete (`ATTEMPTS - 1`) wins over both. Small numbers: Scylla
/// refuses write timestamps more than three days ahead of the clock in microseconds.
const ATTEMPTS: i64 = 1024;

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(format!("scylla: {e}"))
}

fn decode<T: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt { what, error: e.to_string() })
}

/// A u64 sort key as a CQL `bigint` of the same order.
fn to_cql(k: u64) -> i64 {
    (k ^ (1 << 63)) as i64
}

fn from_cql(k: i64) -> u64 {
    (k as u64) ^ (1 << 63)
}

/// A log index as a write timestamp.
fn ts(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

fn bucket(lot_id: &str) -> i32 {
    i32::from(blake3::hash(lot_id.as_bytes()).as_bytes()[0]) % BUCKETS
}

fn dim_name(dim: u8) -> &'static str {
    match dim {
        b'*' => "all",
        b's' => "status",
        b'c' => "category",
        b'r' => "artist",
        b'u' => "auction",
        b'C' => "status_category",
        _ => "status_artist",
    }
}

fn sort_name(sort: Sort) -> &'static str {
    match sort {
        Sort::EndsAt => "ends_at",
        Sort::Price => "price",
        Sort::Newest => "newest",
    }
}

fn table(dim: u8, sort: Sort) -> String {
    format!("lots_by_{}_{}", dim_name(dim), sort_name(sort))
}

/// Where to connect: `scylla://host:port[,host:port...]/keyspace[?replication_factor=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub hosts: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
}

impl Target {
    pub fn parse(uri: &str) -> Result<Target, String> {
        let rest = uri.strip_prefix("scylla://").ok_or_else(|| format!("{uri}: not a scylla:// URI"))?;
        let (rest, params) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, keyspace) = rest.split_once('/').ok_or_else(|| format!("{uri}: no /keyspace"))?;
        let hosts: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
        if hosts.is_empty() {
            return Err(format!("{uri}: no host"));
        }
        // Unquoted CQL names: letters, digits and underscores, starting with a letter.
        let valid = keyspace.len() <= 48
            && keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
            && keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("{uri}: keyspace {keyspace:?} is not a plain CQL name"));
        }
        let mut replication_factor = 3;
        for param in params.split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                Some(("replication_factor", n)) => {
                    replication_factor =
                        n.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("{uri}: bad replication_factor"))?;
                }
                _ => return Err(format!("{uri}: unknown parameter {param:?}")),
            }
        }
        Ok(Target { hosts, keyspace: keyspace.to_owned(), replication_factor })
    }
}

struct Statements {
    checkpoint: PreparedStatement,
    set_checkpoint: PreparedStatement,
    lot: PreparedStatement,
    put_lot: PreparedStatement,
    auction: PreparedStatement,
    put_auction: PreparedStatement,
    category: PreparedStatement,
    categories: PreparedStatement,
    put_category: PreparedStatement,
    dead_letter: PreparedStatement,
    dead_letters: PreparedStatement,
    put_dead_letter: PreparedStatement,
    delete_dead_letter: PreparedStatement,
    all_lots: PreparedStatement,
    all_auctions: PreparedStatement,
    /// Per dimension (in `DIMS` order), per order (in `SORTS` order).
    insert_entry: Vec<[PreparedStatement; 3]>,
    delete_entry: Vec<[PreparedStatement; 3]>,
    scan_entries: Vec<[PreparedStatement; 3]>,
    all_entries: Vec<[PreparedStatement; 3]>,
}

struct Inner {
    session: Session,
    keyspace: String,
    st: Statements,
}

/// The ScyllaDB store. Its calls block (the [`Store`] contract); they run on the store's own
/// runtime, so they may be made from any thread.
pub struct Scylla {
    inner: Arc<Inner>,
    bridge: Bridge,
}

impl Scylla {
    /// Connects, creates the keyspace and tables if missing, prepares the statements.
    pub fn connect(uri: &str) -> Result<Scylla, StoreError> {
        let target = Target::parse(uri).map_err(StoreError::Engine)?;
        let bridge = Bridge::new("catalog-scylla").map_err(engine)?;
        let inner = bridge.run(async move { Inner::connect(&target).await }).map_err(engine)??;
        Ok(Scylla { inner: Arc::new(inner), bridge })
    }

    /// Removes every row (before a rebuild from index 0).
    pub fn truncate(&self) -> Result<(), StoreError> {
        self.run(|inner| async move { inner.truncate().await })
    }

    fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.bridge.run(f(self.inner.clone())).map_err(engine)?
    }
}

/// Tables and their keys, as created.
fn schema(keyspace: &str, replication_factor: u32) -> Vec<String> {
    let mut ddl = vec![
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
             {{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}}"
        ),
        format!("CREATE TABLE IF NOT EXISTS {keyspace}.meta (name text PRIMARY KEY, value bigint)"),
        format!("CREATE TABLE IF NOT EXISTS {keyspace}.lots (lot_id text PRIMARY KEY, row blob)"),
        format!("CREATE TABLE IF NOT EXISTS {keyspace}.auctions (auction_id text PRIMARY KEY, row blob)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.categories \
             (part int, category_id text, row blob, PRIMARY KEY (part, category_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.dead_letters \
             (part int, idx bigint, letter blob, PRIMARY KEY (part, idx))"
        ),
    ];
    for dim in DIMS {
        for sort in SORTS {
            ddl.push(format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.{} \
                 (value blob, bucket int, k bigint, lot_id text, PRIMARY KEY ((value, bucket), k, lot_id))",
                table(dim, sort)
            ));
        }
    }
    ddl
}

impl Inner {
    async fn connect(target: &Target) -> Result<Inner, StoreError> {
        let session = SessionBuilder::new().known_nodes(&target.hosts).build().await.map_err(engine)?;
        for ddl in schema(&target.keyspace, target.replication_factor) {
            session.query_unpaged(ddl, ()).await.map_err(engine)?;
        }
        session.await_schema_agreement().await.map_err(engine)?;
        let ks = &target.keyspace;
        let prepare = |cql: String| {
            let session = &session;
            async move { session.prepare(cql).await.map_err(engine) }
        };
        let mut insert_entry = Vec::new();
        let mut delete_entry = Vec::new();
        let mut scan_entries = Vec::new();
        let mut all_entries = Vec::new();
        for dim in DIMS {
            let mut ins = Vec::new();
            let mut del = Vec::new();
            let mut scan = Vec::new();
            let mut all = Vec::new();
            for sort in SORTS {
                let t = format!("{ks}.{}", table(dim, sort));
                ins.push(
                    prepare(format!(
                        "INSERT INTO {t} (value, bucket, k, lot_id) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
                    ))
                    .await?,
                );
                del.push(
                    prepare(format!(
                        "DELETE FROM {t} USING TIMESTAMP ? WHERE value = ? AND bucket = ? AND k = ? AND lot_id = ?"
                    ))
                    .await?,
                );
                scan.push(
                    prepare(format!(
                        "SELECT k, lot_id FROM {t} WHERE value = ? AND bucket = ? AND (k, lot_id) > (?, ?) LIMIT ?"
                    ))
                    .await?,
                );
                all.push(prepare(format!("SELECT value, bucket, k, lot_id FROM {t}")).await?);
            }
            insert_entry.push(three(ins)?);
            delete_entry.push(three(del)?);
            scan_entries.push(three(scan)?);
            all_entries.push(three(all)?);
        }
        let st = Statements {
            checkpoint: prepare(format!("SELECT value FROM {ks}.meta WHERE name = 'checkpoint'")).await?,
            set_checkpoint: prepare(format!(
                "UPDATE {ks}.meta USING TIMESTAMP ? SET value = ? WHERE name = 'checkpoint'"
            ))
            .await?,
            lot: prepare(format!("SELECT row FROM {ks}.lots WHERE lot_id = ?")).await?,
            put_lot: prepare(format!("INSERT INTO {ks}.lots (lot_id, row) VALUES (?, ?) USING TIMESTAMP ?")).await?,
            auction: prepare(format!("SELECT row FROM {ks}.auctions WHERE auction_id = ?")).await?,
            put_auction: prepare(format!(
                "INSERT INTO {ks}.auctions (auction_id, row) VALUES (?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            category: prepare(format!("SELECT row FROM {ks}.categories WHERE part = 0 AND category_id = ?")).await?,
            categories: prepare(format!("SELECT category_id, row FROM {ks}.categories WHERE part = 0")).await?,
            put_category: prepare(format!(
                "INSERT INTO {ks}.categories (part, category_id, row) VALUES (0, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            dead_letter: prepare(format!("SELECT letter FROM {ks}.dead_letters WHERE part = 0 AND idx = ?")).await?,
            dead_letters: prepare(format!("SELECT idx, letter FROM {ks}.dead_letters WHERE part = 0")).await?,
            put_dead_letter: prepare(format!(
                "INSERT INTO {ks}.dead_letters (part, idx, letter) VALUES (0, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            delete_dead_letter: prepare(format!(
                "DELETE FROM {ks}.dead_letters USING TIMESTAMP ? WHERE part = 0 AND idx = ?"
            ))
            .await?,
            all_lots: prepare(format!("SELECT lot_id, row FROM {ks}.lots")).await?,
            all_auctions: prepare(format!("SELECT auction_id, row FROM {ks}.auctions")).await?,
            insert_entry,
            delete_entry,
            scan_entries,
            all_entries,
        };
        Ok(Inner { session, keyspace: target.keyspace.clone(), st })
    }

    async fn truncate(&self) -> Result<(), StoreError> {
        let ks = &self.keyspace;
        let mut tables =
            vec!["meta".to_owned(), "lots".into(), "auctions".into(), "categories".into(), "dead_letters".into()];
        for dim in DIMS {
            tables.extend(SORTS.map(|sort| table(dim, sort)));
        }
        for t in tables {
            self.session.query_unpaged(format!("TRUNCATE {ks}.{t}"), ()).await.map_err(engine)?;
        }
        Ok(())
    }

    async fn one_blob(
        &self,
        statement: &PreparedStatement,
        key: impl SerializeRow,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let result = self.session.execute_unpaged(statement, key).await.map_err(engine)?;
        let rows = result.into_rows_result().map_err(engine)?;
        let row = rows.maybe_first_row::<(Option<Vec<u8>>,)>().map_err(engine)?;
        Ok(row.and_then(|(blob,)| blob))
    }

    async fn checkpoint(&self) -> Result<u64, StoreError> {
        let result = self.session.execute_unpaged(&self.st.checkpoint, ()).await.map_err(engine)?;
        let rows = result.into_rows_result().map_err(engine)?;
        let row = rows.maybe_first_row::<(Option<i64>,)>().map_err(engine)?;
        Ok(row.and_then(|(v,)| v).map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    async fn lot(&self, lot_id: String) -> Result<Option<LotSummary>, StoreError> {
        let blob = self.one_blob(&self.st.lot, (lot_id,)).await?;
        blob.map(|b| decode("lot", &b)).transpose()
    }

    /// Every row of a `(key, blob)` statement, in key order.
    async fn all_blobs<K>(&self, statement: &PreparedStatement) -> Result<BTreeMap<K, Vec<u8>>, StoreError>
    where
        K: Ord + for<'f, 'm> scylla::deserialize::value::DeserializeValue<'f, 'm> + 'static,
    {
        let pager = self.session.execute_iter(statement.clone(), ()).await.map_err(engine)?;
        let mut stream = pager.rows_stream::<(K, Vec<u8>)>().map_err(engine)?;
        let mut out = BTreeMap::new();
        while let Some((k, v)) = stream.try_next().await.map_err(engine)? {
            out.insert(k, v);
        }
        Ok(out)
    }

    /// One lot's row and index moves, as one atomic batch.
    async fn write_lot(&self, before: Option<LotSummary>, after: LotSummary) -> Result<(), StoreError> {
        let at = ts(after.index);
        let b = bucket(&after.lot_id);
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::new();
        for (d, &dim) in DIMS.iter().enumerate() {
            let old = before.as_ref().and_then(|lot| dim_value(lot, dim));
            let new = dim_value(&after, dim);
            for (s, sort) in SORTS.into_iter().enumerate() {
                let old = old.clone().zip(before.as_ref().map(|lot| to_cql(sort.key(lot))));
                let new = new.clone().map(|v| (v, to_cql(sort.key(&after))));
                // The current entry is written again even when unchanged: at this row's
                // timestamp it outlives a delete from any older write landing late (a
                // crashed projector's batch replayed by the batchlog).
                if let Some((value, k)) = old.filter(|old| Some(old) != new.as_ref()) {
                    batch.append_statement(self.st.delete_entry[d][s].clone());
                    values.push(Box::new((at, value.into_bytes(), b, k, after.lot_id.clone())));
                }
                if let Some((value, k)) = new {
                    batch.append_statement(self.st.insert_entry[d][s].clone());
                    values.push(Box::new((value.into_bytes(), b, k, after.lot_id.clone(), at)));
                }
            }
        }
        // The row last in the batch; the batch is atomic, so the order only reads well.
        batch.append_statement(self.st.put_lot.clone());
        values.push(Box::new((after.lot_id.clone(), after.encode_to_vec(), at)));
        self.session.batch(&batch, values).await.map_err(engine)?;
        Ok(())
    }

    async fn commit(self: Arc<Self>, changes: Changes) -> Result<(), StoreError> {
        let writes = changes.lots.into_iter().map(|(before, after)| {
            let inner = self.clone();
            async move { inner.write_lot(before, after).await }
        });
        futures::stream::iter(writes).buffer_unordered(CONCURRENCY).try_collect::<Vec<()>>().await?;
        for auction in changes.auctions {
            let values = (auction.auction_id.clone(), auction.encode_to_vec(), ts(auction.index));
            self.session.execute_unpaged(&self.st.put_auction, values).await.map_err(engine)?;
        }
        for category in changes.categories {
            let values = (category.category_id.clone(), category.encode_to_vec(), ts(category.index));
            self.session.execute_unpaged(&self.st.put_category, values).await.map_err(engine)?;
        }
        if let Some(letter) = changes.park {
            let at = ts(letter.index).saturating_mul(ATTEMPTS) + i64::from(letter.attempts).min(ATTEMPTS - 2);
            let values = (ts(letter.index), letter.encode_to_vec(), at);
            self.session.execute_unpaged(&self.st.put_dead_letter, values).await.map_err(engine)?;
        }
        if let Some(index) = changes.unpark {
            let at = ts(index).saturating_mul(ATTEMPTS) + ATTEMPTS - 1;
            self.session.execute_unpaged(&self.st.delete_dead_letter, (at, ts(index))).await.map_err(engine)?;
        }
        if let Some(index) = changes.checkpoint {
            self.session.execute_unpaged(&self.st.set_checkpoint, (ts(index), ts(index))).await.map_err(engine)?;
        }
        Ok(())
    }

    /// Up to `limit` entries of one bucket after `after`.
    async fn scan(
        &self,
        statement: &PreparedStatement,
        value: &[u8],
        bucket: i32,
        after: &(u64, String),
        limit: i32,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let values = (value.to_vec(), bucket, to_cql(after.0), after.1.clone(), limit);
        let result = self.session.execute_unpaged(statement, values).await.map_err(engine)?;
        let rows = result.into_rows_result().map_err(engine)?;
        let entries = rows.rows::<(i64, String)>().map_err(engine)?;
        entries.map(|row| row.map(|(k, id)| (from_cql(k), id)).map_err(engine)).collect()
    }

    /// Deletes index entries their rows have moved away from, at the row's timestamp: any
    /// write that puts such an entry back legitimately is newer. Best effort: a failure only
    /// leaves an entry that pages keep passing over.
    async fn heal(&self, delete: &PreparedStatement, value: &[u8], stale: Vec<(u64, String, u64)>) {
        for (k, lot_id, index) in stale {
            let values = (ts(index), value.to_vec(), bucket(&lot_id), to_cql(k), lot_id.clone());
            if let Err(e) = self.session.execute_unpaged(delete, values).await {
                tracing::warn!(%lot_id, error = %e, "catalog: could not delete a stale index entry");
            }
        }
    }

    async fn query(self: Arc<Self>, query: Query) -> Result<Page, StoreError> {
        let as_of_index = self.checkpoint().await?;
        let (set, lo, hi) = plan(&query);
        let scope = cursor_scope(query.sort, &set);
        let after = query.cursor.as_deref().map(|c| decode_cursor(c, &scope)).transpose()?;
        // Lot ids are never empty, so "after (lo, "")" starts at lo.
        let start = (lo, String::new());
        let from = match after {
            Some(after) if after >= start => after,
            _ => start,
        };
        let d = DIMS.iter().position(|&x| x == set.0).unwrap_or(0);
        let slot = sort_slot(query.sort);
        let limit = query.limit.max(1);
        let mut merge = Merge {
            inner: &self,
            statement: &self.st.scan_entries[d][slot],
            value: set.1.clone().into_bytes(),
            hi,
            fetch: i32::try_from(limit.max(16)).unwrap_or(i32::MAX),
            buckets: (0..BUCKETS)
                .map(|_| Bucket { buffer: VecDeque::new(), after: from.clone(), done: false })
                .collect(),
        };
        let mut items = Vec::with_capacity(limit);
        // A lot read under its old entry and again under its new one: listed once.
        let mut seen = std::collections::HashSet::new();
        let mut last: Option<(u64, String)> = None;
        let mut scanned = 0;
        loop {
            // The next entries in order, as many as could still fill the page; their rows
            // are then read together.
            let mut batch = Vec::new();
            while batch.len() < limit - items.len() && scanned < SCAN_MAX {
                let Some(entry) = merge.next().await? else { break };
                scanned += 1;
                batch.push(entry);
            }
            if batch.is_empty() {
                // Nothing more in range, or the scan bound reached with the page short.
                let more = scanned == SCAN_MAX && merge.peek().await?;
                let next_cursor = if more { last.as_ref().map(|l| encode_cursor(&scope, l.0, &l.1)) } else { None };
                return Ok(Page { items, next_cursor, as_of_index });
            }
            let rows = futures::future::try_join_all(batch.iter().map(|(_, id)| self.lot(id.clone()))).await?;
            let mut stale = Vec::new();
            for ((k, id), row) in batch.iter().zip(rows) {
                let Some(row) = row else { continue };
                // An entry its row no longer has: the row's own entry answers for it.
                let here = query.sort.key(&row) == *k
                    && dim_value(&row, set.0).is_some_and(|v| v.as_bytes() == merge.value.as_slice());
                if !here {
                    stale.push((*k, id.clone(), row.index));
                } else if query.matches(&row) && seen.insert(row.lot_id.clone()) {
                    items.push(row);
                }
            }
            self.heal(&self.st.delete_entry[d][slot], &merge.value, stale).await;
            last = batch.pop();
            if items.len() == limit {
                let next_cursor =
                    if merge.peek().await? { last.as_ref().map(|l| encode_cursor(&scope, l.0, &l.1)) } else { None };
                return Ok(Page { items, next_cursor, as_of_index });
            }
        }
    }

    async fn digest(&self) -> Result<Digest, StoreError> {
        let checkpoint = self.checkpoint().await?;
        let mut hasher = blake3::Hasher::new();
        let mut put = |table: &str, key: &[u8], value: &[u8]| {
            // Length-prefixed, so no two different contents hash the same stream.
            for part in [table.as_bytes(), key, value] {
                hasher.update(&(part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
        };
        put("meta", b"checkpoint", &checkpoint.to_be_bytes());
        let lots = self.all_blobs::<String>(&self.st.all_lots).await?;
        for (k, v) in &lots {
            put("lots", k.as_bytes(), v);
        }
        for (k, v) in self.all_blobs::<String>(&self.st.all_auctions).await? {
            put("auctions", k.as_bytes(), &v);
        }
        for (k, v) in self.all_blobs::<String>(&self.st.categories).await? {
            put("categories", k.as_bytes(), &v);
        }
        for (k, v) in self.all_blobs::<i64>(&self.st.dead_letters).await? {
            put("dead_letters", &k.to_be_bytes(), &v);
        }
        for (d, &dim) in DIMS.iter().enumerate() {
            for (s, sort) in SORTS.into_iter().enumerate() {
                let pager = self.session.execute_iter(self.st.all_entries[d][s].clone(), ()).await.map_err(engine)?;
                let mut stream = pager.rows_stream::<(Vec<u8>, i32, i64, String)>().map_err(engine)?;
                let mut entries = Vec::new();
                while let Some(entry) = stream.try_next().await.map_err(engine)? {
                    entries.push(entry);
                }
                entries.sort();
                let name = table(dim, sort);
                for (value, bucket, k, lot_id) in entries {
                    let key = [value.as_slice(), &bucket.to_be_bytes(), &k.to_be_bytes()].concat();
                    put(&name, &key, lot_id.as_bytes());
                }
            }
        }
        Ok(Digest { checkpoint, lots: lots.len() as u64, hash: *hasher.finalize().as_bytes() })
    }
}

fn three(v: Vec<PreparedStatement>) -> Result<[PreparedStatement; 3], StoreError> {
    v.try_into().map_err(|_| StoreError::Engine("scylla: one statement per order".into()))
}

/// One bucket's entries read ahead of the merge.
struct Bucket {
    buffer: VecDeque<(u64, String)>,
    /// The last entry read from the server.
    after: (u64, String),
    done: bool,
}

/// The entries of one index set in order, merged from its buckets, up to `hi`.
struct Merge<'a> {
    inner: &'a Inner,
    statement: &'a PreparedStatement,
    value: Vec<u8>,
    hi: u64,
    fetch: i32,
    buckets: Vec<Bucket>,
}

impl Merge<'_> {
    /// Whether an entry follows (reading ahead if needed).
    async fn peek(&mut self) -> Result<bool, StoreError> {
        Ok(self.head().await?.is_some())
    }

    async fn next(&mut self) -> Result<Option<(u64, String)>, StoreError> {
        let Some(b) = self.head().await? else { return Ok(None) };
        Ok(self.buckets[b].buffer.pop_front())
    }

    /// The bucket holding the smallest next entry within range.
    async fn head(&mut self) -> Result<Option<usize>, StoreError> {
        // The buckets that ran dry, refilled together.
        let dry: Vec<usize> =
            (0..self.buckets.len()).filter(|&b| self.buckets[b].buffer.is_empty() && !self.buckets[b].done).collect();
        let reads = dry.iter().map(|&b| {
            let (inner, statement, value, fetch) = (self.inner, self.statement, &self.value, self.fetch);
            let after = self.buckets[b].after.clone();
            async move { inner.scan(statement, value, b as i32, &after, fetch).await }
        });
        let got = futures::future::try_join_all(reads).await?;
        for (b, got) in dry.into_iter().zip(got) {
            let bucket = &mut self.buckets[b];
            bucket.done = got.len() < self.fetch as usize;
            if let Some(l) = got.last() {
                bucket.after = l.clone();
            }
            bucket.buffer.extend(got);
        }
        let head = (0..self.buckets.len())
            .filter_map(|b| self.buckets[b].buffer.front().map(|e| (e, b)))
            .min()
            .filter(|(e, _)| e.0 <= self.hi)
            .map(|(_, b)| b);
        Ok(head)
    }
}

impl Store for Scylla {
    fn checkpoint(&self) -> Result<u64, StoreError> {
        self.run(|inner| async move { inner.checkpoint().await })
    }

    fn lot(&self, lot_id: &str) -> Result<Option<LotSummary>, StoreError> {
        let lot_id = lot_id.to_owned();
        self.run(|inner| async move { inner.lot(lot_id).await })
    }

    fn auction(&self, auction_id: &str) -> Result<Option<AuctionRow>, StoreError> {
        let auction_id = auction_id.to_owned();
        self.run(|inner| async move {
            let blob = inner.one_blob(&inner.st.auction, (auction_id,)).await?;
            blob.map(|b| decode("auction", &b)).transpose()
        })
    }

    fn category(&self, category_id: &str) -> Result<Option<CategoryRow>, StoreError> {
        let category_id = category_id.to_owned();
        self.run(|inner| async move {
            let blob = inner.one_blob(&inner.st.category, (category_id,)).await?;
            blob.map(|b| decode("category", &b)).transpose()
        })
    }

    fn categories(&self) -> Result<Vec<CategoryRow>, StoreError> {
        self.run(|inner| async move {
            let rows = inner.all_blobs::<String>(&inner.st.categories).await?;
            rows.values().map(|b| decode("category", b)).collect()
        })
    }

    fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        self.run(|inner| inner.commit(changes))
    }

    fn query(&self, query: &Query) -> Result<Page, StoreError> {
        let query = query.clone();
        self.run(|inner| inner.query(query))
    }

    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.run(|inner| async move {
            let rows = inner.all_blobs::<i64>(&inner.st.dead_letters).await?;
            rows.values().map(|b| decode("dead letter", b)).collect()
        })
    }

    fn dead_letter(&self, index: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.run(move |inner| async move {
            let blob = inner.one_blob(&inner.st.dead_letter, (ts(index),)).await?;
            blob.map(|b| decode("dead letter", &b)).transpose()
        })
    }

    fn digest(&self) -> Result<Digest, StoreError> {
        self.run(|inner| async move { inner.digest().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_keep_their_order_as_cql_bigints() {
        let keys = [0, 1, (1 << 63) - 1, 1 << 63, u64::MAX - 1, u64::MAX];
        for pair in keys.windows(2) {
            assert!(to_cql(pair[0]) < to_cql(pair[1]), "{pair:?}");
        }
        for k in keys {
            assert_eq!(from_cql(to_cql(k)), k);
        }
    }

    #[test]
    fn uris_parse_and_bad_ones_are_refused() {
        let t = Target::parse("scylla://a:9042,b:9042/gavel?replication_factor=1");
        assert_eq!(
            t,
            Ok(Target {
                hosts: vec!["a:9042".into(), "b:9042".into()],
                keyspace: "gavel".into(),
                replication_factor: 1
            })
        );
        assert_eq!(Target::parse("scylla://a/gavel").map(|t| t.replication_factor), Ok(3));
        for bad in ["http://a/gavel", "scylla://a", "scylla:///gavel", "scylla://a/ga-vel", "scylla://a/g?x=1"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
