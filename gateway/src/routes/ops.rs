//! API.md "Operations": liveness, readiness and metrics; and the answers for unknown routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::error::{AppError, code};
use crate::feed::ClusterView;
use crate::metrics::Metrics;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: a leader is known and the feed is caught up.
pub async fn readyz(State(cluster): State<Arc<ClusterView>>) -> Result<Json<Value>, AppError> {
    match cluster.not_ready_reason() {
        Some(reason) => Err(AppError::new(StatusCode::SERVICE_UNAVAILABLE, code::NOT_READY, reason)),
        None => Ok(Json(json!({
            "status": "ready",
            "feed_index": cluster.feed_index(),
            "feed_lag_entries": cluster.feed_lag_entries(),
            "catalog_index": cluster.catalog().index,
            "catalog_lag_entries": cluster.catalog_lag_entries(),
        }))),
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(metrics): State<Arc<Metrics>>) -> Result<impl IntoResponse, AppError> {
    let text = metrics.render().map_err(|e| AppError::internal(e.to_string()))?;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

pub async fn not_found() -> AppError {
    AppError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, "no such route (see API.md)")
}

pub async fn method_not_allowed() -> AppError {
    AppError::new(StatusCode::METHOD_NOT_ALLOWED, code::METHOD_NOT_ALLOWED, "this route does not take that method")
}
