//! A random but reproducible auction day, played through the real ledger: the feed items a
//! replica would publish, and the ledger itself as the oracle for what the catalog must show.
//! For the store suite and `gavel-bench catalog` (feature `sim`); not part of the catalog.

use crate::LotSummary;
use ledger::pb::{self, command::Body};
use ledger::state::Ledger;
use node::pb::FeedItem;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const ARTISTS: [&str; 8] = [
    "Hilma af Klint",
    "Frida Kahlo",
    "Leonora Carrington",
    "Doris Salcedo",
    "Beatriz González",
    "Sonia Delaunay",
    "Agnes Martin",
    "Ana Mendieta",
];
pub const CATEGORIES: [&str; 5] = ["painting", "sculpture", "photography", "prints", "textiles"];
/// A further category some lots are listed under (a child of `painting`, moved under
/// `sculpture` late in the day).
pub const SUBCATEGORY: &str = "oils";
pub const MEDIA: [&str; 3] = ["oil", "ink", "bronze"];
pub const BIDDERS: usize = 40;
const T0: i64 = 1_800_000_000_000;

/// The played day: its feed and the ledger that produced it.
pub struct Day {
    pub feed: Vec<FeedItem>,
    pub ledger: Ledger,
    pub lot_ids: Vec<String>,
    /// The ledger's clock after the last item.
    pub at_ms: i64,
}

struct Player {
    ledger: Ledger,
    feed: Vec<FeedItem>,
    at_ms: i64,
}

impl Player {
    /// Applies `body` as `actor`; an accepted command becomes the next feed item.
    fn run(&mut self, actor: &str, body: Body) -> bool {
        self.at_ms += 1_000;
        let index = self.feed.len() as u64 + 1;
        let cmd = pb::Command { at_ms: self.at_ms, actor: actor.into(), log_index: index, body: Some(body) };
        let applied = self.ledger.apply(&cmd);
        if applied.rejection().is_some() {
            return false;
        }
        self.feed.push(FeedItem { index, at_ms: self.at_ms, events: applied.events });
        true
    }
}

fn user(id: &str, role: pb::Role) -> Body {
    Body::CreateUser(pb::CreateUser {
        user_id: id.into(),
        username: id.into(),
        role: role as i32,
        password_hash: vec![],
    })
}

fn category(id: &str, parent: &str) -> Body {
    Body::PutCategory(pb::PutCategory { category_id: id.into(), name: id.into(), parent_id: parent.into() })
}

fn move_to(lot_id: &str, status: pb::LotStatus) -> Body {
    Body::SetLotStatus(pb::SetLotStatus { lot_id: lot_id.into(), status: status as i32 })
}

