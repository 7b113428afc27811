//! `gavel-node`: one replica of Gavel's bid ledger.
//!
//! ```sh
//! gavel-node --id 1 --listen 127.0.0.1:7001 --data-dir /var/lib/gavel/1 \
//!   --members 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//! ```
//! Every flag can also be set from the environment (`GAVEL_NODE_ID`, ...) or from a config
//! file of `GAVEL_...=value` lines (`--config FILE`). Precedence: flag, then environment, then
//! file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use node::{FeedRetention, Node, NodeConfig, UnsafeModes};
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(name = "gavel-node", version, about = "One replica of Gavel's Raft-replicated bid ledger")]
struct Args {
    /// A file of `GAVEL_...=value` lines (the environment variable names below).
    #[arg(long, env = "GAVEL_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "GAVEL_NODE_ID")]
    id: u64,
    /// Address to bind the gRPC server to.
    #[arg(long, env = "GAVEL_LISTEN")]
    listen: SocketAddr,
    /// Address others reach this node at (default: --listen).
    #[arg(long, env = "GAVEL_ADVERTISE")]
    advertise: Option<String>,
    /// Data directory (RocksDB); created if missing, refused if it belongs to another node.
    #[arg(long, env = "GAVEL_DATA_DIR")]
    data_dir: PathBuf,
    /// Initial cluster `id=host:port,...`; the lowest id initialises a pristine cluster.
    #[arg(long, env = "GAVEL_MEMBERS", value_delimiter = ',')]
    members: Vec<String>,
    /// Raft heartbeat interval.
    #[arg(long, env = "GAVEL_HEARTBEAT_MS", default_value_t = 50)]
    heartbeat_ms: u64,
    /// Lower bound of the randomised election timeout. Followers also refuse votes for the
    /// upper bound after the last heartbeat (openraft's leader lease), so a dead leader is
    /// replaced after one to two timeouts: 150–300 ms gives sub-second failover on a LAN.
    #[arg(long, env = "GAVEL_ELECTION_TIMEOUT_MIN_MS", default_value_t = 150)]
    election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    #[arg(long, env = "GAVEL_ELECTION_TIMEOUT_MAX_MS", default_value_t = 300)]
    election_timeout_max_ms: u64,
    /// Build a snapshot every this many log entries (replicas take turns, and a leader builds
    /// only every `--leader-snapshot-defer` of these: see node/README.md).
    #[arg(long, env = "GAVEL_SNAPSHOT_LOGS", default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Log entries kept below a snapshot for lagging followers.
    #[arg(long, env = "GAVEL_LOGS_KEPT_AFTER_SNAPSHOT", default_value_t = 1_000)]
    logs_kept_after_snapshot: u64,
    /// While leader, build a snapshot only every this many snapshot intervals (1: on schedule,
    /// like a follower): the copy of the ledger a build takes holds up every answer on the
    /// leader. The leader's log is purged less often, and replayed longer after a restart.
    #[arg(long, env = "GAVEL_LEADER_SNAPSHOT_DEFER", default_value_t = node::limits::LEADER_SNAPSHOT_DEFER_INTERVALS, value_parser = clap::value_parser!(u64).range(1..))]
    leader_snapshot_defer: u64,
    /// Keep the newest feed items up to this many bytes on disk (compressed, as RocksDB
    /// estimates; the items still in memory are always kept); older items are dropped and a
    /// subscription from below them is refused with where the feed starts. 0: no bound.
    #[arg(long, env = "GAVEL_FEED_RETAIN_BYTES", default_value_t = 0)]
    feed_retain_bytes: u64,
    /// Keep the feed items of the last this many seconds; older ones are dropped likewise.
    /// 0: no bound. Without either bound the node keeps the whole feed.
    #[arg(long, env = "GAVEL_FEED_RETAIN_SECS", default_value_t = 0)]
    feed_retain_secs: u64,
    /// Fault injection: shift the clock this node stamps entries with.
    #[arg(long, env = "GAVEL_CLOCK_OFFSET_MS", default_value_t = 0, allow_hyphen_values = true)]
    clock_offset_ms: i64,
    /// UNSAFE, for the jepsen harness only: serve reads without a read index.
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// UNSAFE, for the jepsen harness only: acknowledge writes before a majority commit.
    #[arg(long)]
    unsafe_ack_before_commit: bool,
    /// UNSAFE, for the jepsen harness only: apply a retried bid again instead of answering it
    /// from its record (exactly-once off).
    #[arg(long)]
    unsafe_no_exactly_once: bool,
    /// UNSAFE, for the jepsen harness only: write the Raft log without fsync.
    #[arg(long)]
    unsafe_no_fsync: bool,
}

fn parse_members(members: &[String]) -> Result<Vec<(u64, String)>, String> {
    members
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| {
            let (id, addr) = m.split_once('=').ok_or_else(|| format!("member {m:?} is not id=host:port"))?;
            let id = id.parse::<u64>().map_err(|_| format!("member id {id:?} is not a number"))?;
            Ok((id, addr.to_owned()))
        })
        .collect()
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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // The config file fills in only what neither a flag nor the environment set: load it into
    // the environment (never overriding) before clap reads flags and environment.
    if let Some(path) = config_path()
        && let Err(e) = dotenvy::from_path(&path)
    {
        error!("cannot read config file {}: {e}", path.display());
        return ExitCode::from(2);
    }
    let args = Args::parse();
    let initial_members = match parse_members(&args.members) {
        Ok(m) => m,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.unsafe_stale_reads {
        tracing::warn!("--unsafe-stale-reads: reads are NOT linearizable on this node");
    }
    if args.unsafe_ack_before_commit {
        tracing::warn!("--unsafe-ack-before-commit: acknowledged writes can be LOST on this node");
    }
    if args.unsafe_no_exactly_once {
        tracing::warn!("--unsafe-no-exactly-once: retried bids can be APPLIED TWICE on this node");
    }
    if args.unsafe_no_fsync {
        tracing::warn!("--unsafe-no-fsync: acknowledged writes can be LOST on power loss on this node");
    }
    let config = NodeConfig {
        id: args.id,
        listen: args.listen,
        advertise: args.advertise.unwrap_or_else(|| args.listen.to_string()),
        data_dir: args.data_dir,
        initial_members,
        heartbeat_ms: args.heartbeat_ms,
        election_timeout_min_ms: args.election_timeout_min_ms,
        election_timeout_max_ms: args.election_timeout_max_ms,
        snapshot_logs: args.snapshot_logs,
        logs_kept_after_snapshot: args.logs_kept_after_snapshot,
        leader_snapshot_defer: args.leader_snapshot_defer,
        feed_retention: FeedRetention { max_bytes: args.feed_retain_bytes, max_age_secs: args.feed_retain_secs },
        clock_offset_ms: args.clock_offset_ms,
        unsafe_modes: UnsafeModes {
            stale_reads: args.unsafe_stale_reads,
            ack_before_commit: args.unsafe_ack_before_commit,
            no_exactly_once: args.unsafe_no_exactly_once,
            no_fsync: args.unsafe_no_fsync,
        },
    };
    // The runtime starts only now: the config file above was loaded while single-threaded.
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(config)),
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: NodeConfig) -> ExitCode {
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    Node::until_signal().await;
    info!("shutting down");
    match node.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("unclean shutdown: {e}");
            ExitCode::FAILURE
        }
    }
}
