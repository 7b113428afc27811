//! Exactly-once bids: the first answer to each (bidder, bid id), kept so that a retry gets
//! that answer again and is never applied twice.
//!
//! There is one record per bid placed within the horizon below, so it is compact: an accepted bid's answer is
//! kept as shared ids and numbers, and built back into a `pb::Outcome` only when a retry or a
//! snapshot asks for it. The bid id is the record's key, not part of it. An accepted bid's
//! answer to its caller is the same data ([`Answer`]).
//!
//! Records expire by a horizon on the ledger's own time ([`crate::limits::EXACTLY_ONCE_HORIZON_MS`]),
//! at the same command on every replica, so the set of records stays bounded by what can still
//! matter while a retry is never applied twice:
//! - an accepted bid's record lives as long as its lot can take bids, and for the horizon
//!   after the lot reached a status from which it can never be offered again
//!   ([`crate::lifecycle::is_final`]); a retry after that is refused (`lot_closed`), as any
//!   bid on such a lot is;
//! - a refusal's record lives for the horizon after the refusal; a retry after that is
//!   decided afresh (it may be accepted then: it was never applied before).
//!
//! Accepted bids' records are found by the lot's history when it expires, and by the keys a
//! relisting keeps of the sales before it (`Lot::earlier_bids`).

use crate::id::Id;
use crate::pb::{self, outcome::Result as Res};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Accepted: the `BidResult`, less its bid id.
    Bid { lot_id: Id, outcome: i32, current_price: i64, leading_bidder: Id, ends_at_ms: i64, log_index: u64 },
    /// Refused: rarer, and its message is text anyway. `at_ms` is when (ledger time), which
    /// the record expires by; `None` in a record from a snapshot written before the horizon
    /// existed: such a record never expires.
    Rejected { rejection: Box<pb::Rejection>, at_ms: Option<i64> },
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
            Recorded::Rejected { rejection, .. } => Res::Rejected((**rejection).clone()),
        }
    }

    /// The record of a first answer read from a snapshot, refused at `refused_at_ms` if it is
    /// a refusal. `intern` shares ids already held. Only what applying a bid records is
    /// accepted, so the snapshot encodes back the same.
    pub(crate) fn from_result(
        bid_id: &str,
        result: Res,
        refused_at_ms: Option<i64>,
        mut intern: impl FnMut(String) -> Id,
    ) -> Result<Recorded, String> {
        match result {
            Res::Bid(_) if refused_at_ms.is_some() => Err("an accepted bid has a refusal time".to_owned()),
            Res::Bid(b) if b.bid_id == bid_id => Ok(Recorded::Bid {
                lot_id: intern(b.lot_id),
                outcome: b.outcome,
                current_price: b.current_price,
                leading_bidder: intern(b.leading_bidder),
                ends_at_ms: b.ends_at_ms,
                log_index: b.log_index,
            }),
            Res::Bid(b) => Err(format!("its answer is for bid id {}", b.bid_id)),
            Res::Rejected(r) => Ok(Recorded::Rejected { rejection: Box::new(r), at_ms: refused_at_ms }),
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
