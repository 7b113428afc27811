//! Storage: the Raft log in RocksDB, the ledger in memory with snapshot files.
//!
//! - `db`: opening the database, its column families and shared helpers.
//! - `log`: the Raft log store ([`LogStore`]).
//! - `writer`: the log's writer thread (submission order, one WAL sync per group).
//! - `state`: the ledger state machine ([`StateMachine`], [`Shared`]).
//! - `snapshots`: the snapshot files, the state machine's only persisted form.
//! - `feed`: the feed's segment files and its ring of recent items.
//! - `legacy`: rewrites a format-1 data directory (one record per entity) as a snapshot.
//!
//! Column families:
//! - `log`: entry index (big-endian u64) -> `pb::Entry`.
//! - `raft_meta`: `vote`, `committed`, `purged` -> protobuf.
//! - `feed`: empty since the feed moved to its own files (`feed`); a data directory of an
//!   earlier build has its items moved out on open.
//! - `default`: `format` and `node_id`, so a foreign or mixed-up data dir is refused.
//! - `sm_meta`: the feed's start, kept run and retention floor. `sm_state`, `snapshot`:
//!   format 1 only, emptied by the rewrite.
//!
//! Log appends are submitted to the writer thread and acknowledged to openraft only after a
//! WAL sync covers them; they are the only synced write per entry. Applying an entry changes
//! the in-memory ledger and appends the entry's feed item to the feed's files unsynced (they
//! are synced before a snapshot file is written): after a crash, the newest snapshot file is
//! loaded and openraft re-applies the committed log after it, writing again any item lost.
//! RocksDB and file calls run on blocking threads, off the async runtime (except the log's
//! start-up reads and the writer's join when the log store is dropped at shutdown).

mod db;
mod feed;
mod legacy;
mod log;
mod snapshots;
mod state;
mod writer;

pub use db::{StoreError, open_db};
pub use log::LogStore;
pub use state::{FeedHoldings, FeedRetention, Poisoned, Shared, StateMachine};

/// The Raft instance over this state machine. Declared here rather than in `raft`, which the
/// stores import: the type configuration does not depend on the stores.
pub type Raft = openraft::Raft<crate::raft::TypeConfig, StateMachine>;
