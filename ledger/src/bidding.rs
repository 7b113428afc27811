//! Proxy bidding on one lot, by the book (DESIGN.md, "Auction rules").
//!
//! Bidders submit maxima; the ledger bids on their behalf just enough to keep them ahead.
//! Notation: start price `S`, reserve `R`, visible price `P`, leader `L` with maximum `M`,
//! `inc(p)` the ladder step at `p`. Invariants, asserted after every accepted bid:
//! `P` never decreases, `S <= P <= M`, and the leader holds the highest maximum.

use crate::error::{Code, Rejection, reject};
use crate::id::Id;
use crate::ladder::Ladder;
use crate::limits;

/// The leading bid: who, under which of their bid ids, up to what maximum (secret).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Leader {
    pub bidder: Id,
    pub bid_id: Id,
    pub max: i64,
}

/// One lot's bidding state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Book {
    pub start_price: i64,
    pub reserve: Option<i64>,
    /// The visible price `P`; equals the start price until the first bid.
    pub price: i64,
    pub leader: Option<Leader>,
}

/// What an accepted bid did to the book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The first bid on the lot: the bidder leads at `price`.
    First { price: i64 },
    /// The leader raised their own maximum; `price` moves only if the reserve became met.
    Raise { price: i64 },
    /// The challenger's maximum beat the leader's: the challenger leads at `price`.
    Overtake { price: i64, previous: Leader },
    /// The leader's maximum held (ties go to the earlier maximum): the challenger's bid of
    /// `amount` stands in the history, answered by the (unchanged) leader's proxy bid at `price`.
    Defended { amount: i64, price: i64, leader: Id },
}

/// What the rules decided, before the book changes.
enum Plan {
    First,
    Raise,
    Overtake,
    /// Carries the leader's id.
    Defended(Id),
}

impl Decision {
    /// The visible price after the bid.
    pub fn price(&self) -> i64 {
        match self {
            Decision::First { price }
            | Decision::Raise { price }
            | Decision::Overtake { price, .. }
            | Decision::Defended { price, .. } => *price,
        }
    }

    /// Whether the bidder leads after the bid.
    pub fn leading(&self) -> bool {
        !matches!(self, Decision::Defended { .. })
    }
}

impl Book {
    pub fn new(start_price: i64, reserve: Option<i64>) -> Book {
        Book { start_price, reserve, price: start_price, leader: None }
    }

    /// `R` is unset or the leader's maximum reaches it.
    pub fn reserve_met(&self) -> bool {
        match (&self.leader, self.reserve) {
            (Some(leader), Some(reserve)) => leader.max >= reserve,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The least maximum a bidder other than the leader may submit.
    pub fn minimum_bid(&self, ladder: &Ladder) -> i64 {
        match self.leader {
            None => self.start_price,
            Some(_) => self.price + ladder.step_at(self.price),
        }
    }

    /// Places `bidder`'s maximum `max`. On a rejection the book is unchanged.
    pub fn place(&mut self, ladder: &Ladder, bidder: &Id, bid_id: &Id, max: i64) -> Result<Decision, Rejection> {
        if max <= 0 || max > limits::AMOUNT_MAX {
            return reject(Code::InvalidAmount, format!("max_amount must be between 1 and {}", limits::AMOUNT_MAX));
        }
        let price_before = self.price;
        let (plan, price) = self.decide(ladder, bidder, max)?;
        let reserve = self.reserve;
        let new_leader = || Leader { bidder: bidder.clone(), bid_id: bid_id.clone(), max };
        // The old leader is moved out, not cloned: this is the hot path.
        let decision = match plan {
            Plan::First => {
                self.leader = Some(new_leader());
                Decision::First { price }
            }
            Plan::Raise => {
                if let Some(leader) = self.leader.as_mut() {
                    leader.max = max;
                }
                Decision::Raise { price }
            }
            Plan::Overtake => match self.leader.replace(new_leader()) {
                Some(previous) => Decision::Overtake { price, previous },
                None => Decision::First { price },
            },
            Plan::Defended(leader) => Decision::Defended { amount: max, price, leader },
        };
        self.price = price;
        debug_assert!(self.price >= price_before, "price decreased");
        debug_assert!(self.price >= self.start_price, "price below start");
        debug_assert!(self.leader.as_ref().is_some_and(|l| self.price <= l.max), "price above the leader's max");
        debug_assert!(reserve.is_none_or(|r| !self.reserve_met() || self.price >= r), "reserve met below R");
        Ok(decision)
    }

    /// The rules, without touching the book: what happens and the new visible price.
    fn decide(&self, ladder: &Ladder, bidder: &str, m: i64) -> Result<(Plan, i64), Rejection> {
        let Some(leader) = &self.leader else {
            let s = self.start_price;
            if m < s {
                return reject(Code::BelowMinimum, format!("the opening bid must be at least {s}, got {m}"));
            }
            check_increment(ladder, m, s)?;
            let price = match self.reserve {
                Some(r) if m >= r => s.max(r),
                _ => s,
            };
            return Ok((Plan::First, price));
        };
        let (p, big_m) = (self.price, leader.max);
        if *leader.bidder == *bidder {
            if m <= big_m {
                return reject(
                    Code::NotAboveOwnMax,
                    format!("you already lead with a maximum of {big_m}; raise it above that"),
                );
            }
            check_increment(ladder, m, p + ladder.step_at(p))?;
            let price = match self.reserve {
                Some(r) if big_m < r && r <= m => p.max(r),
                _ => p,
            };
            return Ok((Plan::Raise, price));
        }
        let minimum = p + ladder.step_at(p);
        if m < minimum {
            return reject(Code::BelowMinimum, format!("the minimum bid is {minimum}, got {m}"));
        }
        check_increment(ladder, m, minimum)?;
        if m > big_m {
            let mut price = m.min(big_m + ladder.step_at(big_m));
            if let Some(r) = self.reserve.filter(|&r| m >= r) {
                price = price.max(r);
            }
            Ok((Plan::Overtake, price))
        } else {
            let mut price = big_m.min(m + ladder.step_at(m));
            if let Some(r) = self.reserve.filter(|&r| big_m >= r) {
                price = price.max(r);
            }
            Ok((Plan::Defended(leader.bidder.clone()), price))
        }
    }
}

/// Bids stand on the ladder's grid; the exact minimum is always allowed even when an odd
/// start price or reserve put it off the grid.
fn check_increment(ladder: &Ladder, m: i64, minimum: i64) -> Result<(), Rejection> {
    if m == minimum || ladder.is_on_grid(m) {
        return Ok(());
    }
    let step = ladder.step_at(m);
    reject(Code::NotAnIncrement, format!("{m} is not a whole increment: bids at this level rise in steps of {step}"))
}
