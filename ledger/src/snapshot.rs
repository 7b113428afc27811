//! Snapshots: the whole ledger as one canonical protobuf message, and its digest.
//!
//! Every collection is written in key order, so equal states encode to equal bytes and the
//! BLAKE3 of the encoding is a state digest replicas and replays can compare. Decoding checks
//! the data again (enums, currencies, ladders, bidding invariants) before it becomes a state.

use std::collections::BTreeMap;
use std::fmt;

use prost::Message;

use crate::bidding::{Book, Leader};
use crate::content::{Category, LotContent};
use crate::id::{Id, IdMap};
use crate::ladder::{Ladder, Tier};
use crate::limits;
use crate::money::Currency;
use crate::once::Recorded;
use crate::pb::{self, AuctionStatus, BidKind, LotStatus, Role};
use crate::state::{Auction, HistoryLine, Ledger, Lot, User};

/// The snapshot format this build writes. 2: exactly-once records expire (lots' final times,
/// refusals' times, relisted lots' earlier bids); a build that reads only 1 refuses it rather
/// than drop those fields and drift from the other replicas. 1 is still read: its records
/// never expire.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest snapshot format this build reads.
pub const FORMAT_VERSION_MIN: u32 = 1;

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is not a valid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("snapshot format version {0} is not supported (this build reads {FORMAT_VERSION_MIN} to {FORMAT_VERSION})")]
    Version(u32),
    #[error("snapshot is inconsistent: {0}")]
    Invalid(String),
}

