//! The projection: the catalog's rows and how each committed event changes them. A pure
//! function of the feed in log order; the store only keeps what this computes.

use ledger::Ledger;
use ledger::pb::event::Kind;
use ledger::pb::{AuctionStatus, LotStatus, LotView};
use node::pb::FeedItem;

use crate::store::StoreError;

/// One lot as the catalog lists it. Stored as protobuf: tags are never renumbered or reused.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LotSummary {
    #[prost(string, tag = "1")]
    pub lot_id: String,
    #[prost(string, tag = "2")]
    pub title: String,
    #[prost(string, tag = "3")]
    pub artist: String,
    #[prost(string, tag = "4")]
    pub category: String,
    #[prost(string, tag = "5")]
    pub currency: String,
    /// A `ledger::pb::LotStatus`.
    #[prost(int32, tag = "6")]
    pub status: i32,
    #[prost(int64, tag = "7")]
    pub start_price: i64,
    #[prost(int64, tag = "8")]
    pub current_price: i64,
    #[prost(uint32, tag = "9")]
    pub bid_count: u32,
    #[prost(bool, tag = "10")]
    pub reserve_met: bool,
    #[prost(int64, tag = "11")]
    pub starts_at_ms: i64,
    #[prost(int64, tag = "12")]
    pub ends_at_ms: i64,
    /// The leader's user id; empty when nobody leads.
    #[prost(string, tag = "13")]
    pub leading_bidder: String,
    /// Empty when the lot is sold on its own.
    #[prost(string, tag = "14")]
    pub auction_id: String,
    #[prost(int64, tag = "15")]
    pub minimum_bid: i64,
    /// The log index that created the lot: the `newest` order.
    #[prost(uint64, tag = "16")]
    pub created_index: u64,
    /// The log index of the last change applied to this row.
    #[prost(uint64, tag = "17")]
    pub index: u64,
    /// The further categories the lot is listed under, besides `category`.
    #[prost(string, repeated, tag = "18")]
    pub categories: Vec<String>,
    /// What `attr.<key>=<value>` filters on.
    #[prost(message, repeated, tag = "19")]
    pub attributes: Vec<AttributeRow>,
    /// The gallery's image ids in order: the first one's thumbnail pictures the lot.
    #[prost(string, repeated, tag = "20")]
    pub images: Vec<String>,
}

/// A node of the category tree, as the catalog keeps it: a `category=` filter matches the
/// category's whole subtree, resolved from these rows (not from the cluster).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CategoryRow {
    #[prost(string, tag = "1")]
    pub category_id: String,
    /// Empty for a root.
    #[prost(string, tag = "2")]
    pub parent_id: String,
    #[prost(uint64, tag = "3")]
    pub index: u64,
}

/// One attribute of a lot, as the catalog keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeRow {
    #[prost(string, tag = "1")]
    pub attribute_id: String,
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(string, tag = "3")]
    pub value: String,
}

impl LotSummary {
    pub fn status(&self) -> LotStatus {
        LotStatus::try_from(self.status).unwrap_or(LotStatus::Unspecified)
    }
}

/// What the catalog keeps of a sale: enough to complete the lots' rows.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuctionRow {
    #[prost(string, tag = "1")]
    pub auction_id: String,
    #[prost(string, tag = "2")]
    pub currency: String,
    #[prost(string, repeated, tag = "3")]
    pub lot_ids: Vec<String>,
    #[prost(uint64, tag = "4")]
    pub index: u64,
}

/// The catalog's rows for a whole ledger as of log index `index` (a state export): what the
/// projection of every item up to `index` holds, but for the rows' `index`, which is
/// `index` itself (the state says what each row is at that point, not when it last changed).
pub fn from_state(ledger: &Ledger, index: u64) -> (Vec<LotSummary>, Vec<AuctionRow>, Vec<CategoryRow>) {
    let lots = ledger
        .lots()
        .map(|lot| {
            let v = ledger::state::lot_view(lot);
            LotSummary {
                attributes: lot
                    .content
                    .attributes
                    .iter()
                    .map(|a| AttributeRow {
                        attribute_id: a.attribute_id.clone(),
                        key: a.key.clone(),
                        value: a.value.clone(),
                    })
                    .collect(),
                images: lot.content.images.iter().map(|i| i.image_id.clone()).collect(),
                ..row_of(&v, lot.created_index, index)
            }
        })
        .collect();
    let auctions = ledger
        .auctions()
        .map(|a| AuctionRow {
            auction_id: a.auction_id.clone(),
            currency: a.currency.as_str().to_owned(),
            lot_ids: a.lot_ids.clone(),
            index,
        })
        .collect();
    let categories = ledger
        .categories()
        .map(|c| CategoryRow { category_id: c.category_id.clone(), parent_id: c.parent_id.clone(), index })
        .collect();
    (lots, auctions, categories)
}

