//! The store behind the catalog: what any engine must do. The embedded RocksDB store is the
//! default; another engine implements the same trait and passes the same suite
//! (`tests/store_suite.rs`).

use crate::query::{Page, Query};
use crate::summary::{AuctionRow, CategoryRow, LotSummary};

/// A store failure. All are treated as transient by the projector (retried with backoff),
/// except a bad cursor, which is the caller's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("catalog store: {0}")]
    Engine(String),
    #[error("catalog store holds an undecodable {what}: {error}")]
    Corrupt { what: &'static str, error: String },
    #[error("invalid cursor: {0}")]
    BadCursor(&'static str),
}

pub use node::DeadLetter;

/// One atomic write: rows (each with the version it replaces, so secondary indexes can be
/// kept exact), the checkpoint they bring the store to, and dead-letter changes.
#[derive(Debug, Default)]
pub struct Changes {
    pub lots: Vec<(Option<LotSummary>, LotSummary)>,
    pub auctions: Vec<AuctionRow>,
    pub categories: Vec<CategoryRow>,
    pub checkpoint: Option<u64>,
    pub park: Option<DeadLetter>,
    pub unpark: Option<u64>,
}

/// Every row of a catalog, replacing all it held (`Store::replace`).
#[derive(Debug, Default)]
pub struct Replacement {
    pub lots: Vec<LotSummary>,
    pub auctions: Vec<AuctionRow>,
    pub categories: Vec<CategoryRow>,
    pub checkpoint: u64,
}

/// What a rebuild is compared by: every byte the store holds, hashed in key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub checkpoint: u64,
    pub lots: u64,
    pub hash: [u8; 32],
}

impl Digest {
    pub fn hex(&self) -> String {
        self.hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A catalog engine. Calls may block (disk or network): async callers run them off the
/// runtime's worker threads.
pub trait Store: Send + Sync + 'static {
    /// The index of the last feed item applied or parked (0: none).
    fn checkpoint(&self) -> Result<u64, StoreError>;
    fn lot(&self, lot_id: &str) -> Result<Option<LotSummary>, StoreError>;
    fn auction(&self, auction_id: &str) -> Result<Option<AuctionRow>, StoreError>;
    fn category(&self, category_id: &str) -> Result<Option<CategoryRow>, StoreError>;
    /// The whole category tree (small: at most `ledger::limits::CATEGORIES_MAX` rows).
    fn categories(&self) -> Result<Vec<CategoryRow>, StoreError>;
    /// Applies `changes`: all or nothing (embedded), or in idempotent parts with the
    /// checkpoint last (ScyllaDB), so that a replay from the checkpoint completes a commit cut
    /// short without applying anything twice.
    fn commit(&self, changes: Changes) -> Result<(), StoreError>;
    /// One page of lots, read from one consistent point (embedded) or with rows at least as
    /// new as `as_of_index` (ScyllaDB).
    fn query(&self, query: &Query) -> Result<Page, StoreError>;
    /// Dead letters by index, oldest first.
    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;
    fn dead_letter(&self, index: u64) -> Result<Option<DeadLetter>, StoreError>;
    fn digest(&self) -> Result<Digest, StoreError>;
    /// Replaces every lot, auction and category row and the checkpoint, all or nothing (dead
    /// letters stay): how a catalog starts from a state export when the feed after its
    /// checkpoint is gone. An engine that cannot do it at once leaves it out
    /// ([`Store::can_replace`] false) and its catalog stops instead.
    fn replace(&self, rows: Replacement) -> Result<(), StoreError> {
        let _ = rows;
        Err(StoreError::Engine("this catalog engine cannot start from a state export".into()))
    }
    fn can_replace(&self) -> bool {
        false
    }
}
