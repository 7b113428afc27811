//! Exactly-once bids: the first answer to each (bidder, bid id), kept so that a retry gets
//! that answer again and is never applied twice.
//!
//! There is one record per bid ever placed, so it is compact: an accepted bid's answer is
//! kept as shared ids and numbers, and built back into a `pb::Outcome` only when a retry or a
//! snapshot asks for it. The bid id is the record's key, not part of it. An accepted bid's
//! answer to its caller is the same data ([`Answer`]).

use crate::id::Id;
use crate::pb::{self, outcome::Result as Res};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Accepted: the `BidResult`, less its bid id.
    Bid { lot_id: Id, outcome: i32, current_price: i64, leading_bidder: Id, ends_at_ms: i64, log_index: u64 },
    /// Refused: rarer, and its message is text anyway.
    Rejected(Box<pb::Rejection>),
}

impl Recorded {
    /// The answer as it was first given.
    pub(crate) fn to_result(&self, bid_id: &str) -> Res {
        match self {
            Recorded::Bid { lot_id, outcome, current_price, leading_bidder, ends_at_ms, log_index } => {
                Res::Bid(pb::BidResult {
                    bid_id: bid_id.to_owned(),
                    lot_id: String::from(&**lot_id),
                    outcome: *outcome,
                    current_price: *current_price,
                    leading_bidder: String::from(&**leading_bidder),
                    ends_at_ms: *ends_at_ms,
                    log_index: *log_index,
                })
            }
            Recorded::Rejected(r) => Res::Rejected((**r).clone()),
        }
    }

    /// The record of a first answer read from a snapshot. `intern` shares ids already held.
    /// Only what applying a bid records is accepted, so the snapshot encodes back the same.
    pub(crate) fn from_result(
        bid_id: &str,
        result: Res,
        mut intern: impl FnMut(String) -> Id,
    ) -> Result<Recorded, String> {
        match result {
            Res::Bid(b) if b.bid_id == bid_id => Ok(Recorded::Bid {
                lot_id: intern(b.lot_id),
                outcome: b.outcome,
                current_price: b.current_price,
                leading_bidder: intern(b.leading_bidder),
                ends_at_ms: b.ends_at_ms,
                log_index: b.log_index,
            }),
            Res::Bid(b) => Err(format!("its answer is for bid id {}", b.bid_id)),
            Res::Rejected(r) => Ok(Recorded::Rejected(Box::new(r))),
            _ => Err("its answer is not a bid's".to_owned()),
        }
    }
}

/// The answer to one command. Compact like [`crate::Event`]: an accepted bid's result is kept
/// as shared ids and built into a `pb::Outcome` only for a caller who waits for it (on a
/// replica, only the leader has one).
#[derive(Clone, Debug, PartialEq)]
pub struct Answer(AnswerRepr);

#[derive(Clone, Debug, PartialEq)]
enum AnswerRepr {
    Bid {
        bid_id: Id,
        record: Recorded,
    },
    /// Boxed: the full message is four times the size of a bid's.
    Other(Box<Res>),
}

impl Answer {
    pub(crate) fn bid(bid_id: Id, record: Recorded) -> Answer {
        Answer(AnswerRepr::Bid { bid_id, record })
    }

    pub(crate) fn other(result: Res) -> Answer {
        Answer(AnswerRepr::Other(Box::new(result)))
    }

    /// Whether the command was refused.
    pub fn is_rejection(&self) -> bool {
        matches!(&self.0, AnswerRepr::Other(result) if matches!(**result, Res::Rejected(_)))
    }

    /// The answer as its protobuf message.
    pub fn into_pb(self) -> pb::Outcome {
        let result = match self.0 {
            AnswerRepr::Bid { bid_id, record } => record.to_result(&bid_id),
            AnswerRepr::Other(result) => *result,
        };
        pb::Outcome { result: Some(result) }
    }
}