/// A BLAKE3 digest of the canonical state encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Ledger {
    /// The canonical snapshot message.
    pub fn to_snapshot(&self) -> pb::Snapshot {
        pb::Snapshot {
            format_version: FORMAT_VERSION,
            last_at_ms: self.last_at_ms,
            record_expiry: self.record_expiry,
            users: self.users.values().map(user_state).collect(),
            lots: self.lots.values().map(|l| lot_state(l, true)).collect(),
            auctions: self.auctions.values().map(auction_state).collect(),
            recorded_bids: self
                .recorded
                .iter()
                .flat_map(|(bidder, bids)| {
                    // Held unordered for speed; written in key order, like every collection.
                    let mut bids: Vec<_> = bids.iter().collect();
                    bids.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    bids.into_iter().map(move |(bid_id, record)| pb::RecordedBid {
                        bidder: String::from(&**bidder),
                        bid_id: String::from(&**bid_id),
                        outcome: Some(pb::Outcome { result: Some(record.to_result(bid_id)) }),
                        refused_at_ms: match record {
                            Recorded::Rejected { at_ms, .. } => *at_ms,
                            Recorded::Bid { .. } => None,
                        },
                    })
                })
                .collect(),
            categories: self.categories.values().map(category_state).collect(),
        }
    }

    /// Encodes the snapshot message to bytes.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        self.to_snapshot().encode_to_vec()
    }

    /// Decodes and validates a snapshot produced by [`Ledger::encode_snapshot`].
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Ledger, SnapshotError> {
        Ledger::from_snapshot(pb::Snapshot::decode(bytes)?)
    }

    /// The state digest: BLAKE3 of the canonical encoding.
    pub fn digest(&self) -> Digest {
        Digest(*blake3::hash(&self.encode_snapshot()).as_bytes())
    }

    /// Rebuilds a ledger from a snapshot message, checking it as it goes.
    pub fn from_snapshot(snap: pb::Snapshot) -> Result<Ledger, SnapshotError> {
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&snap.format_version) {
            return Err(SnapshotError::Version(snap.format_version));
        }
        // Times the horizon counts from exist only once record expiry is on.
        let timed = snap.lots.iter().any(|l| l.final_at_ms.is_some() || !l.earlier_bids.is_empty())
            || snap.recorded_bids.iter().any(|r| r.refused_at_ms.is_some());
        if timed && !snap.record_expiry {
            return invalid("expiry times without record expiry on".to_owned());
        }
        let mut ledger = Ledger { last_at_ms: snap.last_at_ms, record_expiry: snap.record_expiry, ..Ledger::default() };
        for u in snap.users {
            let user = restore_user(u)?;
            if ledger.usernames.insert(user.username.clone(), user.user_id.clone()).is_some() {
                return invalid(format!("username {} appears twice", user.username));
            }
            let id = user.user_id.clone();
            if ledger.users.insert(id.clone(), user).is_some() {
                return invalid(format!("user {id} appears twice"));
            }
        }
        for c in snap.categories {
            let category = Category { category_id: c.category_id, name: c.name, parent_id: c.parent_id };
            insert_once(&mut ledger.categories, category.category_id.clone(), category, "category")?;
        }
        crate::content::check_tree(&ledger.categories).map_err(SnapshotError::Invalid)?;
        for l in snap.lots {
            let lot = restore_lot(l, &ledger.users)?;
            if let Some(id) = lot.content.categories.iter().find(|id| !ledger.categories.contains_key(*id)) {
                return invalid(format!("lot {} is listed under unknown category {id}", lot.lot_id));
            }
            for image in &lot.content.images {
                if ledger.images.insert(image.image_id.clone(), lot.lot_id.clone()).is_some() {
                    return invalid(format!("image {} appears twice", image.image_id));
                }
                *ledger.image_refs.entry(image.content_hash.clone()).or_default() += 1;
            }
            let id = lot.lot_id.clone();
            if ledger.lots.insert(id.clone(), lot).is_some() {
                return invalid(format!("lot {id} appears twice"));
            }
        }
        for a in snap.auctions {
            let auction = restore_auction(a)?;
            insert_once(&mut ledger.auctions, auction.auction_id.clone(), auction, "auction")?;
        }
        for r in snap.recorded_bids {
            let what = format!("recorded bid {}/{}", r.bidder, r.bid_id);
            let Some(result) = r.outcome.and_then(|o| o.result) else {
                return invalid(format!("{what} has no outcome"));
            };
            let (users, lots) = (&ledger.users, &ledger.lots);
            let intern = |id: String| match users.get_key_value(id.as_str()) {
                Some((id, _)) => id.clone(),
                None => shared(lots, id),
            };
            // A replica drops a refusal's record when its horizon passes, before the next
            // command: one that is due at the snapshot's time, or from its future, is damage.
            if r.refused_at_ms.is_some_and(|at| {
                at > ledger.last_at_ms || at.saturating_add(limits::EXACTLY_ONCE_HORIZON_MS) <= ledger.last_at_ms
            }) {
                return invalid(format!("{what} was refused at a time the ledger cannot hold it for"));
            }
            let record = Recorded::from_result(&r.bid_id, result, r.refused_at_ms, intern)
                .map_err(|e| SnapshotError::Invalid(format!("{what}: {e}")))?;
            // Bids are only ever recorded for users, and `place_bid` relies on it.
            let Some((bidder, _)) = users.get_key_value(&r.bidder) else {
                return invalid(format!("{what} names no user"));
            };
            let bidder = bidder.clone();
            let bid_id = Id::from(r.bid_id);
            let bids = ledger.recorded.get_or_default(&bidder);
            if let Recorded::Rejected { at_ms: Some(at), .. } = &record {
                ledger.refusals.insert((*at, bidder.clone(), bid_id.clone()));
            }
            if bids.insert(bid_id, record).is_some() {
                return invalid(format!("{what} appears twice"));
            }
        }
        // The lots whose records are still to expire. A replica sweeps those due before each
        // command, so at the snapshot's time they are gone (records of a relisted lot's
        // earlier sales may stay: not checked).
        let due = |at: i64| at.saturating_add(limits::EXACTLY_ONCE_HORIZON_MS) <= ledger.last_at_ms;
        ledger.final_lots = ledger
            .lots
            .iter()
            .filter_map(|(id, lot)| lot.final_at_ms.map(|at| (at, id.clone())))
            .filter(|(at, _)| !due(*at))
            .collect();
        Ok(ledger)
    }
}

fn invalid<T>(message: String) -> Result<T, SnapshotError> {
    Err(SnapshotError::Invalid(message))
}

fn insert_once<V>(map: &mut BTreeMap<String, V>, key: String, value: V, what: &str) -> Result<(), SnapshotError> {
    if map.contains_key(&key) {
        return invalid(format!("{what} {key} appears twice"));
    }
    map.insert(key, value);
    Ok(())
}

fn ladder_pb(ladder: &Ladder) -> Vec<pb::LadderTier> {
    ladder.tiers().iter().map(|t| pb::LadderTier { from_amount: t.from_amount, step: t.step }).collect()
}

fn user_state(u: &User) -> pb::UserState {
    pb::UserState {
        user_id: String::from(&*u.user_id),
        username: u.username.clone(),
        role: u.role as i32,
        password_hash: u.password_hash.clone(),
        create_digest: u.create_digest.to_vec(),
    }
}

