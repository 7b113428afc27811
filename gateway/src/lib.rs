//! Gavel's HTTP edge: the API of `shared/API.md` over the replicated ledger.
//!
//! - [`config`]: flags, environment and config file; every bound with its default.
//! - [`server`]: a running gateway (start, admin bootstrap, graceful shutdown).
//! - [`app`]: the router and its middleware stack.
//! - [`routes`]: the handlers, one module per API section.
//! - [`auth`]: JWTs, Argon2id passwords, role extractors.
//! - [`extract`]: JSON, path and query extractors that answer with API errors.
//! - [`error`]: the one error type and its HTTP mapping.
//! - [`protect`]: rate limits, timeouts, load shedding, CORS.
//! - [`batcher`]: commands of concurrent requests proposed together.
//! - [`feed`]: the feed follower, the catalog's subscriber, and the cluster view behind
//!   `/readyz`.
//! - [`images`]: image uploads judged by their bytes, thumbnails, the object store and its
//!   sweeper.
//! - [`events`]: the live projection: feed items to WebSocket messages.
//! - [`hub`]: fan-out of those messages to sockets, with replay history.
//! - [`woken`]: a stream polled only when it woke its task (each socket's read half).
//! - [`metrics`]: Prometheus metrics.
//! - [`web`]: the bidder page, embedded.
//! - [`dev`]: `gavel dev`, a local cluster with demo data.
//! - [`tools`]: operator commands (catalog rebuild, dead letters).

pub mod app;
pub mod auth;
pub mod batcher;
pub mod config;
pub mod dev;
pub mod error;
pub mod events;
pub mod extract;
pub mod feed;
pub mod hub;
pub mod images;
pub mod metrics;
pub mod protect;
pub mod routes;
pub mod server;
pub mod state;
pub mod tools;
pub mod web;
pub mod woken;

pub use config::{GatewayConfig, HttpArgs};
pub use error::AppError;
pub use server::{Gateway, GatewayError};
