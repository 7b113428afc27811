//! The router: every route of API.md's HTTP part, and the middleware in one stack.

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::middleware;
use axum::routing::{delete, get, post};
use tower::ServiceBuilder;
use tower_governor::GovernorLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::GatewayConfig;
use crate::metrics;
use crate::protect::{self, CallerKey, IpKey};
use crate::routes::{auctions, bids, catalog, content, lots, ops, semantic, users, ws};
use crate::state::AppState;
use crate::web;

/// Why a router could not be built (a bad setting).
#[derive(Debug, thiserror::Error)]
#[error("gateway configuration: {0}")]
pub struct AppConfigError(pub String);

/// The gateway as one `Router`: API routes behind rate limits, operations routes without.
pub fn app(state: AppState, config: &GatewayConfig) -> Result<Router, AppConfigError> {
    let ip_limits = protect::governor(IpKey, config.rate_ip).map_err(AppConfigError)?;
    let caller_limits = protect::governor(CallerKey(state.jwt.clone()), config.rate_user).map_err(AppConfigError)?;

    // Anyone may call these: limited per IP only (a venue's many bidders share one address).
    let public = Router::new()
        .route("/v1/users", post(users::sign_up))
        .route("/v1/sessions", post(users::sign_in))
        .route("/v1/lots/{lot_id}", get(lots::read))
        .route("/v1/lots/{lot_id}/bids", get(lots::bids))
        .route("/v1/auctions/{auction_id}", get(auctions::read))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/live/lots", get(lots::open))
        .route("/v1/catalog", get(catalog::list))
        .route("/v1/search", get(semantic::lots))
        .route("/v1/search/artists", get(semantic::artists))
        .route("/v1/categories", get(content::categories))
        .route("/v1/categories/{category_id}", get(content::category))
        .route("/v1/lots/{lot_id}/attributes", get(content::attributes))
        .route("/v1/lots/{lot_id}/attributes/{attribute_id}", get(content::attribute))
        .route("/v1/lots/{lot_id}/comments", get(content::comments))
        .route("/v1/lots/{lot_id}/images", get(content::images))
        .route("/v1/images/{image_id}", get(content::bytes));
    // An upload's body holds the image and the form around it.
    let upload_bytes = usize::try_from(ledger::limits::IMAGE_BYTES_MAX).unwrap_or(usize::MAX).saturating_add(64 * 1024);
    // These need a token: limited per caller too, so one account cannot flood the sale.
    let signed_in = Router::new()
        .route("/v1/users/{user_id}/role", post(users::set_role))
        .route("/v1/lots", post(lots::create))
        .route("/v1/lots/{lot_id}/status", post(lots::set_status))
        .route("/v1/lots/{lot_id}/bids", post(bids::place))
        .route("/v1/auctions", post(auctions::create))
        .route("/v1/auctions/{auction_id}/lots", post(auctions::add_lot))
        .route("/v1/auctions/{auction_id}/status", post(auctions::set_status))
        .route("/v1/categories", post(content::put_category))
        .route("/v1/lots/{lot_id}/categories", post(content::set_lot_categories))
        .route("/v1/lots/{lot_id}/attributes", post(content::add_attributes))
        .route("/v1/lots/{lot_id}/attributes/{attribute_id}", delete(content::delete_attribute))
        .route("/v1/lots/{lot_id}/comments", post(content::add_comment))
        .route("/v1/lots/{lot_id}/comments/{comment_id}", delete(content::delete_comment))
        .route("/v1/lots/{lot_id}/images", post(content::add_image).layer(DefaultBodyLimit::max(upload_bytes)))
        .route("/v1/lots/{lot_id}/images/order", post(content::reorder_images))
        .route("/v1/lots/{lot_id}/images/{image_id}", delete(content::delete_image))
        .route("/v1/admin/dead-letters", get(catalog::dead_letters))
        .route("/v1/admin/dead-letters/{id}/retry", post(catalog::retry));
    let signed_in = match caller_limits {
        Some(limits) => {
            spawn_limit_cleanup(&limits);
            signed_in.layer(GovernorLayer::new(limits).error_handler(protect::rate_limited))
        }
        None => signed_in,
    };
    let api = public.merge(signed_in);
    let api = match ip_limits {
        Some(limits) => {
            spawn_limit_cleanup(&limits);
            api.layer(GovernorLayer::new(limits).error_handler(protect::rate_limited))
        }
        None => api,
    };

    let ops = Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::app_js))
        .route("/app.css", get(web::app_css))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics));

    let cors = protect::cors(&config.cors_origins).map_err(AppConfigError)?;
    let router = api
        .merge(ops)
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(config.body_bytes_max))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id)
                }))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(protect::panicked))
                .layer(cors)
                .layer(HandleErrorLayer::new(protect::overloaded))
                .load_shed()
                .concurrency_limit(config.concurrency_max.max(1))
                .timeout(config.request_timeout),
        )
        .with_state(state);
    Ok(router)
}

/// Forgets idle rate-limit keys now and then, so the limiter's memory stays bounded; stops
/// once the router (and so the limiter) is gone.
fn spawn_limit_cleanup<L: protect::Forget + Send + Sync + 'static>(limits: &std::sync::Arc<L>) {
    let limits = std::sync::Arc::downgrade(limits);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(limits) = limits.upgrade() else { return };
            limits.forget_idle();
        }
    });
}
