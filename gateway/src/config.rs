//! The gateway's settings: flags, `GAVEL_*` environment variables, or a `--config` file of
//! `GAVEL_*=value` lines (precedence in that order). Every bound has a name and a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::batcher::BatchLimits;
use crate::hub::HubLimits;
use crate::protect::Rate;
use crate::routes::ws::WsLimits;

/// Settings shared by `gavel gateway` and `gavel dev`.
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Address the HTTP server binds.
    #[arg(long, env = "GAVEL_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Signing secret for tokens (HS256), at least 32 bytes.
    #[arg(long, env = "GAVEL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Password of the first admin (username `admin`), created when missing.
    #[arg(long, env = "GAVEL_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// How long a token is valid.
    #[arg(long, env = "GAVEL_TOKEN_TTL_SECS", default_value_t = 12 * 3600)]
    pub token_ttl_secs: u64,
    /// Largest request body.
    #[arg(long, env = "GAVEL_BODY_BYTES_MAX", default_value_t = 64 * 1024)]
    pub body_bytes_max: usize,
    /// Longest a request may take before `503 timeout`.
    #[arg(long, env = "GAVEL_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Requests served at once; more are shed with `503 overloaded`.
    #[arg(long, env = "GAVEL_CONCURRENCY_MAX", default_value_t = 8_192)]
    pub concurrency_max: usize,
    /// Sustained requests per second per client IP (0: no limit).
    #[arg(long, env = "GAVEL_RATE_IP_PER_SEC", default_value_t = 2_000)]
    pub rate_ip_per_sec: u64,
    /// Burst per client IP.
    #[arg(long, env = "GAVEL_RATE_IP_BURST", default_value_t = 4_000)]
    pub rate_ip_burst: u32,
    /// Sustained requests per second per signed-in user (0: no limit).
    #[arg(long, env = "GAVEL_RATE_USER_PER_SEC", default_value_t = 50)]
    pub rate_user_per_sec: u64,
    /// Burst per signed-in user.
    #[arg(long, env = "GAVEL_RATE_USER_BURST", default_value_t = 100)]
    pub rate_user_burst: u32,
    /// Allowed CORS origins, comma-separated (default: any).
    #[arg(long, env = "GAVEL_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Most commands in one `Propose` call.
    #[arg(long, env = "GAVEL_BATCH_COMMANDS_MAX", default_value_t = 1024)]
    pub batch_commands_max: usize,
    /// Longest wait for more commands while other batches are in flight.
    #[arg(long, env = "GAVEL_BATCH_LINGER_US", default_value_t = 500)]
    pub batch_linger_us: u64,
    /// `Propose` calls in flight at once.
    #[arg(long, env = "GAVEL_BATCHES_IN_FLIGHT_MAX", default_value_t = 8)]
    pub batches_in_flight_max: usize,
    /// Password hashes computed at once (each takes a core for tens of ms).
    #[arg(long, env = "GAVEL_HASHES_CONCURRENT_MAX", default_value_t = 2)]
    pub hashes_concurrent_max: usize,
    /// WebSocket connections open at once; more are refused with `503 overloaded`.
    #[arg(long, env = "GAVEL_WS_CONNECTIONS_MAX", default_value_t = 20_000)]
    pub ws_connections_max: usize,
    /// Messages a socket may have queued before it is closed as `lagging`.
    #[arg(long, env = "GAVEL_WS_OUTBOX_MAX", default_value_t = 1_024)]
    pub ws_outbox_max: usize,
    /// Event messages kept for `since` replays, across all topics.
    #[arg(long, env = "GAVEL_WS_HISTORY_MAX", default_value_t = 200_000)]
    pub ws_history_max: usize,
    /// Seconds between server pings; a peer silent for two of these is dropped.
    #[arg(long, env = "GAVEL_WS_HEARTBEAT_SECS", default_value_t = 15)]
    pub ws_heartbeat_secs: u64,
    /// Kernel send buffer per connection in bytes (0: the kernel's autotuning, up to
    /// net.ipv4.tcp_wmem's maximum). Bounds what a slow socket can hold in the kernel, and
    /// so how soon it counts as lagging.
    #[arg(long, env = "GAVEL_TCP_SEND_BUFFER_BYTES", default_value_t = 0)]
    pub tcp_send_buffer_bytes: usize,
    /// Directory of the catalog's embedded store (created if missing; rebuilt from the feed
    /// when empty). Default: `gavel-catalog` in the working directory.
    #[arg(long, env = "GAVEL_CATALOG_DIR")]
    pub catalog_dir: Option<PathBuf>,
    /// The catalog in ScyllaDB instead of the embedded store, shared by every gateway:
    /// `scylla://host:9042[,host:9042...]/keyspace[?replication_factor=N]` (catalog/README.md).
    #[arg(long, env = "GAVEL_CATALOG_STORE")]
    pub catalog_store: Option<String>,
    /// Serve the `--catalog-store` another gateway projects into, without projecting: one
    /// gateway per ScyllaDB keyspace projects, the others follow its checkpoint.
    #[arg(long, env = "GAVEL_CATALOG_READ_ONLY", requires = "catalog_store")]
    pub catalog_read_only: bool,
    /// Longest a catalog read with `min_index` waits for the catalog to catch up before
    /// `503 catalog_behind`.
    #[arg(long, env = "GAVEL_CATALOG_WAIT_MS", default_value_t = 2_000)]
    pub catalog_wait_ms: u64,
    /// The search model: multilingual-e5-small packed as `e5-small-q4.bin` (`scripts/setup`
    /// installs it). If the file is missing the gateway still serves, and `/v1/search`
    /// answers `503 search_unavailable` naming it.
    #[arg(long, env = "GAVEL_MODEL", default_value = "models/e5-small-q4.bin")]
    pub model: PathBuf,
    /// Directory of search's embedded vector store (created if missing; reindexed from the
    /// feed when empty). Default: `gavel-search` in the working directory.
    #[arg(long, env = "GAVEL_SEARCH_DIR")]
    pub search_dir: Option<PathBuf>,
    /// Keep search's vectors in a Qdrant server or cluster instead of `--search-dir`:
    /// `http://host:6334/prefix` (its gRPC address, then the collections' prefix, `gavel`
    /// if none). Every gateway may share it: each indexes the same feed idempotently.
    #[arg(long, env = "GAVEL_SEARCH_STORE")]
    pub search_store: Option<String>,
    /// Where lot images are kept: a directory, `file:///abs/dir`, or `s3://bucket/prefix`
    /// (any S3-compatible store, configured by the usual `AWS_*` variables, e.g.
    /// `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for MinIO). Default: `gavel-images` in the working
    /// directory.
    #[arg(long, env = "GAVEL_IMAGES")]
    pub images: Option<String>,
    /// Seconds between sweeps of image bytes no committed image names (0: never).
    #[arg(long, env = "GAVEL_IMAGE_SWEEP_SECS", default_value_t = 3_600)]
    pub image_sweep_secs: u64,
    /// How old unnamed image bytes must be before a sweep deletes them: longer than any
    /// upload takes from storing its bytes to committing its command.
    #[arg(long, env = "GAVEL_IMAGE_GRACE_SECS", default_value_t = 3_600)]
    pub image_grace_secs: u64,
}