/// `lots` lots (a third of them in two sales), `bids` bid attempts, then some lots closed.
pub fn play(seed: u64, lots: usize, bids: usize) -> Day {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = Player { ledger: Ledger::new(), feed: Vec::new(), at_ms: T0 };
    // As a replica's leader does first.
    p.run("", Body::ActivateRecordExpiry(pb::ActivateRecordExpiry {}));
    p.run("", user("admin", pb::Role::Admin));
    p.run("", user("curator", pb::Role::Curator));
    p.run("", user("seller", pb::Role::User));
    for b in 0..BIDDERS {
        p.run("", user(&format!("bidder{b}"), pb::Role::User));
    }
    // The lots' categories under one root, and a subcategory some lots are also listed under.
    p.run("curator", category("art", ""));
    for c in CATEGORIES {
        p.run("curator", category(c, "art"));
    }
    p.run("curator", category(SUBCATEGORY, "painting"));
    for (a, currency) in [("sale-a", "USD"), ("sale-b", "EUR")] {
        p.run(
            "admin",
            Body::CreateAuction(pb::CreateAuction {
                auction_id: a.into(),
                title: format!("Evening sale {a}"),
                currency: currency.into(),
                starts_at_ms: T0,
                ends_at_ms: T0 + 40 * 86_400_000,
                lot_interval_secs: 30,
                increment_ladder: vec![],
            }),
        );
    }
    let mut lot_ids = Vec::with_capacity(lots);
    for l in 0..lots {
        let lot_id = format!("lot-{l:06}");
        let start_price = rng.gen_range(1..2_000) * 100;
        let created = p.run(
            "curator",
            Body::CreateLot(pb::CreateLot {
                lot_id: lot_id.clone(),
                title: format!("Study no. {l}"),
                description: String::new(),
                artist: ARTISTS[rng.gen_range(0..ARTISTS.len())].into(),
                category: CATEGORIES[rng.gen_range(0..CATEGORIES.len())].into(),
                currency: "USD".into(),
                start_price,
                reserve_price: rng.gen_bool(0.3).then(|| start_price * 2),
                starts_at_ms: T0,
                ends_at_ms: T0 + rng.gen_range(1..30) * 86_400_000,
                soft_close_secs: if rng.gen_bool(0.5) { 120 } else { 0 },
                seller_id: "seller".into(),
                increment_ladder: vec![],
            }),
        );
        if !created {
            continue;
        }
        lot_ids.push(lot_id.clone());
        // Content on some lots: a further category, attributes, images (metadata only).
        if rng.gen_bool(0.3) {
            let set = pb::SetLotCategories { lot_id: lot_id.clone(), category_ids: vec![SUBCATEGORY.into()] };
            p.run("curator", Body::SetLotCategories(set));
        }
        if rng.gen_bool(0.5) {
            let medium = MEDIA[rng.gen_range(0..MEDIA.len())];
            let attributes = vec![
                pb::AttributeInput { key: "medium".into(), value: medium.into() },
                pb::AttributeInput { key: "year".into(), value: rng.gen_range(1900..2000).to_string() },
            ];
            p.run("seller", Body::AddAttributes(pb::AddAttributes { lot_id: lot_id.clone(), attributes }));
        }
        for i in 0..rng.gen_range(0..3usize) {
            let add = pb::AddImage {
                lot_id: lot_id.clone(),
                image_id: format!("img-{l}-{i}"),
                content_hash: format!("{:064x}", l * 8 + i),
                content_type: "image/png".into(),
                bytes: 1_000,
                width: 100,
                height: 100,
            };
            p.run("seller", Body::AddImage(add));
        }
        // Most lots go up for auction; some stay in review.
        let steps = rng.gen_range(0..5);
        let path = [pb::LotStatus::UnderReview, pb::LotStatus::Authenticated, pb::LotStatus::ReadyForAuction];
        for s in path.iter().take(steps.min(3)) {
            p.run("curator", move_to(&lot_id, *s));
        }
        if steps >= 3 {
            match l % 3 {
                0 => {
                    p.run(
                        "admin",
                        Body::AddLotToAuction(pb::AddLotToAuction {
                            auction_id: "sale-a".into(),
                            lot_id: lot_id.clone(),
                        }),
                    );
                }
                1 => {
                    p.run(
                        "admin",
                        Body::AddLotToAuction(pb::AddLotToAuction {
                            auction_id: "sale-b".into(),
                            lot_id: lot_id.clone(),
                        }),
                    );
                }
                _ => {
                    p.run("curator", move_to(&lot_id, pb::LotStatus::InAuction));
                }
            }
        }
    }
    p.run(
        "admin",
        Body::SetAuctionStatus(pb::SetAuctionStatus {
            auction_id: "sale-a".into(),
            status: pb::AuctionStatus::Live as i32,
        }),
    );
    p.run(
        "admin",
        Body::SetAuctionStatus(pb::SetAuctionStatus {
            auction_id: "sale-b".into(),
            status: pb::AuctionStatus::Cancelled as i32,
        }),
    );
    for n in 0..bids {
        let Some(lot_id) = (!lot_ids.is_empty()).then(|| &lot_ids[rng.gen_range(0..lot_ids.len())]) else { break };
        let bidder = format!("bidder{}", rng.gen_range(0..BIDDERS));
        let floor = p.ledger.lot(lot_id).map_or(0, |l| ledger::state::lot_view(l).minimum_bid);
        let max_amount = floor + rng.gen_range(0..20) * 500;
        let lot_id = lot_id.clone();
        p.run(&bidder, Body::PlaceBid(pb::PlaceBid { lot_id, bid_id: format!("b{n}"), max_amount }));
    }
    // The subcategory moves: its lots are now found under sculpture, not painting.
    p.run("curator", category(SUBCATEGORY, "sculpture"));
    // A day later: close what has ended.
    p.at_ms += 20 * 86_400_000;
    let due: Vec<String> = p.ledger.lots_due(p.at_ms).map(str::to_owned).collect();
    for lot_id in due {
        p.run("", Body::CloseLot(pb::CloseLot { lot_id }));
    }
    Day { feed: p.feed, ledger: p.ledger, lot_ids, at_ms: p.at_ms }
}

