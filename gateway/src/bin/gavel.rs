//! `gavel`: Gavel's HTTP gateway and tools.
//!
//! ```sh
//! gavel dev                                   # local 3-node cluster + gateway + demo data
//! gavel gateway --nodes 10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001   # the gateway alone
//! gavel token --user u-alice --role user     # a token for operators and tests
//! gavel catalog rebuild --nodes ... --dir D   # a catalog store built from the feed
//! gavel dead-letters list --url http://127.0.0.1:8080 --token $ADMIN_TOKEN
//! ```
//! Every flag can also be set from the environment (`GAVEL_...`) or a file of
//! `GAVEL_...=value` lines (`--config FILE`). Precedence: flag, then environment, then file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gateway::auth::Jwt;
use gateway::dev::{self, DevArgs};
use gateway::tools;
use gateway::{Gateway, GatewayConfig, HttpArgs};
use node::Node;
use tracing::{error, info};

/// mimalloc rather than glibc's malloc: under HTTP load glibc's arenas and free-list
/// consolidation took about a third of the gateway's CPU (perf, BENCHMARKS.md). The
/// `gavel-node` binary keeps glibc's: with mimalloc its snapshot seconds were slower (the
/// nodes `gavel dev` runs in this process use this one; dev is not a benchmark path).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "gavel", version, about = "Gavel: a Raft-replicated live-auction backend")]
struct Cli {
    /// A file of `GAVEL_...=value` lines (the environment variable names of the flags).
    #[arg(long, env = "GAVEL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A local 3-node cluster and the gateway, with demo users and a live sale.
    Dev(DevArgs),
    /// The gateway alone, in front of a running cluster.
    Gateway {
        /// Cluster nodes, `host:port` comma-separated (any of them; the leader is found).
        #[arg(long, env = "GAVEL_NODES", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Mints a token for a user id and role (signed with the gateway's secret).
    Token {
        /// The user id the token acts for (the first admin's is `admin`).
        #[arg(long)]
        user: String,
        /// `user`, `curator` or `admin`.
        #[arg(long, default_value = "user")]
        role: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// The signing secret (or read it from a `gavel dev` data directory with --dev-dir).
        #[arg(long, env = "GAVEL_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
        /// A `gavel dev` data directory whose secret to use.
        #[arg(long)]
        dev_dir: Option<PathBuf>,
    },
    /// The catalog read model.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Multilingual search's vector index.
    #[command(subcommand)]
    Search(SearchCommand),
    /// Feed items the catalog or search could not apply (through a gateway's admin API).
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetterCommand),
}

