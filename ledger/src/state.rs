//! The ledger state and its one entry point, [`Ledger::apply`].
//!
//! `apply` is a pure step `(state, command) -> (state', outcome, events)`: it validates the
//! whole command before it changes anything, so a rejection leaves the auction state as it
//! was. (A rejected bid is still remembered under its `bid_id`, so that a retry within the
//! exactly-once horizon gets the same answer: that record, and its place in the expiry queue,
//! are the one thing a rejection writes.)

use std::collections::{BTreeMap, BTreeSet, hash_map};

use prost::Message;

use crate::bidding::{Book, Decision, Leader};
use crate::checks::{check_amount, check_id, check_secs, check_text, check_window};
use crate::content::{self, Category, LotContent, Put};
use crate::error::{Code, Rejection, reject};
use crate::event::{BidRecorded, Event};
use crate::id::{HashMap, Id, IdMap};
use crate::ladder::{Ladder, Tier};
use crate::lifecycle;
use crate::limits;
use crate::money::Currency;
use crate::once::{Answer, Recorded};
use crate::pb::{self, AuctionStatus, BidKind, BidOutcomeKind, LotStatus, Role, command::Body, outcome::Result as Res};
use crate::time::format_time;

/// A registered user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub user_id: Id,
    pub username: String,
    pub role: Role,
    /// An Argon2 PHC string computed by the gateway; opaque to the ledger.
    pub password_hash: Vec<u8>,
    pub(crate) create_digest: [u8; 32],
}

/// One line of a lot's public bid history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryLine {
    pub bid_id: Id,
    pub bidder: Id,
    /// The visible amount, never a maximum.
    pub amount: i64,
    pub at_ms: i64,
    pub kind: BidKind,
}

/// A lot and its bidding state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lot {
    pub lot_id: Id,
    pub title: String,
    pub description: String,
    pub artist: String,
    pub category: String,
    pub currency: Currency,
    pub status: LotStatus,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub soft_close_secs: u32,
    pub seller_id: String,
    pub ladder: Ladder,
    pub book: Book,
    /// Bumped by every change to the lot.
    pub version: u64,
    /// Empty when the lot is sold on its own.
    pub auction_id: String,
    pub history: Vec<HistoryLine>,
    /// Further categories, attributes, comments and images.
    pub content: LotContent,
    pub(crate) create_digest: [u8; 32],
    /// When (ledger time) the lot reached a final status ([`lifecycle::is_final`]): its bids'
    /// exactly-once records expire a horizon after it. `None` before, and for a lot that was
    /// already final in a snapshot written before the horizon existed (its records never
    /// expire).
    pub final_at_ms: Option<i64>,
    /// The (bidder, bid id) of every accepted bid of the sales before a relisting, which
    /// cleared their history: their records expire with the lot's, like the history's.
    pub earlier_bids: Vec<(Id, Id)>,
    /// The log index of the command that created the lot (0 outside a replica, and for lots
    /// from snapshots written before it was kept): read models order lots by it.
    pub created_index: u64,
}

/// A sale grouping lots under one currency and ladder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auction {
    pub auction_id: String,
    pub title: String,
    pub currency: Currency,
    pub status: AuctionStatus,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub lot_interval_secs: u32,
    pub ladder: Ladder,
    pub lot_ids: Vec<String>,
    pub(crate) create_digest: [u8; 32],
}

/// The whole replicated state. Iteration order reaches snapshots and the digest, so it must
/// be the same on every replica: maps are ordered, or iterated in id order (`IdMap`), or
/// sorted before they are written (the exactly-once records).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    /// The ledger's clock: the latest command time seen. Commands stamped earlier are treated
    /// as stamped now, so time never runs backwards here whatever the input.
    pub(crate) last_at_ms: i64,
    pub(crate) users: IdMap<User>,
    /// Derived index username -> user_id (rebuilt on restore, not snapshotted).
    pub(crate) usernames: BTreeMap<String, Id>,
    pub(crate) lots: IdMap<Lot>,
    pub(crate) auctions: BTreeMap<String, Auction>,
    /// First outcome of each (bidder, bid_id), for exactly-once bids. The per-bidder maps are
    /// hashed, not ordered, for the hot path; snapshots sort them.
    pub(crate) recorded: IdMap<HashMap<Id, Recorded>>,
    /// Derived (rebuilt on restore): the lots whose accepted bids' records are still to
    /// expire, by the time they became final. Only entries after `last_at_ms - horizon`.
    pub(crate) final_lots: BTreeSet<(i64, Id)>,
    /// Derived (rebuilt on restore): the refusals' records still to expire, by refusal time.
    pub(crate) refusals: BTreeSet<(i64, Id, Id)>,
    /// `ActivateRecordExpiry` was applied: from then on lots' final times, refusals' times and
    /// lots' creating index are kept, and records expire by them.
    pub(crate) record_expiry: bool,
    pub(crate) categories: BTreeMap<String, Category>,
    /// Derived index image_id -> lot_id (image ids are unique across lots; rebuilt on restore).
    pub(crate) images: BTreeMap<String, Id>,
    /// Derived count of committed images per content hash: what the object store sweeper may
    /// not delete (rebuilt on restore).
    pub(crate) image_refs: BTreeMap<String, u32>,
}

/// What applying one command produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The answer for the command's caller (possibly a rejection).
    pub outcome: pb::Outcome,
    /// What subscribers see, in order. Empty for rejections and no-op retries.
    pub events: Vec<pb::Event>,
}

impl Applied {
    pub fn rejection(&self) -> Option<&pb::Rejection> {
        match &self.outcome.result {
            Some(Res::Rejected(r)) => Some(r),
            _ => None,
        }
    }
}

/// Who is acting and when.
struct Ctx<'a> {
    at: i64,
    actor: &'a str,
    /// The replica's log index for this command (0 outside a replica).
    log_index: u64,
}

type Events = Vec<Event>;

