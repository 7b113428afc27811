//! Events as the ledger emits them. The hot ones (a bid recorded, a bidder outbid, a close
//! extended: every accepted bid makes one to four) hold shared ids and numbers, not owned
//! strings. They become `pb::Event`s only when asked ([`Event::to_pb`]); a replica encodes
//! them straight to bytes instead ([`Event::encode`]), identical to `pb::Event`'s encoding
//! (tested), so the feed's wire format does not change.

use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::id::Id;
use crate::pb::{self, BidKind, event::Kind};

/// One event, as `pb::Event` says, in a compact form.
#[derive(Clone, Debug, PartialEq)]
pub struct Event(Repr);

#[derive(Clone, Debug, PartialEq)]
enum Repr {
    BidRecorded(BidRecorded),
    Outbid {
        lot_id: Id,
        user_id: Id,
        current_price: i64,
    },
    LotExtended {
        lot_id: Id,
        ends_at_ms: i64,
    },
    /// Boxed: the full message is three times the size of the compact kinds.
    Other(Box<pb::Event>),
}

/// `pb::BidRecorded`, with shared ids.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BidRecorded {
    pub(crate) lot_id: Id,
    pub(crate) bid_id: Id,
    pub(crate) bidder: Id,
    pub(crate) amount: i64,
    pub(crate) at_ms: i64,
    pub(crate) kind: BidKind,
    pub(crate) current_price: i64,
    /// None before the lot's first bid (the protobuf field is then empty).
    pub(crate) leading_bidder: Option<Id>,
    pub(crate) reserve_met: bool,
    pub(crate) minimum_bid: i64,
}

// The oneof tags of `pb::Event` (ledger.proto) for the compact kinds.
const TAG_BID_RECORDED: u32 = 5;
const TAG_OUTBID: u32 = 6;
const TAG_LOT_EXTENDED: u32 = 7;

impl Event {
    pub(crate) fn bid_recorded(b: BidRecorded) -> Event {
        Event(Repr::BidRecorded(b))
    }

    pub(crate) fn outbid(lot_id: Id, user_id: Id, current_price: i64) -> Event {
        Event(Repr::Outbid { lot_id, user_id, current_price })
    }

    pub(crate) fn lot_extended(lot_id: Id, ends_at_ms: i64) -> Event {
        Event(Repr::LotExtended { lot_id, ends_at_ms })
    }

    pub(crate) fn other(kind: Kind) -> Event {
        Event(Repr::Other(Box::new(pb::Event { kind: Some(kind) })))
    }

    /// The event as its protobuf message.
    pub fn to_pb(&self) -> pb::Event {
        let kind = match &self.0 {
            Repr::BidRecorded(b) => Kind::BidRecorded(pb::BidRecorded {
                lot_id: String::from(&*b.lot_id),
                bid_id: String::from(&*b.bid_id),
                bidder: String::from(&*b.bidder),
                amount: b.amount,
                at_ms: b.at_ms,
                kind: b.kind as i32,
                current_price: b.current_price,
                leading_bidder: b.leading_bidder.as_deref().unwrap_or_default().to_owned(),
                reserve_met: b.reserve_met,
                minimum_bid: b.minimum_bid,
            }),
            Repr::Outbid { lot_id, user_id, current_price } => Kind::Outbid(pb::Outbid {
                lot_id: String::from(&**lot_id),
                user_id: String::from(&**user_id),
                current_price: *current_price,
            }),
            Repr::LotExtended { lot_id, ends_at_ms } => {
                Kind::LotExtended(pb::LotExtended { lot_id: String::from(&**lot_id), ends_at_ms: *ends_at_ms })
            }
            Repr::Other(event) => return (**event).clone(),
        };
        pb::Event { kind: Some(kind) }
    }

    /// The length of [`Event::encode`]'s output: `pb::Event::encoded_len`.
    pub fn encoded_len(&self) -> usize {
        match &self.0 {
            Repr::Other(event) => prost::Message::encoded_len(&**event),
            compact => {
                let (tag, len) = compact_body_len(compact);
                key_len(tag) + encoded_len_varint(len as u64) + len
            }
        }
    }

