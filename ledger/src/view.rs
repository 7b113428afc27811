//! Public views as JSON with API.md's field names: what any caller may see. The reserve
//! amount and bidders' maxima are not in these views; only an admin-facing caller adds them.

use serde_json::{Value, json};

use crate::lifecycle;
use crate::pb::{self, BidKind, BidOutcomeKind, LotStatus, outcome::Result as Res};
use crate::state::role_name;
use crate::time::format_time;

fn opt_str(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { Value::String(s.to_owned()) }
}

fn lot_status_name(status: i32) -> &'static str {
    lifecycle::name(LotStatus::try_from(status).unwrap_or(LotStatus::Unspecified))
}

/// The API's lot object (public: no reserve amount, no maxima).
pub fn lot(v: &pb::LotView) -> Value {
    json!({
        "lot_id": v.lot_id,
        "title": v.title,
        "description": v.description,
        "artist": v.artist,
        "category": v.category,
        "currency": v.currency,
        "status": lot_status_name(v.status),
        "start_price": v.start_price,
        "current_price": v.current_price,
        "leading_bidder": opt_str(&v.leading_bidder),
        "bid_count": v.bid_count,
        "minimum_bid": v.minimum_bid,
        "reserve_met": v.reserve_met,
        "starts_at": format_time(v.starts_at_ms),
        "ends_at": format_time(v.ends_at_ms),
        "seller_id": v.seller_id,
        "version": v.version,
        "categories": v.categories,
        "image_count": v.image_count,
        "comment_count": v.comment_count,
    })
}

/// A category; `children` and `lot_count` only where a read filled them in.
pub fn category(v: &pb::CategoryView, with_counts: bool) -> Value {
    let mut out = json!({"category_id": v.category_id, "name": v.name, "parent_id": opt_str(&v.parent_id)});
    if with_counts {
        out["lot_count"] = json!(v.lot_count);
    }
    out
}

pub fn attribute(v: &pb::AttributeView) -> Value {
    json!({"attribute_id": v.attribute_id, "key": v.key, "value": v.value})
}

pub fn attributes(v: &pb::AttributesView) -> Value {
    json!({"attributes": v.attributes.iter().map(attribute).collect::<Vec<_>>()})
}

pub fn comment(v: &pb::CommentView) -> Value {
    json!({
        "comment_id": v.comment_id,
        "lot_id": v.lot_id,
        "author": v.author,
        "content": v.content,
        "created_at": format_time(v.created_at_ms),
    })
}

/// Where an image's bytes are served (API.md).
pub fn image_url(image_id: &str) -> String {
    format!("/v1/images/{image_id}")
}

pub fn image(v: &pb::ImageView) -> Value {
    json!({
        "image_id": v.image_id,
        "lot_id": v.lot_id,
        "url": image_url(&v.image_id),
        "content_type": v.content_type,
        "bytes": v.bytes,
        "width": v.width,
        "height": v.height,
        "position": v.position,
    })
}

pub fn images(v: &pb::ImagesView) -> Value {
    json!({"images": v.images.iter().map(image).collect::<Vec<_>>()})
}

pub fn user(v: &pb::UserView) -> Value {
    let role = role_name(pb::Role::try_from(v.role).unwrap_or(pb::Role::Unspecified));
    json!({"user_id": v.user_id, "username": v.username, "role": role})
}

pub fn auction(v: &pb::AuctionView) -> Value {
    let status =
        lifecycle::auction_name(pb::AuctionStatus::try_from(v.status).unwrap_or(pb::AuctionStatus::Unspecified));
    json!({
        "auction_id": v.auction_id,
        "title": v.title,
        "currency": v.currency,
        "status": status,
        "starts_at": format_time(v.starts_at_ms),
        "ends_at": format_time(v.ends_at_ms),
        "lot_interval_secs": v.lot_interval_secs,
        "lot_ids": v.lot_ids,
    })
}

/// The API's bid answer (without `log_index`, which only a replicated node knows).
pub fn bid(v: &pb::BidResult) -> Value {
    let outcome = match BidOutcomeKind::try_from(v.outcome) {
        Ok(BidOutcomeKind::Outbid) => "outbid",
        _ => "leading",
    };
    json!({
        "bid_id": v.bid_id,
        "lot_id": v.lot_id,
        "outcome": outcome,
        "current_price": v.current_price,
        "leading_bidder": opt_str(&v.leading_bidder),
        "ends_at": format_time(v.ends_at_ms),
    })
}

pub fn closed(v: &pb::LotClosed) -> Value {
    let sold = !v.winner.is_empty();
    json!({
        "lot_id": v.lot_id,
        "status": lot_status_name(v.status),
        "winner": opt_str(&v.winner),
        "price": if sold { json!(v.price) } else { Value::Null },
    })
}

pub fn error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

/// One command's answer as JSON: the view it returned, or `{"error": {...}}`.
pub fn outcome(o: &pb::Outcome) -> Value {
    match &o.result {
        None => error("invalid_input", "empty outcome"),
        Some(Res::Rejected(r)) => error(&r.code, &r.message),
        Some(Res::User(v)) => user(v),
        Some(Res::Lot(v)) => lot(v),
        Some(Res::Bid(v)) => bid(v),
        Some(Res::Closed(v)) => closed(v),
        Some(Res::Auction(v)) => auction(v),
        Some(Res::Category(v)) => category(v, false),
        Some(Res::Attributes(v)) => attributes(v),
        Some(Res::Comment(v)) => comment(v),
        Some(Res::Image(v)) => image(v),
        Some(Res::Images(v)) => images(v),
        Some(Res::RecordExpiry(v)) => json!({"record_expiry": v.active}),
    }
}

/// A lot's public bid history, in ledger order (visible amounts only).
pub fn bids(history: &[pb::HistoryLine]) -> Value {
    let lines: Vec<Value> = history
        .iter()
        .map(|h| {
            let kind = if h.kind == BidKind::Proxy as i32 { "proxy" } else { "placed" };
            json!({"bid_id": h.bid_id, "bidder": h.bidder, "amount": h.amount, "at": format_time(h.at_ms), "kind": kind})
        })
        .collect();
    json!({ "bids": lines })
}
