//! The live projection: turns each committed feed item into the WebSocket messages it causes.
//!
//! Ledger events are minimal (a bid line says nothing of the lot's end time); a bidder's page
//! must render every message without another request, so this keeps the little per-lot state
//! (price, leader, end, bid count, bidders, sale) needed to complete them. It is a pure
//! function of the feed, applied in log order, like every other read model.

use std::collections::{BTreeSet, HashMap};

use ledger::lifecycle;
use ledger::pb::{self, BidKind, LotStatus, event::Kind};
use ledger::time::format_time;
use node::pb::FeedItem;
use serde_json::{Value, json};

/// A topic as the hub keys it. On the wire a user's topic is just `"user"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Lot(String),
    Auction(String),
    User(String),
}

impl Topic {
    /// The hub's key: `lot:<id>`, `auction:<id>`, `user:<user_id>`.
    pub fn key(&self) -> String {
        match self {
            Topic::Lot(id) => format!("lot:{id}"),
            Topic::Auction(id) => format!("auction:{id}"),
            Topic::User(id) => format!("user:{id}"),
        }
    }

    /// The name a client subscribes with.
    pub fn wire_name(&self) -> String {
        match self {
            Topic::User(_) => "user".to_owned(),
            other => other.key(),
        }
    }
}

/// One message for one topic, not yet framed with its index.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: Topic,
    pub event: Value,
}

/// What the projection knows of one lot.
#[derive(Debug, Clone, PartialEq)]
struct LotLive {
    title: String,
    artist: String,
    currency: String,
    status: LotStatus,
    start_price: i64,
    current_price: i64,
    leading_bidder: String,
    bid_count: u32,
    minimum_bid: i64,
    reserve_met: bool,
    ends_at_ms: i64,
    auction_id: String,
    seller_id: String,
    /// Everyone who placed a bid: they are told how the lot closed.
    bidders: BTreeSet<String>,
}

/// The per-lot state behind the live messages, fed in log order.
#[derive(Debug, Default)]
pub struct Projection {
    lots: HashMap<String, LotLive>,
    /// Each sale's currency: a lot joining a sale takes it.
    auctions: HashMap<String, String>,
    /// The last feed index applied.
    index: u64,
}

fn opt_str(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { Value::String(s.to_owned()) }
}

fn status_name(status: i32) -> &'static str {
    lifecycle::name(LotStatus::try_from(status).unwrap_or(LotStatus::Unspecified))
}

impl LotLive {
    /// The fields every lot message carries, so a page can render it alone.
    fn state(&self, lot_id: &str) -> serde_json::Map<String, Value> {
        let v = json!({
            "lot_id": lot_id,
            "status": lifecycle::name(self.status),
            "current_price": self.current_price,
            "leading_bidder": opt_str(&self.leading_bidder),
            "bid_count": self.bid_count,
            "minimum_bid": self.minimum_bid,
            "reserve_met": self.reserve_met,
            "ends_at": format_time(self.ends_at_ms),
            "currency": self.currency,
        });
        match v {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }
}

fn with(mut base: serde_json::Map<String, Value>, kind: &str, extra: Value) -> Value {
    base.insert("type".to_owned(), Value::String(kind.to_owned()));
    if let Value::Object(extra) = extra {
        base.extend(extra);
    }
    Value::Object(base)
}

impl Projection {
    /// The projection of a whole ledger as of log index `index` (a state export): what
    /// applying every item up to `index` would hold.
    pub fn from_state(ledger: &ledger::Ledger, index: u64) -> Projection {
        let lots = ledger
            .lots()
            .map(|lot| {
                let v = ledger::state::lot_view(lot);
                let live = LotLive {
                    title: v.title,
                    artist: v.artist,
                    currency: v.currency,
                    status: lot.status,
                    start_price: v.start_price,
                    current_price: v.current_price,
                    leading_bidder: v.leading_bidder,
                    bid_count: v.bid_count,
                    minimum_bid: v.minimum_bid,
                    reserve_met: v.reserve_met,
                    ends_at_ms: v.ends_at_ms,
                    auction_id: v.auction_id,
                    seller_id: v.seller_id,
                    bidders: lot.history.iter().map(|line| line.bidder.to_string()).collect(),
                };
                (v.lot_id, live)
            })
            .collect();
        let auctions = ledger.auctions().map(|a| (a.auction_id.clone(), a.currency.as_str().to_owned())).collect();
        Projection { lots, auctions, index }
    }

