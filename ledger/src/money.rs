//! Money: integer minor units with an ISO-4217 currency. Never floating point.

use std::fmt;

use crate::limits;

/// An ISO-4217 alphabetic code: three ASCII uppercase letters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Currency([u8; 3]);

/// Why a [`Money`] operation or parse failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency code {0:?} is not three uppercase letters")]
    BadCurrency(String),
    #[error("cannot combine {0} and {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount out of range")]
    Overflow,
}

impl Currency {
    pub const USD: Currency = Currency(*b"USD");
    pub const EUR: Currency = Currency(*b"EUR");
    pub const GBP: Currency = Currency(*b"GBP");
    pub const COP: Currency = Currency(*b"COP");

    /// Parses an ISO-4217 alphabetic code such as `"USD"`.
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        let bytes = code.as_bytes();
        match bytes {
            [a, b, c] if bytes.iter().all(u8::is_ascii_uppercase) => Ok(Currency([*a, *b, *c])),
            _ => Err(MoneyError::BadCurrency(code.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase letters are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

/// An amount of money in minor units (cents for USD), within `±limits::AMOUNT_MAX`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// Money within the ledger's range; larger magnitudes are an error, not a wrap.
    pub fn new(minor: i64, currency: Currency) -> Result<Money, MoneyError> {
        if minor.unsigned_abs() > limits::AMOUNT_MAX.unsigned_abs() {
            return Err(MoneyError::Overflow);
        }
        Ok(Money { minor, currency })
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let sum = self.minor.checked_add(other.minor).ok_or(MoneyError::Overflow)?;
        Money::new(sum, self.currency)
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let diff = self.minor.checked_sub(other.minor).ok_or(MoneyError::Overflow)?;
        Money::new(diff, self.currency)
    }

    fn same_currency(&self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }
}

impl fmt::Display for Money {
    /// Two decimal places, as all of the default currencies have (ISO-4217 exponent 2).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        write!(f, "{sign}{}.{:02} {}", abs / 100, abs % 100, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iso_codes_only() {
        assert_eq!(Currency::parse("USD"), Ok(Currency::USD));
        for bad in ["usd", "US", "USDX", "", "U$D"] {
            assert!(Currency::parse(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        let usd = |m| Money::new(m, Currency::USD);
        assert_eq!(usd(150).and_then(|a| a.checked_add(usd(50)?)), usd(200));
        assert_eq!(usd(150).and_then(|a| a.checked_sub(usd(200)?)), usd(-50));
        let max = usd(limits::AMOUNT_MAX);
        assert_eq!(max.and_then(|a| a.checked_add(usd(1)?)), Err(MoneyError::Overflow));
        assert_eq!(Money::new(i64::MIN, Currency::USD), Err(MoneyError::Overflow));
        let eur = Money::new(1, Currency::EUR);
        assert_eq!(
            usd(1).and_then(|a| a.checked_add(eur?)),
            Err(MoneyError::CurrencyMismatch(Currency::USD, Currency::EUR))
        );
    }

    #[test]
    fn displays_minor_units_as_decimals() {
        assert_eq!(Money::new(10_550, Currency::USD).map(|m| m.to_string()), Ok("105.50 USD".into()));
        assert_eq!(Money::new(-5, Currency::EUR).map(|m| m.to_string()), Ok("-0.05 EUR".into()));
    }
}
