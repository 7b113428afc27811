//! The lot lifecycle: 12 states and the exact table of moves between them.
//!
//! ```text
//! Draft -> UnderReview -> Authenticated | NotApproved
//! Authenticated -> ReadyForAuction -> InAuction -> AuctionEnded | AuctionCancelled | SoldPendingPayment
//! SoldPendingPayment -> PaymentReceived | ReturnedToConsignor | ReadyForAuction
//! PaymentReceived -> Delivered
//! ```

use crate::pb::{AuctionStatus, LotStatus};

/// Every lot status, in lifecycle order.
pub const ALL: [LotStatus; 12] = [
    LotStatus::Draft,
    LotStatus::UnderReview,
    LotStatus::Authenticated,
    LotStatus::NotApproved,
    LotStatus::ReadyForAuction,
    LotStatus::InAuction,
    LotStatus::AuctionEnded,
    LotStatus::AuctionCancelled,
    LotStatus::SoldPendingPayment,
    LotStatus::PaymentReceived,
    LotStatus::ReturnedToConsignor,
    LotStatus::Delivered,
];

/// Whether the lifecycle allows moving a lot from `from` to `to`.
pub fn can_transition(from: LotStatus, to: LotStatus) -> bool {
    use LotStatus::*;
    matches!(
        (from, to),
        (Draft, UnderReview)
            | (UnderReview, Authenticated | NotApproved)
            | (Authenticated, ReadyForAuction)
            | (ReadyForAuction, InAuction)
            | (InAuction, AuctionEnded | AuctionCancelled | SoldPendingPayment)
            | (SoldPendingPayment, PaymentReceived | ReturnedToConsignor | ReadyForAuction)
            | (PaymentReceived, Delivered)
    )
}

/// Whether the lot has not yet been offered: a bid is `lot_not_open`.
pub fn is_before_auction(status: LotStatus) -> bool {
    use LotStatus::*;
    matches!(status, Unspecified | Draft | UnderReview | Authenticated | NotApproved | ReadyForAuction)
}

/// Whether the lot can never be offered again (no way back to `InAuction`): its bids'
/// exactly-once records expire a horizon after it got here (see `once`).
pub fn is_final(status: LotStatus) -> bool {
    use LotStatus::*;
    matches!(status, NotApproved | AuctionEnded | AuctionCancelled | PaymentReceived | ReturnedToConsignor | Delivered)
}

/// The API name of a status (`"InAuction"`).
pub fn name(status: LotStatus) -> &'static str {
    use LotStatus::*;
    match status {
        Unspecified => "Unspecified",
        Draft => "Draft",
        UnderReview => "UnderReview",
        Authenticated => "Authenticated",
        NotApproved => "NotApproved",
        ReadyForAuction => "ReadyForAuction",
        InAuction => "InAuction",
        AuctionEnded => "AuctionEnded",
        AuctionCancelled => "AuctionCancelled",
        SoldPendingPayment => "SoldPendingPayment",
        PaymentReceived => "PaymentReceived",
        ReturnedToConsignor => "ReturnedToConsignor",
        Delivered => "Delivered",
    }
}

/// Parses an API status name; `Unspecified` is not a status a client may name.
pub fn parse_name(s: &str) -> Option<LotStatus> {
    ALL.into_iter().find(|&status| name(status) == s)
}

/// The API name of an auction status (`"Live"`).
pub fn auction_name(status: AuctionStatus) -> &'static str {
    match status {
        AuctionStatus::Unspecified => "Unspecified",
        AuctionStatus::Scheduled => "Scheduled",
        AuctionStatus::Live => "Live",
        AuctionStatus::Ended => "Ended",
        AuctionStatus::Cancelled => "Cancelled",
    }
}

pub fn parse_auction_name(s: &str) -> Option<AuctionStatus> {
    [AuctionStatus::Scheduled, AuctionStatus::Live, AuctionStatus::Ended, AuctionStatus::Cancelled]
        .into_iter()
        .find(|&status| auction_name(status) == s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use LotStatus::*;

    /// The design's table, written out independently of `can_transition`.
    const ALLOWED: &[(LotStatus, LotStatus)] = &[
        (Draft, UnderReview),
        (UnderReview, Authenticated),
        (UnderReview, NotApproved),
        (Authenticated, ReadyForAuction),
        (ReadyForAuction, InAuction),
        (InAuction, AuctionEnded),
        (InAuction, AuctionCancelled),
        (InAuction, SoldPendingPayment),
        (SoldPendingPayment, PaymentReceived),
        (SoldPendingPayment, ReturnedToConsignor),
        (SoldPendingPayment, ReadyForAuction),
        (PaymentReceived, Delivered),
    ];

    /// `is_final` is exactly "InAuction can no longer be reached", worked out from the table.
    #[test]
    fn final_means_never_offered_again() {
        for from in ALL {
            let mut reached = vec![from];
            let mut i = 0;
            while i < reached.len() {
                let at = reached[i];
                let next: Vec<_> =
                    ALL.into_iter().filter(|&to| can_transition(at, to) && !reached.contains(&to)).collect();
                reached.extend(next);
                i += 1;
            }
            assert_eq!(is_final(from), !reached.contains(&InAuction), "{}", name(from));
        }
    }

    #[test]
    fn every_pair_of_states_matches_the_table() {
        let mut allowed = 0;
        for from in ALL {
            for to in ALL {
                let expected = ALLOWED.contains(&(from, to));
                assert_eq!(can_transition(from, to), expected, "{} -> {}", name(from), name(to));
                allowed += usize::from(expected);
            }
        }
        assert_eq!(allowed, 12);
        assert_eq!(ALL.len(), 12);
    }

    #[test]
    fn names_round_trip() {
        for status in ALL {
            assert_eq!(parse_name(name(status)), Some(status));
        }
        assert_eq!(parse_name("Unspecified"), None);
        assert_eq!(parse_name("draft"), None);
        assert_eq!(parse_auction_name("Live"), Some(AuctionStatus::Live));
        assert_eq!(parse_auction_name("Unspecified"), None);
    }
}
