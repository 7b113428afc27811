//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use catalog::{Catalog, Engine};
use node::Client;

use crate::auth::{Jwt, Passwords};
use crate::batcher::Batcher;
use crate::feed::{ClusterView, Live};
use crate::images::Images;
use crate::metrics::Metrics;
use crate::routes::ws::Sockets;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub client: Arc<Client>,
    pub batcher: Batcher,
    pub jwt: Arc<Jwt>,
    pub passwords: Arc<Passwords>,
    pub metrics: Arc<Metrics>,
    pub cluster: Arc<ClusterView>,
    pub live: Arc<Live>,
    pub sockets: Arc<Sockets>,
    /// The embedded store or ScyllaDB (`--catalog-store`).
    pub catalog: Arc<Catalog<Engine>>,
    /// Longest a catalog read waits for its `min_index`.
    pub catalog_wait: Duration,
    pub search: Search,
    /// The object store with the lots' image bytes.
    pub images: Arc<Images>,
}

/// Search as this gateway has it.
#[derive(Clone)]
pub enum Search {
    /// The index, and permits for queries running at once.
    Ready(Arc<search::Index<search::Engine>>, Arc<tokio::sync::Semaphore>),
    /// Why not (e.g. the model file is missing): `/v1/search` answers 503 with it.
    Off(Arc<str>),
}