/// A lot's row from its public view (no attributes or images: those come by their own events
/// or from the lot's content).
fn row_of(v: &LotView, created_index: u64, index: u64) -> LotSummary {
    LotSummary {
        lot_id: v.lot_id.clone(),
        title: v.title.clone(),
        artist: v.artist.clone(),
        category: v.category.clone(),
        currency: v.currency.clone(),
        status: v.status,
        start_price: v.start_price,
        current_price: v.current_price,
        bid_count: v.bid_count,
        reserve_met: v.reserve_met,
        starts_at_ms: v.starts_at_ms,
        ends_at_ms: v.ends_at_ms,
        leading_bidder: v.leading_bidder.clone(),
        auction_id: v.auction_id.clone(),
        minimum_bid: v.minimum_bid,
        created_index,
        index,
        categories: v.categories.clone(),
        attributes: Vec::new(),
        images: Vec::new(),
    }
}

/// A row as the projection finds it for the item at hand.
pub enum Found<'a, T> {
    Current(&'a mut T),
    /// The row already holds this item's effect or a later one (a dead letter retried late):
    /// the event changes nothing.
    Superseded,
    Missing,
}

/// The rows an item reads and writes. `index` is the item's: a row stored at or past it is
/// [`Found::Superseded`].
pub trait Rows {
    fn lot(&mut self, lot_id: &str, index: u64) -> Result<Found<'_, LotSummary>, StoreError>;
    fn auction(&mut self, auction_id: &str, index: u64) -> Result<Found<'_, AuctionRow>, StoreError>;
    fn category(&mut self, category_id: &str, index: u64) -> Result<Found<'_, CategoryRow>, StoreError>;
    fn put_lot(&mut self, row: LotSummary);
    fn put_auction(&mut self, row: AuctionRow);
    fn put_category(&mut self, row: CategoryRow);
}

/// Why an item could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The item contradicts the rows (an event for a lot the catalog never saw created).
    #[error("{0}")]
    Refused(String),
}

fn refuse<T>(what: impl Into<String>) -> Result<T, ProjectError> {
    Err(ProjectError::Refused(what.into()))
}

/// Applies every event of `item` to `rows`.
pub fn apply(rows: &mut impl Rows, item: &FeedItem) -> Result<(), ProjectError> {
    for event in &item.events {
        if let Some(kind) = &event.kind {
            apply_event(rows, kind, item.index)?;
        }
    }
    Ok(())
}

/// Runs `change` on lot `lot_id`'s row, unless the row already has this item.
fn with_lot(
    rows: &mut impl Rows,
    lot_id: &str,
    index: u64,
    change: impl FnOnce(&mut LotSummary),
) -> Result<(), ProjectError> {
    match rows.lot(lot_id, index)? {
        Found::Current(row) => {
            change(row);
            row.index = index;
            Ok(())
        }
        Found::Superseded => Ok(()),
        Found::Missing => refuse(format!("event at index {index} for lot {lot_id}, which the catalog has no row for")),
    }
}

