//! API.md "Auctions": sales that group lots (admin), and reading one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ledger::pb;
use ledger::pb::command::Body;
use ledger::pb::outcome::Result as Res;
use serde::Deserialize;
use serde_json::Number;

use super::{ReadQuery, StatusChange, chosen_or_new_id, id, label_read, label_write, ladder, run, time_ms};
use crate::auth::Admin;
use crate::error::AppError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAuction {
    /// Extension: a client-chosen id makes a retried create idempotent.
    #[serde(default)]
    auction_id: Option<String>,
    title: String,
    currency: String,
    starts_at: String,
    ends_at: String,
    #[serde(default)]
    lot_interval_secs: u32,
    #[serde(default)]
    increment_ladder: Vec<(Number, Number)>,
}

fn auction_of(res: Res) -> Result<pb::AuctionView, AppError> {
    match res {
        Res::Auction(v) => Ok(v),
        _ => Err(AppError::internal("the cluster answered with something other than an auction")),
    }
}

/// `POST /v1/auctions` (admin).
pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<NewAuction>,
) -> Result<Response, AppError> {
    let auction_id = chosen_or_new_id("auction_id", body.auction_id, "auc-")?;
    let create = pb::CreateAuction {
        auction_id,
        title: body.title,
        currency: body.currency,
        starts_at_ms: time_ms("starts_at", &body.starts_at)?,
        ends_at_ms: time_ms("ends_at", &body.ends_at)?,
        lot_interval_secs: body.lot_interval_secs,
        increment_ladder: ladder(&body.increment_ladder)?,
    };
    let (index, res) = run(&state, &admin.user_id, Body::CreateAuction(create)).await?;
    Ok(label_write((StatusCode::CREATED, Json(ledger::view::auction(&auction_of(res)?))), index))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLot {
    lot_id: String,
}

/// `POST /v1/auctions/{auction_id}/lots` (admin): adds a `ReadyForAuction` lot.
pub async fn add_lot(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(auction_id): ApiPath<String>,
    ApiJson(body): ApiJson<AddLot>,
) -> Result<Response, AppError> {
    id("auction_id", &auction_id)?;
    id("lot_id", &body.lot_id)?;
    let add = pb::AddLotToAuction { auction_id, lot_id: body.lot_id };
    let (index, res) = run(&state, &admin.user_id, Body::AddLotToAuction(add)).await?;
    Ok(label_write(Json(ledger::view::auction(&auction_of(res)?)), index))
}

/// `POST /v1/auctions/{auction_id}/status` (admin): `Live` or `Cancelled`.
pub async fn set_status(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(auction_id): ApiPath<String>,
    ApiJson(body): ApiJson<StatusChange>,
) -> Result<Response, AppError> {
    id("auction_id", &auction_id)?;
    let status = match ledger::lifecycle::parse_auction_name(&body.status) {
        Some(s @ (pb::AuctionStatus::Live | pb::AuctionStatus::Cancelled)) => s,
        _ => return Err(AppError::rejected("invalid_status", "an auction can be set Live or Cancelled")),
    };
    let change = pb::SetAuctionStatus { auction_id, status: status as i32 };
    let (index, res) = run(&state, &admin.user_id, Body::SetAuctionStatus(change)).await?;
    Ok(label_write(Json(ledger::view::auction(&auction_of(res)?)), index))
}

/// `GET /v1/auctions/{auction_id}`.
pub async fn read(
    State(state): State<AppState>,
    ApiPath(auction_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, AppError> {
    id("auction_id", &auction_id)?;
    let answer = state.client.read_auction(&auction_id, query.stale()).await?;
    let view =
        answer.auction.ok_or_else(|| AppError::rejected("auction_not_found", format!("no auction {auction_id}")))?;
    Ok(label_read(Json(ledger::view::auction(&view)).into_response(), answer.applied_index, answer.stale))
}