fn category_state(c: &Category) -> pb::CategoryState {
    pb::CategoryState { category_id: c.category_id.clone(), name: c.name.clone(), parent_id: c.parent_id.clone() }
}

/// A lot's state; `full` includes its history and content (snapshots), otherwise both are
/// left out (nodes persist them apart, so a bid does not rewrite them).
fn lot_state(l: &Lot, full: bool) -> pb::LotState {
    let leader = l.book.leader.as_ref();
    pb::LotState {
        lot_id: String::from(&*l.lot_id),
        title: l.title.clone(),
        description: l.description.clone(),
        artist: l.artist.clone(),
        category: l.category.clone(),
        currency: l.currency.as_str().to_owned(),
        status: l.status as i32,
        start_price: l.book.start_price,
        reserve_price: l.book.reserve,
        starts_at_ms: l.starts_at_ms,
        ends_at_ms: l.ends_at_ms,
        soft_close_secs: l.soft_close_secs,
        seller_id: l.seller_id.clone(),
        increment_ladder: ladder_pb(&l.ladder),
        current_price: l.book.price,
        leading_bidder: leader.map(|x| String::from(&*x.bidder)).unwrap_or_default(),
        leading_bid_id: leader.map(|x| String::from(&*x.bid_id)).unwrap_or_default(),
        leading_max: leader.map_or(0, |x| x.max),
        version: l.version,
        auction_id: l.auction_id.clone(),
        history: if full { l.history.iter().map(history_line).collect() } else { Vec::new() },
        create_digest: l.create_digest.to_vec(),
        // Absent when empty, so lots without content encode (and digest) as before content.
        content: (full && l.content != LotContent::default()).then(|| l.content.to_state(true)),
        final_at_ms: l.final_at_ms,
        earlier_bids: l
            .earlier_bids
            .iter()
            .map(|(bidder, bid_id)| pb::RecordKey { bidder: String::from(&**bidder), bid_id: String::from(&**bid_id) })
            .collect(),
        created_index: l.created_index,
    }
}

fn history_line(h: &HistoryLine) -> pb::HistoryLine {
    pb::HistoryLine {
        bid_id: String::from(&*h.bid_id),
        bidder: String::from(&*h.bidder),
        amount: h.amount,
        at_ms: h.at_ms,
        kind: h.kind as i32,
    }
}

fn auction_state(a: &Auction) -> pb::AuctionState {
    pb::AuctionState {
        auction_id: a.auction_id.clone(),
        title: a.title.clone(),
        currency: a.currency.as_str().to_owned(),
        status: a.status as i32,
        starts_at_ms: a.starts_at_ms,
        ends_at_ms: a.ends_at_ms,
        lot_interval_secs: a.lot_interval_secs,
        increment_ladder: ladder_pb(&a.ladder),
        lot_ids: a.lot_ids.clone(),
        create_digest: a.create_digest.to_vec(),
    }
}

fn digest32(bytes: &[u8], what: &str) -> Result<[u8; 32], SnapshotError> {
    bytes.try_into().map_err(|_| SnapshotError::Invalid(format!("{what} has a malformed create digest")))
}

fn currency(code: &str, what: &str) -> Result<Currency, SnapshotError> {
    Currency::parse(code).map_err(|e| SnapshotError::Invalid(format!("{what}: {e}")))
}

fn ladder(tiers: &[pb::LadderTier], what: &str) -> Result<Ladder, SnapshotError> {
    let tiers = tiers.iter().map(|t| Tier { from_amount: t.from_amount, step: t.step }).collect();
    Ladder::new(tiers).map_err(|e| SnapshotError::Invalid(format!("{what}: {e}")))
}

fn restore_user(u: pb::UserState) -> Result<User, SnapshotError> {
    let role = match Role::try_from(u.role) {
        Ok(r @ (Role::User | Role::Curator | Role::Admin)) => r,
        _ => return invalid(format!("user {} has role {}", u.user_id, u.role)),
    };
    let create_digest = digest32(&u.create_digest, &u.user_id)?;
    Ok(User { user_id: u.user_id.into(), username: u.username, role, password_hash: u.password_hash, create_digest })
}

/// The id already held under `s` in `map`, shared; else a new one.
fn shared<V>(map: &IdMap<V>, s: String) -> Id {
    map.get_key_value(s.as_str()).map_or_else(|| s.into(), |(id, _)| id.clone())
}