fn event(kind: pb::event::Kind) -> Event {
    Event::other(kind)
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Applies one command. Never panics on any input; a broken internal invariant is a
    /// `debug_assert!` (a replica must not silently diverge).
    pub fn apply(&mut self, cmd: &pb::Command) -> Applied {
        let mut events = Vec::new();
        let outcome = self.apply_compact(cmd, cmd.at_ms, cmd.log_index, &mut events).into_pb();
        Applied { outcome, events: events.into_iter().map(pb::Event::from).collect() }
    }

    /// [`Ledger::apply`] for a replica's hot path: the answer and the events (appended to
    /// `events`) stay in their compact forms, with no per-bid string copies. The command is
    /// stamped with `at_ms` and `log_index` in place of its own fields (a replica's clock and
    /// log index), so a replica applies the command its log holds without copying it.
    pub fn apply_compact(&mut self, cmd: &pb::Command, at_ms: i64, log_index: u64, events: &mut Vec<Event>) -> Answer {
        let before = events.len();
        match self.dispatch(cmd, at_ms, log_index, events) {
            Ok(answer) => answer,
            Err(rejection) => {
                debug_assert!(events.len() == before, "a rejection emitted events");
                events.truncate(before);
                Answer::other(Res::Rejected(rejection.to_pb()))
            }
        }
    }

    fn dispatch(
        &mut self,
        cmd: &pb::Command,
        at_ms: i64,
        log_index: u64,
        events: &mut Events,
    ) -> Result<Answer, Rejection> {
        if !(0..=limits::TIME_MS_MAX).contains(&at_ms) {
            return reject(Code::InvalidTime, format!("command time {at_ms} ms is out of range"));
        }
        self.last_at_ms = self.last_at_ms.max(at_ms);
        // At the same point of the same command on every replica: before the command, so
        // nothing it records can be due (the horizon is positive).
        self.expire_records(self.last_at_ms);
        let ctx = Ctx { at: self.last_at_ms, actor: &cmd.actor, log_index };
        let Some(body) = &cmd.body else {
            return reject(Code::InvalidInput, "the command has no body");
        };
        let result = match body {
            Body::PlaceBid(c) => return self.place_bid(&ctx, c, events),
            Body::CreateUser(c) => self.create_user(&ctx, c, events),
            Body::SetUserRole(c) => self.set_user_role(&ctx, c, events),
            Body::CreateLot(c) => self.create_lot(&ctx, c, events),
            Body::SetLotStatus(c) => self.set_lot_status(&ctx, c, events),
            Body::CloseLot(c) => self.close_lot(&ctx, c, events),
            Body::CreateAuction(c) => self.create_auction(&ctx, c, events),
            Body::AddLotToAuction(c) => self.add_lot_to_auction(&ctx, c, events),
            Body::SetAuctionStatus(c) => self.set_auction_status(&ctx, c, events),
            Body::PutCategory(c) => self.put_category(&ctx, c, events),
            Body::SetLotCategories(c) => self.set_lot_categories(&ctx, c, events),
            Body::AddAttributes(c) => self.add_attributes(&ctx, c, events),
            Body::DeleteAttribute(c) => self.delete_attribute(&ctx, c, events),
            Body::AddComment(c) => self.add_comment(&ctx, c, events),
            Body::DeleteComment(c) => self.delete_comment(&ctx, c, events),
            Body::AddImage(c) => self.add_image(&ctx, c, events),
            Body::DeleteImage(c) => self.delete_image(&ctx, c, events),
            Body::ReorderImages(c) => self.reorder_images(&ctx, c, events),
            Body::ActivateRecordExpiry(_) => self.activate_record_expiry(&ctx),
        };
        result.map(Answer::other)
    }

    // ---- queries -------------------------------------------------------------------------

    /// The latest command time applied (Unix ms).
    pub fn last_at_ms(&self) -> i64 {
        self.last_at_ms
    }

    pub fn lot(&self, lot_id: &str) -> Option<&Lot> {
        self.lots.get(lot_id)
    }

    pub fn lots(&self) -> impl Iterator<Item = &Lot> {
        self.lots.values()
    }

    pub fn user(&self, user_id: &str) -> Option<&User> {
        self.users.get(user_id)
    }

    pub fn user_by_name(&self, username: &str) -> Option<&User> {
        self.usernames.get(username).and_then(|id| self.users.get(id))
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Every auction, in id order.
    pub fn auctions(&self) -> impl Iterator<Item = &Auction> {
        self.auctions.values()
    }

    pub fn auction(&self, auction_id: &str) -> Option<&Auction> {
        self.auctions.get(auction_id)
    }

    /// Lots still open whose end time is at or before `at_ms`: what the closing timer proposes.
    pub fn lots_due(&self, at_ms: i64) -> impl Iterator<Item = &str> {
        self.lots
            .values()
            .filter(move |l| l.status == LotStatus::InAuction && l.ends_at_ms <= at_ms)
            .map(|l| &*l.lot_id)
    }

    pub fn categories(&self) -> impl Iterator<Item = &Category> {
        self.categories.values()
    }

    pub fn category(&self, category_id: &str) -> Option<&Category> {
        self.categories.get(category_id)
    }

    /// Every category with its direct lot count (the lots whose `category` or further
    /// categories name it) and its children, in id order.
    pub fn category_views(&self) -> Vec<pb::CategoryView> {
        let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
        for lot in self.lots.values() {
            let mut named: Vec<&str> = lot.content.categories.iter().map(String::as_str).collect();
            if !named.contains(&lot.category.as_str()) {
                named.push(&lot.category);
            }
            for id in named {
                *counts.entry(id).or_default() += 1;
            }
        }
        let mut children: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for c in self.categories.values() {
            children.entry(c.parent_id.as_str()).or_default().push(c.category_id.clone());
        }
        self.categories
            .values()
            .map(|c| pb::CategoryView {
                lot_count: counts.get(c.category_id.as_str()).copied().unwrap_or(0),
                children: children.remove(c.category_id.as_str()).unwrap_or_default(),
                ..content::category_view(c)
            })
            .collect()
    }

    /// `category_id` and every category under it (empty when there is no such category).
    pub fn category_subtree(&self, category_id: &str) -> std::collections::BTreeSet<String> {
        if !self.categories.contains_key(category_id) {
            return Default::default();
        }
        content::subtree(&self.categories, category_id)
    }

    /// A committed image by id, with its lot and gallery position.
    pub fn image(&self, image_id: &str) -> Option<pb::ImageView> {
        let lot = self.lots.get(self.images.get(image_id)?)?;
        let (at, image) = lot.content.image(image_id)?;
        Some(content::image_view(&lot.lot_id, at, image))
    }

    /// Whether a committed image holds these bytes (the object store must keep them).
    pub fn image_referenced(&self, content_hash: &str) -> bool {
        self.image_refs.contains_key(content_hash)
    }

    /// The recorded first answer to a bidder's bid id, if any.
    pub fn recorded_bid(&self, bidder: &str, bid_id: &str) -> Option<pb::Outcome> {
        let record = self.recorded.get(bidder)?.get(bid_id)?;
        Some(pb::Outcome { result: Some(record.to_result(bid_id)) })
    }

    /// Drops the recorded answer to a bidder's bid id, so a retry of it is applied again.
    /// This breaks exactly-once on purpose: it exists only for the node's unsafe jepsen mode,
    /// which shows that the harness catches a bid applied twice.
    pub fn forget_recorded_bid(&mut self, bidder: &str, bid_id: &str) {
        if let Some(bids) = self.recorded.get(bidder)
            && let Some((bidder, Recorded::Rejected { at_ms: Some(at), .. })) =
                self.users.get_key_value(bidder).map(|(id, _)| id.clone()).zip(bids.get(bid_id))
        {
            // Its place in the expiry queue goes with it, as on a replica restored without it.
            self.refusals.remove(&(*at, bidder, Id::from(bid_id)));
        }
        remove_record(&mut self.recorded, bidder, bid_id, |_| true);
    }

    /// Whether `ActivateRecordExpiry` was applied (the leader proposes it while not).
    pub fn record_expiry(&self) -> bool {
        self.record_expiry
    }

    fn activate_record_expiry(&mut self, ctx: &Ctx) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Admin])?;
        self.record_expiry = true;
        Ok(Res::RecordExpiry(pb::RecordExpiryView { active: true }))
    }

    /// Drops the exactly-once records whose horizon has passed at `now` (see `once`).
    fn expire_records(&mut self, now: i64) {
        let due = |at: i64| at.saturating_add(limits::EXACTLY_ONCE_HORIZON_MS) <= now;
        // Looked at in place first: this runs before every command, and nothing is due nearly
        // always.
        while self.final_lots.first().is_some_and(|(at, _)| due(*at)) {
            let Some((_, lot_id)) = self.final_lots.pop_first() else { break };
            let Some(lot) = self.lots.get(&lot_id) else { continue };
            let placed = lot.history.iter().filter(|l| l.kind == BidKind::Placed).map(|l| (&l.bidder, &l.bid_id));
            for (bidder, bid_id) in placed.chain(lot.earlier_bids.iter().map(|(b, i)| (b, i))) {
                // Only this lot's record: a bid id names one record per bidder.
                remove_record(
                    &mut self.recorded,
                    bidder,
                    bid_id,
                    |r| matches!(r, Recorded::Bid { lot_id: l, .. } if *l == lot_id),
                );
            }
        }
        while self.refusals.first().is_some_and(|(at, _, _)| due(*at)) {
            let Some((at, bidder, bid_id)) = self.refusals.pop_first() else { break };
            remove_record(
                &mut self.recorded,
                &bidder,
                &bid_id,
                |r| matches!(r, Recorded::Rejected { at_ms: Some(t), .. } if *t == at),
            );
        }
    }

    // ---- users ---------------------------------------------------------------------------

    fn create_user(&mut self, ctx: &Ctx, c: &pb::CreateUser, events: &mut Events) -> Result<Res, Rejection> {
        check_id("user_id", &c.user_id)?;
        check_id("username", &c.username)?;
        let role = role_of(c.role)?;
        if c.password_hash.len() > limits::PASSWORD_HASH_BYTES_MAX {
            return reject(Code::InvalidInput, "password_hash is too long");
        }
        if role != Role::User {
            self.authorize(ctx, &[Role::Admin])?;
        }
        let digest = digest_of(c);
        if let Some(existing) = self.users.get(c.user_id.as_str()) {
            return if existing.create_digest == digest {
                Ok(Res::User(user_view(existing)))
            } else {
                reject(Code::UserExists, format!("user {} already exists", c.user_id))
            };
        }
        if self.usernames.contains_key(&c.username) {
            return reject(Code::UsernameTaken, format!("username {} is taken", c.username));
        }
        let user = User {
            user_id: c.user_id.as_str().into(),
            username: c.username.clone(),
            role,
            password_hash: c.password_hash.clone(),
            create_digest: digest,
        };
        let view = user_view(&user);
        self.usernames.insert(user.username.clone(), user.user_id.clone());
        self.users.insert(user.user_id.clone(), user);
        events.push(event(pb::event::Kind::UserCreated(view.clone())));
        Ok(Res::User(view))
    }

    fn set_user_role(&mut self, ctx: &Ctx, c: &pb::SetUserRole, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Admin])?;
        let role = role_of(c.role)?;
        let Some(user) = self.users.get_mut(c.user_id.as_str()) else {
            return reject(Code::UserNotFound, format!("no user {}", c.user_id));
        };
        if user.role != role {
            user.role = role;
            events.push(event(pb::event::Kind::UserRoleChanged(user_view(user))));
        }
        Ok(Res::User(user_view(user)))
    }

    /// The system (empty actor) may do anything; a user needs one of `roles`.
    fn authorize(&self, ctx: &Ctx, roles: &[Role]) -> Result<(), Rejection> {
        if ctx.actor.is_empty() {
            return Ok(());
        }
        match self.users.get(ctx.actor) {
            Some(user) if roles.contains(&user.role) => Ok(()),
            Some(user) => reject(Code::Forbidden, format!("role {} may not do this", role_name(user.role))),
            None => reject(Code::Forbidden, format!("unknown actor {}", ctx.actor)),
        }
    }

    // ---- lots ----------------------------------------------------------------------------

    fn create_lot(&mut self, ctx: &Ctx, c: &pb::CreateLot, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Curator, Role::Admin])?;
        check_id("lot_id", &c.lot_id)?;
        check_text("title", &c.title, 1, limits::NAME_BYTES_MAX)?;
        check_text("description", &c.description, 0, limits::DESCRIPTION_BYTES_MAX)?;
        check_text("artist", &c.artist, 0, limits::NAME_BYTES_MAX)?;
        check_text("category", &c.category, 0, limits::NAME_BYTES_MAX)?;
        let currency = currency_of(&c.currency)?;
        let ladder = ladder_of(currency, &c.increment_ladder)?;
        check_amount("start_price", c.start_price, 0)?;
        if let Some(reserve) = c.reserve_price {
            check_amount("reserve_price", reserve, c.start_price)?;
        }
        check_window(c.starts_at_ms, c.ends_at_ms)?;
        check_secs("soft_close_secs", c.soft_close_secs)?;
        let seller_id = if c.seller_id.is_empty() { ctx.actor } else { c.seller_id.as_str() };
        if seller_id.is_empty() {
            return reject(Code::InvalidInput, "seller_id is required");
        }
        if !self.users.contains_key(seller_id) {
            return reject(Code::UserNotFound, format!("no user {seller_id} to be the seller"));
        }
        let digest = digest_of(c);
        if let Some(existing) = self.lots.get(c.lot_id.as_str()) {
            return if existing.create_digest == digest {
                Ok(Res::Lot(lot_view(existing)))
            } else {
                reject(Code::LotExists, format!("lot {} already exists", c.lot_id))
            };
        }
        let lot = Lot {
            lot_id: c.lot_id.as_str().into(),
            title: c.title.clone(),
            description: c.description.clone(),
            artist: c.artist.clone(),
            category: c.category.clone(),
            currency,
            status: LotStatus::Draft,
            starts_at_ms: c.starts_at_ms,
            ends_at_ms: c.ends_at_ms,
            soft_close_secs: c.soft_close_secs,
            seller_id: seller_id.to_owned(),
            ladder,
            book: Book::new(c.start_price, c.reserve_price),
            version: 1,
            auction_id: String::new(),
            history: Vec::new(),
            content: LotContent::default(),
            create_digest: digest,
            final_at_ms: None,
            earlier_bids: Vec::new(),
            created_index: if self.record_expiry { ctx.log_index } else { 0 },
        };
        let view = lot_view(&lot);
        self.lots.insert(lot.lot_id.clone(), lot);
        events.push(event(pb::event::Kind::LotCreated(view.clone())));
        Ok(Res::Lot(view))
    }

    fn set_lot_status(&mut self, ctx: &Ctx, c: &pb::SetLotStatus, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Curator, Role::Admin])?;
        let to = status_of(c.status)?;
        let Some(lot) = self.lots.get_mut(c.lot_id.as_str()) else {
            return reject(Code::LotNotFound, format!("no lot {}", c.lot_id));
        };
        let from = lot.status;
        // Asking for the status the lot already has is a no-op, so a retried move is harmless.
        if from == to {
            return Ok(Res::Lot(lot_view(lot)));
        }
        if !lifecycle::can_transition(from, to) {
            return reject(
                Code::InvalidTransition,
                format!("lot {} cannot move from {} to {}", lot.lot_id, lifecycle::name(from), lifecycle::name(to)),
            );
        }
        if from == LotStatus::InAuction && to != LotStatus::AuctionCancelled {
            return reject(
                Code::ClosesByRule,
                "a lot leaves InAuction by closing at its end time (or by cancellation)",
            );
        }
        if to == LotStatus::InAuction && !lot.auction_id.is_empty() {
            return reject(
                Code::LotInAuction,
                format!("lot {} opens when auction {} goes Live", lot.lot_id, lot.auction_id),
            );
        }
        if to == LotStatus::ReadyForAuction && from == LotStatus::SoldPendingPayment {
            // Offered again: a fresh sale with no bids, free to join a new auction.
            lot.book = Book::new(lot.book.start_price, lot.book.reserve);
            // Their records stay until the lot is final: a retry must not bid in the new sale.
            // Kept only with record expiry on, like every time the horizon counts from.
            if self.record_expiry {
                let placed = lot.history.iter().filter(|l| l.kind == BidKind::Placed);
                lot.earlier_bids.extend(placed.map(|l| (l.bidder.clone(), l.bid_id.clone())));
            }
            lot.history.clear();
            lot.auction_id.clear();
        }
        move_lot(lot, to, ctx.at, self.record_expiry.then_some(&mut self.final_lots), events);
        Ok(Res::Lot(lot_view(lot)))
    }

    fn close_lot(&mut self, ctx: &Ctx, c: &pb::CloseLot, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Admin])?;
        let Some(lot) = self.lots.get_mut(c.lot_id.as_str()) else {
            return reject(Code::LotNotFound, format!("no lot {}", c.lot_id));
        };
        match lot.status {
            LotStatus::InAuction => {}
            // A duplicate close (an old leader's timer) gets the same answer and changes nothing.
            LotStatus::AuctionEnded | LotStatus::SoldPendingPayment => return Ok(Res::Closed(closed_view(lot))),
            other => {
                return reject(
                    Code::LotNotOpen,
                    format!("lot {} is {}, not InAuction", lot.lot_id, lifecycle::name(other)),
                );
            }
        }
        if ctx.at < lot.ends_at_ms {
            return reject(
                Code::LotNotEnded,
                format!("lot {} ends at {}, it is {}", lot.lot_id, format_time(lot.ends_at_ms), format_time(ctx.at)),
            );
        }
        let to = if lot.book.reserve_met() { LotStatus::SoldPendingPayment } else { LotStatus::AuctionEnded };
        move_lot(lot, to, ctx.at, self.record_expiry.then_some(&mut self.final_lots), events);
        let closed = closed_view(lot);
        events.push(event(pb::event::Kind::LotClosed(closed.clone())));
        let auction_id = lot.auction_id.clone();
        self.end_auction_if_done(&auction_id, events);
        Ok(Res::Closed(closed))
    }

    /// A Live auction ends when none of its lots is still open.
    fn end_auction_if_done(&mut self, auction_id: &str, events: &mut Events) {
        let Some(auction) = self.auctions.get(auction_id) else { return };
        if auction.status != AuctionStatus::Live {
            return;
        }
        let lots = &self.lots;
        let open = auction.lot_ids.iter().any(|id| {
            lots.get(id.as_str()).is_some_and(|l| l.status == LotStatus::InAuction && l.auction_id == auction_id)
        });
        if !open && let Some(auction) = self.auctions.get_mut(auction_id) {
            move_auction(auction, AuctionStatus::Ended, events);
        }
    }

    // ---- bids ----------------------------------------------------------------------------

    fn place_bid(&mut self, ctx: &Ctx, c: &pb::PlaceBid, events: &mut Events) -> Result<Answer, Rejection> {
        if ctx.actor.is_empty() {
            return reject(Code::InvalidInput, "a bid needs a bidder");
        }
        check_id("bid_id", &c.bid_id)?;
        // Users are never removed (and a snapshot's records must name users), so a bidder
        // with records is always a user: checking the user first answers retries the same.
        let Some(user) = self.users.get(ctx.actor) else {
            return reject(Code::UserNotFound, format!("no user {}", ctx.actor));
        };
        let bidder = user.user_id.clone();
        let bids = self.recorded.get_or_default(&bidder);
        // The bid's id is allocated once, then shared by the book, the history and the record.
        let slot = match bids.entry(Id::from(c.bid_id.as_str())) {
            hash_map::Entry::Occupied(first) => return Ok(Answer::other(first.get().to_result(&c.bid_id))),
            hash_map::Entry::Vacant(slot) => slot,
        };
        let bid_id = slot.key().clone();
        let (result, record) = match bid(&mut self.lots, ctx, &bidder, &bid_id, c, events) {
            Ok(record) => (Ok(Answer::bid(bid_id.clone(), record.clone())), record),
            Err(rejection) => {
                let at_ms = self.record_expiry.then_some(ctx.at);
                if let Some(at) = at_ms {
                    self.refusals.insert((at, bidder.clone(), bid_id.clone()));
                }
                let record = Recorded::Rejected { rejection: Box::new(rejection.to_pb()), at_ms };
                (Err(rejection), record)
            }
        };
        slot.insert(record);
        result
    }

    // ---- auctions ------------------------------------------------------------------------

    fn create_auction(&mut self, ctx: &Ctx, c: &pb::CreateAuction, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Admin])?;
        check_id("auction_id", &c.auction_id)?;
        check_text("title", &c.title, 1, limits::NAME_BYTES_MAX)?;
        let currency = currency_of(&c.currency)?;
        let ladder = ladder_of(currency, &c.increment_ladder)?;
        check_window(c.starts_at_ms, c.ends_at_ms)?;
        check_secs("lot_interval_secs", c.lot_interval_secs)?;
        let digest = digest_of(c);
        if let Some(existing) = self.auctions.get(&c.auction_id) {
            return if existing.create_digest == digest {
                Ok(Res::Auction(auction_view(existing)))
            } else {
                reject(Code::AuctionExists, format!("auction {} already exists", c.auction_id))
            };
        }
        let auction = Auction {
            auction_id: c.auction_id.clone(),
            title: c.title.clone(),
            currency,
            status: AuctionStatus::Scheduled,
            starts_at_ms: c.starts_at_ms,
            ends_at_ms: c.ends_at_ms,
            lot_interval_secs: c.lot_interval_secs,
            ladder,
            lot_ids: Vec::new(),
            create_digest: digest,
        };
        let view = auction_view(&auction);
        self.auctions.insert(auction.auction_id.clone(), auction);
        events.push(event(pb::event::Kind::AuctionCreated(view.clone())));
        Ok(Res::Auction(view))
    }

    fn add_lot_to_auction(
        &mut self,
        ctx: &Ctx,
        c: &pb::AddLotToAuction,
        events: &mut Events,
    ) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Admin])?;
        let Some(auction) = self.auctions.get_mut(&c.auction_id) else {
            return reject(Code::AuctionNotFound, format!("no auction {}", c.auction_id));
        };
        let Some(lot) = self.lots.get_mut(c.lot_id.as_str()) else {
            return reject(Code::LotNotFound, format!("no lot {}", c.lot_id));
        };
        if lot.auction_id == auction.auction_id {
            return Ok(Res::Auction(auction_view(auction)));
        }
        if auction.status != AuctionStatus::Scheduled {
            return reject(
                Code::AuctionNotScheduled,
                format!("auction {} is {}", auction.auction_id, lifecycle::auction_name(auction.status)),
            );
        }
        if !lot.auction_id.is_empty() {
            return reject(Code::LotInAuction, format!("lot {} is already in auction {}", lot.lot_id, lot.auction_id));
        }
        if lot.status != LotStatus::ReadyForAuction {
            return reject(
                Code::LotNotReady,
                format!("lot {} is {}, not ReadyForAuction", lot.lot_id, lifecycle::name(lot.status)),
            );
        }
        if auction.lot_ids.len() >= limits::AUCTION_LOTS_MAX {
            return reject(
                Code::AuctionFull,
                format!("auction {} holds {} lots already", auction.auction_id, limits::AUCTION_LOTS_MAX),
            );
        }
        // Lot k of the sale closes k lot intervals after the sale's end (staggered closing).
        let k = i64::try_from(auction.lot_ids.len()).unwrap_or(i64::MAX);
        let ends_at_ms = k
            .checked_mul(i64::from(auction.lot_interval_secs) * 1000)
            .and_then(|offset| auction.ends_at_ms.checked_add(offset))
            .filter(|&t| t <= limits::TIME_MS_MAX);
        let Some(ends_at_ms) = ends_at_ms else {
            return reject(Code::InvalidTime, "the staggered end time is out of range");
        };
        lot.currency = auction.currency;
        lot.ladder = auction.ladder.clone();
        lot.starts_at_ms = auction.starts_at_ms;
        lot.ends_at_ms = ends_at_ms;
        lot.auction_id = auction.auction_id.clone();
        lot.version += 1;
        auction.lot_ids.push(String::from(&*lot.lot_id));
        events.push(event(pb::event::Kind::LotAddedToAuction(pb::LotAddedToAuction {
            auction_id: auction.auction_id.clone(),
            lot_id: String::from(&*lot.lot_id),
            starts_at_ms: lot.starts_at_ms,
            ends_at_ms,
        })));
        Ok(Res::Auction(auction_view(auction)))
    }

    fn set_auction_status(
        &mut self,
        ctx: &Ctx,
        c: &pb::SetAuctionStatus,
        events: &mut Events,
    ) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Admin])?;
        let to = match AuctionStatus::try_from(c.status) {
            Ok(s @ (AuctionStatus::Live | AuctionStatus::Cancelled)) => s,
            _ => return reject(Code::InvalidStatus, "an auction can be set Live or Cancelled"),
        };
        let Some(auction) = self.auctions.get_mut(&c.auction_id) else {
            return reject(Code::AuctionNotFound, format!("no auction {}", c.auction_id));
        };
        let from = auction.status;
        if from == to {
            return Ok(Res::Auction(auction_view(auction)));
        }
        let allowed =
            matches!((from, to), (AuctionStatus::Scheduled, _) | (AuctionStatus::Live, AuctionStatus::Cancelled));
        if !allowed {
            return reject(
                Code::InvalidTransition,
                format!(
                    "auction {} cannot move from {} to {}",
                    auction.auction_id,
                    lifecycle::auction_name(from),
                    lifecycle::auction_name(to)
                ),
            );
        }
        if to == AuctionStatus::Live && auction.lot_ids.is_empty() {
            return reject(Code::AuctionEmpty, format!("auction {} has no lots", auction.auction_id));
        }
        move_auction(auction, to, events);
        for lot_id in &auction.lot_ids {
            let Some(lot) = self.lots.get_mut(lot_id.as_str()).filter(|l| l.auction_id == auction.auction_id) else {
                continue;
            };
            match (to, lot.status) {
                (AuctionStatus::Live, LotStatus::ReadyForAuction) => move_lot(
                    lot,
                    LotStatus::InAuction,
                    ctx.at,
                    self.record_expiry.then_some(&mut self.final_lots),
                    events,
                ),
                (AuctionStatus::Cancelled, LotStatus::InAuction) => move_lot(
                    lot,
                    LotStatus::AuctionCancelled,
                    ctx.at,
                    self.record_expiry.then_some(&mut self.final_lots),
                    events,
                ),
                (AuctionStatus::Cancelled, LotStatus::ReadyForAuction) => {
                    // Never offered: the lot is free to join another sale.
                    lot.auction_id.clear();
                    lot.version += 1;
                }
                _ => {}
            }
        }
        Ok(Res::Auction(auction_view(auction)))
    }
}

