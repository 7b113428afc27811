//! The indexer: a feed [`Handler`] that embeds each lot's title, artist and description when
//! the lot is created, keeps its payload (status, currency) current, and rebuilds each
//! touched artist's point: the name's embedding plus the mean of the artist's lot vectors,
//! normalised. One commit per batch, with the checkpoint: replays change nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ledger::pb::LotStatus;
use ledger::pb::event::Kind as Event;
use node::pb::FeedItem;
use node::{BlockingHandler, HandleError, StateExport};
use prost::Message;
use tokio::sync::watch;

use crate::model::{Encoder, ModelError, Role};
use crate::store::{Changes, DeadLetter, Filter, Kind, Payload, Point, StoreError, VectorStore};

/// Why a batch was not indexed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The item contradicts what the index holds: retrying cannot help.
    #[error("{0}")]
    Refused(String),
}

/// Feed items per indexer batch: each new lot costs milliseconds to embed, so small batches
/// keep commits (and progress) frequent.
pub const BATCH_ITEMS: usize = 16;

/// Lots per commit when the index starts from a state export: bounds the vectors held at
/// once and shows progress in the store.
pub const BOOTSTRAP_LOTS: usize = 512;

/// A lot's payload from its public view, as of `index`.
fn lot_payload(v: &ledger::pb::LotView, index: u64) -> Payload {
    Payload {
        title: v.title.clone(),
        artist: v.artist.clone(),
        status: v.status,
        category: v.category.clone(),
        currency: v.currency.clone(),
        lot_count: 0,
        index,
    }
}

/// The text a lot is found by.
pub fn lot_text(title: &str, artist: &str, description: &str) -> String {
    match (artist.is_empty(), description.is_empty()) {
        (true, true) => title.to_owned(),
        (false, true) => format!("{title}. {artist}"),
        (true, false) => format!("{title}. {description}"),
        (false, false) => format!("{title}. {artist}. {description}"),
    }
}

/// A store kept in step with the feed.
pub struct Index<S> {
    store: Arc<S>,
    encoder: Arc<Encoder>,
    applied: watch::Sender<u64>,
    /// One writer at a time (the subscriber, or an admin retry).
    writer: std::sync::Mutex<()>,
}

