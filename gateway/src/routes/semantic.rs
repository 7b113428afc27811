//! API.md "Catalog and search": multilingual semantic search over lots and artists.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ledger::lifecycle;
use ledger::pb::LotStatus;
use search::query::{self, Answer, LIMIT_MAX, QUERY_MAX_BYTES};
use search::{Engine, Filter, Index};
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{AppError, code};
use crate::extract::ApiQuery;
use crate::state::{AppState, Search};

/// Hits returned when `limit` is not given.
const LIMIT_DEFAULT: usize = 20;
/// Longest filter value accepted.
const PARAM_BYTES_MAX: usize = 1_024;

/// What a search request asked for.
struct Asked {
    q: String,
    limit: usize,
    filter: Filter,
}

/// The query string; `filters` says whether `status` and `category` are allowed. Unknown or
/// repeated parameters are refused: a typo must not silently widen a search.
fn parse(params: Vec<(String, String)>, filters: bool) -> Result<Asked, AppError> {
    let mut asked = Asked { q: String::new(), limit: LIMIT_DEFAULT, filter: Filter::default() };
    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in params {
        if !seen.insert(name.clone()) {
            return Err(AppError::invalid(format!("parameter {name} given twice")));
        }
        match name.as_str() {
            "q" => {
                if value.len() > QUERY_MAX_BYTES {
                    return Err(AppError::invalid(format!("q is longer than {QUERY_MAX_BYTES} bytes")));
                }
                asked.q = value;
            }
            "limit" => {
                let limit: usize = value.parse().ok().filter(|l| (1..=LIMIT_MAX).contains(l)).ok_or_else(|| {
                    AppError::invalid(format!("limit must be an integer from 1 to {LIMIT_MAX}, not {value:?}"))
                })?;
                asked.limit = limit;
            }
            "status" if filters => {
                let status = lifecycle::parse_name(&value)
                    .filter(|s| *s != LotStatus::Unspecified)
                    .ok_or_else(|| AppError::invalid(format!("unknown status {value:?} (e.g. InAuction)")))?;
                asked.filter.status = Some(status as i32);
            }
            "category" if filters => {
                if value.len() > PARAM_BYTES_MAX {
                    return Err(AppError::invalid(format!("category is longer than {PARAM_BYTES_MAX} bytes")));
                }
                asked.filter.category = Some(value);
            }
            other => return Err(AppError::invalid(format!("unknown parameter {other:?}"))),
        }
    }
    if asked.q.trim().is_empty() {
        return Err(AppError::invalid("q (the text to search for) is required"));
    }
    Ok(asked)
}

fn ready(state: &AppState) -> Result<(Arc<Index<Engine>>, OwnedSemaphorePermit), AppError> {
    match &state.search {
        Search::Ready(index, permits) => {
            let permit = permits.clone().try_acquire_owned().map_err(|_| {
                AppError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code::OVERLOADED,
                    "every search slot is busy; retry shortly",
                )
            })?;
            Ok((index.clone(), permit))
        }
        Search::Off(why) => {
            Err(AppError::new(StatusCode::SERVICE_UNAVAILABLE, code::SEARCH_UNAVAILABLE, why.to_string()))
        }
    }
}

/// Runs `search` off the async threads (embedding a query takes milliseconds of CPU) and
/// times it.
async fn run(
    state: &AppState,
    search: impl FnOnce(&Index<Engine>) -> Result<Answer, query::QueryError> + Send + 'static,
) -> Result<Answer, AppError> {
    let (index, permit) = ready(state)?;
    let started = Instant::now();
    // The permit lives as long as the work, even if the request times out meanwhile.
    let answer = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        search(&index)
    })
    .await
    .map_err(|e| AppError::internal(e.to_string()))?
    .map_err(|e| AppError::internal(e.to_string()))?;
    state.metrics.search_seconds.observe(started.elapsed().as_secs_f64());
    Ok(answer)
}

/// `GET /v1/search?q=&limit=&status=&category=`: lots by meaning, in any language.
pub async fn lots(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<Value>, AppError> {
    let Asked { q, limit, filter } = parse(params, true)?;
    let answer = run(&state, move |index| query::lots(index.encoder(), &**index.store(), &q, &filter, limit)).await?;
    let hits: Vec<Value> = answer
        .hits
        .iter()
        .map(|h| json!({"lot_id": h.id, "title": h.payload.title, "artist": h.payload.artist, "score": h.score}))
        .collect();
    Ok(Json(json!({"hits": hits, "as_of_index": answer.as_of_index})))
}

/// `GET /v1/search/artists?q=&limit=`: artists by their name and their lots.
pub async fn artists(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<Value>, AppError> {
    let Asked { q, limit, .. } = parse(params, false)?;
    let answer = run(&state, move |index| query::artists(index.encoder(), &**index.store(), &q, limit)).await?;
    let hits: Vec<Value> = answer
        .hits
        .iter()
        .map(|h| json!({"artist": h.payload.artist, "score": h.score, "lot_count": h.payload.lot_count}))
        .collect();
    Ok(Json(json!({"hits": hits, "as_of_index": answer.as_of_index})))
}