// ---- lot content ---------------------------------------------------------------------------

impl Ledger {
    fn put_category(&mut self, ctx: &Ctx, c: &pb::PutCategory, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Curator, Role::Admin])?;
        let put = content::check_put(&self.categories, c)?;
        let category =
            Category { category_id: c.category_id.clone(), name: c.name.clone(), parent_id: c.parent_id.clone() };
        let view = content::category_view(&category);
        if put != Put::Same {
            self.categories.insert(category.category_id.clone(), category);
            events.push(event(pb::event::Kind::CategoryPut(view.clone())));
        }
        Ok(Res::Category(view))
    }

    /// Who may manage a lot's content: the system, curators, admins and the lot's seller.
    fn authorize_content(&self, ctx: &Ctx, lot_id: &str) -> Result<(), Rejection> {
        let Some(lot) = self.lots.get(lot_id) else {
            return reject(Code::LotNotFound, format!("no lot {lot_id}"));
        };
        if !ctx.actor.is_empty() && lot.seller_id == ctx.actor && self.users.contains_key(ctx.actor) {
            return Ok(());
        }
        self.authorize(ctx, &[Role::Curator, Role::Admin])
    }

    /// The lot a content command changes (checked to exist by the caller's authorization).
    fn content_lot(&mut self, lot_id: &str) -> Result<&mut Lot, Rejection> {
        match self.lots.get_mut(lot_id) {
            Some(lot) => Ok(lot),
            None => reject(Code::LotNotFound, format!("no lot {lot_id}")),
        }
    }

    fn set_lot_categories(
        &mut self,
        ctx: &Ctx,
        c: &pb::SetLotCategories,
        events: &mut Events,
    ) -> Result<Res, Rejection> {
        self.authorize(ctx, &[Role::Curator, Role::Admin])?;
        content::check_lot_categories(&self.categories, &c.category_ids)?;
        let lot = self.content_lot(&c.lot_id)?;
        if lot.content.categories != c.category_ids {
            lot.content.categories = c.category_ids.clone();
            lot.version += 1;
            events.push(event(pb::event::Kind::LotCategoriesSet(pb::LotCategoriesSet {
                lot_id: String::from(&*lot.lot_id),
                category_ids: c.category_ids.clone(),
            })));
        }
        Ok(Res::Lot(lot_view(lot)))
    }

    fn add_attributes(&mut self, ctx: &Ctx, c: &pb::AddAttributes, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize_content(ctx, &c.lot_id)?;
        let lot = self.content_lot(&c.lot_id)?;
        let added = lot.content.add_attributes(&c.attributes)?;
        lot.version += 1;
        let view = lot.content.attributes_view(&lot.lot_id, &added);
        events.push(event(pb::event::Kind::AttributesAdded(view.clone())));
        Ok(Res::Attributes(view))
    }

    fn delete_attribute(&mut self, ctx: &Ctx, c: &pb::DeleteAttribute, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize_content(ctx, &c.lot_id)?;
        let lot = self.content_lot(&c.lot_id)?;
        let gone = lot.content.delete_attribute(&c.attribute_id)?;
        lot.version += 1;
        events.push(event(pb::event::Kind::AttributeDeleted(pb::AttributeDeleted {
            lot_id: String::from(&*lot.lot_id),
            attribute_id: gone.attribute_id,
            key: gone.key,
        })));
        Ok(Res::Lot(lot_view(lot)))
    }

    fn add_comment(&mut self, ctx: &Ctx, c: &pb::AddComment, events: &mut Events) -> Result<Res, Rejection> {
        if ctx.actor.is_empty() || !self.users.contains_key(ctx.actor) {
            return reject(Code::Forbidden, "a comment needs a signed-in author");
        }
        let digest = digest_of(c);
        let lot = self.content_lot(&c.lot_id)?;
        let lot_id = String::from(&*lot.lot_id);
        let added = lot.content.add_comment(c, ctx.actor, ctx.at, digest)?.map(|x| content::comment_view(&lot_id, x));
        let Some(view) = added else {
            // A retry: the first answer again, nothing new.
            let existing = lot.content.comment(&c.comment_id).map(|x| content::comment_view(&lot_id, x));
            return existing.map(Res::Comment).ok_or_else(|| Rejection::new(Code::CommentNotFound, "comment vanished"));
        };
        lot.version += 1;
        events.push(event(pb::event::Kind::CommentAdded(view.clone())));
        Ok(Res::Comment(view))
    }

    fn delete_comment(&mut self, ctx: &Ctx, c: &pb::DeleteComment, events: &mut Events) -> Result<Res, Rejection> {
        let Some(lot) = self.lots.get(c.lot_id.as_str()) else {
            return reject(Code::LotNotFound, format!("no lot {}", c.lot_id));
        };
        let Some(comment) = lot.content.comment(&c.comment_id) else {
            return reject(Code::CommentNotFound, format!("no comment {} on lot {}", c.comment_id, c.lot_id));
        };
        // Authors delete their own comments; curators and admins any.
        if ctx.actor.is_empty() || comment.author != ctx.actor {
            self.authorize(ctx, &[Role::Curator, Role::Admin])?;
        }
        let lot = self.content_lot(&c.lot_id)?;
        let gone = lot.content.delete_comment(&c.comment_id)?;
        lot.version += 1;
        events.push(event(pb::event::Kind::CommentDeleted(pb::CommentDeleted {
            lot_id: String::from(&*lot.lot_id),
            comment_id: gone.comment_id,
        })));
        Ok(Res::Lot(lot_view(lot)))
    }

    fn add_image(&mut self, ctx: &Ctx, c: &pb::AddImage, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize_content(ctx, &c.lot_id)?;
        content::check_image(c)?;
        if let Some(owner) = self.images.get(&c.image_id) {
            let same =
                self.lots.get(owner).and_then(|l| l.content.image(&c.image_id).map(|(at, i)| (l, at, i))).filter(
                    |(l, _, i)| {
                        *l.lot_id == *c.lot_id
                            && i.content_hash == c.content_hash
                            && i.content_type == c.content_type
                            && (i.bytes, i.width, i.height) == (c.bytes, c.width, c.height)
                    },
                );
            return match same {
                Some((l, at, i)) => Ok(Res::Image(content::image_view(&l.lot_id, at, i))),
                None => reject(Code::ImageExists, format!("image {} already exists", c.image_id)),
            };
        }
        let lot = self.content_lot(&c.lot_id)?;
        let view = lot.content.add_image(&lot.lot_id, c)?;
        lot.version += 1;
        let lot_id = lot.lot_id.clone();
        self.images.insert(c.image_id.clone(), lot_id);
        *self.image_refs.entry(c.content_hash.clone()).or_default() += 1;
        events.push(event(pb::event::Kind::ImageAdded(view.clone())));
        Ok(Res::Image(view))
    }

    fn delete_image(&mut self, ctx: &Ctx, c: &pb::DeleteImage, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize_content(ctx, &c.lot_id)?;
        let lot = self.content_lot(&c.lot_id)?;
        let gone = lot.content.delete_image(&c.image_id)?;
        lot.version += 1;
        let view = lot_view(lot);
        self.images.remove(&gone.image_id);
        if let Some(n) = self.image_refs.get_mut(&gone.content_hash) {
            *n -= 1;
            if *n == 0 {
                self.image_refs.remove(&gone.content_hash);
            }
        }
        events.push(event(pb::event::Kind::ImageDeleted(pb::ImageDeleted {
            lot_id: c.lot_id.clone(),
            image_id: gone.image_id,
            content_hash: gone.content_hash,
        })));
        Ok(Res::Lot(view))
    }

    fn reorder_images(&mut self, ctx: &Ctx, c: &pb::ReorderImages, events: &mut Events) -> Result<Res, Rejection> {
        self.authorize_content(ctx, &c.lot_id)?;
        let lot = self.content_lot(&c.lot_id)?;
        let unchanged = lot.content.images.iter().map(|i| &i.image_id).eq(c.image_ids.iter());
        lot.content.reorder_images(&c.image_ids)?;
        let view = lot.content.images_view(&lot.lot_id);
        if !unchanged {
            lot.version += 1;
            events.push(event(pb::event::Kind::ImagesReordered(view.clone())));
        }
        Ok(Res::Images(view))
    }
}