impl<S: VectorStore> Index<S> {
    pub fn new(store: Arc<S>, encoder: Arc<Encoder>) -> Result<Index<S>, StoreError> {
        let checkpoint = store.checkpoint()?;
        Ok(Index { store, encoder, applied: watch::Sender::new(checkpoint), writer: std::sync::Mutex::new(()) })
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn encoder(&self) -> &Arc<Encoder> {
        &self.encoder
    }

    /// The last applied index, as it moves.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies consecutive feed items, all or nothing; items at or below the checkpoint are
    /// ignored.
    pub fn apply(&self, items: &[FeedItem]) -> Result<(), IndexError> {
        let _writer = self.lock();
        let checkpoint = self.store.checkpoint()?;
        let fresh: Vec<&FeedItem> = items.iter().filter(|i| i.index > checkpoint).collect();
        let Some(last) = fresh.last().map(|i| i.index) else { return Ok(()) };
        let mut batch = Batch { store: &*self.store, lots: BTreeMap::new(), auctions: HashMap::new(), retry: false };
        for item in fresh {
            for event in item.events.iter().filter_map(|e| e.kind.as_ref()) {
                batch.event(event, item.index)?;
            }
        }
        let mut changes = self.embed(batch)?;
        changes.checkpoint = Some(last);
        self.store.commit(changes)?;
        self.applied.send_replace(last);
        Ok(())
    }

    /// Brings the index to the ledger as of `state.index` (a state export) and moves the
    /// checkpoint there: lots it lacks are embedded, the ones it has get their payload as the
    /// state has it (written only where it changed), the sales' currencies are recorded, and
    /// the artists of new lots are rebuilt. In commits of [`BOOTSTRAP_LOTS`] lots, the
    /// checkpoint with the last: cut short, it is done again from the start, and a lot done
    /// already is left as it is. Lots are never deleted, so this leaves what following every
    /// item would (up to the payloads' `index`, the state's).
    pub fn bootstrap(&self, state: &StateExport) -> Result<(), IndexError> {
        let _writer = self.lock();
        let lots: Vec<&ledger::state::Lot> = state.ledger.lots().collect();
        let mut chunks: Vec<&[&ledger::state::Lot]> = lots.chunks(BOOTSTRAP_LOTS).collect();
        if chunks.is_empty() {
            // No lots: still one commit, for the checkpoint and the sales.
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (n, chunk) in chunks.into_iter().enumerate() {
            let mut batch =
                Batch { store: &*self.store, lots: BTreeMap::new(), auctions: HashMap::new(), retry: false };
            if n == 0 {
                for auction in state.ledger.auctions() {
                    batch.auctions.insert(auction.auction_id.clone(), auction.currency.as_str().to_owned());
                }
            }
            for lot in chunk {
                let v = ledger::state::lot_view(lot);
                let payload = lot_payload(&v, state.index);
                let changed = match batch.lot(&v.lot_id)? {
                    Some(known) => {
                        let same =
                            Payload { index: known.point.payload.index, ..payload.clone() } == known.point.payload;
                        known.point.payload = payload;
                        !same
                    }
                    None => {
                        let text = Some(lot_text(&v.title, &v.artist, &v.description));
                        let point = Point { id: v.lot_id.clone(), vector: Vec::new(), payload };
                        batch.lots.insert(v.lot_id.clone(), Pending { point, text });
                        true
                    }
                };
                if !changed {
                    batch.lots.remove(&v.lot_id);
                }
            }
            let mut changes = self.embed(batch)?;
            if n == last {
                changes.checkpoint = Some(state.index);
            }
            self.store.commit(changes)?;
        }
        self.applied.send_replace(state.index);
        Ok(())
    }

    /// Parks `item` with `error` and moves past it.
    pub fn park(&self, item: &FeedItem, error: &str) -> Result<(), StoreError> {
        let _writer = self.lock();
        if item.index <= self.store.checkpoint()? {
            return Ok(());
        }
        let letter = DeadLetter {
            index: item.index,
            at_ms: item.at_ms,
            error: error.to_owned(),
            item: item.encode_to_vec(),
            attempts: 1,
        };
        self.store.commit(Changes { checkpoint: Some(item.index), park: Some(letter), ..Changes::default() })?;
        self.applied.send_replace(item.index);
        Ok(())
    }

    /// Applies a parked item again against the points as they are now (points changed by later
    /// items keep the later change); on success its dead letter is removed.
    pub fn retry(&self, index: u64) -> Result<Retried, IndexError> {
        let _writer = self.lock();
        let Some(mut letter) = self.store.dead_letter(index)? else { return Ok(Retried::NotFound) };
        let item = FeedItem::decode(letter.item.as_slice()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut batch = Batch { store: &*self.store, lots: BTreeMap::new(), auctions: HashMap::new(), retry: true };
        for event in item.events.iter().filter_map(|e| e.kind.as_ref()) {
            match batch.event(event, item.index) {
                Ok(()) => {}
                Err(IndexError::Refused(reason)) => {
                    letter.error = reason.clone();
                    letter.attempts = letter.attempts.saturating_add(1);
                    self.store.commit(Changes { park: Some(letter), ..Changes::default() })?;
                    return Ok(Retried::StillFailing(reason));
                }
                Err(other) => return Err(other),
            }
        }
        let mut changes = self.embed(batch)?;
        changes.unpark = Some(index);
        self.store.commit(changes)?;
        Ok(Retried::Applied)
    }

    /// Embeds the batch's new lots and its touched artists.
    fn embed(&self, batch: Batch<'_, S>) -> Result<Changes, IndexError> {
        let Batch { store, mut lots, auctions, .. } = batch;
        let new: Vec<(&String, &str)> =
            lots.iter().filter_map(|(id, lot)| lot.text.as_deref().map(|text| (id, text))).collect();
        let texts: Vec<&str> = new.iter().map(|(_, text)| *text).collect();
        let vectors = self.encoder.embed(Role::Passage, &texts)?;
        let ids: Vec<String> = new.iter().map(|(id, _)| (*id).clone()).collect();
        for (id, vector) in ids.iter().zip(vectors) {
            if let Some(lot) = lots.get_mut(id) {
                lot.point.vector = vector;
            }
        }

        // Artists whose set of lots changed: new lots only (a status change moves no vector).
        let artists: BTreeSet<String> = lots
            .values()
            .filter(|lot| lot.text.is_some() && !lot.point.payload.artist.is_empty())
            .map(|lot| lot.point.payload.artist.clone())
            .collect();
        let mut upserts: Vec<(Kind, Point)> = Vec::with_capacity(lots.len() + artists.len());
        if !artists.is_empty() {
            let names: Vec<&str> = artists.iter().map(String::as_str).collect();
            let name_vectors = self.encoder.embed(Role::Passage, &names)?;
            for (artist, name_vector) in artists.iter().zip(name_vectors) {
                let filter = Filter { artist: Some(artist.clone()), ..Filter::default() };
                let mut theirs: BTreeMap<String, Vec<f32>> =
                    store.scroll(Kind::Lot, &filter)?.into_iter().map(|p| (p.id, p.vector)).collect();
                for (id, lot) in lots.iter().filter(|(_, lot)| lot.point.payload.artist == *artist) {
                    theirs.insert(id.clone(), lot.point.vector.clone());
                }
                let index =
                    lots.values().filter(|l| l.point.payload.artist == *artist).map(|l| l.point.payload.index).max();
                let vector = artist_vector(&name_vector, theirs.values());
                let payload = Payload {
                    artist: artist.clone(),
                    lot_count: theirs.len() as u64,
                    index: index.unwrap_or_default(),
                    ..Payload::default()
                };
                upserts.push((Kind::Artist, Point { id: artist.clone(), vector, payload }));
            }
        }
        upserts.extend(lots.into_values().map(|lot| (Kind::Lot, lot.point)));
        Ok(Changes { upserts, auctions: auctions.into_iter().collect(), ..Changes::default() })
    }
}

/// The artist's point: the name's vector plus the mean of their lots' vectors, unit length.
fn artist_vector<'a>(name: &[f32], lots: impl ExactSizeIterator<Item = &'a Vec<f32>>) -> Vec<f32> {
    let count = lots.len().max(1) as f32;
    let mut sum = name.to_vec();
    let mut mean = vec![0.0f32; name.len()];
    for lot in lots {
        mean.iter_mut().zip(lot).for_each(|(m, v)| *m += v / count);
    }
    sum.iter_mut().zip(&mean).for_each(|(s, m)| *s += m);
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    sum.iter_mut().for_each(|v| *v /= norm);
    sum
}

/// What retrying a dead letter did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    Applied,
    StillFailing(String),
    NotFound,
}

/// A lot as the batch leaves it.
struct Pending {
    point: Point,
    /// Set when the lot is new in this batch: the text to embed.
    text: Option<String>,
}

/// The points one batch changes, read through to the store.
struct Batch<'a, S> {
    store: &'a S,
    lots: BTreeMap<String, Pending>,
    /// Sales created in this batch: id -> currency.
    auctions: HashMap<String, String>,
    /// Retrying a dead letter: a lot that exists since is left as it is.
    retry: bool,
}

