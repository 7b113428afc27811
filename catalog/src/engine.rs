//! The store a deployment chose, as one type: the gateway runs either.

use crate::embedded::Embedded;
use crate::query::{Page, Query};
use crate::scylladb::Scylla;
use crate::store::{Changes, DeadLetter, Digest, Store, StoreError};
use crate::summary::{AuctionRow, CategoryRow, LotSummary};

/// The embedded store or ScyllaDB.
#[allow(clippy::large_enum_variant, reason = "one per process, never moved after start")]
pub enum Engine {
    Embedded(Embedded),
    Scylla(Scylla),
}

impl Engine {
    fn store(&self) -> &dyn Store {
        match self {
            Engine::Embedded(s) => s,
            Engine::Scylla(s) => s,
        }
    }
}

impl Store for Engine {
    fn checkpoint(&self) -> Result<u64, StoreError> {
        self.store().checkpoint()
    }
    fn lot(&self, lot_id: &str) -> Result<Option<LotSummary>, StoreError> {
        self.store().lot(lot_id)
    }
    fn auction(&self, auction_id: &str) -> Result<Option<AuctionRow>, StoreError> {
        self.store().auction(auction_id)
    }
    fn category(&self, category_id: &str) -> Result<Option<CategoryRow>, StoreError> {
        self.store().category(category_id)
    }
    fn categories(&self) -> Result<Vec<CategoryRow>, StoreError> {
        self.store().categories()
    }
    fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        self.store().commit(changes)
    }
    fn query(&self, query: &Query) -> Result<Page, StoreError> {
        self.store().query(query)
    }
    fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.store().dead_letters()
    }
    fn dead_letter(&self, index: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.store().dead_letter(index)
    }
    fn digest(&self) -> Result<Digest, StoreError> {
        self.store().digest()
    }

    fn replace(&self, rows: crate::store::Replacement) -> Result<(), StoreError> {
        self.store().replace(rows)
    }

    fn can_replace(&self) -> bool {
        self.store().can_replace()
    }
}
