//! API.md "Lots": create, move through the lifecycle, read, and the bid history.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ledger::pb::command::Body;
use ledger::pb::outcome::Result as Res;
use ledger::pb::{self, Role};
use serde::Deserialize;
use serde_json::{Number, Value, json};

use super::{ReadQuery, StatusChange, amount, chosen_or_new_id, id, label_read, label_write, ladder, run, time_ms};
use crate::auth::{Curator, MaybeCaller};
use crate::error::AppError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLot {
    /// Extension: a client-chosen id makes a retried create idempotent.
    #[serde(default)]
    lot_id: Option<String>,
    title: String,
    description: String,
    artist: String,
    category: String,
    currency: String,
    start_price: Number,
    #[serde(default)]
    reserve_price: Option<Number>,
    starts_at: String,
    ends_at: String,
    #[serde(default)]
    soft_close_secs: u32,
    #[serde(default)]
    seller_id: Option<String>,
    /// Extension: a per-lot ladder `[[from_amount, step], ...]`.
    #[serde(default)]
    increment_ladder: Vec<(Number, Number)>,
}

fn lot_of(res: Res) -> Result<pb::LotView, AppError> {
    match res {
        Res::Lot(v) => Ok(v),
        _ => Err(AppError::internal("the cluster answered with something other than a lot")),
    }
}

/// `POST /v1/lots` (curator or admin): a new lot in `Draft`.
pub async fn create(
    State(state): State<AppState>,
    Curator(curator): Curator,
    ApiJson(body): ApiJson<NewLot>,
) -> Result<Response, AppError> {
    let lot_id = chosen_or_new_id("lot_id", body.lot_id, "lot-")?;
    if let Some(seller_id) = &body.seller_id {
        id("seller_id", seller_id)?;
    }
    let create = pb::CreateLot {
        lot_id,
        title: body.title,
        description: body.description,
        artist: body.artist,
        category: body.category,
        currency: body.currency,
        start_price: amount("start_price", &body.start_price, 0)?,
        reserve_price: body.reserve_price.as_ref().map(|r| amount("reserve_price", r, 0)).transpose()?,
        starts_at_ms: time_ms("starts_at", &body.starts_at)?,
        ends_at_ms: time_ms("ends_at", &body.ends_at)?,
        soft_close_secs: body.soft_close_secs,
        seller_id: body.seller_id.unwrap_or_default(),
        increment_ladder: ladder(&body.increment_ladder)?,
    };
    let (index, res) = run(&state, &curator.user_id, Body::CreateLot(create)).await?;
    Ok(label_write((StatusCode::CREATED, Json(ledger::view::lot(&lot_of(res)?))), index))
}

/// `POST /v1/lots/{lot_id}/status` (curator or admin).
pub async fn set_status(
    State(state): State<AppState>,
    Curator(curator): Curator,
    ApiPath(lot_id): ApiPath<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    let status = ledger::lifecycle::parse_name(&body.status)
        .ok_or_else(|| AppError::rejected("invalid_status", format!("unknown lot status {:?}", body.status)))?;
    let change = pb::SetLotStatus { lot_id, status: status as i32 };
    let (index, res) = run(&state, &curator.user_id, Body::SetLotStatus(change)).await?;
    Ok(label_write(Json(ledger::view::lot(&lot_of(res)?)), index))
}

/// `GET /v1/lots/{lot_id}`: the public lot object; admins also see the reserve and the
/// leader's maximum.
pub async fn read(
    State(state): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    ApiPath(lot_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    let answer = state.client.read_lot(&lot_id, query.stale(), false).await?;
    let view = answer.lot.ok_or_else(|| AppError::rejected("lot_not_found", format!("no lot {lot_id}")))?;
    let mut body = ledger::view::lot(&view);
    if caller.is_some_and(|c| c.is_at_least(Role::Admin)) {
        body["reserve_price"] = json!(answer.reserve_price);
        body["leading_max"] = json!(answer.leading_max);
    }
    Ok(label_read(Json(body).into_response(), answer.applied_index, answer.stale))
}

/// `GET /v1/lots/{lot_id}/bids`: the visible bid history in ledger order.
pub async fn bids(
    State(state): State<AppState>,
    ApiPath(lot_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    let answer = state.client.read_lot(&lot_id, query.stale(), true).await?;
    if answer.lot.is_none() {
        return Err(AppError::rejected("lot_not_found", format!("no lot {lot_id}")));
    }
    Ok(label_read(Json(ledger::view::bids(&answer.bids)).into_response(), answer.applied_index, answer.stale))
}

/// `GET /v1/live/lots` (extension): lots open for bidding, soonest end first, from the live
/// projection (eventually consistent, with the index it reflects). The page's list until the
/// catalog lands.
pub async fn open(State(state): State<AppState>) -> Json<Value> {
    let (as_of_index, items) = state.live.with_projection(|p| (p.index(), p.open_lots()));
    Json(json!({"items": items, "as_of_index": as_of_index}))
}
