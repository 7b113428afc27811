//! Handlers, one module per section of API.md, and the helpers they share.

pub mod auctions;
pub mod bids;
pub mod catalog;
pub mod content;
pub mod lots;
pub mod ops;
pub mod semantic;
pub mod users;
pub mod ws;

use axum::http::HeaderValue;
use axum::response::Response;
use ledger::limits;
use ledger::pb::command::Body;
use ledger::pb::outcome::Result as Res;
use ledger::pb::{self, Command};
use serde::Deserialize;
use serde_json::Number;

use crate::error::{AppError, code};
use crate::state::AppState;

/// Orders one command acting for `actor` (empty: the gateway itself) and returns its log
/// index and successful result; a rejection becomes its API error.
pub async fn run(state: &AppState, actor: &str, body: Body) -> Result<(u64, Res), AppError> {
    let command = Command { at_ms: 0, actor: actor.to_owned(), log_index: 0, body: Some(body) };
    let result = state.batcher.propose(command).await?;
    match result.outcome.and_then(|o| o.result) {
        Some(Res::Rejected(r)) => Err(AppError::from(&r)),
        Some(res) => Ok((result.log_index, res)),
        None => Err(AppError::internal("the cluster answered without an outcome")),
    }
}

/// A new id: `prefix` and 32 hex digits (random, so ids reveal nothing about order or count).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// The client's id for a new entity (checked), or a fresh one.
pub fn chosen_or_new_id(field: &str, chosen: Option<String>, prefix: &str) -> Result<String, AppError> {
    match chosen {
        Some(chosen) => id(field, &chosen).map(|()| chosen),
        None => Ok(new_id(prefix)),
    }
}

/// An amount in minor units: a JSON integer from `min` to `limits::AMOUNT_MAX`.
pub fn amount(field: &str, n: &Number, min: i64) -> Result<i64, AppError> {
    n.as_i64().filter(|a| (min..=limits::AMOUNT_MAX).contains(a)).ok_or_else(|| {
        AppError::new(
            axum::http::StatusCode::BAD_REQUEST,
            code::INVALID_AMOUNT,
            format!("{field} must be an integer number of minor units from {min} to {}", limits::AMOUNT_MAX),
        )
    })
}

/// An RFC 3339 time as Unix milliseconds.
pub fn time_ms(field: &str, s: &str) -> Result<i64, AppError> {
    ledger::time::parse_time(field, s)
        .map_err(|e| AppError::new(axum::http::StatusCode::BAD_REQUEST, code::INVALID_TIME, e.to_string()))
}

/// An increment ladder `[[from_amount, step], ...]`.
pub fn ladder(tiers: &[(Number, Number)]) -> Result<Vec<pb::LadderTier>, AppError> {
    tiers
        .iter()
        .map(|(from, step)| {
            Ok(pb::LadderTier {
                from_amount: amount("increment_ladder from_amount", from, 0)?,
                step: amount("increment_ladder step", step, 1)?,
            })
        })
        .collect()
}

/// An id from the path or the body, checked like the ledger checks ids.
pub fn id(field: &str, value: &str) -> Result<(), AppError> {
    ledger::checks::check_id(field, value).map_err(AppError::from)
}

/// `{"status": "..."}`: a lot's or an auction's next status.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub status: String,
}

/// `?consistency=linearizable|stale` on reads (default linearizable).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    #[serde(default)]
    pub consistency: Consistency,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

impl ReadQuery {
    pub fn stale(&self) -> bool {
        self.consistency == Consistency::Stale
    }
}

/// Labels a write's answer with the log index that applied it (`gavel-log-index`): a client
/// passes it as the catalog's `min_index` to read its own write.
pub fn label_write(response: impl axum::response::IntoResponse, log_index: u64) -> Response {
    let mut response = response.into_response();
    response.headers_mut().insert("gavel-log-index", HeaderValue::from(log_index));
    response
}

/// Labels a read's answer: which index it reflects and whether it may be stale.
pub fn label_read(mut response: Response, applied_index: u64, stale: bool) -> Response {
    let headers = response.headers_mut();
    headers.insert("gavel-applied-index", HeaderValue::from(applied_index));
    headers.insert("gavel-consistency", HeaderValue::from_static(if stale { "stale" } else { "linearizable" }));
    response
}