// ---- state changes shared by several commands --------------------------------------------

/// Removes a bidder's record of `bid_id` if `which` accepts it, and the bidder's table once it
/// is empty (a restored replica has no empty tables).
fn remove_record(
    recorded: &mut IdMap<HashMap<Id, Recorded>>,
    bidder: &str,
    bid_id: &str,
    which: impl FnOnce(&Recorded) -> bool,
) {
    let Some(bids) = recorded.get_mut(bidder) else { return };
    if bids.get(bid_id).is_some_and(which) {
        bids.remove(bid_id);
        if bids.is_empty() {
            recorded.remove(bidder);
        }
    }
}

/// Moves a lot at `at`; with record expiry on (`final_lots` given), one that becomes final
/// joins `final_lots`, for its bids' records to expire by.
fn move_lot(lot: &mut Lot, to: LotStatus, at: i64, final_lots: Option<&mut BTreeSet<(i64, Id)>>, events: &mut Events) {
    debug_assert!(lifecycle::can_transition(lot.status, to), "illegal move {:?} -> {:?}", lot.status, to);
    let from = lot.status;
    lot.status = to;
    // Final states lead only to final states, so the first one sets the time.
    if let Some(final_lots) = final_lots
        && lifecycle::is_final(to)
        && !lifecycle::is_final(from)
    {
        lot.final_at_ms = Some(at);
        final_lots.insert((at, lot.lot_id.clone()));
    }
    lot.version += 1;
    events.push(event(pb::event::Kind::LotStatusChanged(pb::LotStatusChanged {
        lot_id: String::from(&*lot.lot_id),
        from: from as i32,
        to: to as i32,
    })));
}

