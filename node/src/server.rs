//! gRPC services: the Raft transport (server side), the client API and the admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ReadPolicy};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::limits;
use crate::pb;
use crate::pb::client_service_client::ClientServiceClient;
use crate::proposer::ProposeError;
use crate::raft;
use crate::replica::NodeInner;
use crate::store::Poisoned;

/// Metadata key naming the leader's address on `Unavailable` answers.
pub const LEADER_ADDR_HEADER: &str = "gavel-leader-addr";
/// Metadata key marking a request forwarded by another node (never forwarded twice).
const FORWARDED_HEADER: &str = "gavel-forwarded";

pub struct Services {
    pub(crate) node: Arc<NodeInner>,
    /// The channel to the current leader for forwarded requests, reused while it leads.
    pub(crate) leader_channel: Arc<std::sync::Mutex<Option<(String, tonic::transport::Channel)>>>,
    /// Turns true when the node stops: open feed streams end, so shutdown does not wait on
    /// subscribers that never hang up.
    pub(crate) stopped: tokio::sync::watch::Receiver<bool>,
}

fn not_leader(leader_addr: Option<String>) -> Status {
    let mut status = Status::unavailable("this node is not the leader; retry on the leader (same ids are safe)");
    if let Some(addr) = leader_addr.and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert(LEADER_ADDR_HEADER, addr);
    }
    status
}

fn propose_status(e: ProposeError) -> Status {
    match e {
        ProposeError::NotLeader { leader_addr, .. } => not_leader(leader_addr),
        ProposeError::Overloaded => {
            Status::resource_exhausted("overloaded: too many commands queued; retry with backoff")
        }
        ProposeError::Stopped(msg) => Status::unavailable(format!("raft unavailable: {msg}")),
    }
}

/// The state machine is broken: this replica answers nothing from it.
fn poisoned(e: Poisoned) -> Status {
    Status::unavailable(e.to_string())
}

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

impl Services {
    /// A client to the current leader, if it is another node.
    fn leader_client(&self) -> Result<(ClientServiceClient<tonic::transport::Channel>, String), Status> {
        let metrics = self.node.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader.ok_or_else(|| not_leader(None))?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| not_leader(None))?;
        let channel = {
            let mut cached = self.leader_channel.lock().map_err(|_| Status::internal("poisoned lock"))?;
            match cached.as_ref() {
                Some((a, ch)) if *a == addr => ch.clone(),
                _ => {
                    let ch = crate::network::channel(&addr, self.node.local_ip())
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    *cached = Some((addr.clone(), ch.clone()));
                    ch
                }
            }
        };
        let client = ClientServiceClient::new(channel)
            .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
        Ok((client, addr))
    }

    fn forward<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(Duration::from_millis(limits::REQUEST_TIMEOUT_MS));
        request.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
        request
    }

    /// Whether this node may answer a read now: `true` to serve it here (stale, or after a
    /// read index), `false` to forward it to the leader (once).
    async fn read_here(&self, stale: bool, forwarded: bool) -> Result<bool, Status> {
        if stale {
            return Ok(true);
        }
        match self.linearize().await {
            Ok(()) => Ok(true),
            Err(status) if !forwarded && status.code() == tonic::Code::Unavailable => Ok(false),
            Err(status) => Err(status),
        }
    }

    /// Waits for a read index from the leader; on a follower, says who leads.
    async fn linearize(&self) -> Result<(), Status> {
        if self.node.config.unsafe_stale_reads {
            return Ok(());
        }
        match self.node.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(f))) => {
                Err(not_leader(f.leader_node.map(|n| n.addr)))
            }
            Err(e) => Err(Status::unavailable(format!("no read index: {e}"))),
        }
    }
}

// ---- Raft transport ----------------------------------------------------------------------

fn malformed(e: raft::Malformed) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for Services {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let rpc = raft::append_request_from_pb(request.into_inner()).map_err(malformed)?;
        let response = self.node.raft.append_entries(rpc).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(raft::append_response_to_pb(&response)))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = raft::vote_request_from_pb(request.into_inner()).map_err(malformed)?;
        let response = self.node.raft.vote(rpc).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(raft::vote_response_to_pb(&response)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let Some(pb::SnapshotChunk { part: Some(pb::snapshot_chunk::Part::Header(header)) }) = stream.message().await?
        else {
            return Err(Status::invalid_argument("a snapshot stream starts with its header"));
        };
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            let Some(pb::snapshot_chunk::Part::Data(bytes)) = chunk.part else {
                return Err(Status::invalid_argument("only data chunks may follow the header"));
            };
            if data.len() + bytes.len() > limits::SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted("snapshot too large"));
            }
            data.extend_from_slice(&bytes);
        }
        let vote = raft::vote_from_pb(&header.vote).map_err(malformed)?;
        let meta = raft::SnapshotMeta {
            last_log_id: raft::opt_log_id_from_pb(&header.last_log_id),
            last_membership: raft::stored_membership_from_pb(&header.last_membership).map_err(malformed)?,
        };
        debug!(bytes = data.len(), "installing snapshot from leader");
        let response = self
            .node
            .raft
            .install_full_snapshot(vote, raft::Snapshot { meta, snapshot: data })
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::SnapshotResponse { vote: Some(raft::vote_to_pb(&response.vote)) }))
    }
}

