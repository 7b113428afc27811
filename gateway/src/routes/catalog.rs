//! API.md "Catalog": filtered, sorted, paged lot summaries from the catalog read model, and
//! the operators' view of the feed items it could not apply (dead letters).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use catalog::query::{LIMIT_DEFAULT, LIMIT_MAX};
use catalog::{DeadLetter, LotSummary, Query, Retried, Sort, Store, StoreError};
use ledger::lifecycle;
use ledger::pb::LotStatus;
use ledger::time::format_time;
use node::pb::FeedItem;
use prost::Message;
use serde_json::{Value, json};

use crate::auth::Admin;
use crate::error::{AppError, code};
use crate::extract::{ApiPath, ApiQuery};
use crate::feed::now_ms;
use crate::state::{AppState, Search};

/// Longest `ending_within_secs`: a year.
const ENDING_WITHIN_SECS_MAX: u64 = 366 * 86_400;
/// Longest filter value or cursor accepted.
const PARAM_BYTES_MAX: usize = 1_024;

fn opt_str(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { Value::String(s.to_owned()) }
}

/// API.md's lot summary.
fn summary(lot: &LotSummary) -> Value {
    json!({
        "lot_id": lot.lot_id,
        "title": lot.title,
        "artist": lot.artist,
        "category": lot.category,
        "status": lifecycle::name(lot.status()),
        "currency": lot.currency,
        "start_price": lot.start_price,
        "current_price": lot.current_price,
        "minimum_bid": lot.minimum_bid,
        "bid_count": lot.bid_count,
        "reserve_met": lot.reserve_met,
        "starts_at": format_time(lot.starts_at_ms),
        "ends_at": format_time(lot.ends_at_ms),
        "leading_bidder": opt_str(&lot.leading_bidder),
        "auction_id": opt_str(&lot.auction_id),
        "categories": lot.categories,
        "thumbnail_url": lot.images.first().map(|id| format!("{}?size=thumb", ledger::view::image_url(id))),
    })
}

fn integer<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, AppError> {
    value.parse().map_err(|_| AppError::invalid(format!("{name} must be a non-negative integer, not {value:?}")))
}

/// The query string as a catalog query and the optional `min_index`. Unknown or repeated
/// parameters are refused rather than ignored: a typo must not silently widen a filter.
fn parse(params: Vec<(String, String)>, now_ms: i64) -> Result<(Query, Option<u64>), AppError> {
    let mut q = Query { limit: LIMIT_DEFAULT, ..Query::default() };
    let mut min_index = None;
    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in params {
        if !seen.insert(name.clone()) {
            return Err(AppError::invalid(format!("parameter {name} given twice")));
        }
        if value.len() > PARAM_BYTES_MAX {
            return Err(AppError::invalid(format!("parameter {name} is longer than {PARAM_BYTES_MAX} bytes")));
        }
        if let Some(key) = name.strip_prefix("attr.") {
            ledger::content::check_attribute_key(key).map_err(AppError::from)?;
            q.attributes.push((key.to_owned(), value));
            continue;
        }
        match name.as_str() {
            "status" => {
                let status = lifecycle::parse_name(&value)
                    .filter(|s| *s != LotStatus::Unspecified)
                    .ok_or_else(|| AppError::invalid(format!("unknown status {value:?} (e.g. InAuction)")))?;
                q.status = Some(status);
            }
            "category" => q.category = Some(value),
            "artist" => q.artist = Some(value),
            "auction" => q.auction = Some(value),
            "min_price" => q.min_price = Some(integer("min_price", &value)?),
            "max_price" => q.max_price = Some(integer("max_price", &value)?),
            "ending_within_secs" => {
                let secs: u64 = integer("ending_within_secs", &value)?;
                if secs == 0 || secs > ENDING_WITHIN_SECS_MAX {
                    return Err(AppError::invalid(format!(
                        "ending_within_secs must be from 1 to {ENDING_WITHIN_SECS_MAX}"
                    )));
                }
                q.ending = Some((now_ms, now_ms.saturating_add(secs as i64 * 1000)));
            }
            "sort" => {
                q.sort = Sort::parse(&value).ok_or_else(|| {
                    AppError::invalid(format!("sort must be ends_at, price or newest, not {value:?}"))
                })?;
            }
            "cursor" => q.cursor = Some(value),
            "limit" => {
                let limit: usize = integer("limit", &value)?;
                if !(1..=LIMIT_MAX).contains(&limit) {
                    return Err(AppError::invalid(format!("limit must be from 1 to {LIMIT_MAX}")));
                }
                q.limit = limit;
            }
            "min_index" => min_index = Some(integer("min_index", &value)?),
            other => return Err(AppError::invalid(format!("unknown parameter {other:?}"))),
        }
    }
    for (name, price) in [("min_price", q.min_price), ("max_price", q.max_price)] {
        if price.is_some_and(|p| !(0..=ledger::limits::AMOUNT_MAX).contains(&p)) {
            return Err(AppError::invalid(format!("{name} must be from 0 to {}", ledger::limits::AMOUNT_MAX)));
        }
    }
    if let (Some(lo), Some(hi)) = (q.min_price, q.max_price)
        && lo > hi
    {
        return Err(AppError::invalid("min_price is above max_price"));
    }
    Ok((q, min_index))
}

fn store_error(e: StoreError) -> AppError {
    match e {
        StoreError::BadCursor(why) => AppError::invalid(format!("cursor: {why}")),
        other => AppError::internal(other.to_string()),
    }
}