fn move_auction(auction: &mut Auction, to: AuctionStatus, events: &mut Events) {
    let from = auction.status;
    auction.status = to;
    events.push(event(pb::event::Kind::AuctionStatusChanged(pb::AuctionStatusChanged {
        auction_id: auction.auction_id.clone(),
        from: from as i32,
        to: to as i32,
    })));
}

/// Applies an accepted bid and returns its record, or refuses it changing nothing.
fn bid(
    lots: &mut IdMap<Lot>,
    ctx: &Ctx,
    bidder: &Id,
    bid_id: &Id,
    c: &pb::PlaceBid,
    events: &mut Events,
) -> Result<Recorded, Rejection> {
    let Some(lot) = lots.get_mut(c.lot_id.as_str()) else {
        return reject(Code::LotNotFound, format!("no lot {}", c.lot_id));
    };
    if lot.status != LotStatus::InAuction {
        let code = if lifecycle::is_before_auction(lot.status) { Code::LotNotOpen } else { Code::LotClosed };
        return reject(code, format!("lot {} is {}", lot.lot_id, lifecycle::name(lot.status)));
    }
    if ctx.at < lot.starts_at_ms {
        return reject(
            Code::LotNotOpen,
            format!("bidding on lot {} opens at {}", lot.lot_id, format_time(lot.starts_at_ms)),
        );
    }
    if ctx.at >= lot.ends_at_ms {
        return reject(
            Code::LotClosed,
            format!("bidding on lot {} ended at {}", lot.lot_id, format_time(lot.ends_at_ms)),
        );
    }
    if lot.seller_id == **bidder {
        return reject(Code::SellerCannotBid, "the seller cannot bid on their own lot");
    }
    if lot.history.len() + 2 > limits::LOT_HISTORY_MAX {
        return reject(Code::BidLimitReached, format!("lot {} has reached its bid limit", lot.lot_id));
    }
    let decision = lot.book.place(&lot.ladder, bidder, bid_id, c.max_amount)?;
    record_decision(lot, ctx.at, bidder, bid_id, &decision, events);
    let leading_bidder = match &decision {
        Decision::Defended { leader, .. } => leader.clone(),
        _ => bidder.clone(),
    };
    Ok(Recorded::Bid {
        lot_id: lot.lot_id.clone(),
        outcome: if decision.leading() { BidOutcomeKind::Leading } else { BidOutcomeKind::Outbid } as i32,
        current_price: lot.book.price,
        leading_bidder,
        ends_at_ms: lot.ends_at_ms,
        log_index: ctx.log_index,
    })
}

