//! A small world for ledger tests: users, a clock, and one-line commands.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, reason = "shared test helpers fail loudly")]

use ledger::pb::{self, command::Body, outcome::Result as Res};
use ledger::{Applied, Ledger};

/// 2027-01-15T08:00:00Z, in Unix ms.
pub const T0: i64 = 1_800_000_000_000;
pub const MIN: i64 = 60_000;
pub const HOUR: i64 = 60 * MIN;

pub struct World {
    pub ledger: Ledger,
    pub at: i64,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    /// Users: `admin`, curator `cur`, seller `sam`, bidders `ana`, `ben`, `cai`, `dan`.
    pub fn new() -> World {
        let mut w = World { ledger: Ledger::new(), at: T0 - HOUR };
        w.ok("", Body::CreateUser(user("admin", pb::Role::Admin)));
        w.ok("", Body::CreateUser(user("cur", pb::Role::Curator)));
        for name in ["sam", "ana", "ben", "cai", "dan"] {
            w.ok("", Body::CreateUser(user(name, pb::Role::User)));
        }
        // As a replica's leader does first: records expire from here on.
        w.ok("", Body::ActivateRecordExpiry(pb::ActivateRecordExpiry {}));
        w
    }

    pub fn run(&mut self, actor: &str, body: Body) -> Applied {
        let cmd = pb::Command { at_ms: self.at, actor: actor.to_owned(), body: Some(body), log_index: 0 };
        self.ledger.apply(&cmd)
    }

    /// Runs a command that must succeed.
    pub fn ok(&mut self, actor: &str, body: Body) -> Applied {
        let applied = self.run(actor, body.clone());
        assert!(applied.rejection().is_none(), "{body:?} by {actor:?} was rejected: {:?}", applied.rejection());
        applied
    }

    /// Runs a command that must be rejected with `code`, and checks it changed no lot.
    pub fn rejected(&mut self, actor: &str, body: Body, code: &str) {
        let lots_before: Vec<_> = self.ledger.lots().cloned().collect();
        let applied = self.run(actor, body.clone());
        let got = applied.rejection().map(|r| r.code.clone());
        assert_eq!(got.as_deref(), Some(code), "{body:?} by {actor:?}");
        assert!(applied.events.is_empty(), "a rejection emitted events");
        let lots_after: Vec<_> = self.ledger.lots().cloned().collect();
        assert_eq!(lots_before, lots_after, "a rejection changed a lot");
    }

    /// Creates lot `id` (start `S`, reserve `R`, soft close) open from T0 to T0 + 1h, and
    /// moves it to InAuction.
    pub fn open_lot(&mut self, id: &str, start: i64, reserve: Option<i64>, soft_close_secs: u32) {
        self.open(lot(id, start, reserve, soft_close_secs));
    }

    /// Creates `lot` and moves it through its lifecycle into the auction.
    pub fn open(&mut self, lot: pb::CreateLot) {
        let id = lot.lot_id.clone();
        self.ok("cur", Body::CreateLot(lot));
        for status in [
            pb::LotStatus::UnderReview,
            pb::LotStatus::Authenticated,
            pb::LotStatus::ReadyForAuction,
            pb::LotStatus::InAuction,
        ] {
            self.ok("cur", set_status(&id, status));
        }
        self.at = self.at.max(T0);
    }

    /// Places a bid; `Ok(result)` or `Err(code)`.
    pub fn bid(&mut self, bidder: &str, bid_id: &str, lot_id: &str, max_amount: i64) -> Result<pb::BidResult, String> {
        let applied =
            self.run(bidder, Body::PlaceBid(pb::PlaceBid { lot_id: lot_id.into(), bid_id: bid_id.into(), max_amount }));
        match applied.outcome.result {
            Some(Res::Bid(b)) => Ok(b),
            Some(Res::Rejected(r)) => Err(r.code),
            other => panic!("unexpected bid outcome {other:?}"),
        }
    }

    pub fn close(&mut self, lot_id: &str) -> Applied {
        self.run("", Body::CloseLot(pb::CloseLot { lot_id: lot_id.into() }))
    }

    pub fn view(&self, lot_id: &str) -> pb::LotView {
        ledger::state::lot_view(self.ledger.lot(lot_id).expect("lot exists"))
    }
}

pub fn user(name: &str, role: pb::Role) -> pb::CreateUser {
    pb::CreateUser { user_id: name.into(), username: name.into(), role: role as i32, password_hash: Vec::new() }
}

pub fn lot(id: &str, start: i64, reserve: Option<i64>, soft_close_secs: u32) -> pb::CreateLot {
    pb::CreateLot {
        lot_id: id.into(),
        title: format!("Lot {id}"),
        description: "oil on canvas".into(),
        artist: "Anon".into(),
        category: "painting".into(),
        currency: "USD".into(),
        start_price: start,
        reserve_price: reserve,
        starts_at_ms: T0,
        ends_at_ms: T0 + HOUR,
        soft_close_secs,
        seller_id: "sam".into(),
        increment_ladder: Vec::new(),
    }
}

pub fn set_status(lot_id: &str, status: pb::LotStatus) -> Body {
    Body::SetLotStatus(pb::SetLotStatus { lot_id: lot_id.into(), status: status as i32 })
}