/// Where search's model and vectors are.
#[derive(Clone, Debug)]
pub struct SearchConfig {
    pub model: PathBuf,
    pub dir: PathBuf,
    /// A Qdrant target instead of `dir`.
    pub store: Option<String>,
}

/// Everything a gateway needs to start.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Cluster nodes (`host:port`), any of them.
    pub nodes: Vec<String>,
    pub http_listen: SocketAddr,
    pub jwt_secret: Vec<u8>,
    pub admin_password: Option<String>,
    pub token_ttl: Duration,
    pub body_bytes_max: usize,
    pub request_timeout: Duration,
    pub concurrency_max: usize,
    pub rate_ip: Rate,
    pub rate_user: Rate,
    pub cors_origins: Vec<String>,
    pub batch: BatchLimits,
    pub hashes_concurrent_max: usize,
    pub hub: HubLimits,
    pub ws: WsLimits,
    /// Kernel send buffer per connection (`None`: autotuning).
    pub tcp_send_buffer_bytes: Option<usize>,
    pub catalog_dir: PathBuf,
    /// `Some`: the ScyllaDB store this URI names (`catalog_dir` unused).
    pub catalog_store: Option<String>,
    /// Follow `catalog_store`'s checkpoint instead of projecting into it.
    pub catalog_read_only: bool,
    pub catalog_wait: Duration,
    /// `None`: search off (`503 search_unavailable`).
    pub search: Option<SearchConfig>,
    /// The image store's URL or directory.
    pub images: String,
    /// `None`: no sweeping.
    pub image_sweep: Option<Duration>,
    pub image_grace: Duration,
}

impl GatewayConfig {
    /// From the flags, given the cluster and a secret (the flag's, or one chosen by the caller).
    pub fn from_args(args: &HttpArgs, nodes: Vec<String>, jwt_secret: Vec<u8>) -> GatewayConfig {
        GatewayConfig {
            nodes,
            http_listen: args.http_listen,
            jwt_secret,
            admin_password: args.admin_password.clone(),
            token_ttl: Duration::from_secs(args.token_ttl_secs),
            body_bytes_max: args.body_bytes_max,
            request_timeout: Duration::from_millis(args.request_timeout_ms),
            concurrency_max: args.concurrency_max,
            rate_ip: Rate { per_sec: args.rate_ip_per_sec, burst: args.rate_ip_burst },
            rate_user: Rate { per_sec: args.rate_user_per_sec, burst: args.rate_user_burst },
            cors_origins: args.cors_origins.iter().filter(|o| !o.is_empty()).cloned().collect(),
            batch: BatchLimits {
                batch_commands_max: args.batch_commands_max,
                linger_us_max: args.batch_linger_us,
                batches_in_flight_max: args.batches_in_flight_max,
                ..BatchLimits::default()
            },
            hashes_concurrent_max: args.hashes_concurrent_max,
            hub: HubLimits { history_max: args.ws_history_max, outbox_max: args.ws_outbox_max },
            ws: WsLimits {
                connections_max: args.ws_connections_max,
                heartbeat: Duration::from_secs(args.ws_heartbeat_secs.max(1)),
                ..WsLimits::default()
            },
            tcp_send_buffer_bytes: (args.tcp_send_buffer_bytes > 0).then_some(args.tcp_send_buffer_bytes),
            catalog_dir: args.catalog_dir.clone().unwrap_or_else(|| PathBuf::from("gavel-catalog")),
            catalog_store: args.catalog_store.clone(),
            catalog_read_only: args.catalog_read_only,
            catalog_wait: Duration::from_millis(args.catalog_wait_ms),
            search: Some(SearchConfig {
                model: args.model.clone(),
                dir: args.search_dir.clone().unwrap_or_else(|| PathBuf::from("gavel-search")),
                store: args.search_store.clone(),
            }),
            images: args.images.clone().unwrap_or_else(|| "gavel-images".to_owned()),
            image_sweep: (args.image_sweep_secs > 0).then(|| Duration::from_secs(args.image_sweep_secs)),
            image_grace: Duration::from_secs(args.image_grace_secs),
        }
    }
}