    /// The messages one committed feed item causes, in the order of its events.
    pub fn apply(&mut self, item: &FeedItem) -> Vec<Message> {
        self.index = item.index;
        let at = format_time(item.at_ms);
        let mut out = Vec::new();
        for event in &item.events {
            let Some(kind) = &event.kind else { continue };
            self.apply_event(kind, &at, &mut out);
        }
        out
    }

    /// The last feed index applied.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Lots open for bidding, soonest end first: the page's list until the catalog exists.
    pub fn open_lots(&self) -> Vec<Value> {
        let mut open: Vec<(&String, &LotLive)> =
            self.lots.iter().filter(|(_, l)| l.status == LotStatus::InAuction).collect();
        open.sort_by(|a, b| (a.1.ends_at_ms, a.0).cmp(&(b.1.ends_at_ms, b.0)));
        open.into_iter()
            .map(|(id, l)| {
                let mut v = l.state(id);
                v.insert("title".into(), Value::String(l.title.clone()));
                v.insert("artist".into(), Value::String(l.artist.clone()));
                v.insert("start_price".into(), json!(l.start_price));
                v.insert("auction_id".into(), opt_str(&l.auction_id));
                Value::Object(v)
            })
            .collect()
    }

    /// Sends `event` to the lot's topic and, when the lot is in a sale, the sale's topic.
    fn to_lot(lot_id: &str, lot: &LotLive, event: Value, out: &mut Vec<Message>) {
        if !lot.auction_id.is_empty() {
            out.push(Message { topic: Topic::Auction(lot.auction_id.clone()), event: event.clone() });
        }
        out.push(Message { topic: Topic::Lot(lot_id.to_owned()), event });
    }

    /// A content message for the lot's topic: `{"type", "lot_id", ...fields, "at"}`.
    fn content(lot_id: &str, kind: &str, fields: Value, at: &str, out: &mut Vec<Message>) {
        let mut base = serde_json::Map::new();
        base.insert("lot_id".to_owned(), Value::String(lot_id.to_owned()));
        base.insert("at".to_owned(), Value::String(at.to_owned()));
        out.push(Message { topic: Topic::Lot(lot_id.to_owned()), event: with(base, kind, fields) });
    }

