//! Rejections: every refused command gets a stable machine code and a human message, and
//! changes nothing.

use std::fmt;

use crate::pb;

/// The class of a rejection, which the gateway maps to an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Malformed input (400).
    BadRequest,
    /// Role or ownership (403).
    Forbidden,
    /// Unknown id (404).
    NotFound,
    /// A rule of the auction refused it (409).
    Conflict,
}

macro_rules! codes {
    ($($variant:ident => $code:literal, $class:ident;)*) => {
        /// Stable snake_case rejection codes (API.md). Never renamed: clients match on them.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code { $($variant),* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code),* }
            }

            pub fn class(self) -> Class {
                match self { $(Code::$variant => Class::$class),* }
            }

            pub fn parse(code: &str) -> Option<Code> {
                match code { $($code => Some(Code::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    InvalidInput => "invalid_input", BadRequest;
    InvalidAmount => "invalid_amount", BadRequest;
    InvalidCurrency => "invalid_currency", BadRequest;
    InvalidLadder => "invalid_ladder", BadRequest;
    InvalidTime => "invalid_time", BadRequest;
    InvalidStatus => "invalid_status", BadRequest;
    Forbidden => "forbidden", Forbidden;
    UserNotFound => "user_not_found", NotFound;
    LotNotFound => "lot_not_found", NotFound;
    AuctionNotFound => "auction_not_found", NotFound;
    UserExists => "user_exists", Conflict;
    UsernameTaken => "username_taken", Conflict;
    LotExists => "lot_exists", Conflict;
    AuctionExists => "auction_exists", Conflict;
    InvalidTransition => "invalid_transition", Conflict;
    ClosesByRule => "closes_by_rule", Conflict;
    LotNotOpen => "lot_not_open", Conflict;
    LotClosed => "lot_closed", Conflict;
    LotNotEnded => "lot_not_ended", Conflict;
    SellerCannotBid => "seller_cannot_bid", Conflict;
    BelowMinimum => "below_minimum", Conflict;
    NotAboveOwnMax => "not_above_own_max", Conflict;
    NotAnIncrement => "not_an_increment", Conflict;
    BidLimitReached => "bid_limit_reached", Conflict;
    LotNotReady => "lot_not_ready", Conflict;
    LotInAuction => "lot_in_auction", Conflict;
    AuctionNotScheduled => "auction_not_scheduled", Conflict;
    AuctionFull => "auction_full", Conflict;
    AuctionEmpty => "auction_empty", Conflict;
    InvalidImage => "invalid_image", BadRequest;
    CategoryNotFound => "category_not_found", NotFound;
    AttributeNotFound => "attribute_not_found", NotFound;
    CommentNotFound => "comment_not_found", NotFound;
    ImageNotFound => "image_not_found", NotFound;
    CategoryCycle => "category_cycle", Conflict;
    CategoryTooDeep => "category_too_deep", Conflict;
    AttributeExists => "attribute_exists", Conflict;
    CommentExists => "comment_exists", Conflict;
    ImageExists => "image_exists", Conflict;
    ContentLimitReached => "content_limit_reached", Conflict;
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused command: a stable [`Code`] and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    pub code: Code,
    pub message: String,
}

impl Rejection {
    pub fn new(code: Code, message: impl Into<String>) -> Rejection {
        Rejection { code, message: message.into() }
    }

    pub fn to_pb(&self) -> pb::Rejection {
        pb::Rejection { code: self.code.as_str().to_owned(), message: self.message.clone() }
    }
}

/// Shorthand for building a `Result::Err(Rejection)`.
pub(crate) fn reject<T>(code: Code, message: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection::new(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in Code::ALL {
            let s = code.as_str();
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{s}");
            assert!(seen.insert(s), "duplicate code {s}");
            assert_eq!(Code::parse(s), Some(code));
        }
        assert_eq!(Code::parse("nope"), None);
    }
}