/// `GET /v1/catalog`: one page of lot summaries.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<Value>, AppError> {
    let (query, min_index) = parse(params, now_ms())?;
    if let Some(min) = min_index
        && !state.catalog.wait_for(min, state.catalog_wait).await
    {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::CATALOG_BEHIND,
            format!("the catalog has applied index {}, not yet {min}; retry shortly", state.catalog.applied()),
        ));
    }
    let catalog = state.catalog.clone();
    let page = tokio::task::spawn_blocking(move || catalog.query(&query))
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(store_error)?;
    Ok(Json(json!({
        "items": page.items.iter().map(summary).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
        "as_of_index": page.as_of_index,
    })))
}

/// The type of each event in an encoded feed item, for an operator's overview.
fn event_types(item: &[u8]) -> Vec<&'static str> {
    use ledger::pb::event::Kind;
    let Ok(item) = FeedItem::decode(item) else { return vec!["undecodable"] };
    let name = |kind: &Kind| match kind {
        Kind::UserCreated(_) => "user_created",
        Kind::UserRoleChanged(_) => "user_role_changed",
        Kind::LotCreated(_) => "lot_created",
        Kind::LotStatusChanged(_) => "lot_status_changed",
        Kind::BidRecorded(_) => "bid_recorded",
        Kind::Outbid(_) => "outbid",
        Kind::LotExtended(_) => "lot_extended",
        Kind::LotClosed(_) => "lot_closed",
        Kind::AuctionCreated(_) => "auction_created",
        Kind::LotAddedToAuction(_) => "lot_added_to_auction",
        Kind::AuctionStatusChanged(_) => "auction_status_changed",
        Kind::CategoryPut(_) => "category_put",
        Kind::LotCategoriesSet(_) => "lot_categories_set",
        Kind::AttributesAdded(_) => "attributes_added",
        Kind::AttributeDeleted(_) => "attribute_deleted",
        Kind::CommentAdded(_) => "comment_added",
        Kind::CommentDeleted(_) => "comment_deleted",
        Kind::ImageAdded(_) => "image_added",
        Kind::ImageDeleted(_) => "image_deleted",
        Kind::ImagesReordered(_) => "images_reordered",
    };
    item.events.iter().filter_map(|e| e.kind.as_ref()).map(name).collect()
}

/// `GET /v1/admin/dead-letters` (admin): every feed item the catalog or search parked,
/// by subscriber, oldest first.
pub async fn dead_letters(State(state): State<AppState>, Admin(_): Admin) -> Result<Json<Value>, AppError> {
    let catalog = state.catalog.clone();
    let letters = tokio::task::spawn_blocking(move || catalog.store().dead_letters())
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(store_error)?;
    let mut letters: Vec<Value> = letters.iter().map(|l| letter("catalog", l)).collect();
    if let Search::Ready(index, _) = &state.search {
        let index = index.clone();
        let parked = tokio::task::spawn_blocking(move || search::VectorStore::dead_letters(&**index.store()))
            .await
            .map_err(|e| AppError::internal(e.to_string()))?
            .map_err(|e| AppError::internal(e.to_string()))?;
        letters.extend(parked.iter().map(|l| letter("search", l)));
    }
    Ok(Json(json!({ "dead_letters": letters })))
}

/// One dead letter as the admin API shows it.
fn letter(subscriber: &str, l: &DeadLetter) -> Value {
    json!({
        "id": l.index,
        "subscriber": subscriber,
        "index": l.index,
        "at": format_time(l.at_ms),
        "error": l.error,
        "attempts": l.attempts,
        "events": event_types(&l.item),
    })
}

/// Which subscriber's dead letter a retry is for: `?subscriber=catalog` (the default) or
/// `search`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryParams {
    subscriber: Option<String>,
}

/// `POST /v1/admin/dead-letters/{id}/retry` (admin): applies the item again; 200 when it
/// applied, 409 `still_failing` (with the new error) when it is refused again.
pub async fn retry(
    State(state): State<AppState>,
    Admin(_): Admin,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(params): ApiQuery<RetryParams>,
) -> Result<Json<Value>, AppError> {
    match params.subscriber.as_deref() {
        None | Some("catalog") => {}
        Some("search") => return retry_search(&state, id).await,
        Some(other) => return Err(AppError::invalid(format!("subscriber must be catalog or search, not {other:?}"))),
    }
    let catalog = state.catalog.clone();
    let retried = tokio::task::spawn_blocking(move || catalog.retry(id))
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(store_error)?;
    match retried {
        Retried::Applied => Ok(Json(json!({"id": id, "result": "applied"}))),
        Retried::StillFailing(reason) => Err(AppError::new(StatusCode::CONFLICT, code::STILL_FAILING, reason)),
        Retried::NotFound => Err(AppError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, format!("no dead letter {id}"))),
    }
}

/// A retry of one of search's dead letters.
async fn retry_search(state: &AppState, id: u64) -> Result<Json<Value>, AppError> {
    let Search::Ready(index, _) = &state.search else {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("no dead letter {id}: search is off"),
        ));
    };
    let index = index.clone();
    let retried = tokio::task::spawn_blocking(move || index.retry(id))
        .await
        .map_err(|e| AppError::internal(e.to_string()))?
        .map_err(|e| AppError::internal(e.to_string()))?;
    match retried {
        search::Retried::Applied => Ok(Json(json!({"id": id, "subscriber": "search", "result": "applied"}))),
        search::Retried::StillFailing(reason) => Err(AppError::new(StatusCode::CONFLICT, code::STILL_FAILING, reason)),
        search::Retried::NotFound => {
            Err(AppError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, format!("no search dead letter {id}")))
        }
    }
}
