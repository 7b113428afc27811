//! JSON at the edge: commands as JSON objects (the replay format, `ledger/README.md`) and
//! outcomes, views and events rendered with API.md's field names. Times are RFC 3339 UTC
//! strings; amounts are integer minor units.
//!
//! The state machine never sees JSON: this module only converts to and from [`pb`] types.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::lifecycle;
use crate::pb::{self, BidKind, BidOutcomeKind, LotStatus, command::Body, outcome::Result as Res};
use crate::state::{Ledger, Lot, lot_view, parse_role, role_name};

/// Why a JSON command could not be read. Reported as `invalid_input`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

fn parse_err<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(message.into()))
}

// ---- times -----------------------------------------------------------------------------

/// Parses an RFC 3339 time into Unix milliseconds.
pub fn parse_time(field: &str, s: &str) -> Result<i64, ParseError> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| ParseError(format!("{field}: {s:?} is not an RFC 3339 time: {e}")))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).or_else(|_| parse_err(format!("{field} is out of range")))
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2026-11-22T18:00:00Z`).
pub fn format_time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

// ---- commands --------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserJson {
    user_id: String,
    username: String,
    #[serde(default = "default_role")]
    role: String,
    #[serde(default)]
    password_hash: String,
}

fn default_role() -> String {
    "user".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetUserRoleJson {
    user_id: String,
    role: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateLotJson {
    lot_id: String,
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    artist: String,
    #[serde(default)]
    category: String,
    currency: String,
    start_price: i64,
    reserve_price: Option<i64>,
    starts_at: String,
    ends_at: String,
    #[serde(default)]
    soft_close_secs: u32,
    #[serde(default)]
    seller_id: String,
    #[serde(default)]
    increment_ladder: Vec<(i64, i64)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStatusJson {
    #[serde(default)]
    lot_id: String,
    #[serde(default)]
    auction_id: String,
    status: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceBidJson {
    lot_id: String,
    bid_id: String,
    max_amount: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LotIdJson {
    lot_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAuctionJson {
    auction_id: String,
    title: String,
    currency: String,
    starts_at: String,
    ends_at: String,
    #[serde(default)]
    lot_interval_secs: u32,
    #[serde(default)]
    increment_ladder: Vec<(i64, i64)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLotJson {
    auction_id: String,
    lot_id: String,
}

fn fields<T: DeserializeOwned>(cmd: &str, rest: Map<String, Value>) -> Result<T, ParseError> {
    serde_json::from_value(Value::Object(rest)).map_err(|e| ParseError(format!("{cmd}: {e}")))
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, ParseError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => parse_err(format!("{key} must be a string, got {other}")),
    }
}

fn ladder(tiers: Vec<(i64, i64)>) -> Vec<pb::LadderTier> {
    tiers.into_iter().map(|(from_amount, step)| pb::LadderTier { from_amount, step }).collect()
}

fn lot_status(s: &str) -> Result<i32, ParseError> {
    match lifecycle::parse_name(s) {
        Some(status) => Ok(status as i32),
        None => parse_err(format!("unknown lot status {s:?}")),
    }
}

fn role(s: &str) -> Result<i32, ParseError> {
    match parse_role(s) {
        Some(r) => Ok(r as i32),
        None => parse_err(format!("unknown role {s:?} (user, curator or admin)")),
    }
}

/// Reads one command: `{"cmd": "...", "at": "<RFC 3339>", "actor"?: "...", ...fields}`.
/// For `place_bid` the acting user is `"bidder"`.
pub fn parse_command(line: &str) -> Result<pb::Command, ParseError> {
    let value: Value = serde_json::from_str(line).map_err(|e| ParseError(format!("not JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return parse_err("a command is a JSON object");
    };
    let Some(cmd) = take_string(&mut obj, "cmd")? else {
        return parse_err("missing \"cmd\"");
    };
    let Some(at) = take_string(&mut obj, "at")? else {
        return parse_err("missing \"at\"");
    };
    let at_ms = parse_time("at", &at)?;
    let mut actor = take_string(&mut obj, "actor")?.unwrap_or_default();
    let body = match cmd.as_str() {
        "create_user" => {
            let c: CreateUserJson = fields(&cmd, obj)?;
            Body::CreateUser(pb::CreateUser {
                user_id: c.user_id,
                username: c.username,
                role: role(&c.role)?,
                password_hash: c.password_hash.into_bytes(),
            })
        }
        "set_user_role" => {
            let c: SetUserRoleJson = fields(&cmd, obj)?;
            Body::SetUserRole(pb::SetUserRole { user_id: c.user_id, role: role(&c.role)? })
        }
        "create_lot" => {
            let c: CreateLotJson = fields(&cmd, obj)?;
            Body::CreateLot(pb::CreateLot {
                starts_at_ms: parse_time("starts_at", &c.starts_at)?,
                ends_at_ms: parse_time("ends_at", &c.ends_at)?,
                lot_id: c.lot_id,
                title: c.title,
                description: c.description,
                artist: c.artist,
                category: c.category,
                currency: c.currency,
                start_price: c.start_price,
                reserve_price: c.reserve_price,
                soft_close_secs: c.soft_close_secs,
                seller_id: c.seller_id,
                increment_ladder: ladder(c.increment_ladder),
            })
        }
        "set_lot_status" => {
            let c: SetStatusJson = fields(&cmd, obj)?;
            Body::SetLotStatus(pb::SetLotStatus { status: lot_status(&c.status)?, lot_id: c.lot_id })
        }
        "place_bid" => {
            let Some(bidder) = take_string(&mut obj, "bidder")? else {
                return parse_err("place_bid: missing \"bidder\"");
            };
            if !actor.is_empty() && actor != bidder {
                return parse_err("place_bid: \"actor\" and \"bidder\" differ");
            }
            actor = bidder;
            let c: PlaceBidJson = fields(&cmd, obj)?;
            Body::PlaceBid(pb::PlaceBid { lot_id: c.lot_id, bid_id: c.bid_id, max_amount: c.max_amount })
        }
        "close_lot" => {
            let c: LotIdJson = fields(&cmd, obj)?;
            Body::CloseLot(pb::CloseLot { lot_id: c.lot_id })
        }
        "create_auction" => {
            let c: CreateAuctionJson = fields(&cmd, obj)?;
            Body::CreateAuction(pb::CreateAuction {
                starts_at_ms: parse_time("starts_at", &c.starts_at)?,
                ends_at_ms: parse_time("ends_at", &c.ends_at)?,
                auction_id: c.auction_id,
                title: c.title,
                currency: c.currency,
                lot_interval_secs: c.lot_interval_secs,
                increment_ladder: ladder(c.increment_ladder),
            })
        }
        "add_lot_to_auction" => {
            let c: AddLotJson = fields(&cmd, obj)?;
            Body::AddLotToAuction(pb::AddLotToAuction { auction_id: c.auction_id, lot_id: c.lot_id })
        }
        "set_auction_status" => {
            let c: SetStatusJson = fields(&cmd, obj)?;
            let status = match lifecycle::parse_auction_name(&c.status) {
                Some(s) => s as i32,
                None => return parse_err(format!("unknown auction status {:?}", c.status)),
            };
            Body::SetAuctionStatus(pb::SetAuctionStatus { auction_id: c.auction_id, status })
        }
        other => return parse_err(format!("unknown cmd {other:?}")),
    };
    Ok(pb::Command { at_ms, actor, body: Some(body) })
}

// ---- views -----------------------------------------------------------------------------

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
        "reserve_met": v.reserve_met,
        "starts_at": format_time(v.starts_at_ms),
        "ends_at": format_time(v.ends_at_ms),
        "seller_id": v.seller_id,
        "version": v.version,
    })
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
    }
}

/// A lot's public bid history, in ledger order.
pub fn bids(l: &Lot) -> Value {
    let lines: Vec<Value> = l
        .history
        .iter()
        .map(|h| {
            let kind = if h.kind == BidKind::Proxy { "proxy" } else { "placed" };
            json!({"bid_id": h.bid_id, "bidder": h.bidder, "amount": h.amount, "at": format_time(h.at_ms), "kind": kind})
        })
        .collect();
    json!({ "bids": lines })
}

/// The replay's closing line: the digest and every lot's public view.
pub fn summary(ledger: &Ledger) -> Value {
    let lots: Vec<Value> = ledger.lots().map(|l| lot(&lot_view(l))).collect();
    json!({"digest": ledger.digest().to_string(), "lots": lots})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let ms = parse_time("at", "2026-11-22T18:00:00Z").unwrap();
        assert_eq!(ms, 1_795_370_400_000);
        assert_eq!(format_time(ms), "2026-11-22T18:00:00Z");
        assert_eq!(format_time(ms + 250), "2026-11-22T18:00:00.25Z");
        assert!(parse_time("at", "yesterday").is_err());
    }

    #[test]
    fn unknown_fields_and_commands_are_errors() {
        let at = r#""at":"2026-11-22T18:00:00Z""#;
        assert!(parse_command(&format!(r#"{{"cmd":"close_lot",{at},"lot_id":"a","oops":1}}"#)).is_err());
        assert!(parse_command(&format!(r#"{{"cmd":"fly",{at}}}"#)).is_err());
        assert!(parse_command(r#"{"cmd":"close_lot","lot_id":"a"}"#).is_err());
        assert!(parse_command("[1,2]").is_err());
        let ok = parse_command(&format!(
            r#"{{"cmd":"place_bid",{at},"lot_id":"a","bid_id":"b","bidder":"u","max_amount":5}}"#
        ));
        let cmd = ok.unwrap();
        assert_eq!(cmd.actor, "u");
        assert!(matches!(cmd.body, Some(Body::PlaceBid(ref b)) if b.max_amount == 5));
    }
}