/// A live sale after the day: `bids` bid attempts on the lots still open, a few hot lots
/// drawing most of them (as in a room), a few milliseconds apart. Appends to the day's feed;
/// returns where the sale's items start.
pub fn live_sale(day: &mut Day, seed: u64, bids: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let first = day.feed.len();
    let mut p =
        Player { ledger: std::mem::take(&mut day.ledger), feed: std::mem::take(&mut day.feed), at_ms: day.at_ms };
    let open: Vec<String> = day
        .lot_ids
        .iter()
        .filter(|id| {
            p.ledger.lot(id).is_some_and(|l| ledger::state::lot_view(l).status == pb::LotStatus::InAuction as i32)
        })
        .cloned()
        .collect();
    for n in 0..bids {
        if open.is_empty() {
            break;
        }
        // Squaring a uniform draw skews it toward the front: the hot lots.
        let u: f64 = rng.r#gen();
        let lot_id = open[((u * u) * open.len() as f64) as usize % open.len()].clone();
        let floor = p.ledger.lot(&lot_id).map_or(0, |l| ledger::state::lot_view(l).minimum_bid);
        let bidder = format!("bidder{}", rng.gen_range(0..BIDDERS));
        let max_amount = floor + rng.gen_range(0..4) * 500;
        p.at_ms -= 995; // `run` adds a second; a sale's bids come milliseconds apart.
        p.run(&bidder, Body::PlaceBid(pb::PlaceBid { lot_id, bid_id: format!("sale-{seed}-{n}"), max_amount }));
    }
    day.ledger = p.ledger;
    day.feed = p.feed;
    day.at_ms = p.at_ms;
    first
}

/// Offers a lot sold pending payment again (`SoldPendingPayment -> ReadyForAuction`), as a
/// curator does when the buyer does not pay. False if the ledger refused.
pub fn relist(day: &mut Day, lot_id: &str) -> bool {
    let mut p =
        Player { ledger: std::mem::take(&mut day.ledger), feed: std::mem::take(&mut day.feed), at_ms: day.at_ms };
    let relisted = p.run("curator", move_to(lot_id, pb::LotStatus::ReadyForAuction));
    day.ledger = p.ledger;
    day.feed = p.feed;
    day.at_ms = p.at_ms;
    relisted
}

/// What the catalog should hold for each lot, from the ledger's own public view, without
/// the catalog's bookkeeping (compare with [`public`] rows).
pub fn expected(ledger: &Ledger) -> Vec<LotSummary> {
    crate::summary::from_state(ledger, 0).0.iter().map(public).collect()
}

/// `row` without the catalog's own bookkeeping, for comparing with [`expected`].
pub fn public(row: &LotSummary) -> LotSummary {
    LotSummary { created_index: 0, index: 0, ..row.clone() }
}