/// Writes an accepted bid into the lot's history, extends a soft close, and emits events.
fn record_decision(lot: &mut Lot, at: i64, bidder: &Id, bid_id: &Id, decision: &Decision, events: &mut Events) {
    match decision {
        Decision::First { price } | Decision::Raise { price } => {
            push_line(lot, at, bid_id, bidder, *price, BidKind::Placed, events);
        }
        Decision::Overtake { price, previous } => {
            push_line(lot, at, bid_id, bidder, *price, BidKind::Placed, events);
            push_outbid(lot, &previous.bidder, events);
        }
        Decision::Defended { amount, price, .. } => {
            // The challenger's bid stands at its amount, then the leader's proxy answers it.
            push_line(lot, at, bid_id, bidder, *amount, BidKind::Placed, events);
            let proxy = lot.book.leader.as_ref().map(|Leader { bidder, bid_id, .. }| HistoryLine {
                bid_id: bid_id.clone(),
                bidder: bidder.clone(),
                amount: *price,
                at_ms: at,
                kind: BidKind::Proxy,
            });
            if let Some(line) = proxy {
                push_history(lot, line, events);
            }
            push_outbid(lot, bidder, events);
        }
    }
    lot.version += 1;
    if lot.soft_close_secs > 0 {
        let extended = at + i64::from(lot.soft_close_secs) * 1000;
        if extended > lot.ends_at_ms {
            lot.ends_at_ms = extended;
            events.push(Event::lot_extended(lot.lot_id.clone(), extended));
        }
    }
}

