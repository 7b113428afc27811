//! Commands as JSON objects: the replay format (`ledger/README.md`) read by `gavel-ledger
//! replay` and `gavel-ctl propose`. Views are rendered by [`crate::view`].
//!
//! The state machine never sees JSON: this module only converts JSON into [`pb`] commands.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::lifecycle;
use crate::pb::{self, command::Body};
use crate::state::{Ledger, lot_view, parse_role};
use crate::time::{TimeError, parse_time};
use crate::view;

/// Why a JSON command could not be read. Reported as `invalid_input`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl From<TimeError> for ParseError {
    fn from(e: TimeError) -> ParseError {
        ParseError(e.to_string())
    }
}

fn parse_err<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(message.into()))
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
struct NoFields {}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutCategoryJson {
    category_id: String,
    name: String,
    #[serde(default)]
    parent_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LotCategoriesJson {
    lot_id: String,
    category_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributeJson {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddAttributesJson {
    lot_id: String,
    attributes: Vec<AttributeJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteAttributeJson {
    lot_id: String,
    attribute_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddCommentJson {
    lot_id: String,
    comment_id: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentIdJson {
    lot_id: String,
    comment_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddImageJson {
    lot_id: String,
    image_id: String,
    content_hash: String,
    content_type: String,
    bytes: u64,
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageIdJson {
    lot_id: String,
    image_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReorderImagesJson {
    lot_id: String,
    image_ids: Vec<String>,
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
        "activate_record_expiry" => {
            let NoFields {} = fields(&cmd, obj)?;
            Body::ActivateRecordExpiry(pb::ActivateRecordExpiry {})
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
        "put_category" => {
            let c: PutCategoryJson = fields(&cmd, obj)?;
            Body::PutCategory(pb::PutCategory { category_id: c.category_id, name: c.name, parent_id: c.parent_id })
        }
        "set_lot_categories" => {
            let c: LotCategoriesJson = fields(&cmd, obj)?;
            Body::SetLotCategories(pb::SetLotCategories { lot_id: c.lot_id, category_ids: c.category_ids })
        }
        "add_attributes" => {
            let c: AddAttributesJson = fields(&cmd, obj)?;
            let attributes =
                c.attributes.into_iter().map(|a| pb::AttributeInput { key: a.key, value: a.value }).collect();
            Body::AddAttributes(pb::AddAttributes { lot_id: c.lot_id, attributes })
        }
        "delete_attribute" => {
            let c: DeleteAttributeJson = fields(&cmd, obj)?;
            Body::DeleteAttribute(pb::DeleteAttribute { lot_id: c.lot_id, attribute_id: c.attribute_id })
        }
        "add_comment" => {
            let c: AddCommentJson = fields(&cmd, obj)?;
            Body::AddComment(pb::AddComment { lot_id: c.lot_id, comment_id: c.comment_id, content: c.content })
        }
        "delete_comment" => {
            let c: CommentIdJson = fields(&cmd, obj)?;
            Body::DeleteComment(pb::DeleteComment { lot_id: c.lot_id, comment_id: c.comment_id })
        }
        "add_image" => {
            let c: AddImageJson = fields(&cmd, obj)?;
            Body::AddImage(pb::AddImage {
                lot_id: c.lot_id,
                image_id: c.image_id,
                content_hash: c.content_hash,
                content_type: c.content_type,
                bytes: c.bytes,
                width: c.width,
                height: c.height,
            })
        }
        "delete_image" => {
            let c: ImageIdJson = fields(&cmd, obj)?;
            Body::DeleteImage(pb::DeleteImage { lot_id: c.lot_id, image_id: c.image_id })
        }
        "reorder_images" => {
            let c: ReorderImagesJson = fields(&cmd, obj)?;
            Body::ReorderImages(pb::ReorderImages { lot_id: c.lot_id, image_ids: c.image_ids })
        }
        other => return parse_err(format!("unknown cmd {other:?}")),
    };
    Ok(pb::Command { at_ms, actor, body: Some(body), log_index: 0 })
}

/// The replay's closing line: the digest and every lot's public view.
pub fn summary(ledger: &Ledger) -> Value {
    let lots: Vec<Value> = ledger.lots().map(|l| view::lot(&lot_view(l))).collect();
    json!({"digest": ledger.digest().to_string(), "lots": lots})
}

#[cfg(test)]
mod tests {
    use super::*;

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
