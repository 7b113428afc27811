//! Gavel's public catalog: a CQRS read model of the lots, built from the committed-event
//! feed, answering filtered, sorted, paged queries (`GET /v1/catalog` in `shared/API.md`).
//!
//! - [`summary`]: the rows (lot summaries) and how each event changes them.
//! - [`query`]: filters, orders, pages, and which lots match (the oracle tests use too).
//! - [`store`]: what a catalog engine must do, and the types it stores.
//! - [`embedded`]: the default engine: rows in RocksDB, secondary indexes in memory.
//! - [`scylladb`]: the scale-out engine: rows and index tables in ScyllaDB.
//! - [`engine`]: the store a deployment chose, embedded or ScyllaDB, as one type.
//! - [`catalog`]: a store kept in step with the feed: atomic checkpoints, dead letters.
//! - [`sim`] (feature `sim`): a reproducible auction day through the real ledger, for tests
//!   and benchmarks.

pub mod catalog;
pub mod embedded;
pub mod engine;
mod index;
pub mod query;
pub mod scylladb;
#[cfg(feature = "sim")]
pub mod sim;
pub mod store;
pub mod summary;

pub use catalog::{Catalog, Retried};
pub use embedded::Embedded;
pub use engine::Engine;
pub use query::{Page, Query, Sort};
pub use scylladb::Scylla;
pub use store::{DeadLetter, Digest, Store, StoreError};
pub use summary::LotSummary;
