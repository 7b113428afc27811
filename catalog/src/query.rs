//! A catalog query, its answer, and the one definition of which lots match it (stores use it
//! for the filters their indexes do not cover; tests use it as the brute-force oracle).

use std::collections::BTreeSet;

use ledger::pb::LotStatus;

use crate::summary::LotSummary;

/// Page sizes: the default and the most a caller may ask for.
pub const LIMIT_DEFAULT: usize = 50;
pub const LIMIT_MAX: usize = 200;

/// The orders a page can come in. Ties break by lot id, so every order is total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Soonest end first.
    #[default]
    EndsAt,
    /// Lowest current price first.
    Price,
    /// Most recently created first.
    Newest,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        match s {
            "ends_at" => Some(Sort::EndsAt),
            "price" => Some(Sort::Price),
            "newest" => Some(Sort::Newest),
            _ => None,
        }
    }

    /// The key a lot sorts by under this order (ascending), before the lot id.
    pub fn key(self, lot: &LotSummary) -> u64 {
        match self {
            Sort::EndsAt => order_i64(lot.ends_at_ms),
            Sort::Price => order_i64(lot.current_price),
            Sort::Newest => u64::MAX - lot.created_index,
        }
    }
}

/// Maps an i64 to a u64 with the same order (so big-endian bytes sort like the numbers).
pub fn order_i64(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// Filters (all optional, all must hold), an order and a page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub status: Option<LotStatus>,
    /// A category and its subtree, resolved by [`crate::Catalog::query`] into `categories`
    /// from the catalog's own tree. Given to a store directly, it matches exactly.
    pub category: Option<String>,
    pub artist: Option<String>,
    pub auction: Option<String>,
    /// Current price bounds, inclusive, in the lot's minor units.
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    /// Ending soon: `now_ms <= ends_at <= until_ms`.
    pub ending: Option<(i64, i64)>,
    /// Lots listed under any of these categories, by their own `category` or a further one:
    /// a category and its descendants, resolved by the caller from the ledger's tree.
    pub categories: Option<BTreeSet<String>>,
    /// `attr.<key>=<value>` filters: the lot has every one of these attributes.
    pub attributes: Vec<(String, String)>,
    pub sort: Sort,
    /// Where the previous page stopped (opaque, from [`Page::next_cursor`]).
    pub cursor: Option<String>,
    pub limit: usize,
}

impl Query {
    /// Whether `lot` passes every filter.
    pub fn matches(&self, lot: &LotSummary) -> bool {
        self.status.is_none_or(|s| lot.status == s as i32)
            && self.category.as_deref().is_none_or(|c| lot.category == c)
            && self.artist.as_deref().is_none_or(|a| lot.artist == a)
            && self.auction.as_deref().is_none_or(|a| lot.auction_id == a)
            && self.min_price.is_none_or(|p| lot.current_price >= p)
            && self.max_price.is_none_or(|p| lot.current_price <= p)
            && self.ending.is_none_or(|(from, to)| lot.ends_at_ms >= from && lot.ends_at_ms <= to)
            && self
                .categories
                .as_ref()
                .is_none_or(|set| set.contains(&lot.category) || lot.categories.iter().any(|c| set.contains(c)))
            && self.attributes.iter().all(|(k, v)| lot.attributes.iter().any(|a| &a.key == k && &a.value == v))
    }

    /// Every matching lot of `lots`, in this query's order: what the pages must add up to.
    pub fn brute_force<'a>(&self, lots: impl IntoIterator<Item = &'a LotSummary>) -> Vec<&'a LotSummary> {
        let mut hits: Vec<&LotSummary> = lots.into_iter().filter(|l| self.matches(l)).collect();
        hits.sort_by(|a, b| (self.sort.key(a), &a.lot_id).cmp(&(self.sort.key(b), &b.lot_id)));
        hits
    }
}

/// One page of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<LotSummary>,
    /// Present while more may follow. A page can be short (even empty) and still have one:
    /// each page reads a bounded stretch of the index, so a rare match costs several pages,
    /// never one unbounded scan.
    pub next_cursor: Option<String>,
    /// The catalog's checkpoint at the moment the page was read.
    pub as_of_index: u64,
}
