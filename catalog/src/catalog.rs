//! The catalog: a store kept in step with the feed. Items are applied in batches, each batch
//! with its checkpoint in one atomic write, so a crash at any point neither skips nor
//! double-applies an item; items at or below the checkpoint are ignored (redelivery).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use node::pb::FeedItem;
use node::{BlockingHandler, HandleError, StateExport};
use prost::Message;
use tokio::sync::watch;

use crate::query::{Page, Query};
use crate::store::{Changes, DeadLetter, Replacement, Store, StoreError};
use crate::summary::{self, AuctionRow, CategoryRow, Found, LotSummary, ProjectError, Rows};

/// What retrying a dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// Applied now (or found already superseded by later items); the letter is gone.
    Applied,
    /// Refused again; the letter stays, with this error and one more attempt.
    StillFailing(String),
    NotFound,
}

/// A store and the projection that fills it.
pub struct Catalog<S> {
    store: S,
    /// One writer at a time: the projector and operators' retries.
    writer: Mutex<()>,
    applied: watch::Sender<u64>,
}

impl<S: Store> Catalog<S> {
    pub fn new(store: S) -> Result<Arc<Catalog<S>>, StoreError> {
        let checkpoint = store.checkpoint()?;
        Ok(Arc::new(Catalog { store, writer: Mutex::new(()), applied: watch::Sender::new(checkpoint) }))
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Replaces every row with the catalog of `state` (the whole ledger at `state.index`) and
    /// the checkpoint with its index: when the feed after the checkpoint is gone from every
    /// node (retention), the catalog starts again from there.
    pub fn bootstrap(&self, state: &StateExport) -> Result<(), StoreError> {
        let _writer = self.lock();
        let (mut lots, auctions, categories) = summary::from_state(&state.ledger, state.index);
        // A lot created before the ledger kept creating indexes has 0 there: the row this
        // catalog already has knows better, for the `newest` order.
        for lot in lots.iter_mut().filter(|l| l.created_index == 0) {
            if let Some(row) = self.store.lot(&lot.lot_id)? {
                lot.created_index = row.created_index;
            }
        }
        self.store.replace(Replacement { lots, auctions, categories, checkpoint: state.index })?;
        self.applied.send_replace(state.index);
        Ok(())
    }

    /// The last index applied or parked.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Reads the store's checkpoint and publishes it as applied: how a read-only gateway
    /// follows a store another gateway projects into.
    pub fn refresh(&self) -> Result<u64, StoreError> {
        let checkpoint = self.store.checkpoint()?;
        self.applied.send_if_modified(|applied| {
            let newer = checkpoint > *applied;
            if newer {
                *applied = checkpoint;
            }
            newer
        });
        Ok(checkpoint)
    }

    /// Waits up to `timeout` until the catalog has applied `index`; false if it has not.
    pub async fn wait_for(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        matches!(tokio::time::timeout(timeout, rx.wait_for(|&a| a >= index)).await, Ok(Ok(_)))
    }

    /// One page. A `category` filter becomes its subtree in the catalog's own tree.
    pub fn query(&self, query: &Query) -> Result<Page, StoreError> {
        self.store.query(&self.resolve(query)?)
    }

    /// `query` with its `category` replaced by the set of that category's subtree (the lot's
    /// own category or a further one must be in it).
    pub fn resolve(&self, query: &Query) -> Result<Query, StoreError> {
        let Some(category) = &query.category else { return Ok(query.clone()) };
        let tree = self.store.categories()?;
        let edges = tree.iter().map(|c| (c.category_id.as_str(), c.parent_id.as_str()));
        let set = ledger::content::subtree_of(edges, category);
        let categories = match &query.categories {
            Some(given) => given.intersection(&set).cloned().collect(),
            None => set,
        };
        Ok(Query { category: None, categories: Some(categories), ..query.clone() })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data of its own; a panic while held leaves nothing half-done
        // (the store's writes are atomic).
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies consecutive items, skipping those at or below the checkpoint; all or nothing.
    pub fn apply(&self, items: &[FeedItem]) -> Result<(), ProjectError> {
        let _writer = self.lock();
        let checkpoint = self.store.checkpoint()?;
        let fresh: Vec<&FeedItem> = items.iter().filter(|i| i.index > checkpoint).collect();
        let Some(last) = fresh.last().map(|i| i.index) else { return Ok(()) };
        let mut overlay = Overlay::new(&self.store);
        for item in fresh {
            summary::apply(&mut overlay, item)?;
        }
        let mut changes = overlay.into_changes();
        changes.checkpoint = Some(last);
        self.store.commit(changes)?;
        self.applied.send_replace(last);
        Ok(())
    }

    /// Parks `item` as a dead letter and moves the checkpoint past it.
    pub fn park(&self, item: &FeedItem, error: &str) -> Result<(), StoreError> {
        let _writer = self.lock();
        if item.index <= self.store.checkpoint()? {
            return Ok(());
        }
        let letter = DeadLetter {
            index: item.index,
            at_ms: item.at_ms,
            error: error.to_owned(),
            attempts: 1,
            item: item.encode_to_vec(),
        };
        self.store.commit(Changes { checkpoint: Some(item.index), park: Some(letter), ..Changes::default() })?;
        self.applied.send_replace(item.index);
        Ok(())
    }

    /// Tries a dead letter again, against the rows as they are now: changes by later items
    /// win (a row already past the letter's index is left alone).
    pub fn retry(&self, index: u64) -> Result<Retried, StoreError> {
        let _writer = self.lock();
        let Some(mut letter) = self.store.dead_letter(index)? else { return Ok(Retried::NotFound) };
        let item = FeedItem::decode(letter.item.as_slice())
            .map_err(|e| StoreError::Corrupt { what: "dead letter's item", error: e.to_string() })?;
        let mut overlay = Overlay::new(&self.store);
        match summary::apply(&mut overlay, &item) {
            Ok(()) => {
                let mut changes = overlay.into_changes();
                changes.unpark = Some(index);
                self.store.commit(changes)?;
                Ok(Retried::Applied)
            }
            Err(ProjectError::Store(e)) => Err(e),
            Err(ProjectError::Refused(reason)) => {
                letter.error = reason.clone();
                letter.attempts = letter.attempts.saturating_add(1);
                self.store.commit(Changes { park: Some(letter), ..Changes::default() })?;
                Ok(Retried::StillFailing(reason))
            }
        }
    }
}

/// The rows one write reads and changes, loaded from the store on first use.
struct Overlay<'a, S> {
    store: &'a S,
    /// lot id -> (index stored before this write, the stored row, the row now).
    lots: BTreeMap<String, (u64, Option<LotSummary>, LotSummary)>,
    auctions: BTreeMap<String, (u64, AuctionRow)>,
    categories: BTreeMap<String, (u64, CategoryRow)>,
}

impl<'a, S: Store> Overlay<'a, S> {
    fn new(store: &'a S) -> Overlay<'a, S> {
        Overlay { store, lots: BTreeMap::new(), auctions: BTreeMap::new(), categories: BTreeMap::new() }
    }

    fn into_changes(self) -> Changes {
        let lots = self.lots.into_values().filter(|(_, before, now)| before.as_ref() != Some(now));
        let lots = lots.map(|(_, before, now)| (before, now)).collect();
        let auctions = self.auctions.into_values().map(|(_, row)| row).collect();
        let categories = self.categories.into_values().map(|(_, row)| row).collect();
        Changes { lots, auctions, categories, ..Changes::default() }
    }
}

impl<S: Store> Rows for Overlay<'_, S> {
    fn lot(&mut self, lot_id: &str, index: u64) -> Result<Found<'_, LotSummary>, StoreError> {
        if !self.lots.contains_key(lot_id) {
            let Some(row) = self.store.lot(lot_id)? else { return Ok(Found::Missing) };
            self.lots.insert(lot_id.to_owned(), (row.index, Some(row.clone()), row));
        }
        Ok(match self.lots.get_mut(lot_id) {
            Some((base, _, _)) if *base >= index => Found::Superseded,
            Some((_, _, row)) => Found::Current(row),
            None => Found::Missing,
        })
    }

