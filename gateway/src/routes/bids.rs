//! API.md "Bids": placing a bid, exactly once per `(bidder, bid_id)`.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use ledger::pb;
use ledger::pb::command::Body;
use ledger::pb::outcome::Result as Res;
use serde::Deserialize;
use serde_json::{Number, json};

use super::{amount, id, label_write, run};
use crate::auth::Caller;
use crate::error::AppError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBid {
    bid_id: String,
    max_amount: Number,
}

/// `POST /v1/lots/{lot_id}/bids` (any signed-in user): the bidder is always the caller.
pub async fn place(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(lot_id): ApiPath<String>,
    ApiJson(body): ApiJson<NewBid>,
) -> Result<Response, AppError> {
    id("lot_id", &lot_id)?;
    id("bid_id", &body.bid_id)?;
    let max_amount = amount("max_amount", &body.max_amount, 1)?;
    let bid = pb::PlaceBid { lot_id, bid_id: body.bid_id, max_amount };
    let answer = run(&state, &caller.user_id, Body::PlaceBid(bid)).await;
    let result = match &answer {
        Ok(_) => "accepted",
        Err(e) => e.code,
    };
    state.metrics.bids.with_label_values(&[result]).inc();
    match answer? {
        (log_index, Res::Bid(v)) => {
            let mut body = ledger::view::bid(&v);
            // A retry gets the index the bid was first applied at, recorded by the ledger.
            let index = if v.log_index != 0 { v.log_index } else { log_index };
            body["log_index"] = json!(index);
            Ok(label_write(Json(body), index))
        }
        _ => Err(AppError::internal("the cluster answered with something other than a bid")),
    }
}
