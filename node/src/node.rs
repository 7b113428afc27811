//! A running replica: storage, Raft, the write path, the closing timer and the gRPC server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;
use tonic::transport::Server;
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::config::NodeConfig;
use crate::follow::Follower;
use crate::limits;
use crate::network::Network;
use crate::pb;
use crate::proposer::{Clock, ProposeError, Proposer};
use crate::raft;
use crate::replica::NodeInner;
use crate::server::Services;
use crate::store::{self, FeedHoldings, LogStore, Poisoned, Raft, StateMachine, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data directory: {0}")]
    Store(#[from] StoreError),
    #[error("state machine: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    inner: Arc<NodeInner>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Node {
    /// Opens the data directory, starts Raft, the server and the timers.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let db = store::open_db(&config.data_dir, config.id)?;
        let log = LogStore::open(db.clone(), !config.unsafe_modes.no_fsync)?;
        let sm = StateMachine::open(db, &config.data_dir)?;
        sm.shared().set_forget_bid_ids(config.unsafe_modes.no_exactly_once);
        let shared = sm.shared();
        let raft_config = Arc::new(config.raft_config().map_err(|e| NodeError::Config(e.to_string()))?);
        let raft = Raft::new(config.id, raft_config, Network { id: config.id, local_ip: config.source_ip() }, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let clock = Arc::new(Clock::new(config.clock_offset_ms));
        let proposer =
            Proposer::start(raft.clone(), shared.clone(), clock.clone(), config.unsafe_modes.ack_before_commit);
        let exports = Arc::new(tokio::sync::Semaphore::new(limits::EXPORTS_AT_ONCE));
        let inner = Arc::new(NodeInner { config: config.clone(), raft, shared, proposer, clock, exports });

        let (stop, stopped) = watch::channel(false);
        let leader_channel = Arc::new(std::sync::Mutex::new(None));
        let services =
            || Services { node: inner.clone(), leader_channel: leader_channel.clone(), stopped: stopped.clone() };
        let router = Server::builder()
            .tcp_nodelay(true)
            .add_service(
                pb::raft_service_server::RaftServiceServer::new(services())
                    .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX),
            )
            .add_service(
                pb::client_service_server::ClientServiceServer::new(services())
                    .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX),
            )
            .add_service(pb::admin_service_server::AdminServiceServer::new(services()));
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        // Nagle off on accepted connections too: with it, every small reply waits for the
        // peer's delayed ACK (~40 ms), which would dominate commit latency.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut server_stop = stopped.clone();
        let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = server_stop.wait_for(|&s| s).await;
        }));
        info!(id = config.id, addr = %config.advertise, "node serving");

        tokio::spawn(bootstrap(inner.clone()));
        tokio::spawn(backfill_feed(inner.clone(), stopped.clone()));
        if !config.feed_retention.is_off() {
            tokio::spawn(retain_feed(inner.clone(), stopped.clone()));
        }
        tokio::spawn(take_snapshots(inner.clone(), stopped.clone()));
        tokio::spawn(activate_record_expiry(inner.clone(), stopped.clone()));
        tokio::spawn(close_lots(inner.clone(), stopped));
        Ok(Node { inner, stop, server })
    }

    pub fn id(&self) -> u64 {
        self.inner.config.id
    }

    /// This node's metrics, state digest included.
    pub fn metrics(&self) -> Result<pb::MetricsResponse, Poisoned> {
        self.inner.metrics(true)
    }

    /// Stops serving, then stops Raft.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.stop.send(true);
        match self.server.await {
            Ok(result) => result?,
            Err(e) => warn!(error = %e, "server task failed"),
        }
        self.inner.raft.shutdown().await.map_err(|e| NodeError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Resolves when the process is asked to stop (SIGINT or SIGTERM).
    pub async fn until_signal() {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    }
}

/// On a pristine cluster, the member with the lowest id initialises it once its peers can
/// be reached (initialising twice is refused by openraft and harmless).
async fn bootstrap(node: Arc<NodeInner>) {
    let members = &node.config.initial_members;
    if members.first().map(|m| m.0) != Some(node.config.id) && members.iter().map(|m| m.0).min() != Some(node.config.id)
    {
        return;
    }
    match node.raft.is_initialized().await {
        Ok(false) => {}
        _ => return,
    }
    let nodes: BTreeMap<u64, BasicNode> =
        members.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone()))).collect();
    match node.raft.initialize(nodes).await {
        Ok(()) => info!(members = members.len(), "cluster initialised"),
        Err(e) => info!(error = %e, "cluster not initialised here"),
    }
}

