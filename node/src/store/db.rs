//! The database: column families, the format marker, and the helpers every store uses.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};

/// The data directory's format: 2 keeps the ledger only as snapshot files beside the database.
pub(super) const FORMAT: &[u8] = b"gavel-node/2";
/// Format 1 kept one record per ledger entity; `legacy` rewrites it on open.
pub(super) const FORMAT_V1: &[u8] = b"gavel-node/1";
/// `SnapshotData.format_version` written and read by this build.
/// 2: snapshots carry no feed. 1 (still read): the whole feed up to the snapshot's index.
pub(super) const SNAPSHOT_FORMAT: u32 = 2;
pub(super) const SNAPSHOT_FORMAT_V1: u32 = 1;
pub(super) const CF_LOG: &str = "log";
pub(super) const CF_RAFT_META: &str = "raft_meta";
pub(super) const CF_SM_META: &str = "sm_meta";
pub(super) const CF_SM_STATE: &str = "sm_state";
pub(super) const CF_FEED: &str = "feed";
pub(super) const CF_SNAPSHOT: &str = "snapshot";
pub(super) const CFS: [&str; 6] = [CF_LOG, CF_RAFT_META, CF_SM_META, CF_SM_STATE, CF_FEED, CF_SNAPSHOT];

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("{path} is not a Gavel node data directory (format marker {found:?})")]
    Foreign { path: String, found: String },
    #[error("{path} belongs to node {found}, not node {expected}")]
    WrongNode { path: String, found: u64, expected: u64 },
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

pub(super) fn corrupt(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// An I/O error that names the path it happened on.
pub(super) fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Creates `dir` if needed and makes its name durable: a directory's entry is durable only
/// once its parent is fsync'd, so a power loss could otherwise take it and its files.
pub(super) fn create_durable_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| at(dir, e))?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(parent)
}

/// Fsyncs a directory: the names created, renamed or removed in it become durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| at(dir, e))
}

pub(super) fn rocks(e: rocksdb::Error) -> io::Error {
    io::Error::other(e)
}

pub(super) fn cf<'a>(db: &'a DB, name: &str) -> io::Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| corrupt(format!("missing column family {name}")))
}

pub(super) fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> io::Result<M> {
    M::decode(bytes).map_err(|e| corrupt(format!("{what}: {e}")))
}

pub(super) fn get_msg<M: Message + Default>(db: &DB, cf_name: &str, key: &[u8]) -> io::Result<Option<M>> {
    match db.get_cf(cf(db, cf_name)?, key).map_err(rocks)? {
        Some(bytes) => decode(&bytes, cf_name).map(Some),
        None => Ok(None),
    }
}

/// The big-endian key of a log or feed index: keys sort as the indexes do.
pub(super) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(super) fn index_of(key: &[u8]) -> io::Result<u64> {
    <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| corrupt("log key is not 8 bytes"))
}

/// Runs RocksDB work on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Opens (or creates) the node's database, checking it belongs to `node_id`.
pub fn open_db(path: &Path, node_id: u64) -> Result<Arc<DB>, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // The WAL is what makes appends durable; keep it even under memory pressure.
    opts.set_manual_wal_flush(false);
    let cfs = CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, path, cfs)?;
    let shown = path.display().to_string();
    match db.get(b"format")? {
        Some(found) if found != FORMAT && found != FORMAT_V1 => {
            return Err(StoreError::Foreign { path: shown, found: String::from_utf8_lossy(&found).into_owned() });
        }
        Some(_) => {}
        None => {
            if db
                .iterator_cf(db.cf_handle(CF_LOG).ok_or(StoreError::Corrupt("no log cf".into()))?, IteratorMode::Start)
                .next()
                .is_some()
            {
                return Err(StoreError::Foreign { path: shown, found: String::new() });
            }
            let mut batch = WriteBatch::default();
            batch.put(b"format", FORMAT);
            batch.put(b"node_id", node_id.to_be_bytes());
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            db.write_opt(batch, &sync)?;
        }
    }
    let found = db.get(b"node_id")?.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map(u64::from_be_bytes);
    match found {
        Some(found) if found == node_id => Ok(Arc::new(db)),
        Some(found) => Err(StoreError::WrongNode { path: shown, found, expected: node_id }),
        None => Err(StoreError::Corrupt(format!("{shown} has no node id"))),
    }
}