impl<S: VectorStore> Batch<'_, S> {
    fn event(&mut self, event: &Event, index: u64) -> Result<(), IndexError> {
        match event {
            Event::LotCreated(v) => {
                if LotStatus::try_from(v.status).is_err() {
                    return Err(IndexError::Refused(format!("lot {} has an unknown status {}", v.lot_id, v.status)));
                }
                if self.retry && self.lot(&v.lot_id)?.is_some() {
                    return Ok(());
                }
                if self.lot(&v.lot_id)?.is_some() {
                    // Created again above the checkpoint cannot happen in a consistent feed.
                    return Err(IndexError::Refused(format!("lot {} created again at index {index}", v.lot_id)));
                }
                let payload = lot_payload(v, index);
                let point = Point { id: v.lot_id.clone(), vector: Vec::new(), payload };
                let text = Some(lot_text(&v.title, &v.artist, &v.description));
                self.lots.insert(v.lot_id.clone(), Pending { point, text });
                Ok(())
            }
            Event::LotStatusChanged(c) => self.status(&c.lot_id, c.to, index),
            Event::LotClosed(c) => self.status(&c.lot_id, c.status, index),
            Event::AuctionCreated(a) => {
                self.auctions.insert(a.auction_id.clone(), a.currency.clone());
                Ok(())
            }
            Event::LotAddedToAuction(a) => {
                let currency = match self.auctions.get(&a.auction_id) {
                    Some(currency) => currency.clone(),
                    None => self.store.auction_currency(&a.auction_id)?.ok_or_else(|| {
                        IndexError::Refused(format!("lot {} added to unknown auction {}", a.lot_id, a.auction_id))
                    })?,
                };
                let lot = self.existing(&a.lot_id, index)?;
                // A retried item older than the point's last change leaves it alone (events of one item
                // share its index and apply in order).
                if lot.point.payload.index <= index {
                    lot.point.payload.currency = currency;
                    lot.point.payload.index = index;
                }
                Ok(())
            }
            // Bids, users and sales' own status moves change nothing searchable.
            Event::BidRecorded(_)
            | Event::Outbid(_)
            | Event::LotExtended(_)
            | Event::AuctionStatusChanged(_)
            | Event::UserCreated(_)
            | Event::UserRoleChanged(_) => Ok(()),
            // Lot content is not in the embedded text or payload (yet): the title, artist and
            // description are what a lot is found by.
            Event::CategoryPut(_)
            | Event::LotCategoriesSet(_)
            | Event::AttributesAdded(_)
            | Event::AttributeDeleted(_)
            | Event::CommentAdded(_)
            | Event::CommentDeleted(_)
            | Event::ImageAdded(_)
            | Event::ImageDeleted(_)
            | Event::ImagesReordered(_) => Ok(()),
        }
    }

    fn status(&mut self, lot_id: &str, status: i32, index: u64) -> Result<(), IndexError> {
        if LotStatus::try_from(status).is_err() {
            return Err(IndexError::Refused(format!("lot {lot_id} moved to an unknown status {status}")));
        }
        let lot = self.existing(lot_id, index)?;
        if lot.point.payload.index <= index {
            lot.point.payload.status = status;
            lot.point.payload.index = index;
        }
        Ok(())
    }

    fn existing(&mut self, lot_id: &str, index: u64) -> Result<&mut Pending, IndexError> {
        self.lot(lot_id)?.ok_or_else(|| {
            IndexError::Refused(format!("event at index {index} for lot {lot_id}, which the index has no point for"))
        })
    }

    /// The lot as this batch sees it, loaded from the store on first touch.
    fn lot(&mut self, lot_id: &str) -> Result<Option<&mut Pending>, IndexError> {
        if !self.lots.contains_key(lot_id) {
            let Some(point) = self.store.get(Kind::Lot, lot_id)? else { return Ok(None) };
            self.lots.insert(lot_id.to_owned(), Pending { point, text: None });
        }
        Ok(self.lots.get_mut(lot_id))
    }
}