fn apply_event(rows: &mut impl Rows, kind: &Kind, index: u64) -> Result<(), ProjectError> {
    match kind {
        Kind::LotCreated(v) => match rows.lot(&v.lot_id, index)? {
            Found::Superseded => Ok(()),
            Found::Current(_) => refuse(format!("lot {} created again at index {index}", v.lot_id)),
            Found::Missing => {
                if LotStatus::try_from(v.status).is_err() {
                    return refuse(format!("lot {} has an unknown status {}", v.lot_id, v.status));
                }
                rows.put_lot(row_of(v, index, index));
                Ok(())
            }
        },
        Kind::LotStatusChanged(c) => {
            if LotStatus::try_from(c.to).is_err() {
                return refuse(format!("lot {} moved to an unknown status {}", c.lot_id, c.to));
            }
            // Offered again after an unpaid sale: the ledger starts a fresh book (no bids, no
            // leader, the start price) and frees the lot from its sale, with no other event.
            let relisted = c.from == LotStatus::SoldPendingPayment as i32 && c.to == LotStatus::ReadyForAuction as i32;
            with_lot(rows, &c.lot_id, index, |row| {
                row.status = c.to;
                if relisted {
                    row.current_price = row.start_price;
                    row.minimum_bid = row.start_price;
                    row.bid_count = 0;
                    row.leading_bidder.clear();
                    row.reserve_met = false;
                    row.auction_id.clear();
                }
            })
        }
        Kind::BidRecorded(b) => with_lot(rows, &b.lot_id, index, |row| {
            row.current_price = b.current_price;
            row.leading_bidder = b.leading_bidder.clone();
            row.reserve_met = b.reserve_met;
            row.minimum_bid = b.minimum_bid;
            row.bid_count = row.bid_count.saturating_add(1);
        }),
        Kind::LotExtended(e) => with_lot(rows, &e.lot_id, index, |row| row.ends_at_ms = e.ends_at_ms),
        Kind::LotClosed(c) => {
            if LotStatus::try_from(c.status).is_err() {
                return refuse(format!("lot {} closed with an unknown status {}", c.lot_id, c.status));
            }
            with_lot(rows, &c.lot_id, index, |row| row.status = c.status)
        }
        Kind::AuctionCreated(a) => match rows.auction(&a.auction_id, index)? {
            Found::Superseded => Ok(()),
            Found::Current(_) => refuse(format!("auction {} created again at index {index}", a.auction_id)),
            Found::Missing => {
                let row = AuctionRow {
                    auction_id: a.auction_id.clone(),
                    currency: a.currency.clone(),
                    lot_ids: a.lot_ids.clone(),
                    index,
                };
                rows.put_auction(row);
                Ok(())
            }
        },
        Kind::LotAddedToAuction(a) => {
            // A lot joining a sale takes the sale's currency (and its times).
            let currency = match rows.auction(&a.auction_id, index)? {
                Found::Current(sale) => {
                    sale.lot_ids.push(a.lot_id.clone());
                    sale.index = index;
                    Some(sale.currency.clone())
                }
                Found::Superseded => None,
                Found::Missing => return refuse(format!("lot {} added to unknown auction {}", a.lot_id, a.auction_id)),
            };
            with_lot(rows, &a.lot_id, index, |row| {
                row.auction_id = a.auction_id.clone();
                row.starts_at_ms = a.starts_at_ms;
                row.ends_at_ms = a.ends_at_ms;
                if let Some(currency) = currency {
                    row.currency = currency;
                }
            })
        }
        Kind::AuctionStatusChanged(c) => {
            // Lots that a cancelled sale never offered leave it without an event of their own
            // (the ledger frees them quietly); the ones it offered get status events.
            if c.to != AuctionStatus::Cancelled as i32 {
                return Ok(());
            }
            let lot_ids = match rows.auction(&c.auction_id, index)? {
                Found::Current(sale) => {
                    sale.index = index;
                    sale.lot_ids.clone()
                }
                Found::Superseded => return Ok(()),
                Found::Missing => return refuse(format!("status change for unknown auction {}", c.auction_id)),
            };
            for lot_id in lot_ids {
                if let Found::Current(row) = rows.lot(&lot_id, index)?
                    && row.auction_id == c.auction_id
                    && row.status() == LotStatus::ReadyForAuction
                {
                    row.auction_id.clear();
                    row.index = index;
                }
            }
            Ok(())
        }
        // Users and outbid notices are not in the catalog.
        Kind::UserCreated(_) | Kind::UserRoleChanged(_) | Kind::Outbid(_) => Ok(()),
        // Content the catalog filters on (categories, attributes) or shows (the first image).
        Kind::LotCategoriesSet(c) => with_lot(rows, &c.lot_id, index, |row| row.categories = c.category_ids.clone()),
        Kind::AttributesAdded(a) => with_lot(rows, &a.lot_id, index, |row| {
            row.attributes.extend(a.attributes.iter().map(|x| AttributeRow {
                attribute_id: x.attribute_id.clone(),
                key: x.key.clone(),
                value: x.value.clone(),
            }));
        }),
        Kind::AttributeDeleted(a) => {
            with_lot(rows, &a.lot_id, index, |row| row.attributes.retain(|x| x.attribute_id != a.attribute_id))
        }
        Kind::ImageAdded(i) => with_lot(rows, &i.lot_id, index, |row| row.images.push(i.image_id.clone())),
        Kind::ImageDeleted(i) => with_lot(rows, &i.lot_id, index, |row| row.images.retain(|x| *x != i.image_id)),
        Kind::ImagesReordered(i) => with_lot(rows, &i.lot_id, index, |row| {
            row.images = i.images.iter().map(|x| x.image_id.clone()).collect();
        }),
        // A rename changes nothing here; a new parent moves the subtree.
        Kind::CategoryPut(c) => {
            match rows.category(&c.category_id, index)? {
                Found::Superseded => {}
                Found::Current(row) => {
                    row.parent_id = c.parent_id.clone();
                    row.index = index;
                }
                Found::Missing => rows.put_category(CategoryRow {
                    category_id: c.category_id.clone(),
                    parent_id: c.parent_id.clone(),
                    index,
                }),
            }
            Ok(())
        }
        // Comments are not listed.
        Kind::CommentAdded(_) | Kind::CommentDeleted(_) => Ok(()),
    }
}
