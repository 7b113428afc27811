//! A running gateway: connects to the cluster, makes sure the first admin exists, serves HTTP
//! until asked to stop, then finishes the requests in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use catalog::{Catalog, Embedded, Engine, Scylla};
use ledger::pb::command::Body;
use ledger::pb::outcome::Result as Res;
use ledger::pb::{self, Command, Role};
use node::Client;
use search::{Encoder, Index};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::app::app;
use crate::auth::{Jwt, Passwords, check_password};
use crate::batcher::Batcher;
use crate::config::{GatewayConfig, SearchConfig};
use crate::feed::{self, Live};
use crate::images::Images;
use crate::metrics::Metrics;
use crate::routes::ws::Sockets;
use crate::state::{AppState, Search};

/// The first admin's user id and username.
pub const ADMIN: &str = "admin";
/// How long shutdown waits for socket tasks to let go of the catalog and search stores.
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
    /// The catalog's and search's subscribers; joined on shutdown so that their stores are
    /// no longer written.
    subscribers: Vec<tokio::task::JoinHandle<()>>,
    /// Zero once every handler and socket task has let go of the stores: they are closed.
    holders: Vec<Box<dyn Fn() -> usize + Send + Sync>>,
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
        let store = match config.catalog_store.clone() {
            Some(uri) => {
                // Connecting blocks (the store's calls do): off the runtime's workers.
                let opened =
                    tokio::task::spawn_blocking(move || Scylla::connect(&uri).map_err(|e| format!("{uri}: {e}")));
                let store = opened.await.map_err(|e| GatewayError::Config(e.to_string()))?;
                Engine::Scylla(store.map_err(|e| GatewayError::Config(format!("catalog store {e}")))?)
            }
            None => Engine::Embedded(Embedded::open(&config.catalog_dir).map_err(|e| {
                GatewayError::Config(format!("catalog store in {}: {e}", config.catalog_dir.display()))
            })?),
        };
        let catalog = Catalog::new(store).map_err(|e| GatewayError::Config(e.to_string()))?;
        // Before any task starts: a failure here leaves nothing running.
        let search = open_search(config.search.as_ref()).await?;
        let images = Arc::new(Images::open(&config.images).map_err(GatewayError::Config)?);
        let (stop, stopped) = watch::channel(false);
        let live = Arc::new(Live::new(config.hub));
        let cluster = feed::start(config.nodes.clone(), live.clone(), metrics.clone(), stopped.clone());
        let mut subscribers = vec![if config.catalog_read_only {
            feed::follow_catalog(catalog.clone(), &cluster, stopped.clone())
        } else {
            feed::start_catalog(config.nodes.clone(), catalog.clone(), &cluster, stopped.clone())
        }];
        let mut holders: Vec<Box<dyn Fn() -> usize + Send + Sync>> = Vec::new();
        if let Search::Ready(index, _) = &search {
            subscribers.push(feed::start_search(config.nodes.clone(), index.clone(), &cluster, stopped.clone()));
            let weak = Arc::downgrade(index);
            holders.push(Box::new(move || weak.strong_count()));
        }
        let sockets = Arc::new(Sockets::new(config.ws, stopped.clone()));
        let batcher = Batcher::start(client.clone(), config.batch, metrics.clone());
        if let Some(every) = config.image_sweep {
            spawn_image_sweeper(images.clone(), client.clone(), every, config.image_grace, stopped.clone());
        }
        let catalog_wait = config.catalog_wait;
        let catalog_weak = Arc::downgrade(&catalog);
        holders.push(Box::new(move || catalog_weak.strong_count()));
        let state = AppState {
            client,
            batcher,
            jwt,
            passwords,
            metrics,
            cluster,
            live,
            sockets,
            catalog,
            catalog_wait,
            search,
            images,
        };
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
        Ok(Gateway { addr, stop, server, subscribers, holders })
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
        for subscriber in self.subscribers {
            if let Err(e) = subscriber.await {
                warn!(error = %e, "a feed subscriber ended abnormally");
            }
        }
        // Sockets were told to close; their tasks let go of the stores as they end. Wait, so
        // that a gateway started next on the same directories can open them.
        let held = || self.holders.iter().map(|count| count()).sum::<usize>();
        let until = Instant::now() + CATALOG_CLOSE_TIMEOUT;
        while held() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if held() > 0 {
            warn!("a store is still held after shutdown; it closes when the last socket ends");
        }
        served
    }
}

/// Sweeps the image store now and then until the gateway stops. Every gateway may run one:
/// deleting bytes no committed image names is idempotent.
fn spawn_image_sweeper(
    images: Arc<Images>,
    client: Arc<Client>,
    every: Duration,
    grace: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|&s| s) => return,
            }
            let referenced = |content_hash: String| {
                let client = client.clone();
                async move {
                    let request = node::pb::ReadImageRequest { image_id: String::new(), content_hash, stale: false };
                    client.read_image(request).await.ok().map(|a| a.referenced)
                }
            };
            if let Err(e) = images.sweep(grace, referenced).await {
                warn!(error = %e, "image sweep failed; trying again next time");
            }
        }
    });
}

/// Loads the model and opens the vector store. A missing model file turns search off (the
/// gateway is still useful without it); a model or store that cannot be used is an error.
async fn open_search(config: Option<&SearchConfig>) -> Result<Search, GatewayError> {
    let Some(config) = config.cloned() else {
        return Ok(Search::Off("search is not configured on this gateway".into()));
    };
    if !config.model.exists() {
        let why = format!(
            "the search model {} is missing (scripts/setup installs it; --model sets where)",
            config.model.display()
        );
        warn!("{why}; search is off");
        return Ok(Search::Off(why.into()));
    }
    let opened = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let encoder = Encoder::load(&config.model).map_err(|e| e.to_string())?;
        let place = config.store.clone().unwrap_or_else(|| config.dir.display().to_string());
        let store = search::Engine::open(config.store.as_deref(), &config.dir, encoder.dim(), encoder.fingerprint())
            .map_err(|e| format!("search store {place}: {e}"))?;
        let kernel = encoder.kernel().name();
        let index = Index::new(Arc::new(store), Arc::new(encoder)).map_err(|e| e.to_string())?;
        info!(model = %config.model.display(), kernel, ms = started.elapsed().as_millis() as u64, "search model loaded");
        Ok::<_, String>(index)
    })
    .await
    .map_err(|e| GatewayError::Config(e.to_string()))?;
    // Queries embed on blocking threads: at most one per core at once, the rest are told to
    // come back rather than queued behind each other.
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    Ok(Search::Ready(Arc::new(opened.map_err(GatewayError::Config)?), Arc::new(tokio::sync::Semaphore::new(cores))))
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