/// Builds a snapshot every `snapshot_logs` applied entries, on a grid shifted by a third of
/// that per node id. With openraft's own policy every replica crossed the same index together
/// and three snapshot builds shared the cores at once (100-200 ms stalls at 10,000 bids/s);
/// shifted, the replicas of a 3-node cluster take turns. The leader, whose applies every
/// answer waits for, builds only every `leader_snapshot_defer` cells, and a follower copies
/// the ledger at low priority.
async fn take_snapshots(node: Arc<NodeInner>, mut stopped: watch::Receiver<bool>) {
    let cell = snapshot_grid(node.config.id, node.config.snapshot_logs);
    let mut applied = node.shared.watch_applied();
    // openraft drops a request that comes while a build runs, and a slow build (it encodes at
    // low priority) may outlast a cell: ask again, at most this often, until a snapshot of
    // the current cell exists.
    let again = Duration::from_millis(limits::SNAPSHOT_ASK_AGAIN_MS);
    let mut asked: Option<(u64, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|&s| s) => return,
        }
        let index = *applied.borrow_and_update();
        let leading = node.raft.is_leader();
        node.shared.set_snapshot_copy_niced(!leading);
        // Built here or installed from the leader: either counts.
        let held = node.shared.snapshot_index();
        if cell(index) <= cell(held) {
            continue;
        }
        if leading && cell(index) < cell(held).saturating_add(node.config.leader_snapshot_defer) {
            continue;
        }
        if asked.is_some_and(|(at, when)| cell(at) == cell(index) && when.elapsed() < again) {
            continue;
        }
        if node.raft.trigger().snapshot().await.is_err() {
            return; // Raft stopped.
        }
        asked = Some((index, tokio::time::Instant::now()));
    }
}

/// Node `id`'s snapshot grid: a snapshot is due when the applied index enters a new cell.
/// Cells are `every` entries long, shifted by a third of that per id (mod 3).
fn snapshot_grid(id: u64, every: u64) -> impl Fn(u64) -> u64 {
    let every = every.max(1);
    let shift = (id % 3) * (every / 3);
    move |index: u64| index.saturating_add(shift) / every
}

/// On the leader, proposes `ActivateRecordExpiry` once the ledger lacks it and every voter
/// can apply it: a new cluster, or one upgraded from a build without it, gets it at one log
/// entry, the same on every replica. Apart from the lot timer, so that asking an unreachable
/// voter never delays closing. Idempotent in the ledger; the task ends once it is on.
async fn activate_record_expiry(node: Arc<NodeInner>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(limits::ACTIVATE_CHECK_MS)) => {},
            _ = stopped.wait_for(|&s| s) => return,
        }
        match node.shared.ledger().map(|l| l.record_expiry()) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "activating record expiry stops");
                return;
            }
        }
        if !node.raft.is_leader() || !every_voter_understands_record_expiry(&node).await {
            continue;
        }
        let activate = ledger::pb::Command {
            at_ms: 0,
            actor: String::new(),
            log_index: 0,
            body: Some(ledger::pb::command::Body::ActivateRecordExpiry(ledger::pb::ActivateRecordExpiry {})),
        };
        match node.proposer.propose(vec![activate]).await {
            Ok(results) => {
                let activated = results
                    .first()
                    .and_then(|r| r.outcome.as_ref())
                    .is_some_and(|o| matches!(o.result, Some(ledger::pb::outcome::Result::RecordExpiry(_))));
                if activated {
                    info!("exactly-once record expiry activated");
                } else {
                    warn!(?results, "activating record expiry was refused; will retry");
                }
            }
            Err(ProposeError::NotLeader { .. }) => {}
            Err(e) => warn!(error = %e, "activating record expiry failed; will retry"),
        }
    }
}

/// Whether every voter runs a build that applies `ActivateRecordExpiry`: an older one would
/// apply it as a command with no body, and its state would part from the others'. During a
/// rolling upgrade the leader waits until the last voter is upgraded.
async fn every_voter_understands_record_expiry(node: &Arc<NodeInner>) -> bool {
    let voters: Vec<String> = {
        let metrics = node.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voter_ids: Vec<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .filter(|(id, _)| **id != node.config.id && voter_ids.contains(id))
            .map(|(_, n)| n.addr.clone())
            .collect()
    };
    for addr in voters {
        match Client::metrics(&addr).await {
            Ok(m) if m.understands_record_expiry => {}
            _ => return false,
        }
    }
    true
}