    fn auction(&mut self, auction_id: &str, index: u64) -> Result<Found<'_, AuctionRow>, StoreError> {
        let store = self.store;
        found(&mut self.auctions, auction_id, index, || Ok(store.auction(auction_id)?.map(|r| (r.index, r))))
    }

    fn category(&mut self, category_id: &str, index: u64) -> Result<Found<'_, CategoryRow>, StoreError> {
        let store = self.store;
        found(&mut self.categories, category_id, index, || Ok(store.category(category_id)?.map(|r| (r.index, r))))
    }

    fn put_category(&mut self, row: CategoryRow) {
        self.categories.insert(row.category_id.clone(), (0, row));
    }

    fn put_lot(&mut self, row: LotSummary) {
        self.lots.insert(row.lot_id.clone(), (0, None, row));
    }

    fn put_auction(&mut self, row: AuctionRow) {
        self.auctions.insert(row.auction_id.clone(), (0, row));
    }
}

/// A sale's or category's row as the item at `index` finds it, loaded (with the index it was
/// stored at) on first use.
fn found<'m, T>(
    rows: &'m mut BTreeMap<String, (u64, T)>,
    id: &str,
    index: u64,
    load: impl FnOnce() -> Result<Option<(u64, T)>, StoreError>,
) -> Result<Found<'m, T>, StoreError> {
    if !rows.contains_key(id) {
        let Some(row) = load()? else { return Ok(Found::Missing) };
        rows.insert(id.to_owned(), row);
    }
    Ok(match rows.get_mut(id) {
        Some((base, _)) if *base >= index => Found::Superseded,
        Some((_, row)) => Found::Current(row),
        None => Found::Missing,
    })
}

/// The catalog as a [`node::Subscriber`] drives it (wrapped in [`node::OnBlockingPool`]):
/// store failures are retried, refused items parked.
impl<S: Store> BlockingHandler for Catalog<S> {
    fn checkpoint(&self) -> Result<u64, HandleError> {
        self.store.checkpoint().map_err(|e| HandleError::Transient(e.to_string()))
    }

    fn apply(&self, items: &[FeedItem]) -> Result<(), HandleError> {
        match Catalog::apply(self, items) {
            Ok(()) => Ok(()),
            Err(ProjectError::Store(e)) => Err(HandleError::Transient(e.to_string())),
            Err(ProjectError::Refused(reason)) => Err(HandleError::Permanent(reason)),
        }
    }

    fn park(&self, item: &FeedItem, error: &str) -> Result<(), HandleError> {
        Catalog::park(self, item, error).map_err(|e| HandleError::Transient(e.to_string()))
    }

    fn bootstrap(&self, state: &StateExport) -> Result<(), HandleError> {
        Catalog::bootstrap(self, state).map_err(|e| HandleError::Transient(e.to_string()))
    }

    fn can_bootstrap(&self) -> bool {
        self.store.can_replace()
    }
}
