//! What a node is told at start: identity, addresses, data directory, Raft timings, and the
//! fault-injection switches the jepsen harness uses.

use std::net::SocketAddr;
use std::path::PathBuf;

use openraft::{Config, ConfigError, SnapshotPolicy};

use crate::limits;
use crate::store::FeedRetention;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node (`host:port`).
    pub advertise: String,
    pub data_dir: PathBuf,
    /// On a pristine cluster, the node with the lowest id initialises it with these members.
    pub initial_members: Vec<(u64, String)>,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot every this many entries (then purge logs below it, keeping a margin),
    /// at points shifted by a third of it per node id (mod 3) so that replicas take turns
    /// (a leader: see `leader_snapshot_defer`).
    pub snapshot_logs: u64,
    /// Log entries kept below the last snapshot for lagging followers.
    pub logs_kept_after_snapshot: u64,
    /// While leader, build a snapshot only once this many `snapshot_logs` intervals behind
    /// (1: on schedule, like a follower). Copying the ledger holds up applying, and on the
    /// leader every answer waits for apply; the price is a longer log on the leader.
    pub leader_snapshot_defer: u64,
    /// How much of the feed to keep (default: all of it).
    pub feed_retention: FeedRetention,
    /// Added to the wall clock when stamping entries (fault injection).
    pub clock_offset_ms: i64,
    /// Deliberately broken modes, all off by default: the jepsen harness turns one on to
    /// show that its checkers catch it.
    pub unsafe_modes: UnsafeModes,
}

/// Switches that break a guarantee on purpose (jepsen only; a node logs a warning for each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnsafeModes {
    /// Serve "linearizable" reads without a read index.
    pub stale_reads: bool,
    /// Acknowledge writes before they are committed.
    pub ack_before_commit: bool,
    /// Forget bid ids: a retried bid is applied again instead of answered from its record.
    pub no_exactly_once: bool,
    /// Write the log without fsync: only a power loss (not kill -9) can show the difference.
    pub no_fsync: bool,
}

impl NodeConfig {
    /// openraft's configuration for this node, validated.
    pub(crate) fn raft_config(&self) -> Result<Config, ConfigError> {
        let config = Config {
            cluster_name: "gavel".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: limits::SNAPSHOT_TIMEOUT_SECS * 1000,
            max_payload_entries: 256,
            // Snapshots are asked for by the node (`take_snapshots`), at points that differ
            // between replicas.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            purge_batch_size: 256,
            replication_lag_threshold: self.logs_kept_after_snapshot.max(1),
            // A restarted leader campaigns again instead of taking up its old term at once. The
            // state machine is not flushed per entry and the `committed` marker is written
            // unsynced, so after a power loss a restored leader would re-apply only up to a
            // stale marker and serve linearizable reads from that older state (its read index
            // is its term's old no-op entry, long applied). A new term's no-op entry is after
            // every committed entry, and reads wait until it is applied.
            enable_leader_restore: Some(false),
            ..Config::default()
        };
        config.validate()
    }

    /// Outgoing peer connections leave from the listen IP unless it is a wildcard.
    pub(crate) fn source_ip(&self) -> Option<std::net::IpAddr> {
        let ip = self.listen.ip();
        (!ip.is_unspecified()).then_some(ip)
    }
}