/// A lot from its state; bidder ids are shared with `users` where they match.
fn restore_lot(l: pb::LotState, users: &IdMap<User>) -> Result<Lot, SnapshotError> {
    let what = format!("lot {}", l.lot_id);
    let status = match LotStatus::try_from(l.status) {
        Ok(LotStatus::Unspecified) | Err(_) => return invalid(format!("{what} has status {}", l.status)),
        Ok(s) => s,
    };
    let leader = (!l.leading_bidder.is_empty()).then(|| Leader {
        bidder: shared(users, l.leading_bidder.clone()),
        bid_id: l.leading_bid_id.as_str().into(),
        max: l.leading_max,
    });
    // The bidding invariants, checked again on the way in.
    let price_ok = match &leader {
        Some(leader) => {
            l.start_price <= l.current_price && l.current_price <= leader.max && leader.max <= limits::AMOUNT_MAX
        }
        None => l.current_price == l.start_price,
    };
    let reserve_ok = l.reserve_price.is_none_or(|r| r >= l.start_price && r <= limits::AMOUNT_MAX);
    if !price_ok || !reserve_ok || l.start_price < 0 {
        return invalid(format!("{what} breaks the price invariants"));
    }
    if l.history.len() > limits::LOT_HISTORY_MAX {
        return invalid(format!("{what} has too long a history"));
    }
    let history = l
        .history
        .into_iter()
        .map(|h| match BidKind::try_from(h.kind) {
            Ok(kind @ (BidKind::Placed | BidKind::Proxy)) => {
                let (bid_id, bidder) = (h.bid_id.into(), shared(users, h.bidder));
                Ok(HistoryLine { bid_id, bidder, amount: h.amount, at_ms: h.at_ms, kind })
            }
            _ => invalid(format!("{what} has a history line of kind {}", h.kind)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let content = match l.content {
        Some(c) => LotContent::from_state(c).map_err(|e| SnapshotError::Invalid(format!("{what}: {e}")))?,
        None => LotContent::default(),
    };
    if l.final_at_ms.is_some() && !crate::lifecycle::is_final(status) {
        return invalid(format!("{what} has a final time but is {}", crate::lifecycle::name(status)));
    }
    if l.final_at_ms.is_some_and(|at| !(0..=limits::TIME_MS_MAX).contains(&at)) {
        return invalid(format!("{what} has a final time out of range"));
    }
    let earlier_bids = l.earlier_bids.into_iter().map(|k| (shared(users, k.bidder), Id::from(k.bid_id))).collect();
    Ok(Lot {
        created_index: l.created_index,
        final_at_ms: l.final_at_ms,
        earlier_bids,
        content,
        currency: currency(&l.currency, &what)?,
        ladder: ladder(&l.increment_ladder, &what)?,
        create_digest: digest32(&l.create_digest, &what)?,
        book: Book { start_price: l.start_price, reserve: l.reserve_price, price: l.current_price, leader },
        lot_id: l.lot_id.into(),
        title: l.title,
        description: l.description,
        artist: l.artist,
        category: l.category,
        status,
        starts_at_ms: l.starts_at_ms,
        ends_at_ms: l.ends_at_ms,
        soft_close_secs: l.soft_close_secs,
        seller_id: l.seller_id,
        version: l.version,
        auction_id: l.auction_id,
        history,
    })
}

fn restore_auction(a: pb::AuctionState) -> Result<Auction, SnapshotError> {
    let what = format!("auction {}", a.auction_id);
    let status = match AuctionStatus::try_from(a.status) {
        Ok(AuctionStatus::Unspecified) | Err(_) => return invalid(format!("{what} has status {}", a.status)),
        Ok(s) => s,
    };
    Ok(Auction {
        currency: currency(&a.currency, &what)?,
        ladder: ladder(&a.increment_ladder, &what)?,
        create_digest: digest32(&a.create_digest, &what)?,
        auction_id: a.auction_id,
        title: a.title,
        status,
        starts_at_ms: a.starts_at_ms,
        ends_at_ms: a.ends_at_ms,
        lot_interval_secs: a.lot_interval_secs,
        lot_ids: a.lot_ids,
    })
}

impl Ledger {
    /// One line of a lot's history in its wire form (the node's `ReadLot` answers with these).
    pub fn history_record(line: &crate::state::HistoryLine) -> pb::HistoryLine {
        history_line(line)
    }
}
