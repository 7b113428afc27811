//! RocksDB storage: the Raft log store and the state-machine store, in one database.
//!
//! - `db`: opening the database, its column families and shared helpers.
//! - `log`: the Raft log store ([`LogStore`]).
//! - `state`: the ledger state machine ([`StateMachine`], [`Shared`]).
//! - `keys`: the state machine's record keys.
//!
//! Column families:
//! - `log`: entry index (big-endian u64) -> `pb::Entry`.
//! - `raft_meta`: `vote`, `committed`, `purged` -> protobuf.
//! - `sm_meta`: `applied` (`pb::LogId`), `membership` (`pb::StoredMembership`), `clock` (i64).
//! - `sm_state`: one record per ledger entity: `u/<user>`, `l/<lot>`, `a/<auction>`,
//!   `r/<bidder>\0<bid_id>`, and bid-history lines `h/<lot>\0<seq>`.
//! - `feed`: entry index -> `pb::FeedItem`, the events that entry produced (the outbox).
//! - `snapshot`: `meta`, `data` of the last built or installed snapshot.
//! - `default`: `format` and `node_id`, so a foreign or mixed-up data dir is refused.
//!
//! Log appends are acknowledged to openraft only after the WAL is fsync'd. A state-machine
//! batch (ledger records, feed items and the applied id) is one atomic `WriteBatch`; it need
//! not be fsync'd because the fsync'd log can always re-apply it. Every RocksDB call runs on a
//! blocking thread, never on the async runtime.

mod db;
mod keys;
mod log;
mod state;

pub use db::{StoreError, open_db};
pub use log::LogStore;
pub use state::{Poisoned, Shared, StateMachine};

/// The Raft instance over this state machine. Declared here rather than in `raft`, which the
/// stores import: the type configuration does not depend on the stores.
pub type Raft = openraft::Raft<crate::raft::TypeConfig, StateMachine>;