// ---- client API ----------------------------------------------------------------------------

type FeedStream = Pin<Box<dyn Stream<Item = Result<pb::FeedItem, Status>> + Send>>;

#[tonic::async_trait]
impl pb::client_service_server::ClientService for Services {
    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let commands = request.into_inner().commands;
        if commands.is_empty() || commands.len() > limits::PROPOSE_COMMANDS_MAX {
            return Err(Status::invalid_argument(format!("send 1 to {} commands", limits::PROPOSE_COMMANDS_MAX)));
        }
        match self.node.proposer.propose(commands.clone()).await {
            Ok(results) => Ok(Response::new(pb::ProposeResponse { results })),
            // Writes through a follower are forwarded to the leader, once.
            Err(ProposeError::NotLeader { .. }) if !forwarded => {
                let (mut leader, addr) = self.leader_client()?;
                let mut response = leader.propose(Self::forward(pb::ProposeRequest { commands })).await?;
                // Tell the client who leads, so its next write skips this hop.
                if let Ok(value) = addr.parse() {
                    response.metadata_mut().insert(LEADER_ADDR_HEADER, value);
                }
                Ok(response)
            }
            Err(e) => Err(propose_status(e)),
        }
    }

    async fn read_lot(&self, request: Request<pb::ReadLotRequest>) -> Result<Response<pb::ReadLotResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_lot(Self::forward(req)).await;
        }
        let shared = &self.node.shared;
        let applied_index = shared.applied_index();
        let ledger = shared.ledger().map_err(poisoned)?;
        let lot = ledger.lot(&req.lot_id);
        Ok(Response::new(pb::ReadLotResponse {
            lot: lot.map(ledger::state::lot_view),
            bids: match lot {
                Some(l) if req.include_bids => l.history.iter().map(ledger::Ledger::history_record).collect(),
                _ => Vec::new(),
            },
            applied_index,
            stale: req.stale,
            reserve_price: lot.and_then(|l| l.book.reserve),
            leading_max: lot.and_then(|l| l.book.leader.as_ref().map(|x| x.max)),
            content: lot.filter(|_| req.include_content).map(|l| l.content.view(&l.lot_id)),
        }))
    }

    async fn read_categories(
        &self,
        request: Request<pb::ReadCategoriesRequest>,
    ) -> Result<Response<pb::ReadCategoriesResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_categories(Self::forward(req)).await;
        }
        let shared = &self.node.shared;
        let applied_index = shared.applied_index();
        let categories = shared.ledger().map_err(poisoned)?.category_views();
        Ok(Response::new(pb::ReadCategoriesResponse { categories, applied_index, stale: req.stale }))
    }

    async fn read_image(
        &self,
        request: Request<pb::ReadImageRequest>,
    ) -> Result<Response<pb::ReadImageResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_image(Self::forward(req)).await;
        }
        let shared = &self.node.shared;
        let applied_index = shared.applied_index();
        let ledger = shared.ledger().map_err(poisoned)?;
        Ok(Response::new(pb::ReadImageResponse {
            image: if req.image_id.is_empty() { None } else { ledger.image(&req.image_id) },
            referenced: !req.content_hash.is_empty() && ledger.image_referenced(&req.content_hash),
            applied_index,
            stale: req.stale,
        }))
    }

    async fn read_user(&self, request: Request<pb::ReadUserRequest>) -> Result<Response<pb::ReadUserResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_user(Self::forward(req)).await;
        }
        let shared = &self.node.shared;
        let applied_index = shared.applied_index();
        let ledger = shared.ledger().map_err(poisoned)?;
        let user = if req.user_id.is_empty() { ledger.user_by_name(&req.username) } else { ledger.user(&req.user_id) };
        Ok(Response::new(pb::ReadUserResponse {
            user: user.map(ledger::state::user_view),
            password_hash: user.map(|u| u.password_hash.clone()).unwrap_or_default(),
            applied_index,
            stale: req.stale,
        }))
    }

    async fn read_auction(
        &self,
        request: Request<pb::ReadAuctionRequest>,
    ) -> Result<Response<pb::ReadAuctionResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        if !self.read_here(req.stale, forwarded).await? {
            return self.leader_client()?.0.read_auction(Self::forward(req)).await;
        }
        let shared = &self.node.shared;
        let applied_index = shared.applied_index();
        let ledger = shared.ledger().map_err(poisoned)?;
        Ok(Response::new(pb::ReadAuctionResponse {
            auction: ledger.auction(&req.auction_id).map(ledger::state::auction_view),
            applied_index,
            stale: req.stale,
        }))
    }

    type SubscribeStream = FeedStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let from_index = request.into_inner().from_index;
        let (tx, rx) = mpsc::channel(limits::FEED_BUFFER_ITEMS);
        tokio::spawn(feed(self.node.clone(), from_index, tx, self.stopped.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Streams committed feed items after `cursor`, gap-free, until the client goes away. Reads
/// from RocksDB in bounded steps; the bounded channel makes a slow client slow down its own
/// reader only.
async fn feed(
    node: Arc<NodeInner>,
    mut cursor: u64,
    tx: mpsc::Sender<Result<pb::FeedItem, Status>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut applied = node.shared.watch_applied();
    loop {
        if *stopped.borrow() {
            let _ = tx.try_send(Err(Status::unavailable("the node is shutting down; resume on another node")));
            return;
        }
        let scanned_to = *applied.borrow_and_update();
        let shared = node.shared.clone();
        let after = cursor;
        let items = tokio::task::spawn_blocking(move || shared.feed_after(after, limits::FEED_READ_ITEMS_MAX)).await;
        let items = match items {
            Ok(Ok(items)) => items,
            Ok(Err(e)) => {
                let _ = tx.send(Err(Status::internal(format!("feed read failed: {e}")))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(Status::internal(format!("feed reader failed: {e}")))).await;
                return;
            }
        };
        let full_step = items.len() == limits::FEED_READ_ITEMS_MAX;
        for item in items {
            debug_assert!(item.index > cursor, "feed must move forward");
            cursor = item.index;
            tokio::select! {
                sent = tx.send(Ok(item)) => if sent.is_err() { return },
                _ = stopped.wait_for(|&s| s) => return,
            }
        }
        if full_step {
            continue;
        }
        // Caught up to what was applied when we looked: wait for more.
        let wait = applied.wait_for(|&index| index > scanned_to);
        tokio::select! {
            changed = wait => if changed.is_err() { return },
            _ = tx.closed() => return,
            _ = stopped.wait_for(|&s| s) => {},
        }
    }
}

// ---- admin API -----------------------------------------------------------------------------

fn write_error(e: RaftError<raft::TypeConfig, ClientWriteError<raft::TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f.leader_node.map(|n| n.addr)),
        RaftError::APIError(other) => Status::failed_precondition(other.to_string()),
        RaftError::Fatal(f) => Status::unavailable(f.to_string()),
    }
}