/// On the leader, proposes `CloseLot` for every open lot whose end time has passed. Closing is
/// idempotent in the ledger, so a duplicate from a deposed leader changes nothing.
async fn close_lots(node: Arc<NodeInner>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(limits::CLOSE_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = stopped.wait_for(|&s| s) => return,
        }
        if !node.raft.is_leader() {
            continue;
        }
        let now_ms = node.clock.now_ms();
        let due: Vec<ledger::pb::Command> = {
            let ledger = match node.shared.ledger() {
                Ok(ledger) => ledger,
                Err(e) => {
                    tracing::error!(error = %e, "closing lots stops");
                    return;
                }
            };
            ledger
                .lots_due(now_ms)
                .take(limits::CLOSE_LOTS_PER_TICK_MAX)
                .map(|lot_id| ledger::pb::Command {
                    at_ms: 0,
                    actor: String::new(),
                    log_index: 0,
                    body: Some(ledger::pb::command::Body::CloseLot(ledger::pb::CloseLot { lot_id: lot_id.to_owned() })),
                })
                .collect()
        };
        if due.is_empty() {
            continue;
        }
        match node.proposer.propose(due).await {
            Ok(_) | Err(ProposeError::NotLeader { .. }) => {}
            Err(e) => warn!(error = %e, "closing lots failed; will retry"),
        }
    }
}

/// Keeps this node's feed whole. A snapshot carries no feed, so after catching up from the
/// leader's the node holds only the items after it; this copies the items before it from a
/// peer whose feed starts lower, then lowers the start, so the whole history stays on every
/// node that can get it and a follower from index 0 is never stuck.
async fn backfill_feed(node: Arc<NodeInner>, mut stopped: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(limits::BACKFILL_RETRY_MIN_MS);
    loop {
        let holdings = node.shared.feed_holdings().await;
        let wait = if holdings.start <= holdings.trimmed {
            // Whole again (down to where retention cut it): a later install starts its retries from the shortest wait.
            delay = Duration::from_millis(limits::BACKFILL_RETRY_MIN_MS);
            Duration::from_millis(limits::BACKFILL_CHECK_MS)
        } else {
            let start = holdings.start;
            // A stopping node leaves a copy half done: the items are synced before the start
            // moves, so the next run simply copies them again.
            let outcome = tokio::select! {
                outcome = backfill_once(&node, holdings) => outcome,
                _ = stopped.wait_for(|&s| s) => return,
            };
            match outcome {
                Ok(Some(to)) => {
                    info!(from = start, to, "feed backfilled from a peer");
                    delay = Duration::from_millis(limits::BACKFILL_RETRY_MIN_MS);
                    continue;
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, start, "feed backfill failed; will retry"),
            }
            delay = (delay * 2).min(Duration::from_millis(limits::BACKFILL_RETRY_MAX_MS));
            delay
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = stopped.wait_for(|&s| s) => return,
        }
    }
}

/// One backfill of the items up to the feed's start, from the first peer that holds them all
/// (lowest feed start first). With a run kept below the start, a peer that holds the gap
/// above it is asked first, for that gap alone. The new start, or `None` when no peer could
/// give the items or a snapshot install since `holdings` made the copy moot.
async fn backfill_once(node: &Arc<NodeInner>, holdings: FeedHoldings) -> Result<Option<u64>, String> {
    let FeedHoldings { start, kept, epoch, trimmed } = holdings;
    let peers: Vec<String> = {
        let metrics = node.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        membership.nodes().filter(|(id, _)| **id != node.config.id).map(|(_, n)| n.addr.clone()).collect()
    };
    // A peer helps only if its feed starts lower and it has applied up to our start.
    let mut candidates = Vec::new();
    for addr in peers {
        if let Ok(m) = Client::metrics(&addr).await
            && m.feed_start < start
            && m.last_applied_index >= start
        {
            candidates.push((m.feed_start, addr));
        }
    }
    candidates.sort();
    // (peer, copy from, new start): the gap above the kept run where a peer holds it, then
    // everything below the start.
    let mut plans: Vec<(&str, u64, u64)> = Vec::new();
    if let Some((kept_from, kept_to)) = kept {
        plans.extend(
            candidates.iter().filter(|(from, _)| *from <= kept_to).map(|(_, a)| (a.as_str(), kept_to, kept_from)),
        );
    }
    // Nothing below where retention cut this node's feed.
    plans.extend(candidates.iter().map(|(from, addr)| (addr.as_str(), (*from).max(trimmed), (*from).max(trimmed))));
    let mut last_error = None;
    for (addr, copy_from, to) in plans {
        match copy_feed(node, addr, copy_from, start, epoch).await {
            Ok(false) => return Ok(None),
            Ok(true) => {
                // In a task of its own: a stopping node drops this future, and lowering must
                // not be cut between its synced write and the start it publishes.
                let shared = node.shared.clone();
                let lowered = tokio::spawn(async move { shared.lower_feed_start(epoch, start, to).await });
                let moved = lowered.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
                return Ok(moved.then_some(to));
            }
            Err(e) => last_error = Some(e),
        }
    }
    last_error.map_or(Ok(None), Err)
}

