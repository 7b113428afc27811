//! Prometheus metrics, in a registry per gateway (so several gateways in one test process
//! stay apart), rendered at `/metrics`. The request-latency middleware lives here too.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub request_seconds: HistogramVec,
    pub bids: IntCounterVec,
    pub batch_commands: Histogram,
    pub feed_index: IntGauge,
    pub feed_lag_entries: IntGauge,
    pub leader_applied_index: IntGauge,
    pub ws_connections: IntGauge,
    pub ws_messages_sent: IntCounter,
    pub ws_lagging: IntCounter,
    pub catalog_index: IntGauge,
    pub catalog_lag_entries: IntGauge,
    pub catalog_lag_seconds: Gauge,
    pub catalog_dead_letters_parked: IntGauge,
    pub catalog_retries: IntGauge,
    pub search_index: IntGauge,
    pub search_lag_entries: IntGauge,
    pub search_dead_letters_parked: IntGauge,
    /// Seconds per search query, embedding included.
    pub search_seconds: Histogram,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("gavel_http_request_duration_seconds", "HTTP request latency by route")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["method", "route", "status"],
        )?;
        let bids = IntCounterVec::new(
            Opts::new("gavel_bids_total", "Bids answered, by result (accepted, or the rejection code)"),
            &["result"],
        )?;
        let batch_commands = Histogram::with_opts(
            HistogramOpts::new("gavel_propose_batch_commands", "Commands per Propose call sent to the cluster")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
        )?;
        let feed_index = IntGauge::new("gavel_feed_index", "Last committed-feed index this gateway has read")?;
        let feed_lag_entries =
            IntGauge::new("gavel_feed_lag_entries", "Entries the gateway's feed is behind the leader's applied index")?;
        let leader_applied_index =
            IntGauge::new("gavel_leader_applied_index", "The leader's applied index, as last polled")?;
        let ws_connections = IntGauge::new("gavel_ws_connections", "WebSocket connections open")?;
        let ws_messages_sent = IntCounter::new("gavel_ws_messages_sent_total", "Event messages sent to sockets")?;
        let ws_lagging =
            IntCounter::new("gavel_ws_lagging_total", "Sockets closed because they fell behind (`lagging`)")?;
        let catalog_index = IntGauge::new("gavel_catalog_index", "Last feed index the catalog has applied")?;
        let catalog_lag_entries =
            IntGauge::new("gavel_catalog_lag_entries", "Entries the catalog is behind the leader's applied index")?;
        let catalog_lag_seconds = Gauge::new(
            "gavel_catalog_lag_seconds",
            "Age of the newest entry the catalog has applied, while it is behind (0 when caught up)",
        )?;
        let catalog_dead_letters_parked = IntGauge::new(
            "gavel_catalog_dead_letters_parked",
            "Feed items the catalog parked as dead letters since this gateway started",
        )?;
        let catalog_retries =
            IntGauge::new("gavel_catalog_retries", "Transient catalog store failures retried since start")?;
        registry.register(Box::new(catalog_index.clone()))?;
        registry.register(Box::new(catalog_lag_entries.clone()))?;
        registry.register(Box::new(catalog_lag_seconds.clone()))?;
        registry.register(Box::new(catalog_dead_letters_parked.clone()))?;
        registry.register(Box::new(catalog_retries.clone()))?;
        let search_index = IntGauge::new("gavel_search_index", "Last feed index search has indexed")?;
        let search_lag_entries =
            IntGauge::new("gavel_search_lag_entries", "Entries search is behind the leader's applied index")?;
        let search_dead_letters_parked = IntGauge::new(
            "gavel_search_dead_letters_parked",
            "Feed items search's indexer parked as dead letters since this gateway started",
        )?;
        let search_seconds = Histogram::with_opts(
            HistogramOpts::new("gavel_search_seconds", "Search queries' time, the query's embedding included")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        )?;
        registry.register(Box::new(search_index.clone()))?;
        registry.register(Box::new(search_lag_entries.clone()))?;
        registry.register(Box::new(search_dead_letters_parked.clone()))?;
        registry.register(Box::new(search_seconds.clone()))?;
        registry.register(Box::new(ws_connections.clone()))?;
        registry.register(Box::new(ws_messages_sent.clone()))?;
        registry.register(Box::new(ws_lagging.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(bids.clone()))?;
        registry.register(Box::new(batch_commands.clone()))?;
        registry.register(Box::new(feed_index.clone()))?;
        registry.register(Box::new(feed_lag_entries.clone()))?;
        registry.register(Box::new(leader_applied_index.clone()))?;
        Ok(Metrics {
            registry,
            request_seconds,
            bids,
            batch_commands,
            feed_index,
            feed_lag_entries,
            leader_applied_index,
            ws_connections,
            ws_messages_sent,
            ws_lagging,
            catalog_index,
            catalog_lag_entries,
            catalog_lag_seconds,
            catalog_dead_letters_parked,
            catalog_retries,
            search_index,
            search_lag_entries,
            search_dead_letters_parked,
            search_seconds,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Records each request's latency under its route template (`/v1/lots/{lot_id}`), never the
/// raw path, so label cardinality stays bounded.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let response = next.run(request).await;
    metrics
        .request_seconds
        .with_label_values(&[method.as_str(), route.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}