fn membership_response(log_index: u64, m: &raft::Membership) -> pb::MembershipResponse {
    pb::MembershipResponse { log_index, voters: m.voter_ids().collect(), learners: m.learner_ids().collect() }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Services {
    async fn init(&self, request: Request<pb::InitRequest>) -> Result<Response<pb::InitResponse>, Status> {
        let members: BTreeMap<u64, BasicNode> =
            request.into_inner().members.into_iter().map(|n| (n.id, BasicNode::new(n.addr))).collect();
        if members.is_empty() {
            return Err(Status::invalid_argument("init needs at least one member"));
        }
        match self.node.raft.initialize(members).await {
            Ok(()) => Ok(Response::new(pb::InitResponse { initialized: true })),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Ok(Response::new(pb::InitResponse { initialized: false }))
            }
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let node = request.into_inner().node.ok_or_else(|| Status::invalid_argument("node is required"))?;
        let response =
            self.node.raft.add_learner(node.id, BasicNode::new(node.addr), true).await.map_err(write_error)?;
        let membership = response.membership.unwrap_or_default();
        Ok(Response::new(membership_response(response.log_id.index, &membership)))
    }

    async fn change_membership(
        &self,
        request: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let req = request.into_inner();
        let voters: BTreeSet<u64> = req.voters.into_iter().collect();
        if voters.is_empty() {
            return Err(Status::invalid_argument("a cluster needs at least one voter"));
        }
        let response = self.node.raft.change_membership(voters, req.retain).await.map_err(write_error)?;
        let membership = response.membership.unwrap_or_default();
        Ok(Response::new(membership_response(response.log_id.index, &membership)))
    }

    async fn metrics(&self, _request: Request<pb::MetricsRequest>) -> Result<Response<pb::MetricsResponse>, Status> {
        Ok(Response::new(self.node.metrics().map_err(poisoned)?))
    }
}