fn push_line(lot: &mut Lot, at: i64, bid_id: &Id, bidder: &Id, amount: i64, kind: BidKind, events: &mut Events) {
    let line = HistoryLine { bid_id: bid_id.clone(), bidder: bidder.clone(), amount, at_ms: at, kind };
    push_history(lot, line, events);
}

fn push_history(lot: &mut Lot, line: HistoryLine, events: &mut Events) {
    events.push(Event::bid_recorded(BidRecorded {
        lot_id: lot.lot_id.clone(),
        bid_id: line.bid_id.clone(),
        bidder: line.bidder.clone(),
        amount: line.amount,
        at_ms: line.at_ms,
        kind: line.kind,
        current_price: lot.book.price,
        leading_bidder: lot.book.leader.as_ref().map(|l| l.bidder.clone()),
        reserve_met: lot.book.reserve_met(),
        minimum_bid: lot.book.minimum_bid(&lot.ladder),
    }));
    lot.history.push(line);
}

fn push_outbid(lot: &Lot, user_id: &Id, events: &mut Events) {
    events.push(Event::outbid(lot.lot_id.clone(), user_id.clone(), lot.book.price));
}

// ---- views -----------------------------------------------------------------------------

fn leader_name(book: &Book) -> String {
    book.leader.as_ref().map(|l| String::from(&*l.bidder)).unwrap_or_default()
}

