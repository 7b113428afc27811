//! What a vector store must do for search, and the types it keeps. Two engines implement it:
//! [`crate::embedded`] (default) and, for scale-out, a Qdrant server; one behavioural suite
//! (`tests/store_suite.rs`) holds them to the same contract.

/// Which collection a point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One point per lot: its title, description and artist embedded.
    Lot,
    /// One point per artist: the name and the artist's lots.
    Artist,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Lot, Kind::Artist];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Lot => "lots",
            Kind::Artist => "artists",
        }
    }
}

/// What is filtered on and shown with a hit. Stored as protobuf: tags are never reused.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub artist: String,
    /// `ledger::pb::LotStatus` as stored in the ledger.
    #[prost(int32, tag = "3")]
    pub status: i32,
    #[prost(string, tag = "4")]
    pub category: String,
    #[prost(string, tag = "5")]
    pub currency: String,
    /// Artists: how many lots the point was built from.
    #[prost(uint64, tag = "6")]
    pub lot_count: u64,
    /// The log index of the last change to this point (replays at or below it change nothing).
    #[prost(uint64, tag = "7")]
    pub index: u64,
}

/// A stored point: an id within its kind, a unit vector, its payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Point {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(float, repeated, tag = "2")]
    pub vector: Vec<f32>,
    #[prost(message, required, tag = "3")]
    pub payload: Payload,
}

/// Payload conditions, all of which must hold (`None`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub status: Option<i32>,
    pub category: Option<String>,
    pub currency: Option<String>,
    pub artist: Option<String>,
}

impl Filter {
    pub fn matches(&self, p: &Payload) -> bool {
        self.status.is_none_or(|s| s == p.status)
            && self.category.as_ref().is_none_or(|c| *c == p.category)
            && self.currency.as_ref().is_none_or(|c| *c == p.currency)
            && self.artist.as_ref().is_none_or(|a| *a == p.artist)
    }
}

/// A search answer: the point's id, cosine similarity and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub payload: Payload,
}

pub use node::DeadLetter;

/// One atomic write: points replaced or added, sales' currencies recorded, the checkpoint
/// moved, maybe an item parked.
#[derive(Debug, Default)]
pub struct Changes {
    pub upserts: Vec<(Kind, Point)>,
    /// Sale id -> its currency (a lot joining a sale takes it).
    pub auctions: Vec<(String, String)>,
    pub checkpoint: Option<u64>,
    pub park: Option<DeadLetter>,
    /// A dead letter retried with success: removed.
    pub unpark: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("vector store I/O: {0}")]
    Io(String),
    #[error("vector store holds a corrupt record: {0}")]
    Corrupt(String),
    #[error("vector of {got} dimensions where the store holds {expected}")]
    Dimension { expected: usize, got: usize },
    #[error(
        "the store holds vectors of model {stored}, not of {given}: reindex into an empty directory to change models"
    )]
    Model { stored: String, given: String },
}

/// A vector store. Implementations are shared between the indexer (one writer) and queries.
pub trait VectorStore: Send + Sync + 'static {
    /// The last log index committed (0: nothing yet). Searches that start after reading it
    /// see at least everything up to it.
    fn checkpoint(&self) -> Result<u64, StoreError>;
    /// Applies `changes` all or nothing.
    fn commit(&self, changes: Changes) -> Result<(), StoreError>;
    fn get(&self, kind: Kind, id: &str) -> Result<Option<Point>, StoreError>;
    /// The currency recorded for a sale.
    fn auction_currency(&self, auction_id: &str) -> Result<Option<String>, StoreError>;
    /// The `limit` points most similar to `vector` (cosine, best first; ties by id) that pass
    /// `filter`. Exact in the embedded store; approximate (HNSW) in a large Qdrant collection.
    fn search(&self, kind: Kind, vector: &[f32], filter: &Filter, limit: usize) -> Result<Vec<Hit>, StoreError>;
    /// Every point passing `filter`, by id.
    fn scroll(&self, kind: Kind, filter: &Filter) -> Result<Vec<Point>, StoreError>;
    /// How many points `kind` holds.
    fn count(&self, kind: Kind) -> Result<usize, StoreError>;
    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;
    fn dead_letter(&self, index: u64) -> Result<Option<DeadLetter>, StoreError>;
}