/// The indexer as a [`node::Subscriber`] drives it (wrapped in [`node::OnBlockingPool`]).
impl<S: VectorStore> BlockingHandler for Index<S> {
    fn checkpoint(&self) -> Result<u64, HandleError> {
        self.store.checkpoint().map_err(|e| HandleError::Transient(e.to_string()))
    }

    fn apply(&self, items: &[FeedItem]) -> Result<(), HandleError> {
        match Index::apply(self, items) {
            Ok(()) => Ok(()),
            Err(IndexError::Store(e)) => Err(HandleError::Transient(e.to_string())),
            // The model fails for every lot alike, not for this item: parking would drop every
            // lot from search. Stall instead (the lag metric shows it) until it is fixed.
            Err(IndexError::Model(e)) => Err(HandleError::Transient(e.to_string())),
            Err(IndexError::Refused(reason)) => Err(HandleError::Permanent(reason)),
        }
    }

    fn park(&self, item: &FeedItem, error: &str) -> Result<(), HandleError> {
        Index::park(self, item, error).map_err(|e| HandleError::Transient(e.to_string()))
    }

    fn bootstrap(&self, state: &StateExport) -> Result<(), HandleError> {
        match Index::bootstrap(self, state) {
            Ok(()) => Ok(()),
            Err(IndexError::Refused(reason)) => Err(HandleError::Permanent(reason)),
            Err(e) => Err(HandleError::Transient(e.to_string())),
        }
    }

    fn can_bootstrap(&self) -> bool {
        true
    }
}