/// The public view: no reserve amount, no maxima.
pub fn lot_view(lot: &Lot) -> pb::LotView {
    pb::LotView {
        lot_id: String::from(&*lot.lot_id),
        title: lot.title.clone(),
        description: lot.description.clone(),
        artist: lot.artist.clone(),
        category: lot.category.clone(),
        currency: lot.currency.as_str().to_owned(),
        status: lot.status as i32,
        start_price: lot.book.start_price,
        current_price: lot.book.price,
        leading_bidder: leader_name(&lot.book),
        bid_count: u32::try_from(lot.history.len()).unwrap_or(u32::MAX),
        reserve_met: lot.book.reserve_met(),
        starts_at_ms: lot.starts_at_ms,
        ends_at_ms: lot.ends_at_ms,
        seller_id: lot.seller_id.clone(),
        version: lot.version,
        auction_id: lot.auction_id.clone(),
        has_reserve: lot.book.reserve.is_some(),
        minimum_bid: lot.book.minimum_bid(&lot.ladder),
        categories: lot.content.categories.clone(),
        image_count: u32::try_from(lot.content.images.len()).unwrap_or(u32::MAX),
        comment_count: u32::try_from(lot.content.comments.len()).unwrap_or(u32::MAX),
    }
}

pub fn user_view(user: &User) -> pb::UserView {
    pb::UserView { user_id: String::from(&*user.user_id), username: user.username.clone(), role: user.role as i32 }
}

pub fn auction_view(auction: &Auction) -> pb::AuctionView {
    pb::AuctionView {
        auction_id: auction.auction_id.clone(),
        title: auction.title.clone(),
        currency: auction.currency.as_str().to_owned(),
        status: auction.status as i32,
        starts_at_ms: auction.starts_at_ms,
        ends_at_ms: auction.ends_at_ms,
        lot_interval_secs: auction.lot_interval_secs,
        lot_ids: auction.lot_ids.clone(),
    }
}

fn closed_view(lot: &Lot) -> pb::LotClosed {
    let sold = lot.status == LotStatus::SoldPendingPayment;
    pb::LotClosed {
        lot_id: String::from(&*lot.lot_id),
        status: lot.status as i32,
        winner: if sold { leader_name(&lot.book) } else { String::new() },
        price: if sold { lot.book.price } else { 0 },
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Unspecified => "unspecified",
        Role::User => "user",
        Role::Curator => "curator",
        Role::Admin => "admin",
    }
}

pub fn parse_role(s: &str) -> Option<Role> {
    [Role::User, Role::Curator, Role::Admin].into_iter().find(|&r| role_name(r) == s)
}

// ---- conversions ---------------------------------------------------------------------

fn role_of(role: i32) -> Result<Role, Rejection> {
    match Role::try_from(role) {
        Ok(r @ (Role::User | Role::Curator | Role::Admin)) => Ok(r),
        _ => reject(Code::InvalidInput, "role must be user, curator or admin"),
    }
}

fn status_of(status: i32) -> Result<LotStatus, Rejection> {
    match LotStatus::try_from(status) {
        Ok(LotStatus::Unspecified) | Err(_) => reject(Code::InvalidStatus, format!("unknown lot status {status}")),
        Ok(s) => Ok(s),
    }
}

fn currency_of(code: &str) -> Result<Currency, Rejection> {
    Currency::parse(code).map_err(|e| Rejection::new(Code::InvalidCurrency, e.to_string()))
}

/// The given ladder, or the currency's house ladder when none is given.
fn ladder_of(currency: Currency, tiers: &[pb::LadderTier]) -> Result<Ladder, Rejection> {
    if tiers.is_empty() {
        return Ladder::default_for(currency).ok_or_else(|| {
            Rejection::new(
                Code::InvalidCurrency,
                format!("{currency} has no default increment ladder; give increment_ladder"),
            )
        });
    }
    let tiers = tiers.iter().map(|t| Tier { from_amount: t.from_amount, step: t.step }).collect();
    Ladder::new(tiers).map_err(|e| Rejection::new(Code::InvalidLadder, e.to_string()))
}

fn digest_of(msg: &impl Message) -> [u8; 32] {
    *blake3::hash(&msg.encode_to_vec()).as_bytes()
}