    /// Appends the event's protobuf encoding, byte for byte `pb::Event::encode_raw`'s.
    pub fn encode(&self, buf: &mut impl BufMut) {
        match &self.0 {
            Repr::Other(event) => prost::Message::encode_raw(&**event, buf),
            compact => {
                let (tag, len) = compact_body_len(compact);
                encode_key(tag, WireType::LengthDelimited, buf);
                encode_varint(len as u64, buf);
                match compact {
                    Repr::BidRecorded(b) => {
                        put_str(1, &b.lot_id, buf);
                        put_str(2, &b.bid_id, buf);
                        put_str(3, &b.bidder, buf);
                        put_i64(4, b.amount, buf);
                        put_i64(5, b.at_ms, buf);
                        put_i64(6, b.kind as i64, buf);
                        put_i64(7, b.current_price, buf);
                        put_str(8, b.leading_bidder.as_deref().unwrap_or_default(), buf);
                        put_i64(9, i64::from(b.reserve_met), buf);
                        put_i64(10, b.minimum_bid, buf);
                    }
                    Repr::Outbid { lot_id, user_id, current_price } => {
                        put_str(1, lot_id, buf);
                        put_str(2, user_id, buf);
                        put_i64(3, *current_price, buf);
                    }
                    Repr::LotExtended { lot_id, ends_at_ms } => {
                        put_str(1, lot_id, buf);
                        put_i64(2, *ends_at_ms, buf);
                    }
                    Repr::Other(_) => {}
                }
            }
        }
    }
}

impl From<Event> for pb::Event {
    fn from(event: Event) -> pb::Event {
        match event.0 {
            Repr::Other(event) => *event,
            compact => Event(compact).to_pb(),
        }
    }
}

/// The oneof tag and the length of the message inside it.
fn compact_body_len(repr: &Repr) -> (u32, usize) {
    match repr {
        Repr::BidRecorded(b) => (
            TAG_BID_RECORDED,
            str_len(1, &b.lot_id)
                + str_len(2, &b.bid_id)
                + str_len(3, &b.bidder)
                + i64_len(4, b.amount)
                + i64_len(5, b.at_ms)
                + i64_len(6, b.kind as i64)
                + i64_len(7, b.current_price)
                + str_len(8, b.leading_bidder.as_deref().unwrap_or_default())
                + i64_len(9, i64::from(b.reserve_met))
                + i64_len(10, b.minimum_bid),
        ),
        Repr::Outbid { lot_id, user_id, current_price } => {
            (TAG_OUTBID, str_len(1, lot_id) + str_len(2, user_id) + i64_len(3, *current_price))
        }
        Repr::LotExtended { lot_id, ends_at_ms } => (TAG_LOT_EXTENDED, str_len(1, lot_id) + i64_len(2, *ends_at_ms)),
        Repr::Other(_) => (0, 0),
    }
}

// proto3 leaves fields at their default out. int64, int32 enums and bool all encode as the
// varint of the value sign-extended to 64 bits, so one helper serves them.

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() { 0 } else { key_len(tag) + encoded_len_varint(s.len() as u64) + s.len() }
}

fn put_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

fn i64_len(tag: u32, v: i64) -> usize {
    if v == 0 { 0 } else { key_len(tag) + encoded_len_varint(v as u64) }
}

fn put_i64(tag: u32, v: i64, buf: &mut impl BufMut) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v as u64, buf);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use prost::Message;

    use super::*;

    /// Defaults (left out), empty strings, negative and large values, all compact kinds.
    #[test]
    fn edge_values_encode_as_protobuf_does() {
        let id = |s: &str| Id::from(s);
        let bid = |amount: i64, leading: Option<Id>, reserve_met: bool| BidRecorded {
            lot_id: id("L-1"),
            bid_id: id(""),
            bidder: id("ana"),
            amount,
            at_ms: 0,
            kind: BidKind::Proxy,
            current_price: i64::MAX,
            leading_bidder: leading,
            reserve_met,
            minimum_bid: i64::MIN,
        };
        let events = [
            Event::bid_recorded(bid(-1, None, false)),
            Event::bid_recorded(bid(0, Some(id("ben")), true)),
            Event::bid_recorded(BidRecorded { kind: BidKind::Unspecified, ..bid(300, Some(id("x")), true) }),
            Event::outbid(id(""), id("ana"), 0),
            Event::outbid(id(&"l".repeat(200)), id("b"), -5),
            Event::lot_extended(id("L"), 0),
            Event::lot_extended(id("L"), 1_800_000_000_000),
            Event::other(Kind::LotExtended(pb::LotExtended { lot_id: "L".into(), ends_at_ms: 7 })),
        ];
        for event in events {
            let mut bytes = Vec::new();
            event.encode(&mut bytes);
            assert_eq!(bytes, event.to_pb().encode_to_vec(), "{event:?}");
            assert_eq!(event.encoded_len(), bytes.len(), "{event:?}");
            assert_eq!(pb::Event::decode(bytes.as_slice()).unwrap(), pb::Event::from(event));
        }
    }
}