/// Copies the feed items `(from, start]` from `addr`, gap-checked by a [`Follower`] of that
/// node alone. False when an install since `epoch` stopped the copy.
async fn copy_feed(node: &Arc<NodeInner>, addr: &str, from: u64, start: u64, epoch: u64) -> Result<bool, String> {
    let mut follower = Follower::new(vec![addr.to_owned()], from);
    while follower.index() < start {
        let room = usize::try_from(start - follower.index()).unwrap_or(usize::MAX).min(limits::BACKFILL_BATCH_ITEMS);
        let items = tokio::time::timeout(Duration::from_millis(limits::REQUEST_TIMEOUT_MS), follower.next_batch(room))
            .await
            .map_err(|_| format!("{addr} sent nothing for a while"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let shared = node.shared.clone();
        let written = tokio::task::spawn_blocking(move || shared.put_feed_items(epoch, &items))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !written {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Drops the feed's oldest items beyond the node's retention (`NodeConfig::feed_retention`),
/// raising the feed's start: a subscriber from below it is refused with the start it may
/// resume from (`history_gone`), never sent a gap.
async fn retain_feed(node: Arc<NodeInner>, mut stopped: watch::Receiver<bool>) {
    let rule = node.config.feed_retention;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(limits::FEED_RETAIN_CHECK_MS)) => {},
            _ = stopped.wait_for(|&s| s) => return,
        }
        let holdings = node.shared.feed_holdings().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let shared = node.shared.clone();
        let floor = tokio::task::spawn_blocking(move || shared.retention_floor(&rule, &holdings, now_ms)).await;
        match floor {
            Ok(Ok(floor)) if floor > holdings.start => {
                // In a task of its own, like lowering the start: a stopping node must not cut
                // it between the write and the start it publishes.
                let shared = node.shared.clone();
                match tokio::spawn(async move { shared.trim_feed(holdings, floor).await }).await {
                    Ok(Ok(true)) => debug!(from = holdings.start, to = floor, "feed trimmed by retention"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => warn!(error = %e, "feed retention could not trim; will retry"),
                    Err(e) => warn!(error = %e, "feed retention's trim failed; will retry"),
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "feed retention could not read the feed; will retry"),
            Err(e) => warn!(error = %e, "feed retention's reader failed; will retry"),
        }
    }
}

/// Re-exported for the binary: raft's node id type.
pub type NodeId = raft::NodeId;

#[cfg(test)]
mod tests {
    use super::snapshot_grid;

    /// The first index of each cell after 0: where node `id` asks for its snapshots.
    fn points(id: u64, every: u64, upto: u64) -> Vec<u64> {
        let cell = snapshot_grid(id, every);
        (1..=upto).filter(|&i| cell(i) > cell(i - 1)).collect()
    }

    #[test]
    fn the_replicas_of_a_three_node_cluster_take_turns_at_snapshots() {
        assert_eq!(points(3, 10_000, 30_000), [10_000, 20_000, 30_000]);
        assert_eq!(points(1, 10_000, 30_000), [6_667, 16_667, 26_667]);
        assert_eq!(points(2, 10_000, 30_000), [3_334, 13_334, 23_334]);
        // Every node still snapshots once per `every` entries, whatever its id.
        for id in 1..=7 {
            let p = points(id, 40, 400);
            assert!(p.windows(2).all(|w| w[1] - w[0] == 40), "node {id}: {p:?}");
        }
        // Degenerate settings neither divide by zero nor stop snapshots.
        assert_eq!(points(1, 0, 3), [1, 2, 3]);
        assert_eq!(points(2, 2, 6), [2, 4, 6]);
    }
}