    fn apply_event(&mut self, kind: &Kind, at: &str, out: &mut Vec<Message>) {
        match kind {
            Kind::LotCreated(v) => {
                let lot = LotLive {
                    title: v.title.clone(),
                    artist: v.artist.clone(),
                    currency: v.currency.clone(),
                    status: LotStatus::try_from(v.status).unwrap_or(LotStatus::Unspecified),
                    start_price: v.start_price,
                    current_price: v.current_price,
                    leading_bidder: v.leading_bidder.clone(),
                    bid_count: v.bid_count,
                    minimum_bid: v.minimum_bid,
                    reserve_met: v.reserve_met,
                    ends_at_ms: v.ends_at_ms,
                    auction_id: String::new(),
                    seller_id: v.seller_id.clone(),
                    bidders: BTreeSet::new(),
                };
                let event = with(lot.state(&v.lot_id), "lot_created", json!({"title": v.title, "at": at}));
                out.push(Message { topic: Topic::Lot(v.lot_id.clone()), event });
                self.lots.insert(v.lot_id.clone(), lot);
            }
            Kind::LotStatusChanged(c) => {
                let Some(lot) = self.lots.get_mut(&c.lot_id) else { return };
                lot.status = LotStatus::try_from(c.to).unwrap_or(LotStatus::Unspecified);
                // Offered again after an unpaid sale: the ledger starts a fresh book and frees
                // the lot from its sale, with no other event.
                if c.from == LotStatus::SoldPendingPayment as i32 && lot.status == LotStatus::ReadyForAuction {
                    lot.current_price = lot.start_price;
                    lot.minimum_bid = lot.start_price;
                    lot.leading_bidder.clear();
                    lot.bid_count = 0;
                    lot.reserve_met = false;
                    lot.auction_id.clear();
                    lot.bidders.clear();
                }
                let extra = json!({"from": status_name(c.from), "to": status_name(c.to), "at": at});
                let event = with(lot.state(&c.lot_id), "status", extra);
                Self::to_lot(&c.lot_id, lot, event, out);
            }
            Kind::BidRecorded(b) => {
                let Some(lot) = self.lots.get_mut(&b.lot_id) else { return };
                lot.current_price = b.current_price;
                lot.leading_bidder = b.leading_bidder.clone();
                lot.reserve_met = b.reserve_met;
                lot.minimum_bid = b.minimum_bid;
                lot.bid_count = lot.bid_count.saturating_add(1);
                lot.bidders.insert(b.bidder.clone());
                let line_kind = if b.kind == BidKind::Proxy as i32 { "proxy" } else { "placed" };
                let extra = json!({
                    "bid_id": b.bid_id,
                    "bidder": b.bidder,
                    "amount": b.amount,
                    "kind": line_kind,
                    "at": format_time(b.at_ms),
                });
                let event = with(lot.state(&b.lot_id), "bid", extra);
                Self::to_lot(&b.lot_id, lot, event, out);
            }
            Kind::Outbid(o) => {
                let Some(lot) = self.lots.get(&o.lot_id) else { return };
                let extra = json!({"title": lot.title, "at": at});
                let event = with(lot.state(&o.lot_id), "outbid", extra);
                out.push(Message { topic: Topic::User(o.user_id.clone()), event });
            }
            Kind::LotExtended(e) => {
                let Some(lot) = self.lots.get_mut(&e.lot_id) else { return };
                lot.ends_at_ms = e.ends_at_ms;
                let event = with(lot.state(&e.lot_id), "extended", json!({"at": at}));
                Self::to_lot(&e.lot_id, lot, event, out);
            }
            Kind::LotClosed(c) => {
                let Some(lot) = self.lots.get_mut(&c.lot_id) else { return };
                lot.status = LotStatus::try_from(c.status).unwrap_or(LotStatus::Unspecified);
                let sold = !c.winner.is_empty();
                let extra = json!({
                    "title": lot.title,
                    "winner": opt_str(&c.winner),
                    "price": if sold { json!(c.price) } else { Value::Null },
                    "at": at,
                });
                let event = with(lot.state(&c.lot_id), "lot_closed", extra);
                // The winner hears `won`; the seller and every other bidder hear `lot_closed`.
                let mut told = BTreeSet::new();
                if sold {
                    let mut won = event.clone();
                    if let Value::Object(m) = &mut won {
                        m.insert("type".into(), Value::String("won".into()));
                    }
                    out.push(Message { topic: Topic::User(c.winner.clone()), event: won });
                    told.insert(c.winner.clone());
                }
                for user in std::iter::once(&lot.seller_id).chain(lot.bidders.iter()) {
                    if !user.is_empty() && told.insert(user.clone()) {
                        out.push(Message { topic: Topic::User(user.clone()), event: event.clone() });
                    }
                }
                Self::to_lot(&c.lot_id, lot, event, out);
            }
            Kind::LotAddedToAuction(a) => {
                let Some(lot) = self.lots.get_mut(&a.lot_id) else { return };
                lot.auction_id = a.auction_id.clone();
                lot.ends_at_ms = a.ends_at_ms;
                if let Some(currency) = self.auctions.get(&a.auction_id) {
                    lot.currency = currency.clone();
                }
                let extra = json!({"auction_id": a.auction_id, "starts_at": format_time(a.starts_at_ms), "at": at});
                let event = with(lot.state(&a.lot_id), "lot_added", extra);
                Self::to_lot(&a.lot_id, lot, event, out);
            }
            Kind::AuctionStatusChanged(s) => {
                // A cancelled sale frees the lots it never offered, with no event of their own.
                if s.to == pb::AuctionStatus::Cancelled as i32 {
                    for lot in self.lots.values_mut() {
                        if lot.auction_id == s.auction_id && lot.status == LotStatus::ReadyForAuction {
                            lot.auction_id.clear();
                        }
                    }
                }
                let name = |v: i32| {
                    lifecycle::auction_name(pb::AuctionStatus::try_from(v).unwrap_or(pb::AuctionStatus::Unspecified))
                };
                let event = json!({
                    "type": "auction_status",
                    "auction_id": s.auction_id,
                    "from": name(s.from),
                    "to": name(s.to),
                    "at": at,
                });
                out.push(Message { topic: Topic::Auction(s.auction_id.clone()), event });
            }
            // Lot content reaches the lot's topic as it is, with the ledger's own views.
            Kind::LotCategoriesSet(c) => {
                let event = json!({"categories": c.category_ids});
                Self::content(&c.lot_id, "categories", event, at, out);
            }
            Kind::AttributesAdded(a) => {
                let event = ledger::view::attributes(a);
                Self::content(&a.lot_id, "attributes_added", event, at, out);
            }
            Kind::AttributeDeleted(a) => {
                let event = json!({"attribute_id": a.attribute_id, "key": a.key});
                Self::content(&a.lot_id, "attribute_deleted", event, at, out);
            }
            Kind::CommentAdded(c) => Self::content(&c.lot_id, "comment", ledger::view::comment(c), at, out),
            Kind::CommentDeleted(c) => {
                Self::content(&c.lot_id, "comment_deleted", json!({"comment_id": c.comment_id}), at, out);
            }
            Kind::ImageAdded(i) => Self::content(&i.lot_id, "image_added", ledger::view::image(i), at, out),
            Kind::ImageDeleted(i) => {
                Self::content(&i.lot_id, "image_deleted", json!({"image_id": i.image_id}), at, out);
            }
            Kind::ImagesReordered(i) => Self::content(&i.lot_id, "images_reordered", ledger::view::images(i), at, out),
            // Users, new sales and the category tree have no live audience yet; the catalog
            // shows them.
            Kind::AuctionCreated(a) => {
                self.auctions.insert(a.auction_id.clone(), a.currency.clone());
            }
            Kind::UserCreated(_) | Kind::UserRoleChanged(_) | Kind::CategoryPut(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A projection started from a ledger's state holds what one fed every item holds,
    /// relisting included (which resets the lot's book with no event of its own).
    #[test]
    fn a_projection_from_a_state_equals_one_fed_every_item() {
        use ledger::pb::command::Body;
        const T0: i64 = 1_800_000_000_000;
        let mut ledger = ledger::Ledger::new();
        let mut fed = Projection::default();
        let mut index = 0;
        let mut run = |ledger: &mut ledger::Ledger, at_ms: i64, actor: &str, body: Body| {
            index += 1;
            let cmd = pb::Command { at_ms, actor: actor.into(), log_index: index, body: Some(body) };
            let applied = ledger.apply(&cmd);
            assert!(applied.rejection().is_none(), "{:?}", applied.rejection());
            fed.apply(&FeedItem { index, at_ms, events: applied.events });
        };
        let user = |id: &str, role: pb::Role| {
            Body::CreateUser(pb::CreateUser {
                user_id: id.into(),
                username: id.into(),
                role: role as i32,
                password_hash: vec![],
            })
        };
        run(&mut ledger, T0, "", user("cur", pb::Role::Curator));
        run(&mut ledger, T0, "", user("boss", pb::Role::Admin));
        for u in ["sam", "ana", "ben"] {
            run(&mut ledger, T0, "", user(u, pb::Role::User));
        }
        for (lot, hours) in [("l1", 5), ("l2", 1)] {
            let create = pb::CreateLot {
                lot_id: lot.into(),
                title: format!("Study {lot}"),
                currency: "USD".into(),
                start_price: 10_000,
                starts_at_ms: T0,
                ends_at_ms: T0 + hours * 3_600_000,
                soft_close_secs: 60,
                seller_id: "sam".into(),
                ..Default::default()
            };
            run(&mut ledger, T0, "cur", Body::CreateLot(create));
            for s in
                [LotStatus::UnderReview, LotStatus::Authenticated, LotStatus::ReadyForAuction, LotStatus::InAuction]
            {
                let body = Body::SetLotStatus(pb::SetLotStatus { lot_id: lot.into(), status: s as i32 });
                run(&mut ledger, T0, "cur", body);
            }
        }
        for (n, (bidder, lot, max)) in
            [("ana", "l1", 20_000), ("ben", "l1", 15_000), ("ben", "l2", 30_000), ("ana", "l2", 12_000)]
                .iter()
                .enumerate()
        {
            let body =
                Body::PlaceBid(pb::PlaceBid { lot_id: (*lot).into(), bid_id: format!("b{n}"), max_amount: *max });
            run(&mut ledger, T0 + 60_000, bidder, body);
        }
        run(&mut ledger, T0 + 7_200_000, "", Body::CloseLot(pb::CloseLot { lot_id: "l2".into() }));
        let relist =
            Body::SetLotStatus(pb::SetLotStatus { lot_id: "l2".into(), status: LotStatus::ReadyForAuction as i32 });
        run(&mut ledger, T0 + 7_300_000, "cur", relist);
        // Sales: a lot joining one takes its currency; a cancelled one frees the lots it never
        // offered.
        for (sale, lot) in [("s1", "l3"), ("s2", "l4")] {
            let auction = pb::CreateAuction {
                auction_id: sale.into(),
                title: "Sale".into(),
                currency: "GBP".into(),
                starts_at_ms: T0 + 8_000_000,
                ends_at_ms: T0 + 9_000_000,
                lot_interval_secs: 30,
                increment_ladder: vec![],
            };
            run(&mut ledger, T0 + 7_400_000, "boss", Body::CreateAuction(auction));
            let create = pb::CreateLot {
                lot_id: lot.into(),
                title: "Later".into(),
                currency: "USD".into(),
                start_price: 10_000,
                starts_at_ms: T0,
                ends_at_ms: T0 + 9_000_000,
                seller_id: "sam".into(),
                ..Default::default()
            };
            run(&mut ledger, T0 + 7_400_000, "cur", Body::CreateLot(create));
            for s in [LotStatus::UnderReview, LotStatus::Authenticated, LotStatus::ReadyForAuction] {
                let body = Body::SetLotStatus(pb::SetLotStatus { lot_id: lot.into(), status: s as i32 });
                run(&mut ledger, T0 + 7_400_000, "cur", body);
            }
            let add = pb::AddLotToAuction { auction_id: sale.into(), lot_id: lot.into() };
            run(&mut ledger, T0 + 7_400_000, "boss", Body::AddLotToAuction(add));
        }
        let cancel = pb::SetAuctionStatus { auction_id: "s2".into(), status: pb::AuctionStatus::Cancelled as i32 };
        run(&mut ledger, T0 + 7_500_000, "boss", Body::SetAuctionStatus(cancel));
        assert_eq!(fed.lots["l3"].currency, "GBP");
        assert_eq!(fed.lots["l4"].auction_id, "");
        let started = Projection::from_state(&ledger, fed.index());
        assert_eq!(started.index(), fed.index());
        assert_eq!(started.lots, fed.lots);
        assert_eq!(fed.lots["l2"].bid_count, 0, "the relisted lot's book is fresh");
        assert_eq!(fed.lots["l1"].bidders.len(), 2);
    }

    fn item(index: u64, events: Vec<Kind>) -> FeedItem {
        FeedItem {
            index,
            at_ms: 1_700_000_000_000,
            events: events.into_iter().map(|k| pb::Event { kind: Some(k) }).collect(),
        }
    }

    fn lot_view(id: &str) -> pb::LotView {
        pb::LotView {
            lot_id: id.into(),
            title: "Haystacks".into(),
            currency: "EUR".into(),
            status: LotStatus::Draft as i32,
            start_price: 100,
            current_price: 100,
            ends_at_ms: 1_700_000_060_000,
            seller_id: "u-seller".into(),
            ..Default::default()
        }
    }

    fn bid(lot: &str, bidder: &str, price: i64) -> Kind {
        Kind::BidRecorded(pb::BidRecorded {
            lot_id: lot.into(),
            bid_id: format!("b-{bidder}-{price}"),
            bidder: bidder.into(),
            amount: price,
            at_ms: 1_700_000_000_000,
            kind: BidKind::Placed as i32,
            current_price: price,
            leading_bidder: bidder.into(),
            reserve_met: true,
            minimum_bid: price + 1_000,
        })
    }

    #[test]
    fn bid_messages_carry_what_a_page_renders() {
        let mut p = Projection::default();
        p.apply(&item(1, vec![Kind::LotCreated(lot_view("l1"))]));
        let out = p.apply(&item(
            2,
            vec![
                bid("l1", "u-a", 100),
                bid("l1", "u-b", 110),
                Kind::Outbid(pb::Outbid { lot_id: "l1".into(), user_id: "u-a".into(), current_price: 110 }),
                Kind::LotExtended(pb::LotExtended { lot_id: "l1".into(), ends_at_ms: 1_700_000_120_000 }),
            ],
        ));
        let topics: Vec<String> = out.iter().map(|m| m.topic.key()).collect();
        assert_eq!(topics, ["lot:l1", "lot:l1", "user:u-a", "lot:l1"]);
        let second = &out[1].event;
        assert_eq!(second["type"], "bid");
        assert_eq!(second["current_price"], 110);
        assert_eq!(second["leading_bidder"], "u-b");
        assert_eq!(second["bid_count"], 2);
        assert_eq!(second["minimum_bid"], 1_110, "taken from the ledger's line");
        assert_eq!(second["ends_at"], "2023-11-14T22:14:20Z");
        assert_eq!(out[2].event["type"], "outbid");
        assert_eq!(out[2].topic.wire_name(), "user");
        assert_eq!(out[3].event["ends_at"], "2023-11-14T22:15:20Z");
    }

    #[test]
    fn close_tells_winner_seller_and_losers_once_each() {
        let mut p = Projection::default();
        p.apply(&item(1, vec![Kind::LotCreated(lot_view("l1"))]));
        p.apply(&item(2, vec![bid("l1", "u-a", 100), bid("l1", "u-b", 110), bid("l1", "u-a", 120)]));
        let out = p.apply(&item(
            3,
            vec![Kind::LotClosed(pb::LotClosed {
                lot_id: "l1".into(),
                status: LotStatus::SoldPendingPayment as i32,
                winner: "u-a".into(),
                price: 120,
            })],
        ));
        let mut seen: Vec<(String, String)> =
            out.iter().map(|m| (m.topic.key(), m.event["type"].as_str().unwrap_or("").to_owned())).collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("lot:l1".to_owned(), "lot_closed".to_owned()),
                ("user:u-a".to_owned(), "won".to_owned()),
                ("user:u-b".to_owned(), "lot_closed".to_owned()),
                ("user:u-seller".to_owned(), "lot_closed".to_owned()),
            ]
        );
    }
}
