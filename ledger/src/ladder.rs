//! Increment ladders: the minimum step a bid must rise by, per price tier.
//!
//! Tiers are half-open `[from_amount, next tier's from_amount)`; the last tier is open-ended.
//! `inc(p)` is the step of the tier containing `p`.

use crate::limits;
use crate::money::Currency;

/// One tier of a ladder, in minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    pub from_amount: i64,
    pub step: i64,
}

/// A validated ladder: starts at 0, strictly increasing tiers, positive steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    tiers: Vec<Tier>,
}

/// Why a ladder was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LadderError {
    #[error("a ladder needs between 1 and {} tiers", limits::LADDER_TIERS_MAX)]
    TierCount,
    #[error("the first tier must start at 0")]
    FirstTierNotZero,
    #[error("tier starts must strictly increase")]
    NotIncreasing,
    #[error("every step must be between 1 and {}", limits::AMOUNT_MAX)]
    BadStep,
    #[error("tier starts must be between 0 and {}", limits::AMOUNT_MAX)]
    BadFrom,
}

/// Default ladders, in whole currency units: `(from, step)`.
const USD_UNITS: &[(i64, i64)] = &[(0, 5), (500, 10), (2_000, 25), (5_000, 50), (10_000, 100)];
const EUR_UNITS: &[(i64, i64)] = &[(0, 5), (200, 10), (1_000, 20), (2_000, 50), (5_000, 100), (20_000, 250)];
const GBP_UNITS: &[(i64, i64)] = &[(0, 5), (100, 10), (1_000, 50), (3_000, 100), (10_000, 200), (30_000, 500)];
const COP_UNITS: &[(i64, i64)] =
    &[(0, 2_000), (100_000, 10_000), (1_000_000, 50_000), (5_000_000, 100_000), (20_000_000, 500_000)];

impl Ladder {
    pub fn new(tiers: Vec<Tier>) -> Result<Ladder, LadderError> {
        if tiers.is_empty() || tiers.len() > limits::LADDER_TIERS_MAX {
            return Err(LadderError::TierCount);
        }
        if tiers[0].from_amount != 0 {
            return Err(LadderError::FirstTierNotZero);
        }
        for tier in &tiers {
            if tier.step < 1 || tier.step > limits::AMOUNT_MAX {
                return Err(LadderError::BadStep);
            }
            if tier.from_amount < 0 || tier.from_amount > limits::AMOUNT_MAX {
                return Err(LadderError::BadFrom);
            }
        }
        if tiers.windows(2).any(|w| w[0].from_amount >= w[1].from_amount) {
            return Err(LadderError::NotIncreasing);
        }
        Ok(Ladder { tiers })
    }

    /// The house ladder for a currency, if it has one (USD, EUR, GBP, COP).
    pub fn default_for(currency: Currency) -> Option<Ladder> {
        let units = match currency {
            Currency::USD => USD_UNITS,
            Currency::EUR => EUR_UNITS,
            Currency::GBP => GBP_UNITS,
            Currency::COP => COP_UNITS,
            _ => return None,
        };
        // All four currencies have two decimal places (ISO-4217 exponent 2).
        let tiers = units.iter().map(|&(from, step)| Tier { from_amount: from * 100, step: step * 100 }).collect();
        Ladder::new(tiers).ok()
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The tier containing `amount` (amounts below 0 fall in the first tier).
    fn tier(&self, amount: i64) -> Tier {
        // `partition_point` gives the count of tiers starting at or below `amount`; the first
        // tier starts at 0, so for amount >= 0 that count is at least 1.
        let n = self.tiers.partition_point(|t| t.from_amount <= amount);
        self.tiers[n.saturating_sub(1)]
    }

    /// `inc(p)`: the step for the tier that contains `amount`.
    pub fn step_at(&self, amount: i64) -> i64 {
        self.tier(amount).step
    }

    /// Whether `amount` lies on its tier's grid (a whole number of steps above the tier start).
    pub fn is_on_grid(&self, amount: i64) -> bool {
        let tier = self.tier(amount);
        (amount - tier.from_amount) % tier.step == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Ladder {
        Ladder::default_for(Currency::USD).unwrap_or_else(|| Ladder { tiers: Vec::new() })
    }

    #[test]
    fn usd_default_matches_the_design() {
        let l = usd();
        // Half-open tiers, in cents.
        let cases = [
            (0, 500),
            (49_999, 500),
            (50_000, 1_000),
            (199_999, 1_000),
            (200_000, 2_500),
            (499_999, 2_500),
            (500_000, 5_000),
            (999_999, 5_000),
            (1_000_000, 10_000),
            (900_000_000, 10_000),
        ];
        for (amount, step) in cases {
            assert_eq!(l.step_at(amount), step, "inc({amount})");
        }
    }

    #[test]
    fn every_default_currency_has_a_ladder() {
        for c in [Currency::USD, Currency::EUR, Currency::GBP, Currency::COP] {
            let ladder = Ladder::default_for(c);
            assert!(ladder.is_some(), "{c} has no default ladder");
        }
        assert!(Ladder::default_for(Currency::parse("JPY").unwrap_or(Currency::USD)).is_none());
    }

    #[test]
    fn grid_is_measured_from_the_tier_start() {
        let l = usd();
        assert!(l.is_on_grid(10_500));
        assert!(!l.is_on_grid(10_501));
        assert!(l.is_on_grid(51_000));
        assert!(!l.is_on_grid(50_500));
    }

    #[test]
    fn rejects_malformed_ladders() {
        let t = |from_amount, step| Tier { from_amount, step };
        assert_eq!(Ladder::new(vec![]), Err(LadderError::TierCount));
        assert_eq!(Ladder::new(vec![t(1, 5)]), Err(LadderError::FirstTierNotZero));
        assert_eq!(Ladder::new(vec![t(0, 0)]), Err(LadderError::BadStep));
        assert_eq!(Ladder::new(vec![t(0, 5), t(100, 10), t(100, 20)]), Err(LadderError::NotIncreasing));
        assert_eq!(Ladder::new(vec![t(0, 5), t(-1, 10)]), Err(LadderError::BadFrom));
        assert_eq!(Ladder::new(vec![t(0, 5); limits::LADDER_TIERS_MAX + 1]), Err(LadderError::TierCount));
        assert!(Ladder::new(vec![t(0, 1), t(10, 2)]).is_ok());
    }
}