#[derive(Subcommand, Debug)]
enum CatalogCommand {
    /// Builds a catalog store from the feed, from index 0 (or where the store in DIR stopped),
    /// up to the leader's applied index; prints its digest. Byte-identical to a store the
    /// gateway built incrementally up to the same index.
    Rebuild {
        /// Cluster nodes, `host:port` comma-separated.
        #[arg(long, env = "GAVEL_NODES", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Where to build it (a new directory, or one a stopped rebuild left).
        #[arg(long)]
        dir: PathBuf,
        /// Stop at this index instead of the leader's applied index.
        #[arg(long)]
        until: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum SearchCommand {
    /// Embeds every lot and artist from the feed into a vector store, from index 0 (or where
    /// the store in DIR stopped) up to the leader's applied index, with a progress bar.
    Reindex {
        /// Cluster nodes, `host:port` comma-separated.
        #[arg(long, env = "GAVEL_NODES", value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// The model file (`scripts/setup` installs it).
        #[arg(long, env = "GAVEL_MODEL", default_value = "models/e5-small-q4.bin")]
        model: PathBuf,
        /// Where to build it (a new directory, or one a stopped reindex left).
        #[arg(long, required_unless_present = "store")]
        dir: Option<PathBuf>,
        /// Build it in a Qdrant server instead: `http://host:6334/prefix` (its gRPC address,
        /// then the collections' prefix).
        #[arg(long, env = "GAVEL_SEARCH_STORE", conflicts_with = "dir")]
        store: Option<String>,
        /// Stop at this index instead of the leader's applied index.
        #[arg(long)]
        until: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// Lists them, oldest first.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Applies one again (by id); it stays listed if refused again.
    Retry {
        id: u64,
        /// Whose dead letter: `catalog` or `search` (the `subscriber` column of `list`).
        #[arg(long, default_value = "catalog")]
        subscriber: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(clap::Args, Debug)]
struct AdminTarget {
    /// The gateway's base URL.
    #[arg(long, env = "GAVEL_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin's token (`gavel token --role admin --user admin ...`).
    #[arg(long, env = "GAVEL_TOKEN", hide_env_values = true)]
    token: String,
}

/// `--config FILE`, `--config=FILE` or `GAVEL_CONFIG`, found before clap parses the rest.
fn config_path() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("GAVEL_CONFIG").map(PathBuf::from)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // openraft's warnings (a peer unreachable while `gavel dev` stops its nodes one
                // by one) are noise to a newcomer; RUST_LOG brings them back.
                .unwrap_or_else(|_| "info,openraft=error,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // The file fills in only what neither a flag nor the environment set.
    if let Some(path) = config_path()
        && let Err(e) = dotenvy::from_path(&path)
    {
        error!("cannot read config file {}: {e}", path.display());
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    if let Command::Token { user, role, ttl_secs, jwt_secret, dev_dir } = &cli.command {
        return token(user, role, *ttl_secs, jwt_secret.as_deref(), dev_dir.as_deref());
    }
    // The runtime starts only now: the config file above was loaded while single-threaded.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await.map_err(|e| e.to_string()),
            Command::Gateway { nodes, http } => gateway(nodes, http).await,
            Command::Token { .. } => Ok(()),
            Command::Catalog(CatalogCommand::Rebuild { nodes, dir, until }) => {
                tools::rebuild(nodes, &dir, until).await.map_err(|e| e.to_string())
            }
            Command::Search(SearchCommand::Reindex { nodes, model, dir, store, until }) => {
                tools::reindex(nodes, &model, store.as_deref(), dir.as_deref(), until).await.map_err(|e| e.to_string())
            }
            Command::DeadLetters(DeadLetterCommand::List { target }) => {
                tools::dead_letters_list(&target.url, &target.token).await.map_err(|e| e.to_string())
            }
            Command::DeadLetters(DeadLetterCommand::Retry { id, subscriber, target }) => {
                tools::dead_letters_retry(&target.url, &target.token, id, &subscriber).await.map_err(|e| e.to_string())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn gateway(nodes: Vec<String>, http: HttpArgs) -> Result<(), String> {
    let Some(secret) = http.jwt_secret.clone() else {
        return Err("set the token secret: --jwt-secret or GAVEL_JWT_SECRET (32 bytes or more)".into());
    };
    let config = GatewayConfig::from_args(&http, nodes, secret.into_bytes());
    let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
    println!("Gavel gateway listening on http://{}", gateway.addr());
    Node::until_signal().await;
    info!("shutting down: finishing requests in flight");
    gateway.shutdown().await.map_err(|e| e.to_string())
}

fn token(user: &str, role: &str, ttl_secs: u64, secret: Option<&str>, dev_dir: Option<&std::path::Path>) -> ExitCode {
    let secret = match (secret, dev_dir) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (None, Some(dir)) => match dev::dev_jwt_secret(dir) {
            Ok(s) => s,
            Err(e) => {
                error!("{e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            error!("give the secret: --jwt-secret, GAVEL_JWT_SECRET or --dev-dir");
            return ExitCode::from(2);
        }
    };
    let Some(role) = ledger::state::parse_role(role) else {
        error!("unknown role {role:?} (user, curator or admin)");
        return ExitCode::from(2);
    };
    if let Err(e) = ledger::checks::check_id("user", user) {
        error!("{}", e.message);
        return ExitCode::from(2);
    }
    let minted = Jwt::new(&secret, Duration::from_secs(ttl_secs)).and_then(|jwt| jwt.mint(user, role));
    match minted {
        Ok((token, _)) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::from(2)
        }
    }
}
