//! A running gateway: connects to the cluster, makes sure the first admin exists, serves HTTP
//! until asked to stop, then finishes the requests in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use catalog::{Catalog, Embedded};
use ledger::pb::command::Body;
use ledger::pb::outcome::Result as Res;
use ledger::pb::{self, Command, Role};
use node::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::app::app;
use crate::auth::{Jwt, Passwords, check_password};
use crate::batcher::Batcher;
use crate::config::GatewayConfig;
use crate::feed::{self, Live};
use crate::metrics::Metrics;
use crate::routes::ws::Sockets;
use crate::state::AppState;

/// The first admin's user id and username.
pub const ADMIN: &str = "admin";
/// How long shutdown waits for socket tasks to let go of the catalog store.
const CATALOG_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long start-up waits for the cluster to accept the first admin.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("the cluster did not answer in time: {0}")]
    Cluster(String),
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// A running gateway. Call [`Gateway::shutdown`] to stop it.
pub struct Gateway {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
    /// The catalog's subscriber; joined on shutdown so the store is closed when it returns.
    projector: tokio::task::JoinHandle<()>,
    /// Gone once every handler and socket task has let go of the catalog: its store is closed.
    catalog: std::sync::Weak<Catalog<Embedded>>,
}

impl Gateway {
    /// Connects, bootstraps the admin and starts serving.
    pub async fn start(config: GatewayConfig) -> Result<Gateway, GatewayError> {
        let jwt =
            Arc::new(Jwt::new(&config.jwt_secret, config.token_ttl).map_err(|e| GatewayError::Config(e.to_string()))?);
        let metrics = Arc::new(Metrics::new().map_err(|e| GatewayError::Config(e.to_string()))?);
        let client = Arc::new(Client::new(config.nodes.clone()));
        let passwords = Arc::new(Passwords::new(config.hashes_concurrent_max));
        if let Some(password) = &config.admin_password {
            ensure_admin(&client, &passwords, password).await?;
        }
        let store = Embedded::open(&config.catalog_dir)
            .map_err(|e| GatewayError::Config(format!("catalog store in {}: {e}", config.catalog_dir.display())))?;
        let catalog = Catalog::new(store).map_err(|e| GatewayError::Config(e.to_string()))?;
        let (stop, stopped) = watch::channel(false);
        let live = Arc::new(Live::new(config.hub));
        let cluster = feed::start(config.nodes.clone(), live.clone(), metrics.clone(), stopped.clone());
        let projector = feed::start_catalog(config.nodes.clone(), catalog.clone(), &cluster, stopped.clone());
        let sockets = Arc::new(Sockets::new(config.ws, stopped.clone()));
        let batcher = Batcher::start(client.clone(), config.batch, metrics.clone());
        let catalog_wait = config.catalog_wait;
        let catalog_weak = Arc::downgrade(&catalog);
        let state =
            AppState { client, batcher, jwt, passwords, metrics, cluster, live, sockets, catalog, catalog_wait };
        let router = app(state, &config).map_err(|e| GatewayError::Config(e.to_string()))?;
        let listener =
            TcpListener::bind(config.http_listen).await.map_err(|e| GatewayError::Listen(config.http_listen, e))?;
        let addr = listener.local_addr().map_err(|e| GatewayError::Listen(config.http_listen, e))?;
        let mut server_stop = stopped;
        let send_buffer = config.tcp_send_buffer_bytes;
        let listener = listener.tap_io(move |tcp| {
            if let Some(bytes) = send_buffer
                && let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(bytes)
            {
                warn!(error = %e, "cannot set the connection's send buffer");
            }
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|&s| s).await;
                })
                .await
        });
        info!(%addr, "gateway serving");
        Ok(Gateway { addr, stop, server, projector, catalog: catalog_weak })
    }

    /// The address the gateway listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes the requests in flight, then returns.
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        let _ = self.stop.send(true);
        let served = match self.server.await {
            Ok(result) => result.map_err(GatewayError::Serve),
            Err(e) => Err(GatewayError::Serve(std::io::Error::other(e.to_string()))),
        };
        if let Err(e) = self.projector.await {
            warn!(error = %e, "catalog subscriber ended abnormally");
        }
        // Sockets were told to close; their tasks let go of the catalog as they end. Wait, so
        // that a gateway started next on the same directory can open the store.
        let until = Instant::now() + CATALOG_CLOSE_TIMEOUT;
        while self.catalog.strong_count() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.catalog.strong_count() > 0 {
            warn!("the catalog store is still held after shutdown; it closes when the last socket ends");
        }
        served
    }
}

/// Creates the first admin (`admin`) with `password` unless a user `admin` exists. Safe to
/// run from several gateways at once: the ledger keeps the first.
pub async fn ensure_admin(client: &Client, passwords: &Passwords, password: &str) -> Result<(), GatewayError> {
    check_password(password).map_err(|e| GatewayError::Config(format!("admin password: {}", e.message)))?;
    let started = Instant::now();
    loop {
        match client.read_user("", ADMIN, false).await {
            Ok(answer) if answer.user.is_some() => {
                let hash = String::from_utf8_lossy(&answer.password_hash).into_owned();
                if !passwords.verify(password.to_owned(), Some(hash)).await.unwrap_or(false) {
                    warn!("user admin exists with another password; the configured admin password is not used");
                }
                return Ok(());
            }
            Ok(_) => break,
            Err(e) if started.elapsed() < BOOTSTRAP_TIMEOUT => {
                info!(error = %e, "waiting for the cluster");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(GatewayError::Cluster(e.to_string())),
        }
    }
    let hash = passwords.hash(password.to_owned()).await.map_err(|e| GatewayError::Config(e.message))?;
    let create = pb::CreateUser {
        user_id: ADMIN.into(),
        username: ADMIN.into(),
        role: Role::Admin as i32,
        password_hash: hash.into_bytes(),
    };
    let command = Command { at_ms: 0, actor: String::new(), log_index: 0, body: Some(Body::CreateUser(create)) };
    let results = client.propose(vec![command]).await.map_err(|e| GatewayError::Cluster(e.to_string()))?;
    match results.first().and_then(|r| r.outcome.as_ref()).and_then(|o| o.result.as_ref()) {
        Some(Res::User(_)) => info!("created the first admin"),
        // Another gateway created it a moment ago.
        Some(Res::Rejected(r)) if r.code == "user_exists" || r.code == "username_taken" => {}
        other => return Err(GatewayError::Cluster(format!("creating the admin: {other:?}"))),
    }
    Ok(())
}
