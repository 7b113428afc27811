//! What keeps one client from hurting the others: rate limits per IP and per caller
//! (`tower_governor`), a time limit per request, load shedding past a concurrency bound, CORS,
//! and a last-resort panic handler. Every refusal is API.md's error body.

use std::any::Any;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use governor::middleware::StateInformationMiddleware;
use tower::BoxError;
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::error;

use crate::auth::{Jwt, bearer};
use crate::error::{AppError, code};

/// A request rate: `per_sec` sustained, `burst` at once. `per_sec == 0` turns the limit off.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub per_sec: u64,
    pub burst: u32,
}

/// The peer's IP address (unspecified when the server was not given connection info).
fn peer_ip<T>(request: &Request<T>) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| addr.ip())
}

/// Keys requests by the peer's IP address.
#[derive(Clone, Copy, Debug)]
pub struct IpKey;

impl KeyExtractor for IpKey {
    type Key = IpAddr;

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, GovernorError> {
        Ok(peer_ip(request))
    }
}

/// Keys requests by the signed-in caller (a verified token), else by IP address.
#[derive(Clone)]
pub struct CallerKey(pub Arc<Jwt>);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallerOrIp {
    Caller(String),
    Ip(IpAddr),
}

impl KeyExtractor for CallerKey {
    type Key = CallerOrIp;

    fn extract<T>(&self, request: &Request<T>) -> Result<CallerOrIp, GovernorError> {
        // A forged or expired token is keyed by IP: it cannot spend someone else's budget.
        let caller = bearer(request.headers()).ok().flatten().and_then(|token| self.0.verify(token).ok());
        Ok(match caller {
            Some(caller) => CallerOrIp::Caller(caller.user_id),
            None => CallerOrIp::Ip(peer_ip(request)),
        })
    }
}

/// A governor configuration for `rate`; `None` when the limit is off.
pub fn governor<K: KeyExtractor>(
    key: K,
    rate: Rate,
) -> Result<Option<Arc<GovernorConfig<K, StateInformationMiddleware>>>, String> {
    if rate.per_sec == 0 {
        return Ok(None);
    }
    GovernorConfigBuilder::default()
        .key_extractor(key)
        .per_nanosecond((1_000_000_000 / rate.per_sec).max(1))
        .burst_size(rate.burst.max(1))
        .use_headers()
        .finish()
        .map(|config| Some(Arc::new(config)))
        .ok_or_else(|| format!("invalid rate limit {rate:?}"))
}

/// Rate-limit refusals as API.md's `429 rate_limited`, keeping the `retry-after` headers.
pub fn rate_limited(e: GovernorError) -> Response<Body> {
    match e {
        GovernorError::TooManyRequests { wait_time, headers } => {
            let mut response = AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                code::RATE_LIMITED,
                format!("too many requests; retry in {wait_time} s"),
            )
            .into_response();
            if let Some(headers) = headers {
                response.headers_mut().extend(headers);
            }
            response
        }
        other => AppError::internal(format!("rate limiter: {other}")).into_response(),
    }
}

/// Errors of the timeout and load-shedding layers.
pub async fn overloaded(e: BoxError) -> Response<Body> {
    if e.is::<tower::timeout::error::Elapsed>() {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::TIMEOUT,
            "the request took too long; retrying with the same ids is safe",
        )
        .into_response()
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        AppError::new(StatusCode::SERVICE_UNAVAILABLE, code::OVERLOADED, "the gateway is at capacity; retry shortly")
            .into_response()
    } else {
        AppError::internal(format!("unhandled middleware error: {e}")).into_response()
    }
}

/// A panic is a bug: log it and answer 500 with our body, never drop the connection.
pub fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    error!(panic = detail, "handler panicked");
    AppError::internal("internal error").into_response()
}

/// CORS: any origin when none is configured (tokens travel in a header, not cookies).
pub fn cors(origins: &[String]) -> Result<CorsLayer, String> {
    let allow = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        let values: Result<Vec<HeaderValue>, _> = origins.iter().map(|o| HeaderValue::from_str(o)).collect();
        AllowOrigin::list(values.map_err(|e| format!("bad CORS origin: {e}"))?)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600)))
}

/// A limiter whose idle keys can be dropped.
pub trait Forget {
    fn forget_idle(&self);
}

impl<K: KeyExtractor> Forget for GovernorConfig<K, StateInformationMiddleware> {
    fn forget_idle(&self) {
        self.limiter().retain_recent();
    }
}
